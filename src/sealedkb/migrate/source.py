"""Where ``sealedkb migrate`` reads from, and how a source row becomes an entry.

A *foreign* source is a table of another knowledge-base server, read through a
read-only connection with a column mapping ``FIELD=COLUMN,...``. Fields:

==========  ========================================  ==========
field       column types accepted                     required
==========  ========================================  ==========
id          uuid, integer, bigint, text, varchar      yes (unique)
content     text, varchar                             yes
title       text, varchar                             no (derived)
entry_type  text, varchar                             no (``--type``)
tags        text[], varchar[]                         no
source      text, varchar                             no
metadata    jsonb, json                               no
embedding   vector(N), N = the model's dimension      no (re-embed)
created_at  timestamptz, timestamp                    no
updated_at  timestamptz, timestamp                    no
namespace   text, varchar                             no (``--namespace``)
==========  ========================================  ==========

Without ``--map``, every field whose name is a column of the table is mapped to
it. A mapping is checked against the catalog before anything is written:
unknown field, missing column, wrong type, a vector of the wrong dimension, an
id column without a unique index are refused (ValidationError, field ``map``).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sealedkb.errors import ValidationError
from sealedkb.model import DEFAULT_NAMESPACE, EntryType, new_entry
from sealedkb.store.migration_sql import ColumnInfo

FIELDS = (
    "id",
    "content",
    "title",
    "entry_type",
    "tags",
    "source",
    "metadata",
    "embedding",
    "created_at",
    "updated_at",
    "namespace",
)
_TEXT = ("text", "character varying")
_ACCEPTS: dict[str, tuple[str, ...]] = {
    "id": ("uuid", "integer", "bigint", "smallint", *_TEXT),
    "content": _TEXT,
    "title": _TEXT,
    "entry_type": _TEXT,
    "tags": ("text[]", "character varying[]"),
    "source": _TEXT,
    "metadata": ("jsonb", "json"),
    "embedding": ("vector",),
    "created_at": ("timestamp with time zone", "timestamp without time zone"),
    "updated_at": ("timestamp with time zone", "timestamp without time zone"),
    "namespace": _TEXT,
}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")
# Stable namespace for ids of migrated rows: uuid5(this, "<source id>:<key>").
ID_NAMESPACE = uuid.UUID("6f0b5a52-3c1e-5b8e-9d0e-5ea1edb0c0de")


def _base_type(pg_type: str) -> str:
    """'character varying(200)' -> 'character varying'; 'vector(1536)' -> 'vector';
    'character varying(20)[]' -> 'character varying[]'."""
    t = re.sub(r"\(\d+(,\d+)?\)", "", pg_type)
    return t.strip()


def _vector_dim(pg_type: str) -> int | None:
    m = re.fullmatch(r"vector\((\d+)\)", pg_type)
    return int(m.group(1)) if m else None


def parse_map(text: str | None) -> dict[str, str] | None:
    """``content=body,tags=labels`` -> {"content": "body", "tags": "labels"}."""
    if text is None or not text.strip():
        return None
    out: dict[str, str] = {}
    for part in text.split(","):
        name, sep, column = part.strip().partition("=")
        name, column = name.strip(), column.strip()
        if not sep or not name or not column:
            raise ValidationError(
                f"--map takes FIELD=COLUMN pairs separated by commas; '{part.strip()[:60]}' "
                "is not one",
                field="map",
            )
        if name not in FIELDS:
            raise ValidationError(
                f"--map: unknown field '{name[:40]}' (fields: {', '.join(FIELDS)})", field="map"
            )
        if not _IDENT.fullmatch(column):
            raise ValidationError(f"--map: '{column[:60]}' is not a plain column name", field="map")
        if name in out:
            raise ValidationError(f"--map: field '{name}' is mapped twice", field="map")
        out[name] = column
    return out


def parse_table(text: str) -> tuple[str, str]:
    """``T`` or ``SCHEMA.T`` -> (schema, table)."""
    schema, sep, table = text.strip().rpartition(".")
    schema = schema if sep else "public"
    for part in (schema, table):
        if not _IDENT.fullmatch(part):
            raise ValidationError(
                "--table must be a plain table name (or schema.table)", field="table"
            )
    return schema, table


@dataclass(frozen=True)
class ForeignMapping:
    """A checked mapping of one foreign table."""

    schema: str
    table: str
    columns: dict[str, str]  # field -> column
    key_type: str  # id column type (uuid, integer, text ...)
    vector_dim: int | None

    @property
    def key_is_text(self) -> bool:
        return self.key_type in _TEXT

    def read_columns(self) -> list[str]:
        """Mapped columns besides the key, in FIELDS order."""
        return [self.columns[f] for f in FIELDS if f != "id" and f in self.columns]

    def read_fields(self) -> list[str]:
        return [f for f in FIELDS if f != "id" and f in self.columns]


def check_mapping(
    schema: str,
    table: str,
    columns: Sequence[ColumnInfo],
    unique: set[str],
    wanted: Mapping[str, str] | None,
    model_dim: int | None,
) -> ForeignMapping:
    """Refuse a mapping that does not fit the table, before anything is written."""
    if not columns:
        raise ValidationError(f"--table: no table {schema}.{table} in the source", field="table")
    by_name = {c.name: c for c in columns}
    if wanted is None:
        mapping = {f: f for f in FIELDS if f in by_name}
    else:
        mapping = dict(wanted)
        for f in ("id", "content"):
            if f not in mapping and f in by_name:
                mapping[f] = f
    problems: list[str] = []
    for f in ("id", "content"):
        if f not in mapping:
            problems.append(f"field '{f}' is not mapped and the table has no column '{f}'")
    vector_dim = None
    for f, col in mapping.items():
        info = by_name.get(col)
        if info is None:
            problems.append(f"{f}={col}: the table has no column '{col}'")
            continue
        base = _base_type(info.type)
        if base not in _ACCEPTS[f]:
            problems.append(
                f"{f}={col}: column type {info.type} does not fit (expected "
                f"{' or '.join(_ACCEPTS[f])})"
            )
            continue
        if f == "embedding":
            vector_dim = _vector_dim(info.type)
            if model_dim is not None and vector_dim != model_dim:
                problems.append(
                    f"embedding={col}: vectors of {vector_dim or 'unspecified'} dimensions, but "
                    f"this knowledge base's embedding model makes {model_dim}; leave embedding "
                    "out of --map to re-embed the content"
                )
        if f == "id" and col not in unique:
            problems.append(
                f"id={col}: the column has no primary key or unique index, so rows cannot be "
                "told apart (resuming and verifying need a unique key)"
            )
    if problems:
        raise ValidationError("bad --map: " + "; ".join(problems), field="map")
    key_type = _base_type(by_name[mapping["id"]].type)
    return ForeignMapping(schema, table, mapping, key_type, vector_dim)


def migrated_id(source_id: str, key: Any) -> uuid.UUID:
    """Deterministic entry id of a foreign row: a rerun finds the rows it wrote."""
    return uuid.uuid5(ID_NAMESPACE, f"{source_id}:{key}")


def key_to_json(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def key_from_json(value: Any, key_type: str) -> Any:
    if value is None:
        return None
    if key_type == "uuid":
        return uuid.UUID(str(value))
    if key_type in ("integer", "bigint", "smallint"):
        return int(value)
    return str(value)


@dataclass
class SourceEntry:
    """A source row as an entry to seal (validated like any other input)."""

    key: Any
    namespace: str
    entry_type: str
    title: str
    content: str
    tags: tuple[str, ...]
    source: str | None
    metadata: dict[str, Any]
    created_at: datetime | None = None
    updated_at: datetime | None = None
    vector: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def foreign_entry(
    mapping: ForeignMapping,
    row: Sequence[Any],
    *,
    default_namespace: str = DEFAULT_NAMESPACE,
    default_type: EntryType = EntryType.NOTE,
) -> SourceEntry:
    """Map one source row (key first, then ``mapping.read_columns()``); a row that does
    not validate raises ValidationError naming its key (keys are not secret; values
    are never quoted)."""
    key = row[0]
    values = dict(zip(mapping.read_fields(), row[1:], strict=True))
    try:
        metadata = values.get("metadata")
        if isinstance(metadata, str):
            metadata = json.loads(metadata)
        new = new_entry(  # the validation every add goes through
            values.get("content") or "",
            title=values.get("title"),
            entry_type=values.get("entry_type") or default_type,
            tags=list(values.get("tags") or []),
            namespace=values.get("namespace") or default_namespace,
            source=values.get("source"),
            metadata=metadata,
        )
        return SourceEntry(
            key=key,
            namespace=new.namespace,
            entry_type=new.entry_type.value,
            title=new.title,
            content=new.content,
            tags=new.tags,
            source=new.source,
            metadata=new.metadata,
            created_at=_aware(values.get("created_at")),
            updated_at=_aware(values.get("updated_at")),
            vector=values.get("embedding"),
        )
    except ValidationError as exc:
        raise ValidationError(
            f"source row {str(key_to_json(key))[:80]}: {exc.message}", field=exc.field
        ) from None
    except (ValueError, TypeError):
        raise ValidationError(
            f"source row {str(key_to_json(key))[:80]}: metadata is not a JSON object",
            field="metadata",
        ) from None


def digest_fields(
    *,
    namespace: str,
    entry_type: str,
    title: str,
    content: str,
    source: str | None,
    metadata: Mapping[str, Any],
    tags: Sequence[str],
    **facts: Any,
) -> bytes:
    """Canonical bytes of an entry's content and the facts a migration keeps, for the
    keyed per-row digest that ``migrate verify`` compares (source vs opened entry)."""
    doc: dict[str, Any] = {
        "namespace": namespace,
        "entry_type": entry_type,
        "title": title,
        "content": content,
        "source": source,
        "metadata": dict(metadata),
        "tags": list(tags),
    }
    for k, v in facts.items():
        doc[k] = v.astimezone(UTC).isoformat() if isinstance(v, datetime) else v
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
