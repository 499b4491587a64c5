"""KnowledgeBase.add_many: the pipelined bulk add (one transaction, all or none)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.cli_helpers import make_cli
from tests.integration.test_tamper_cli import expect

from sealedkb.errors import ValidationError
from sealedkb.kb.knowledge_base import MAX_ADD_BATCH, KnowledgeBase
from sealedkb.model import NewEntry, new_entry


def batch(n: int, **kw: Any) -> list[NewEntry]:
    return [
        new_entry(f"Runbook step {i}: restart the pooler on node {i}.", title=f"step {i}", **kw)
        for i in range(n)
    ]


def live_count(kb: KnowledgeBase, namespace: str = "default") -> int:
    return len(kb.list(namespace=namespace, limit=1000))


def test_add_many_adds_in_order_and_entries_are_searchable(any_kb: KnowledgeBase) -> None:
    entries = batch(30, tags=["ops"], entry_type="runbook")
    added = any_kb.add_many(entries)
    assert [e.title for e in added] == [f"step {i}" for i in range(30)]
    assert len({e.id for e in added}) == 30
    for e in added[:3]:
        got = any_kb.get(e.id)
        assert got.to_dict() == e.to_dict()
        assert got.tags == ("ops",)
    assert live_count(any_kb) == 30
    for mode in ("keyword", "semantic", "hybrid"):
        hits = any_kb.search("restart the pooler on node 17", mode=mode, limit=5).hits
        assert "step 17" in [h.title for h in hits], mode
    assert [h.title for h in any_kb.search("pooler", tags=["ops"], limit=1).hits]


def test_add_many_equals_add_row_for_row(any_kb: KnowledgeBase) -> None:
    one = any_kb.add("Vacuum falls behind on hot tables.", title="single", tags=["db"])
    (many,) = any_kb.add_many(
        [new_entry("Vacuum falls behind on hot tables!", title="batched", tags=["db"])]
    )
    a, b = one.to_dict(), many.to_dict()
    for k in ("id", "title", "content", "created_at", "updated_at"):
        a.pop(k), b.pop(k)
    assert a == b
    assert {h.title for h in any_kb.search("vacuum hot tables", limit=5).hits} == {
        "single",
        "batched",
    }


def test_add_many_dedups_against_the_kb_and_within_the_batch(any_kb: KnowledgeBase) -> None:
    old = any_kb.add("Same words here.", title="old")
    got = any_kb.add_many(
        [
            new_entry("Same   words here.", title="dup of old"),
            new_entry("Fresh text.", title="fresh"),
            new_entry("Fresh  text.", title="dup of fresh"),
        ]
    )
    assert got[0].id == old.id and got[0].title == "old"
    assert got[2].id == got[1].id and got[2].title == "fresh"
    assert live_count(any_kb) == 2
    forced = any_kb.add_many([new_entry("Same words here.", title="forced")], force=True)
    assert forced[0].id != old.id
    assert live_count(any_kb) == 3


def test_add_many_is_all_or_none(any_kb: KnowledgeBase, monkeypatch: pytest.MonkeyPatch) -> None:
    any_kb.add("Already here.")
    real = any_kb.indexer.columns
    calls = {"n": 0}

    def failing(*args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 7:  # six rows already sent down the pipeline
            raise RuntimeError("sealing failed")
        return real(*args, **kw)

    monkeypatch.setattr(any_kb.indexer, "columns", failing)
    with pytest.raises(RuntimeError):
        any_kb.add_many(batch(10))
    monkeypatch.setattr(any_kb.indexer, "columns", real)
    assert live_count(any_kb) == 1  # the six sent rows were rolled back
    assert len(any_kb.add_many(batch(10))) == 10  # and the connection is usable again


def test_add_many_refuses_bad_batches(any_kb: KnowledgeBase) -> None:
    with pytest.raises(ValidationError) as exc:
        any_kb.add_many([])
    assert exc.value.field == "entries"
    with pytest.raises(ValidationError):
        any_kb.add_many(batch(1) * (MAX_ADD_BATCH + 1))
    with pytest.raises(ValidationError) as exc:
        any_kb.add_many([{"content": "raw dict"}])  # type: ignore[list-item]
    assert exc.value.field == "entries"
    with pytest.raises(ValidationError) as exc:
        new_entry("x", namespace="bad namespace!")
    assert exc.value.field == "namespace"
    assert live_count(any_kb) == 0


# --- sealedkb add-many (JSON Lines) ----------------------------------------------


def test_cli_add_many_from_json_lines(home: Path, database_url: str) -> None:
    cli = make_cli(home, database_url)
    expect(cli("init"), 0)
    lines = [
        json.dumps({"content": "Pool in session mode.", "title": "pooling", "tags": ["db"]}),
        "",
        json.dumps({"content": "Rotate keys yearly.", "type": "runbook", "namespace": "ops"}),
        json.dumps({"content": "Pool  in session mode."}),  # a duplicate of line 1
    ]
    out = expect(cli("add-many", "-", "--tag", "import", "--json", input="\n".join(lines)), 0)
    got = json.loads(out.output)
    assert got["entries"] == 3 and len(got["ids"]) == 3
    assert got["ids"][2] == got["ids"][0]
    shown = json.loads(expect(cli("get", got["ids"][0], "--json"), 0).output)
    assert shown["title"] == "pooling" and shown["tags"] == ["import", "db"]
    ops = json.loads(expect(cli("get", got["ids"][1], "--json"), 0).output)
    assert ops["namespace"] == "ops" and ops["entry_type"] == "runbook"


@pytest.mark.parametrize(
    ("line", "field", "says"),
    [
        ("not json", "line", "line 2: not valid JSON"),
        ("[1, 2]", "line", "line 2: expected a JSON object"),
        ('{"content": "x", "colour": "red"}', "line", "unknown field 'colour'"),
        ('{"content": "   "}', "content", "line 2: content must not be empty"),
        ('{"content": "x", "type": "memo"}', "entry_type", "line 2: unknown entry type"),
        ('{"content": "x", "tags": "db"}', "tags", "line 2: tags must be a list"),
        ('{"content": "x", "title": 5}', "line", "line 2: a field has the wrong type"),
    ],
)
def test_cli_add_many_refuses_a_bad_line_before_writing(
    home: Path, database_url: str, line: str, field: str, says: str
) -> None:
    cli = make_cli(home, database_url)
    expect(cli("init"), 0)
    text = json.dumps({"content": "a good line SECRETWORD"}) + "\n" + line + "\n"
    res = expect(cli("add-many", "-", input=text), 2)
    assert f"({field})" in res.output and says in res.output
    assert "SECRETWORD" not in res.output and "red" not in res.output
    assert json.loads(expect(cli("list", "--json"), 0).output) == []  # nothing written
