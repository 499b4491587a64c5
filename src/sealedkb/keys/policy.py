"""Key policies: who may do what with one KMS key (docs/DESIGN.md §4).

A policy is a small JSON document in the shape AWS KMS key policies have, so an
auditor reads it without a manual::

    {"Version": "1",
     "Statement": [
       {"Sid": "AdminManagesKey", "Effect": "Allow", "Principal": "admin", "Action": "*"},
       {"Sid": "ServiceUsesKey", "Effect": "Allow", "Principal": ["sealedkb-service"],
        "Action": ["Encrypt", "Decrypt", "GenerateDataKey", "ReEncrypt", "DescribeKey"]}]}

Evaluation is the AWS rule set reduced to what sealedkb needs: an explicit
``Deny`` wins over any ``Allow``; without a matching ``Allow`` the action is
denied (implicit deny). ``"*"`` matches every principal or every action; there
are no other wildcards, conditions or grants.

This module is pure (no I/O) so it is tested on its own. Enforcement happens in
the key provider: with the local provider it is a guard-rail for whoever holds
the root key (they can edit the keystore), with a KMIP or AWS KMS back end the
key service itself enforces it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sealedkb.errors import ValidationError

POLICY_VERSION = "1"
MAX_POLICY_BYTES = 32 * 1024  # as AWS KMS
MAX_STATEMENTS = 64
DEFAULT_ADMIN = "admin"
DEFAULT_SERVICE = "sealedkb-service"
#: The key service acting on its own schedule (automatic rotation, destruction
#: after the pending window). It cannot be named on the command line (the ':'
#: is not allowed in principal names) and is not subject to key policies, as
#: AWS KMS's own rotation and deletion are not.
SYSTEM_PRINCIPAL = "sealedkb:system"

_PRINCIPAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}")
_SID_RE = re.compile(r"[A-Za-z0-9_.:-]{0,128}")


class Action(StrEnum):
    """Actions a key policy governs (docs/DESIGN.md §4, plus the two reads/toggles AWS has)."""

    ENCRYPT = "Encrypt"
    DECRYPT = "Decrypt"
    GENERATE_DATA_KEY = "GenerateDataKey"
    RE_ENCRYPT = "ReEncrypt"
    DESCRIBE_KEY = "DescribeKey"
    ENABLE_KEY_ROTATION = "EnableKeyRotation"
    DISABLE_KEY_ROTATION = "DisableKeyRotation"
    ROTATE_KEY = "RotateKey"
    DISABLE_KEY = "DisableKey"
    ENABLE_KEY = "EnableKey"
    SCHEDULE_KEY_DELETION = "ScheduleKeyDeletion"
    CANCEL_KEY_DELETION = "CancelKeyDeletion"
    GET_KEY_POLICY = "GetKeyPolicy"
    PUT_KEY_POLICY = "PutKeyPolicy"


#: What the service principal needs to run the knowledge base: wrap and unwrap.
SERVICE_ACTIONS = (
    Action.ENCRYPT,
    Action.DECRYPT,
    Action.GENERATE_DATA_KEY,
    Action.RE_ENCRYPT,
    Action.DESCRIBE_KEY,
)


def validate_principal(name: str) -> str:
    """A principal name: 1-128 of letters, digits and ``_ . @ + -``."""
    if not isinstance(name, str) or not _PRINCIPAL_RE.fullmatch(name):
        raise ValidationError(
            "principal must be 1-128 characters of letters, digits, '_', '.', '@', '+', '-'",
            field="principal",
        )
    return name


@dataclass(frozen=True, slots=True)
class Statement:
    effect: str  # Allow | Deny
    principals: frozenset[str]  # may contain "*"
    actions: frozenset[str]  # may contain "*"
    sid: str = ""

    def matches(self, principal: str, action: Action) -> bool:
        return ("*" in self.principals or principal in self.principals) and (
            "*" in self.actions or action.value in self.actions
        )


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str  # "allowed by <sid>" | "denied by <sid>" | "no statement allows it"


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    statements: tuple[Statement, ...]

    def evaluate(self, principal: str, action: Action) -> Decision:
        """Deny wins; otherwise the first matching Allow; otherwise implicit deny."""
        allow: Statement | None = None
        for st in self.statements:
            if not st.matches(principal, action):
                continue
            if st.effect == "Deny":
                return Decision(False, f"denied by statement {st.sid or '(no Sid)'}")
            allow = allow or st
        if allow is not None:
            return Decision(True, f"allowed by statement {allow.sid or '(no Sid)'}")
        return Decision(False, "no statement allows it")

    def allows(self, principal: str, action: Action) -> bool:
        return self.evaluate(principal, action).allowed

    def to_dict(self) -> dict[str, Any]:
        out: list[dict[str, Any]] = []
        for st in self.statements:
            item: dict[str, Any] = {
                "Effect": st.effect,
                "Principal": sorted(st.principals),
                "Action": sorted(st.actions),
            }
            if st.sid:
                item = {"Sid": st.sid, **item}
            out.append(item)
        return {"Version": POLICY_VERSION, "Statement": out}


def default_policy(admin: str = DEFAULT_ADMIN, service: str = DEFAULT_SERVICE) -> KeyPolicy:
    """The policy of a new key: the admin may do everything (including reading the
    data: the CLI's default principal is the admin), the service principal may
    wrap and unwrap data keys and describe the key."""
    return KeyPolicy(
        (
            Statement("Allow", frozenset({admin}), frozenset({"*"}), "AdminManagesKey"),
            Statement(
                "Allow",
                frozenset({service}),
                frozenset(a.value for a in SERVICE_ACTIONS),
                "ServiceUsesKey",
            ),
        )
    )


def _strings(value: Any, what: str, idx: int) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValidationError(
        f"statement {idx}: {what} must be a string or a non-empty list of strings",
        field="policy",
    )


def parse_policy(doc: Any) -> KeyPolicy:
    """Validate a policy document (already parsed JSON); raise ValidationError naming
    the first problem. Unknown fields and actions are refused rather than ignored,
    so a typo never silently widens or narrows access."""
    if not isinstance(doc, Mapping):
        raise ValidationError("a key policy must be a JSON object", field="policy")
    unknown = set(doc) - {"Version", "Statement"}
    if unknown:
        raise ValidationError(
            f"unknown policy field(s): {', '.join(sorted(unknown))}", field="policy"
        )
    if doc.get("Version") != POLICY_VERSION:
        raise ValidationError(f'policy "Version" must be "{POLICY_VERSION}"', field="policy")
    raw = doc.get("Statement")
    if not isinstance(raw, list):
        raise ValidationError('policy "Statement" must be a list', field="policy")
    if len(raw) > MAX_STATEMENTS:
        raise ValidationError(f"more than {MAX_STATEMENTS} statements", field="policy")
    known_actions = {a.value for a in Action}
    statements: list[Statement] = []
    for idx, st in enumerate(raw, start=1):
        if not isinstance(st, Mapping):
            raise ValidationError(f"statement {idx} must be an object", field="policy")
        extra = set(st) - {"Sid", "Effect", "Principal", "Action"}
        if extra:
            raise ValidationError(
                f"statement {idx}: unknown field(s): {', '.join(sorted(extra))}", field="policy"
            )
        sid = st.get("Sid", "")
        if not isinstance(sid, str) or not _SID_RE.fullmatch(sid):
            raise ValidationError(
                f"statement {idx}: Sid must be up to 128 of letters, digits, '_.:-'",
                field="policy",
            )
        effect = st.get("Effect")
        if effect not in ("Allow", "Deny"):
            raise ValidationError(
                f'statement {idx}: Effect must be "Allow" or "Deny"', field="policy"
            )
        principals = _strings(st.get("Principal"), "Principal", idx)
        for p in principals:
            if p != "*":
                try:
                    validate_principal(p)
                except ValidationError:
                    raise ValidationError(
                        f"statement {idx}: invalid principal name", field="policy"
                    ) from None
        actions = _strings(st.get("Action"), "Action", idx)
        bad = [a for a in actions if a != "*" and a not in known_actions]
        if bad:
            raise ValidationError(
                f"statement {idx}: unknown action(s): {', '.join(sorted(bad)[:5])}; known: "
                + ", ".join(sorted(known_actions)),
                field="policy",
            )
        statements.append(Statement(effect, frozenset(principals), frozenset(actions), sid))
    return KeyPolicy(tuple(statements))


def parse_policy_text(text: str) -> KeyPolicy:
    if len(text.encode("utf-8", "surrogatepass")) > MAX_POLICY_BYTES:
        raise ValidationError("a key policy is limited to 32 KB", field="policy")
    try:
        doc = json.loads(text)
    except ValueError:
        raise ValidationError("the key policy is not valid JSON", field="policy") from None
    return parse_policy(doc)


def principals_named(policy: KeyPolicy) -> Iterable[str]:
    for st in policy.statements:
        yield from st.principals
