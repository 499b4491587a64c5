"""Key policy evaluation (keys/policy.py): pure, no I/O."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sealedkb.errors import ValidationError
from sealedkb.keys.policy import (
    SERVICE_ACTIONS,
    Action,
    default_policy,
    parse_policy,
    parse_policy_text,
    validate_principal,
)


def policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "1", "Statement": list(statements)}


def test_default_policy_admin_manages_service_uses() -> None:
    p = default_policy()
    for action in Action:
        assert p.allows("admin", action), action
        assert p.allows("sealedkb-service", action) == (action in SERVICE_ACTIONS), action
        assert not p.allows("alice", action)
    assert not p.allows("sealedkb-service", Action.SCHEDULE_KEY_DELETION)
    assert not p.allows("sealedkb-service", Action.PUT_KEY_POLICY)


def test_deny_wins_over_allow_in_any_order() -> None:
    allow = {"Sid": "A", "Effect": "Allow", "Principal": "*", "Action": "*"}
    deny = {"Sid": "D", "Effect": "Deny", "Principal": ["alice"], "Action": ["Decrypt"]}
    for doc in (policy(allow, deny), policy(deny, allow)):
        p = parse_policy(doc)
        decision = p.evaluate("alice", Action.DECRYPT)
        assert not decision.allowed and "denied by statement D" in decision.reason
        assert p.allows("alice", Action.ENCRYPT)
        assert p.allows("bob", Action.DECRYPT)
        assert p.evaluate("bob", Action.DECRYPT).reason == "allowed by statement A"


def test_implicit_deny() -> None:
    p = parse_policy(policy({"Effect": "Allow", "Principal": "bob", "Action": "Encrypt"}))
    decision = p.evaluate("bob", Action.DECRYPT)
    assert not decision.allowed and decision.reason == "no statement allows it"
    assert not parse_policy(policy()).allows("admin", Action.DESCRIBE_KEY)


def test_round_trip() -> None:
    p = default_policy()
    assert parse_policy(p.to_dict()) == p
    text = json.dumps(p.to_dict())
    assert parse_policy_text(text).to_dict() == p.to_dict()


@pytest.mark.parametrize(
    ("doc", "hint"),
    [
        ([], "JSON object"),
        ({"Statement": []}, "Version"),
        ({"Version": "2", "Statement": []}, "Version"),
        ({"Version": "1", "Statement": {}}, "list"),
        ({"Version": "1", "Statement": [], "Extra": 1}, "unknown policy field"),
        (policy({"Effect": "Permit", "Principal": "a", "Action": "*"}), "Effect"),
        (policy({"Effect": "Allow", "Principal": [], "Action": "*"}), "Principal"),
        (policy({"Effect": "Allow", "Principal": "a", "Action": "Decrypt*"}), "unknown action"),
        (policy({"Effect": "Allow", "Principal": "a", "Action": "kms:Decrypt"}), "unknown action"),
        (policy({"Effect": "Allow", "Principal": "a b", "Action": "*"}), "principal"),
        (policy({"Effect": "Allow", "Principal": "a", "Action": "*", "Cond": 1}), "unknown field"),
        (policy({"Sid": 3, "Effect": "Allow", "Principal": "a", "Action": "*"}), "Sid"),
        (policy("x"), "object"),
    ],
)
def test_invalid_policies_are_refused(doc: Any, hint: str) -> None:
    with pytest.raises(ValidationError) as exc:
        parse_policy(doc)
    assert hint in exc.value.message
    assert exc.value.exit_code == 2


def test_text_limits() -> None:
    with pytest.raises(ValidationError, match="JSON"):
        parse_policy_text("{not json")
    with pytest.raises(ValidationError, match="32 KB"):
        parse_policy_text(" " * (32 * 1024 + 1))


@pytest.mark.parametrize("name", ["admin", "alice@example.com", "svc-1.prod", "A+B_c"])
def test_valid_principals(name: str) -> None:
    assert validate_principal(name) == name


@pytest.mark.parametrize("name", ["", "sealedkb:system", "a b", "-x", "x" * 129, "é"])
def test_invalid_principals(name: str) -> None:
    with pytest.raises(ValidationError):
        validate_principal(name)
