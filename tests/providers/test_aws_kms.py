"""The AWS KMS provider beyond the conformance suite.

- Against moto in server mode: the 7-30 day window and the rotation period are
  validated by us (moto does not), key policies are AWS documents, the MAC key,
  KMS request ids, and attacks on the wrapped blob (an edited version label, a
  blob offered to another key).
- With botocore's Stubber: AWS's documented error shapes that moto never returns
  (DisabledException, KMSInvalidStateException, AccessDeniedException,
  NotFoundException, ThrottlingException, a read timeout) map to sealedkb's errors,
  and the calls carry the encryption context and the rotation period.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.providers.services import REGION, MotoKms

from sealedkb.config import Settings
from sealedkb.errors import (
    AccessDeniedError,
    ConfigError,
    ConflictError,
    IntegrityError,
    KeyUnavailableError,
    NotFoundError,
    ValidationError,
)
from sealedkb.keys.aws_kms import (
    CONNECT_TIMEOUT,
    MAX_ATTEMPTS,
    READ_TIMEOUT,
    VERSION_CONTEXT_KEY,
    AwsKmsProvider,
    key_tag,
)
from sealedkb.keys.provider import KeyState
from sealedkb.keys.registry import provider_for

botocore_stub = pytest.importorskip("botocore.stub")

CTX = {
    "sealedkb:namespace": "default",
    "sealedkb:purpose": "content",
    "sealedkb:data_key_id": "6f1c0000-0000-4000-8000-000000000001",
}
ARN = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
URI = "aws-kms:" + ARN


@pytest.fixture
def kms(moto_kms: MotoKms, tmp_path: Path) -> AwsKmsProvider:
    settings = Settings(
        home=tmp_path / "home",
        embedder="none",
        **moto_kms.settings(aws_mac_key_id=moto_kms.mac_key()),
    )
    provider = provider_for(settings, "aws-kms:alias/any")
    assert isinstance(provider, AwsKmsProvider)
    return provider


# --- against moto --------------------------------------------------------------------


@pytest.mark.parametrize("days", [0, 6, 31, 365, True])
def test_pending_window_is_validated_by_us(kms: AwsKmsProvider, days: int) -> None:
    uri = kms.create_key("window").key_id
    with pytest.raises(ValidationError) as exc:
        kms.schedule_key_deletion(uri, days)
    assert exc.value.exit_code == 2 and "7-30" in exc.value.message
    assert kms.describe_key(uri).state is KeyState.ENABLED  # nothing changed


def test_rotation_period_is_validated_and_rotations_count_as_versions(
    kms: AwsKmsProvider,
) -> None:
    uri = kms.create_key("rotation").key_id
    meta = kms.describe_key(uri)
    assert meta.rotation_enabled and meta.versions == 1
    for days in (89, 2561):
        with pytest.raises(ValidationError):
            kms.enable_key_rotation(uri, days)
    plaintext, old = kms.generate_data_key(uri, CTX)
    assert kms.rotate_key(uri).versions == 2
    assert kms.wrapped_version(old) == 1
    assert kms.decrypt(uri, old, CTX) == plaintext  # AWS rotation is transparent
    assert kms.disable_key_rotation(uri).rotation_enabled is False
    assert kms.enable_key_rotation(uri, 90).rotation_enabled is True


def test_rotation_of_a_disabled_key_is_a_conflict(kms: AwsKmsProvider) -> None:
    uri = kms.create_key("disabled").key_id
    kms.disable_key(uri)
    with pytest.raises(ConflictError, match="enable it first"):
        kms.rotate_key(uri)
    kms.schedule_key_deletion(uri, 7)
    with pytest.raises(ConflictError, match="cancel the deletion first"):
        kms.enable_key(uri)
    assert kms.cancel_key_deletion(uri).state is KeyState.DISABLED


def test_key_policy_is_the_aws_document(kms: AwsKmsProvider) -> None:
    uri = kms.create_key("policy").key_id
    policy = kms.get_key_policy(uri)
    assert policy["Version"] == "2012-10-17" and policy["Statement"]
    changed = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "Root",
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
                "Action": "kms:*",
                "Resource": "*",
            }
        ],
    }
    kms.put_key_policy(uri, changed)
    assert kms.get_key_policy(uri) == changed
    sealedkb_format = {"Version": "1", "Statement": [{"Effect": "Allow", "Principal": "admin"}]}
    with pytest.raises(ValidationError, match="IAM policy document"):
        kms.put_key_policy(uri, sealedkb_format)
    assert kms.get_key_policy(uri) == changed  # nothing changed


def test_mac_key_and_request_ids(kms: AwsKmsProvider, tmp_path: Path, moto_kms: MotoKms) -> None:
    mac = kms.generate_mac(b"checkpoint")
    assert len(mac) == 32 and mac == kms.generate_mac(b"checkpoint")  # token look-ups need it
    assert kms.last_request_id()  # every call's KMS request id is kept
    assert kms.verify_mac(b"checkpoint", mac) and not kms.verify_mac(b"other", mac)
    assert not kms.verify_mac(b"checkpoint", b"")
    without = AwsKmsProvider(Settings(home=tmp_path / "h2", embedder="none", **moto_kms.settings()))
    with pytest.raises(ConfigError, match="SEALEDKB_AWS_MAC_KEY_ID"):
        without.generate_mac(b"checkpoint")


def test_attacker_edits_the_version_label(kms: AwsKmsProvider) -> None:
    """The label is authenticated (it is part of the encryption context): a database
    writer who lowers or raises it, hoping to steer re-wrapping, gets nothing."""
    uri = kms.create_key("label").key_id
    _, wrapped = kms.generate_data_key(uri, CTX)
    for label in (2, 7):
        forged = wrapped[:1] + struct.pack(">I", label) + wrapped[5:]
        with pytest.raises(IntegrityError):
            kms.decrypt(uri, forged, CTX)
        with pytest.raises(IntegrityError):
            kms.re_encrypt(uri, forged, CTX)


def test_attacker_moves_a_wrapped_key_to_another_kms_key(kms: AwsKmsProvider) -> None:
    mine = kms.create_key("mine").key_id
    theirs = kms.create_key("theirs").key_id
    _, wrapped = kms.generate_data_key(mine, CTX)
    with pytest.raises(IntegrityError, match="not made under"):
        kms.decrypt(theirs, wrapped, CTX)
    # with the key tag forged as well, AWS itself refuses (moto: AccessDenied)
    forged = wrapped[:5] + key_tag(theirs.removeprefix("aws-kms:")) + wrapped[13:]
    with pytest.raises((IntegrityError, AccessDeniedError)):
        kms.decrypt(theirs, forged, CTX)


def test_reserved_context_entry_is_refused(kms: AwsKmsProvider) -> None:
    uri = kms.create_key("reserved").key_id
    with pytest.raises(ValidationError, match="reserved"):
        kms.generate_data_key(uri, {**CTX, VERSION_CONTEXT_KEY: "1"})


def test_alias_resolves_and_unknown_key(kms: AwsKmsProvider, moto_kms: MotoKms) -> None:
    uri = kms.create_key("alias").key_id
    moto_kms.client().create_alias(AliasName="alias/sealedkb-test-alias", TargetKeyId=uri[8:])
    assert kms.describe_key("aws-kms:alias/sealedkb-test-alias").key_id == uri
    plaintext, wrapped = kms.generate_data_key("aws-kms:alias/sealedkb-test-alias", CTX)
    assert kms.decrypt(uri, wrapped, CTX) == plaintext
    with pytest.raises(NotFoundError):
        kms.describe_key("aws-kms:alias/sealedkb-missing")
    for bad in ("aws-kms:", "aws-kms:has space", "local:key/x"):
        with pytest.raises(ValidationError):
            kms.describe_key(bad)


def test_botocore_config_bounds_retries_and_time(kms: AwsKmsProvider) -> None:
    config = kms.client(URI).meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": MAX_ATTEMPTS}
    assert config.connect_timeout == CONNECT_TIMEOUT and config.read_timeout == READ_TIMEOUT


# --- AWS's real error shapes (botocore Stubber) ---------------------------------------------


class _Source:
    def __init__(self, client: Any) -> None:
        self.client = client

    def get(self, region: str | None) -> Any:
        return self.client


@pytest.fixture
def stubbed(tmp_path: Path) -> Iterator[tuple[AwsKmsProvider, Any]]:
    import boto3

    client = boto3.client(
        "kms", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="y"
    )
    provider = AwsKmsProvider(
        Settings(home=tmp_path / "home", embedder="none", aws_mac_key_id="alias/mac"),
        clients=_Source(client),
    )
    with botocore_stub.Stubber(client) as stubber:
        yield provider, stubber
        stubber.assert_no_pending_responses()


def _described(stubber: Any, state: str = "Enabled") -> None:
    stubber.add_response(
        "describe_key",
        {
            "KeyMetadata": {
                "KeyId": ARN.rsplit("/", 1)[1],
                "Arn": ARN,
                "KeyState": state,
                "KeyManager": "CUSTOMER",
            },
            "ResponseMetadata": {"RequestId": "req-describe"},
        },
        {"KeyId": ARN},
    )


def _rotations(stubber: Any, count: int = 0) -> None:
    stubber.add_response(
        "list_key_rotations",
        {"Rotations": [{"KeyId": ARN}] * count, "Truncated": False},
        {"KeyId": ARN},
    )


def _wrapped(version: int = 1) -> bytes:
    return struct.pack(">BI8s", 1, version, key_tag(ARN)) + b"opaque-aws-blob"


def _error(stubber: Any, method: str, code: str, status: int = 400) -> None:
    stubber.add_client_error(
        method,
        service_error_code=code,
        service_message="AWS says something long",
        http_status_code=status,
        response_meta={"RequestId": "req-4711"},
    )


def test_calls_carry_the_encryption_context(stubbed: tuple[AwsKmsProvider, Any]) -> None:
    provider, stubber = stubbed
    _described(stubber)
    _rotations(stubber, 2)
    stubber.add_response(
        "generate_data_key",
        {"Plaintext": b"k" * 32, "CiphertextBlob": b"blob", "KeyId": ARN},
        {
            "KeyId": ARN,
            "KeySpec": "AES_256",
            "EncryptionContext": {**CTX, VERSION_CONTEXT_KEY: "3"},
        },
    )
    plaintext, wrapped = provider.generate_data_key(URI, CTX)
    assert plaintext == b"k" * 32 and provider.wrapped_version(wrapped) == 3


def test_rotation_period_is_sent(stubbed: tuple[AwsKmsProvider, Any]) -> None:
    provider, stubber = stubbed
    _described(stubber)
    stubber.add_response(
        "enable_key_rotation", {}, {"KeyId": ARN.rsplit("/", 1)[1], "RotationPeriodInDays": 180}
    )
    _described(stubber)
    stubber.add_response(
        "get_key_rotation_status",
        {"KeyRotationEnabled": True, "RotationPeriodInDays": 180},
        {"KeyId": ARN},
    )
    _rotations(stubber)
    meta = provider.enable_key_rotation(URI, 180)
    assert meta.rotation_enabled and meta.rotation_period_days == 180


def test_disabled_exception(stubbed: tuple[AwsKmsProvider, Any]) -> None:
    provider, stubber = stubbed
    _described(stubber)
    _error(stubber, "decrypt", "DisabledException")
    with pytest.raises(KeyUnavailableError) as exc:
        provider.decrypt(URI, _wrapped(), CTX)
    assert exc.value.key_state == "Disabled" and exc.value.exit_code == 5
    assert "req-4711" in exc.value.message
    assert "AWS says" not in exc.value.message  # AWS's own text is not echoed


def test_invalid_state_exception(stubbed: tuple[AwsKmsProvider, Any]) -> None:
    provider, stubber = stubbed
    _described(stubber)
    _rotations(stubber)
    _error(stubber, "generate_data_key", "KMSInvalidStateException")
    with pytest.raises(KeyUnavailableError) as exc:
        provider.generate_data_key(URI, CTX)
    assert exc.value.code == "KEY_UNAVAILABLE"


def test_state_is_checked_before_the_call(stubbed: tuple[AwsKmsProvider, Any]) -> None:
    """Where AWS would refuse (and moto would not), sealedkb refuses first."""
    provider, stubber = stubbed
    _described(stubber, "PendingDeletion")
    with pytest.raises(KeyUnavailableError) as exc:
        provider.decrypt(URI, _wrapped(), CTX)
    assert exc.value.key_state == "PendingDeletion"


def test_access_denied_names_the_permission(stubbed: tuple[AwsKmsProvider, Any]) -> None:
    provider, stubber = stubbed
    _described(stubber)
    _error(stubber, "decrypt", "AccessDeniedException")
    with pytest.raises(AccessDeniedError) as exc:
        provider.decrypt(URI, _wrapped(), CTX)
    assert "kms:Decrypt" in exc.value.message and exc.value.exit_code == 4


def test_not_found(stubbed: tuple[AwsKmsProvider, Any]) -> None:
    provider, stubber = stubbed
    _error(stubber, "describe_key", "NotFoundException")
    with pytest.raises(KeyUnavailableError):
        provider.decrypt(URI, _wrapped(), CTX)
    _error(stubber, "describe_key", "NotFoundException")
    with pytest.raises(NotFoundError):
        provider.describe_key(URI)


def test_throttling(stubbed: tuple[AwsKmsProvider, Any]) -> None:
    provider, stubber = stubbed
    _described(stubber)
    _error(stubber, "decrypt", "ThrottlingException")
    with pytest.raises(KeyUnavailableError, match="ThrottlingException"):
        provider.decrypt(URI, _wrapped(), CTX)


def test_invalid_ciphertext(stubbed: tuple[AwsKmsProvider, Any]) -> None:
    provider, stubber = stubbed
    _described(stubber)
    _error(stubber, "decrypt", "InvalidCiphertextException")
    with pytest.raises(IntegrityError):
        provider.decrypt(URI, _wrapped(), CTX)


def test_mac_does_not_verify(stubbed: tuple[AwsKmsProvider, Any]) -> None:
    provider, stubber = stubbed
    _error(stubber, "verify_mac", "KMSInvalidMacException")
    assert provider.verify_mac(b"message", b"m" * 32) is False


def test_timeout(stubbed: tuple[AwsKmsProvider, Any]) -> None:
    from botocore.exceptions import ReadTimeoutError

    provider, stubber = stubbed
    _described(stubber)

    def timeout(**_: Any) -> None:
        raise ReadTimeoutError(endpoint_url="https://kms.eu-west-1.amazonaws.com")

    provider.client(URI).meta.events.register("before-call.kms.Decrypt", timeout)
    with pytest.raises(KeyUnavailableError, match="unreachable") as exc:
        provider.decrypt(URI, _wrapped(), CTX)
    assert exc.value.exit_code == 5


def test_principal_roles_apply_before_any_call(stubbed: tuple[AwsKmsProvider, Any]) -> None:
    provider, _stubber = stubbed  # no response queued: a call would fail the test
    with pytest.raises(AccessDeniedError, match="mallory"):
        provider.for_principal("mallory").decrypt(URI, _wrapped(), CTX)
    with pytest.raises(AccessDeniedError):
        provider.for_principal("sealedkb-service").disable_key(URI)


def test_aws_keeps_the_schedule_itself(stubbed: tuple[AwsKmsProvider, Any]) -> None:
    """Opening a knowledge base lists no keys: AWS rotates and deletes on its own
    (no response is queued, so any call would fail this test)."""
    from sealedkb.keys.provider import schedules_itself

    provider, _stubber = stubbed
    assert schedules_itself(provider)
    assert provider.rotate_key_if_due(URI) is None and provider.destroy_key_if_due(URI) is None
