"""mcp-memory-service's SQLite-vec database (``sqlite_vec.db``), read-only.

The schema is the one its SQLite-vec storage creates, read from
doobidoo/mcp-memory-service, src/mcp_memory_service/storage/sqlite_vec.py at
commit 20e133e4689b048b67dbcda193acd98695f49ac5 (``initialize``)::

    memories(id INTEGER PRIMARY KEY AUTOINCREMENT, content_hash TEXT UNIQUE NOT NULL,
             content TEXT NOT NULL, tags TEXT, memory_type TEXT, metadata TEXT,
             created_at REAL, updated_at REAL, created_at_iso TEXT, updated_at_iso TEXT)

``tags`` is a comma-separated list, ``metadata`` a JSON object, the times Unix
seconds (and ISO 8601 beside them). Later versions add ``deleted_at REAL`` (a
soft delete): such rows are skipped. The embeddings (``memory_embeddings``, a
vec0 table) are not read: sealedkb embeds the content itself.

Mapping: content -> content, tags -> tags, memory_type -> entry type (a sealedkb
type as is, any other kept in ``metadata.imported.type``), metadata -> metadata
(a ``title`` in it -> title), times -> ``metadata.imported``, and the item's
key and source are ``mcp-memory-service:<content_hash>``.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sealedkb.errors import ValidationError
from sealedkb.ingest.peers.base import ItemProblem, PeerItem, PeerRead, bookkeeping, mapped_type

FORMAT = "mcp-memory-service"
REQUIRED = frozenset(
    {"content_hash", "content", "tags", "memory_type", "metadata", "created_at", "updated_at"}
)
SQLITE_MAGIC = b"SQLite format 3\x00"


def _iso(epoch: Any, iso: Any) -> str | None:
    if isinstance(iso, str) and iso.strip():
        return iso.strip()
    if isinstance(epoch, int | float):
        try:
            return datetime.fromtimestamp(float(epoch), UTC).isoformat()
        except (OverflowError, OSError, ValueError):
            return None
    return None


def _tags(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if not isinstance(value, str):
        raise ValueError("tags are not text")
    text = value.strip()
    if text.startswith("["):  # some versions stored a JSON list
        parsed = json.loads(text)
        if not isinstance(parsed, list) or not all(isinstance(t, str) for t in parsed):
            raise ValueError("tags are not a list of text")
        return tuple(t for t in parsed if t.strip())
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _connect(path: Path) -> sqlite3.Connection:
    name = path.name
    try:
        with path.open("rb") as fh:
            magic = fh.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        raise ValidationError(f"{name}: file not found", field="path") from None
    except OSError as exc:
        raise ValidationError(f"{name}: cannot read ({type(exc).__name__})", field="path") from None
    if magic != SQLITE_MAGIC:
        raise ValidationError(f"{name}: not an SQLite database", field="path")
    try:
        return sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        raise ValidationError(f"{name}: cannot open the SQLite database", field="path") from None


def read(path: Path) -> PeerRead:
    """Every live memory of the database at ``path``."""
    name = path.name
    conn = _connect(path)
    try:
        try:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(memories)")}
        except sqlite3.OperationalError:
            raise ValidationError(
                f"{name}: cannot read the SQLite database (locked, or its -wal/-shm files "
                "unreadable: stop mcp-memory-service first)",
                field="path",
            ) from None
        except sqlite3.DatabaseError:
            raise ValidationError(f"{name}: not an SQLite database", field="path") from None
        if not columns:
            raise ValidationError(
                f"{name}: wrong schema: no table 'memories' (not an mcp-memory-service database)",
                field="path",
            )
        missing = sorted(REQUIRED - columns)
        if missing:
            raise ValidationError(
                f"{name}: wrong schema: table 'memories' has no column {missing[0]!r}",
                field="path",
            )
        wanted = ["id", *sorted(REQUIRED)]
        wanted += [c for c in ("created_at_iso", "updated_at_iso", "deleted_at") if c in columns]
        try:
            rows = conn.execute(f"SELECT {', '.join(wanted)} FROM memories ORDER BY id").fetchall()
        except sqlite3.DatabaseError:
            raise ValidationError(f"{name}: cannot read table 'memories'", field="path") from None
    finally:
        conn.close()
    items: list[PeerItem] = []
    failed: list[ItemProblem] = []
    skipped: list[ItemProblem] = []
    for values in rows:
        row = dict(zip(wanted, values, strict=True))
        label = f"{name}: memory id {row['id']}"
        if row.get("deleted_at") is not None:
            skipped.append(ItemProblem(label, "deleted in the source", "DELETED"))
            continue
        content_hash = row["content_hash"]
        if not isinstance(content_hash, str) or not content_hash:
            failed.append(ItemProblem(label, "content_hash is empty"))
            continue
        try:
            tags = _tags(row["tags"])
        except ValueError as exc:
            failed.append(ItemProblem(label, f"malformed tags: {exc}"))
            continue
        raw_meta = row["metadata"]
        try:
            meta = json.loads(raw_meta) if raw_meta not in (None, "") else {}
        except (TypeError, ValueError):
            failed.append(ItemProblem(label, "metadata is not valid JSON"))
            continue
        if not isinstance(meta, dict):
            failed.append(ItemProblem(label, "metadata is not a JSON object"))
            continue
        title = meta.get("title") if isinstance(meta.get("title"), str) else None
        key, metadata = bookkeeping(
            FORMAT,
            f"{FORMAT}:{content_hash}",
            meta,
            created_at=_iso(row["created_at"], row.get("created_at_iso")),
            updated_at=_iso(row["updated_at"], row.get("updated_at_iso")),
            peer_type=row["memory_type"],
        )
        items.append(
            PeerItem(
                key=key,
                label=label,
                content=row["content"],
                title=title,
                entry_type=mapped_type(row["memory_type"]),
                tags=tags,
                source=f"{FORMAT}:{content_hash}",
                metadata=metadata,
            )
        )
    return PeerRead(FORMAT, tuple(items), tuple(failed), tuple(skipped))
