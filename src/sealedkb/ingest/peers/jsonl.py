"""sealedkb's own JSON Lines export (``sealedkb export --format jsonl``), read back.

One JSON object a line, the fields of :func:`sealedkb.ingest.export.entry_line`:
``id``, ``namespace``, ``title``, ``content``, ``type``, ``tags``, ``source``,
``metadata``, ``verified``, ``archived``, ``created_at``, ``updated_at``. Only
``content`` is required. The key of a line is ``jsonl:<id>`` (without an id,
``jsonl:sha256:<hash of the content>``), unless its metadata already carries
the ``imported`` record of an earlier import, which it keeps. A line's
``namespace`` is honoured, as in ``add-many``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sealedkb.errors import ValidationError
from sealedkb.ingest.peers.base import ItemProblem, PeerItem, PeerRead, bookkeeping, mapped_type

FORMAT = "jsonl"
FIELDS = frozenset(
    {
        "id",
        "namespace",
        "title",
        "content",
        "type",
        "tags",
        "source",
        "metadata",
        "verified",
        "archived",
        "created_at",
        "updated_at",
    }
)
MAX_FILE_BYTES = 512 * 1024 * 1024


def _line(obj: Any, label: str) -> PeerItem:
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    unknown = sorted(set(obj) - FIELDS)
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}")
    content = obj.get("content")
    if not isinstance(content, str):
        raise ValueError("content must be text")
    tags = obj.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ValueError("tags must be a list of text")
    meta = obj.get("metadata") or {}
    if not isinstance(meta, dict):
        raise ValueError("metadata must be a JSON object")
    for name in ("id", "title", "source", "namespace", "created_at", "updated_at"):
        if obj.get(name) is not None and not isinstance(obj[name], str):
            raise ValueError(f"{name} must be text")
    ident = obj.get("id")
    own = (
        f"{FORMAT}:{ident}"
        if ident
        else f"{FORMAT}:sha256:"
        + hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest()
    )
    key, metadata = bookkeeping(
        FORMAT,
        own,
        meta,
        created_at=obj.get("created_at"),
        updated_at=obj.get("updated_at"),
        peer_type=None,
    )
    raw_type = obj.get("type", "note")
    if mapped_type(raw_type) != str(raw_type).strip().casefold():
        raise ValueError("unknown entry type")
    return PeerItem(
        key=key,
        label=label,
        content=content,
        title=obj.get("title"),
        entry_type=str(raw_type),
        tags=tuple(tags),
        source=obj.get("source"),
        metadata=metadata,
        namespace=obj.get("namespace"),
        verified=obj.get("verified") is True,
        archived=obj.get("archived") is True,
    )


def read(path: Path) -> PeerRead:
    """Every line of the file at ``path``; a bad line is reported by its number."""
    name = path.name
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ValidationError(f"{name}: larger than {MAX_FILE_BYTES} bytes", field="path")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValidationError(f"{name}: file not found", field="path") from None
    except UnicodeDecodeError:
        raise ValidationError(f"{name}: not UTF-8 text", field="path") from None
    except OSError as exc:
        raise ValidationError(f"{name}: cannot read ({type(exc).__name__})", field="path") from None
    items: list[PeerItem] = []
    failed: list[ItemProblem] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        label = f"{name}: line {n}"
        try:
            obj = json.loads(line)
        except ValueError:
            failed.append(ItemProblem(label, "not valid JSON"))
            continue
        try:
            items.append(_line(obj, label))
        except ValueError as exc:
            failed.append(ItemProblem(label, str(exc)))
    if not items and not failed:
        raise ValidationError(f"{name}: no entries in the file", field="path")
    return PeerRead(FORMAT, tuple(items), tuple(failed))
