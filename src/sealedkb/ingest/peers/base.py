"""What the peer readers share: the item a reader yields, the problems it reports,
the summary of an import, and :func:`import_items` (docs/DESIGN.md §2: every
entry goes through ``model.new_entry`` and ``add_many``)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sealedkb.errors import SealedKBError, ValidationError
from sealedkb.model import (
    DEFAULT_NAMESPACE,
    MAX_ADD_BATCH,
    Entry,
    EntryPatch,
    EntryType,
    NewEntry,
    new_entry,
    validate_namespace,
)

FORMATS = ("mcp-memory-service", "basic-memory", "jsonl")
IMPORTED_KEY = "imported"  # the metadata key of an imported item's bookkeeping
LIST_PAGE = 1000  # KnowledgeBase.list's largest page
ENTRY_TYPES = frozenset(t.value for t in EntryType)


class EntrySink(Protocol):
    """What an import needs of the knowledge base (``KnowledgeBase`` is one)."""

    def add_many(self, entries: Sequence[NewEntry], *, force: bool = False) -> list[Entry]: ...

    def update(
        self,
        entry_id: str | uuid.UUID,
        patch: EntryPatch,
        *,
        expected_version: int | None = None,
        namespaces: Collection[str] | None = None,
    ) -> Entry: ...

    def list(
        self,
        *,
        namespace: str | None = None,
        entry_type: str | None = None,
        tag: str | None = None,
        limit: int = 50,
        offset: int = 0,
        include_archived: bool = True,
        namespaces: list[str] | None = None,
    ) -> list[Entry]: ...


@dataclass(frozen=True, slots=True)
class PeerItem:
    """One item of a peer's storage, mapped to sealedkb's fields but not yet
    validated. ``label`` names it in a summary (file and item, never content)."""

    key: str
    label: str
    content: Any
    title: str | None = None
    entry_type: str = "note"
    tags: tuple[str, ...] = ()
    source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    namespace: str | None = None
    verified: bool = False
    archived: bool = False


@dataclass(frozen=True, slots=True)
class ItemProblem:
    """An item that was not imported, and why (a reason without content)."""

    label: str
    reason: str
    code: str = "VALIDATION_ERROR"

    def to_dict(self) -> dict[str, str]:
        return {"item": self.label, "reason": self.reason, "code": self.code}


@dataclass(frozen=True, slots=True)
class PeerRead:
    """What a reader found: items to import and items it could not read."""

    format: str
    items: tuple[PeerItem, ...]
    failed: tuple[ItemProblem, ...] = ()
    skipped: tuple[ItemProblem, ...] = ()


@dataclass
class PeerImportSummary:
    format: str
    items: int = 0
    added: int = 0
    skipped: list[ItemProblem] = field(default_factory=list)
    failed: list[ItemProblem] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "items": self.items,
            "added": self.added,
            "skipped": [p.to_dict() for p in self.skipped],
            "failed": [p.to_dict() for p in self.failed],
        }


def mapped_type(value: Any) -> str:
    """A peer's type as a sealedkb entry type (``note`` when it has no such type)."""
    text = str(value).strip().casefold() if value is not None else ""
    return text if text in ENTRY_TYPES else EntryType.NOTE.value


def bookkeeping(
    fmt: str,
    key: str,
    metadata: dict[str, Any],
    *,
    created_at: str | None,
    updated_at: str | None,
    peer_type: Any = None,
) -> tuple[str, dict[str, Any]]:
    """The item's stable key and its metadata with the ``imported`` record. An item
    that already carries a record (an export of an earlier import, read back) keeps
    it, so its key stays the one it was first imported under."""
    prior = metadata.get(IMPORTED_KEY)
    if isinstance(prior, dict) and isinstance(prior.get("key"), str) and prior["key"]:
        return prior["key"], metadata
    record: dict[str, Any] = {"from": fmt, "key": key}
    if created_at is not None:
        record["created_at"] = created_at
    if updated_at is not None:
        record["updated_at"] = updated_at
    if peer_type is not None and str(peer_type) != "":
        record["type"] = str(peer_type)
    return key, {**metadata, IMPORTED_KEY: record}


def _key_of(entry: Entry) -> str | None:
    record = entry.metadata.get(IMPORTED_KEY)
    if isinstance(record, dict) and isinstance(record.get("key"), str):
        return str(record["key"])
    return None


def existing_keys(sink: EntrySink, namespace: str) -> set[str]:
    """The source keys of every entry already in ``namespace``."""
    keys: set[str] = set()
    offset = 0
    while True:
        page = sink.list(namespace=namespace, limit=LIST_PAGE, offset=offset)
        keys.update(k for k in map(_key_of, page) if k is not None)
        if len(page) < LIST_PAGE:
            return keys
        offset += LIST_PAGE


def _archive(sink: EntrySink, entry: Entry, item: PeerItem, summary: PeerImportSummary) -> None:
    """Archive an added entry that was archived at its source (a second, small
    transaction: if it fails the entry stays, live, and the item says so)."""
    try:
        sink.update(entry.id, EntryPatch(archived=True), expected_version=entry.version)
    except SealedKBError as exc:
        reason = f"added, but not archived as at its source: {exc.message}"
        summary.failed.append(ItemProblem(item.label, reason, exc.code))


def import_items(
    sink: EntrySink,
    read: PeerRead,
    *,
    namespace: str = DEFAULT_NAMESPACE,
    tags: Sequence[str] = (),
    batch: int = 100,
    progress: Callable[[int, int], None] | None = None,
) -> PeerImportSummary:
    """Add the items of ``read`` (skipping keys already imported and duplicate
    content), ``batch`` entries a transaction. An item is validated whole before
    anything of it is written; a batch the database refuses is reported item by
    item and never half written (``add_many`` is all or none)."""
    validate_namespace(namespace)
    if not 1 <= batch <= MAX_ADD_BATCH:
        raise ValidationError(f"a batch holds 1 to {MAX_ADD_BATCH} entries", field="batch")
    total = len(read.items) + len(read.failed) + len(read.skipped)
    summary = PeerImportSummary(read.format, items=total)
    summary.failed.extend(read.failed)
    summary.skipped.extend(read.skipped)
    known: dict[str, set[str]] = {}
    pending: list[tuple[PeerItem, NewEntry]] = []
    for item in read.items:
        ns = item.namespace or namespace
        try:
            new = new_entry(
                item.content,
                title=item.title,
                entry_type=item.entry_type,
                tags=[*tags, *item.tags],
                namespace=ns,
                source=item.source,
                metadata=item.metadata,
                verified=item.verified,
            )
        except ValidationError as exc:
            summary.failed.append(ItemProblem(item.label, exc.message))
            continue
        except (TypeError, AttributeError):
            summary.failed.append(ItemProblem(item.label, "a field has the wrong type"))
            continue
        if ns not in known:
            known[ns] = existing_keys(sink, ns)
        if item.key in known[ns]:
            summary.skipped.append(ItemProblem(item.label, "already imported", "DUPLICATE"))
            continue
        known[ns].add(item.key)
        pending.append((item, new))
    done = 0
    for start in range(0, len(pending), batch):
        chunk = pending[start : start + batch]
        try:
            added = sink.add_many([n for _, n in chunk])
        except SealedKBError as exc:
            for item, _ in chunk:
                summary.failed.append(ItemProblem(item.label, exc.message, exc.code))
        else:
            for (item, _), entry in zip(chunk, added, strict=True):
                if _key_of(entry) == item.key:
                    summary.added += 1
                    if item.archived and not entry.archived:
                        _archive(sink, entry, item, summary)
                else:
                    reason = "identical content already in the namespace"
                    summary.skipped.append(ItemProblem(item.label, reason, "DUPLICATE"))
        done += len(chunk)
        if progress is not None:
            progress(done, len(pending))
    return summary
