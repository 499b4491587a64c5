"""The service API (add/get/update/delete/list) in both modes, and what lands in SQL.

Every test runs against a real PostgreSQL (a fresh database per test). Checks on
stored rows go through psycopg directly, so they see what a DBA or a dump sees.
Sealed columns are discovered from the catalog (``*_sealed``), so these tests do
not depend on how the service spreads fields over sealed columns.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import psycopg
import pytest

from sealedkb.errors import ConflictError, NotFoundError, ValidationError
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import MAX_CONTENT_BYTES, EntryPatch, EntryType

# Every test runs over the Unix socket and through the TLS endpoint (verify-full).
pytestmark = pytest.mark.db_transports("socket", "tls")

TOKEN_RE = re.compile(r"^[0-9a-f]{20}$")
SEALED_OVERHEAD = 61  # 0x01 | key id | salt | nonce | ... | tag (docs/DESIGN.md §4)


# --- helpers ----------------------------------------------------------------


def sql(url: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def columns(url: str, suffix: str) -> list[str]:
    rows = sql(
        url,
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_name = 'kb_entries' AND column_name LIKE %s ORDER BY ordinal_position",
        (f"%\\_{suffix}",),
    )
    return [r[0] for r in rows]


def row_of(url: str, entry_id: uuid.UUID) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute("SELECT * FROM kb_entries WHERE id = %s", (entry_id,))
        values = cur.fetchone()
        assert values is not None, "row missing from kb_entries"
        assert cur.description is not None
        return {d.name: v for d, v in zip(cur.description, values, strict=True)}


def table_counts(url: str) -> tuple[int, int]:
    (r,) = sql(url, "SELECT (SELECT count(*) FROM kb_entries), (SELECT count(*) FROM kb_data_keys)")
    return int(r[0]), int(r[1])


def full_entry(kb: KnowledgeBase, **overrides: Any) -> Any:
    args: dict[str, Any] = {
        "content": "# Retry policy\n\nUse exponential backoff with jitter. ünïcødé ✓",
        "title": "Retry policy",
        "entry_type": "pattern",
        "tags": ["Backend", "resilience", "backend"],
        "namespace": "team-a",
        "source": "https://example.test/wiki/retry",
        "metadata": {"owner": "sre", "n": 3, "nested": {"ok": True, "list": [1, "two"]}},
        "verified": True,
    }
    args.update(overrides)
    return kb.add(args.pop("content"), **args)


@pytest.fixture
def url(any_kb: KnowledgeBase) -> str:
    return any_kb.db.url


# --- add / get ------------------------------------------------------------------


def test_add_get_all_fields(any_kb: KnowledgeBase) -> None:
    e = full_entry(any_kb)
    assert e.namespace == "team-a"
    assert e.title == "Retry policy"
    assert e.entry_type is EntryType.PATTERN
    assert e.tags == ("backend", "resilience")  # casefolded, de-duplicated, order kept
    assert e.version == 1
    assert e.archived is False and e.verified is True
    assert e.deleted_at is None
    got = any_kb.get(e.id)
    assert got == e
    assert got.content == "# Retry policy\n\nUse exponential backoff with jitter. ünïcødé ✓"
    assert got.source == "https://example.test/wiki/retry"
    assert got.metadata == {"owner": "sre", "n": 3, "nested": {"ok": True, "list": [1, "two"]}}
    # the id also parses from a string
    assert any_kb.get(str(e.id)) == e


def test_add_defaults(any_kb: KnowledgeBase) -> None:
    e = any_kb.add("## Heading line\nbody")
    got = any_kb.get(e.id)
    assert got.title == "Heading line"  # derived from the first line
    assert got.namespace == "default"
    assert got.entry_type is EntryType.NOTE
    assert got.tags == ()
    assert got.source is None
    assert got.metadata == {}
    assert got.verified is False and got.archived is False


def test_content_of_exactly_one_megabyte_is_accepted(any_kb: KnowledgeBase) -> None:
    content = "é" * (MAX_CONTENT_BYTES // 2)  # 2 bytes each: exactly 1 MiB
    assert len(content.encode()) == MAX_CONTENT_BYTES
    e = any_kb.add(content)
    assert any_kb.get(e.id).content == content


# --- update -------------------------------------------------------------------


def test_update_every_field(any_kb: KnowledgeBase) -> None:
    e = full_entry(any_kb)
    patch = EntryPatch(
        title="New title",
        content="new content",
        entry_type=EntryType.RUNBOOK,
        tags=("Ops", "oncall"),
        source="docs/runbook.md",
        metadata={"v": 2},
        verified=False,
        archived=True,
    )
    u = any_kb.update(e.id, patch)
    assert u.version == 2
    assert u.updated_at >= e.updated_at
    assert u.created_at == e.created_at
    got = any_kb.get(e.id)
    assert got == u
    assert (got.title, got.content, got.entry_type, got.tags) == (
        "New title",
        "new content",
        EntryType.RUNBOOK,
        ("ops", "oncall"),
    )
    assert (got.source, got.metadata, got.verified, got.archived) == (
        "docs/runbook.md",
        {"v": 2},
        False,
        True,
    )
    assert got.namespace == "team-a"


def test_update_partial_keeps_other_fields(any_kb: KnowledgeBase) -> None:
    e = full_entry(any_kb)
    u = any_kb.update(e.id, EntryPatch(archived=True))
    assert u.archived is True
    assert u.version == 2
    assert (u.title, u.content, u.tags, u.source, u.metadata, u.verified) == (
        e.title,
        e.content,
        e.tags,
        e.source,
        e.metadata,
        e.verified,
    )
    u2 = any_kb.update(e.id, EntryPatch(content="only content"))
    assert u2.content == "only content" and u2.title == e.title and u2.tags == e.tags
    # an empty source clears it
    u3 = any_kb.update(e.id, EntryPatch(source=""))
    assert u3.source is None
    assert any_kb.get(e.id).source is None


def test_update_with_expected_version(any_kb: KnowledgeBase, url: str) -> None:
    e = any_kb.add("v1 content")
    u = any_kb.update(e.id, EntryPatch(content="v2 content"), expected_version=1)
    assert u.version == 2
    before = row_of(url, e.id)
    with pytest.raises(ConflictError) as info:
        any_kb.update(e.id, EntryPatch(content="stale write"), expected_version=1)
    assert info.value.field == "expected_version"
    assert info.value.exit_code == 1
    assert "stale write" not in info.value.message
    assert row_of(url, e.id) == before  # nothing changed, not even updated_at
    got = any_kb.get(e.id)
    assert (got.content, got.version) == ("v2 content", 2)
    assert any_kb.update(e.id, EntryPatch(title="t"), expected_version=2).version == 3


def test_update_missing_or_deleted_is_not_found(any_kb: KnowledgeBase, url: str) -> None:
    with pytest.raises(NotFoundError) as info:
        any_kb.update(uuid.uuid4(), EntryPatch(title="x"))
    assert info.value.exit_code == 3
    e = any_kb.add("to be deleted")
    any_kb.delete(e.id)
    before = row_of(url, e.id)
    with pytest.raises(NotFoundError):
        any_kb.update(e.id, EntryPatch(title="resurrect"))
    with pytest.raises(NotFoundError):
        any_kb.update(e.id, EntryPatch(archived=False), expected_version=before["version"])
    assert row_of(url, e.id) == before


def test_update_with_nothing_to_change(any_kb: KnowledgeBase, url: str) -> None:
    e = any_kb.add("content")
    with pytest.raises(ValidationError) as info:
        any_kb.update(e.id, EntryPatch())
    assert info.value.field == "update"
    assert row_of(url, e.id)["version"] == 1


# --- delete -------------------------------------------------------------------


def test_delete_is_soft(any_kb: KnowledgeBase, url: str) -> None:
    keep = any_kb.add("keep me")
    gone = any_kb.add("delete me")
    any_kb.delete(gone.id)
    row = row_of(url, gone.id)
    assert row["deleted_at"] is not None
    assert row["version"] == 2
    with pytest.raises(NotFoundError):
        any_kb.get(gone.id)
    assert [e.id for e in any_kb.list()] == [keep.id]
    with pytest.raises(NotFoundError):
        any_kb.delete(gone.id)  # twice
    with pytest.raises(NotFoundError):
        any_kb.delete(uuid.uuid4())
    assert table_counts(url)[0] == 2
    assert any_kb.get(keep.id).content == "keep me"


# --- list ---------------------------------------------------------------------


def test_list_newest_first_with_limit_and_offset(any_kb: KnowledgeBase) -> None:
    ids = [any_kb.add(f"entry {i}").id for i in range(5)]
    newest_first = list(reversed(ids))
    assert [e.id for e in any_kb.list()] == newest_first
    assert [e.id for e in any_kb.list(limit=2)] == newest_first[:2]
    assert [e.id for e in any_kb.list(limit=2, offset=2)] == newest_first[2:4]
    assert [e.id for e in any_kb.list(limit=10, offset=4)] == newest_first[4:]
    assert any_kb.list(offset=5) == []
    # list hands back fully opened entries
    assert [e.content for e in any_kb.list(limit=1)] == ["entry 4"]


def test_list_filters(any_kb: KnowledgeBase) -> None:
    a1 = any_kb.add("a1", namespace="alpha", entry_type="doc", tags=["Red", "blue"])
    a2 = any_kb.add("a2", namespace="alpha", entry_type="note", tags=["red"])
    a3 = any_kb.add("a3", namespace="alpha", entry_type="doc", tags=["green"], verified=True)
    b1 = any_kb.add("b1", namespace="beta", entry_type="doc", tags=["red"])
    d1 = any_kb.add("d1")

    def ids(**kw: Any) -> set[uuid.UUID]:
        return {e.id for e in any_kb.list(**kw)}

    assert ids() == {a1.id, a2.id, a3.id, b1.id, d1.id}
    assert ids(namespace="alpha") == {a1.id, a2.id, a3.id}
    assert ids(namespace="beta") == {b1.id}
    assert ids(namespace="nobody") == set()
    assert ids(entry_type="doc") == {a1.id, a3.id, b1.id}
    assert ids(namespace="alpha", entry_type="doc") == {a1.id, a3.id}
    assert ids(namespace="alpha", tag="red") == {a1.id, a2.id}
    assert ids(namespace="alpha", tag="RED") == {a1.id, a2.id}  # tags compare casefolded
    assert ids(namespace="alpha", tag="blue", entry_type="doc") == {a1.id}
    assert ids(namespace="beta", tag="red") == {b1.id}
    assert ids(namespace="alpha", tag="absent") == set()
    # retagging moves the entry between tag filters
    any_kb.update(a2.id, EntryPatch(tags=("green",)))
    assert ids(namespace="alpha", tag="red") == {a1.id}
    assert ids(namespace="alpha", tag="green") == {a2.id, a3.id}
    # archived entries are listed by default
    any_kb.update(a3.id, EntryPatch(archived=True))
    assert a3.id in ids(namespace="alpha")
    if not any_kb.encrypted:
        assert ids(tag="red") == {a1.id, b1.id}


def test_tag_filter_needs_namespace_in_encrypted_mode(kb: KnowledgeBase) -> None:
    kb.add("x", tags=["red"])
    with pytest.raises(ValidationError) as info:
        kb.list(tag="red")
    assert info.value.field == "namespace"
    assert [e.content for e in kb.list(namespace="default", tag="red")] == ["x"]


def test_tag_filter_without_namespace_in_plaintext_mode(plain_kb: KnowledgeBase) -> None:
    plain_kb.add("x", tags=["red"], namespace="n1")
    plain_kb.add("y", tags=["red"], namespace="n2")
    assert {e.content for e in plain_kb.list(tag="red")} == {"x", "y"}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"offset": -1}, "offset"),
        ({"namespace": "A|b"}, "namespace"),
        ({"entry_type": "memo"}, "entry_type"),
        ({"namespace": "default", "tag": ""}, "tags"),
    ],
)
def test_list_rejects_bad_arguments(any_kb: KnowledgeBase, kwargs: Any, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        any_kb.list(**kwargs)
    assert info.value.field == field


# --- validation: right field, nothing written -----------------------------------

BAD_ADDS: list[tuple[str, dict[str, Any], str]] = [
    ("empty-content", {"content": ""}, "content"),
    ("whitespace-content", {"content": " \n\t  "}, "content"),
    ("content-1MB+1", {"content": "x" * (MAX_CONTENT_BYTES + 1)}, "content"),
    ("multibyte-content-over-1MB", {"content": "é" * (MAX_CONTENT_BYTES // 2) + "x"}, "content"),
    ("nul-in-content", {"content": "a\x00b"}, "content"),
    ("unknown-type", {"entry_type": "memo"}, "entry_type"),
    ("namespace-pipe", {"namespace": "A|b"}, "namespace"),
    ("namespace-empty", {"namespace": ""}, "namespace"),
    ("namespace-64-chars", {"namespace": "x" * 64}, "namespace"),
    ("namespace-upper", {"namespace": "Team"}, "namespace"),
    ("namespace-leading-dash", {"namespace": "-team"}, "namespace"),
    ("namespace-trailing-newline", {"namespace": "team\n"}, "namespace"),
    ("tag-empty", {"tags": ["ok", "  "]}, "tags"),
    ("tag-comma", {"tags": ["a,b"]}, "tags"),
    ("tag-pipe", {"tags": ["a|b"]}, "tags"),
    ("tag-control", {"tags": ["a\x01b"]}, "tags"),
    ("tag-too-long", {"tags": ["t" * 101]}, "tags"),
    ("too-many-tags", {"tags": [f"t{i}" for i in range(65)]}, "tags"),
    ("metadata-list", {"metadata": [1, 2]}, "metadata"),
    ("metadata-string", {"metadata": "{}"}, "metadata"),
    ("metadata-not-json", {"metadata": {"a": object()}}, "metadata"),
    ("metadata-nan", {"metadata": {"a": float("nan")}}, "metadata"),
    ("metadata-over-64KB", {"metadata": {"a": "x" * (64 * 1024)}}, "metadata"),
    ("title-too-long", {"title": "t" * 501}, "title"),
    ("source-too-long", {"source": "s" * 2049}, "source"),
    ("source-nul", {"source": "a\x00b"}, "source"),
]


@pytest.mark.parametrize(
    ("kwargs", "field"), [b[1:] for b in BAD_ADDS], ids=[b[0] for b in BAD_ADDS]
)
def test_invalid_add_writes_nothing(
    any_kb: KnowledgeBase, url: str, kwargs: dict[str, Any], field: str
) -> None:
    before = table_counts(url)
    args: dict[str, Any] = {"content": "valid content", "namespace": "fresh-ns", **kwargs}
    with pytest.raises(ValidationError) as info:
        any_kb.add(args.pop("content"), **args)
    assert info.value.field == field
    assert info.value.exit_code == 2
    assert table_counts(url) == before  # no entry, and no data key for "fresh-ns"


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "", "1234", "g" * 32])
def test_malformed_id(any_kb: KnowledgeBase, url: str, bad_id: str) -> None:
    any_kb.add("x")
    before = table_counts(url)
    for call in (
        lambda: any_kb.get(bad_id),
        lambda: any_kb.update(bad_id, EntryPatch(title="t")),
        lambda: any_kb.delete(bad_id),
    ):
        with pytest.raises(ValidationError) as info:
            call()
        assert info.value.field == "id"
    assert table_counts(url) == before


def test_invalid_update_changes_nothing(any_kb: KnowledgeBase, url: str) -> None:
    e = full_entry(any_kb)
    before = row_of(url, e.id)
    bad: list[tuple[EntryPatch, str]] = [
        (EntryPatch(content=""), "content"),
        (EntryPatch(content="   "), "content"),
        (EntryPatch(content="x" * (MAX_CONTENT_BYTES + 1)), "content"),
        (EntryPatch(entry_type="memo"), "entry_type"),  # type: ignore[arg-type]
        (EntryPatch(tags=("a|b",)), "tags"),
        (EntryPatch(metadata=[1]), "metadata"),  # type: ignore[arg-type]
        (EntryPatch(title="ok", content="fine", source="s" * 2049), "source"),
    ]
    for patch, field in bad:
        with pytest.raises(ValidationError) as info:
            any_kb.update(e.id, patch)
        assert info.value.field == field, patch
    assert row_of(url, e.id) == before
    assert table_counts(url)[0] == 1


# Text that is not valid UTF-8 (lone surrogates, e.g. from undecodable argv bytes)
# must be a validation error, not a raw UnicodeEncodeError.
KNOWN_BAD_INPUTS = [
    pytest.param(
        {"metadata": {"k": "\ud800"}},
        "metadata",
        id="metadata-lone-surrogate",
    ),
    pytest.param(
        {"tags": ["a\udcff"]},
        "tags",
        id="tag-lone-surrogate",
    ),
]


@pytest.mark.parametrize(("kwargs", "field"), KNOWN_BAD_INPUTS)
def test_known_bad_inputs_are_validation_errors(
    any_kb: KnowledgeBase, url: str, kwargs: dict[str, Any], field: str
) -> None:
    before = table_counts(url)
    with pytest.raises(ValidationError) as info:
        any_kb.add("valid content", **kwargs)
    assert info.value.field == field
    assert table_counts(url) == before


def test_metadata_with_nul_character_is_refused_in_both_modes(any_kb: KnowledgeBase) -> None:
    # PostgreSQL jsonb (plaintext mode) cannot hold \u0000, so both modes refuse it.
    url = any_kb.db.url
    before = table_counts(url)
    with pytest.raises(ValidationError) as info:
        any_kb.add("content", metadata={"k": "a\x00b"})
    assert info.value.field == "metadata"
    assert table_counts(url) == before


# --- what PostgreSQL holds -------------------------------------------------------


def test_encrypted_rows_hold_only_ciphertext_and_tokens(kb: KnowledgeBase) -> None:
    url = kb.db.url
    marker = "Zebra" + uuid.uuid4().hex[:10]
    e = kb.add(
        f"content {marker}",
        title=f"title {marker}",
        tags=[f"Tag{marker}", "plain"],
        source=f"https://{marker}.test/",
        metadata={marker: marker},
        namespace="secret-ns",
    )
    kb.update(e.id, EntryPatch(content=f"updated {marker}"))
    row = row_of(url, e.id)
    plain_cols = columns(url, "plain")
    sealed_cols = columns(url, "sealed")
    assert plain_cols and sealed_cols
    for col in plain_cols:
        assert row[col] is None, col
    for col in sealed_cols:
        blob = bytes(row[col])
        assert blob[0] == 0x01, col
        assert (len(blob) - SEALED_OVERHEAD) % 64 == 0, col  # padded to 64-byte buckets
        assert len(blob) >= SEALED_OVERHEAD + 64
    tokens = row["tag_tokens"]
    assert len(tokens) == 2
    for token, tag in zip(tokens, [f"tag{marker}".lower(), "plain"], strict=True):
        assert TOKEN_RE.match(token), token
        assert token != tag and tag not in token
    # the marker is nowhere in the row, whatever its case
    text = repr(row).lower() + b"".join(bytes(row[c]) for c in sealed_cols).hex()
    assert marker.lower() not in text
    assert marker.lower().encode().hex() not in text
    # identical tags give identical tokens within a namespace, different ones across them
    e2 = kb.add("other", tags=["plain"], namespace="secret-ns")
    e3 = kb.add("other", tags=["plain"], namespace="other-ns")
    assert row_of(url, e2.id)["tag_tokens"] == [tokens[1]]
    assert row_of(url, e3.id)["tag_tokens"] != [tokens[1]]


def test_encrypted_mode_data_keys_per_namespace(kb: KnowledgeBase) -> None:
    url = kb.db.url
    keys = sql(url, "SELECT namespace, purpose, active, wrapped FROM kb_data_keys")
    assert {(r[0], r[1]) for r in keys} == {("default", "content"), ("default", "index")}
    kb.add("x", namespace="ns1", tags=["t"])
    kb.add("y", namespace="ns1", tags=["t"])
    rows = sql(
        url,
        "SELECT purpose, count(*) FILTER (WHERE active), count(*) FROM kb_data_keys"
        " WHERE namespace = 'ns1' GROUP BY purpose ORDER BY purpose",
    )
    # the vector key (DCPE rotation) comes with the first embedded entry
    assert rows == [("content", 1, 1), ("index", 1, 1), ("vector", 1, 1)]
    for r in keys:
        assert len(bytes(r[3])) > 32  # wrapped, not a bare 256-bit key


def test_plaintext_rows_hold_the_text(plain_kb: KnowledgeBase) -> None:
    url = plain_kb.db.url
    e = full_entry(plain_kb)
    row = row_of(url, e.id)
    assert row["content_plain"] == e.content
    assert row["title_plain"] == "Retry policy"
    assert row["source_plain"] == "https://example.test/wiki/retry"
    assert row["metadata_plain"] == e.metadata
    assert row["tags_plain"] == ["backend", "resilience"]
    assert row["tag_tokens"] == []
    for col in columns(url, "sealed"):
        assert row[col] is None, col


def test_status_counts(any_kb: KnowledgeBase) -> None:
    any_kb.add("a")
    any_kb.add("b", namespace="other")
    gone = any_kb.add("c")
    any_kb.delete(gone.id)
    st = any_kb.status()
    assert st["entries_total"] == 2
    assert st["namespaces"] == 2
    assert st["encryption_mode"] == ("on" if any_kb.encrypted else "off")
    assert st["storage_encrypted"] is any_kb.encrypted
    assert st["availability"] == "available"
    if any_kb.encrypted:
        assert st["entries_plaintext"] == 0
        assert str(st["kms_key_id"]).startswith("local:key/")
        assert st["key_state"] == "Enabled"
    else:
        assert st["kms_key_id"] is None
        assert any("plaintext" in w for w in st["warnings"])
