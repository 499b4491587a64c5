"""In-place migration of a plaintext sealedkb (issue 7): run, verify, rollback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sealedkb.config import Settings
from sealedkb.domain import EncryptionMode
from sealedkb.errors import ValidationError
from sealedkb.migration import Migrator
from sealedkb.service import KnowledgeBase


def _snapshot_of(kb: KnowledgeBase) -> dict[str, Any]:
    out = {}
    for e in kb.list(limit=1000):
        d = e.to_dict()
        out[str(e.id)] = d
    return out


def _fill(kb: KnowledgeBase, n: int) -> None:
    for i in range(n):
        kb.add(
            f"entry {i} about topic {i % 7} with some words",
            title=f"Title {i}",
            tags=[f"t{i % 3}"],
            metadata={"i": i},
            source=f"src/{i}",
            entry_type="note" if i % 2 else "doc",
        )


def test_in_place_run_verify_rollback(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    plain, _ = KnowledgeBase.init(settings, EncryptionMode.OFF)
    _fill(plain, 40)
    e = plain.list(limit=1)[0]
    plain.delete(e.id)
    before = _snapshot_of(plain)
    plain.close()

    plan = Migrator(settings).plan()
    assert plan["kind"] == "in-place" and plan["rows"] == 40
    assert plan["estimate_seconds"] > 0

    result = Migrator(settings, batch=10).run()
    assert result["state"] == "complete"

    with KnowledgeBase.open(settings) as kb:
        assert kb.encrypted
        assert _snapshot_of(kb) == before
        st = kb.status()
        assert st["storage_encrypted"] and st["entries_plaintext"] == 0
        hits = kb.search("topic", mode="keyword", namespace="default")
        assert hits.hits

    v = Migrator(settings).verify()
    assert v["ok"], v
    assert v["entries_checked"] == 40

    with pytest.raises(ValidationError):
        Migrator(settings).run()

    r = Migrator(settings).rollback()
    assert r["state"] == "rolled-back"
    with KnowledgeBase.open(settings) as kb:
        assert not kb.encrypted
        assert _snapshot_of(kb) == before
