"""Plain types of the knowledge base (no I/O, no crypto)."""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sealedkb.errors import ValidationError

MAX_CONTENT_BYTES = 1024 * 1024
MAX_TITLE_CHARS = 500
MAX_SOURCE_CHARS = 2048
MAX_TAGS = 64
MAX_TAG_CHARS = 100
MAX_METADATA_BYTES = 64 * 1024
MAX_ADD_BATCH = 500  # add_many: one transaction, results held until it ends
DEFAULT_NAMESPACE = "default"

# Namespaces go into AAD strings joined with "|", so the alphabet excludes it.
_NAMESPACE_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_TAG_RE = re.compile(r"[^\s,|][^\x00-\x1f,|]*")


class EntryType(StrEnum):
    NOTE = "note"
    DOC = "doc"
    DECISION = "decision"
    PATTERN = "pattern"
    RUNBOOK = "runbook"
    LESSON = "lesson"
    CONSTRAINT = "constraint"


class EncryptionMode(StrEnum):
    ON = "on"
    OFF = "off"


class SearchMode(StrEnum):
    HYBRID = "hybrid"
    SEMANTIC = "semantic"
    KEYWORD = "keyword"


@dataclass(frozen=True, slots=True)
class Entry:
    id: uuid.UUID
    namespace: str
    title: str
    content: str
    entry_type: EntryType
    tags: tuple[str, ...]
    source: str | None
    metadata: dict[str, Any]
    verified: bool
    archived: bool
    created_at: datetime
    updated_at: datetime
    version: int
    deleted_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "namespace": self.namespace,
            "title": self.title,
            "content": self.content,
            "entry_type": self.entry_type.value,
            "tags": list(self.tags),
            "source": self.source,
            "metadata": self.metadata,
            "verified": self.verified,
            "archived": self.archived,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "version": self.version,
            "deleted_at": self.deleted_at.isoformat() if self.deleted_at else None,
        }


@dataclass(frozen=True, slots=True)
class NewEntry:
    """Validated input for an add."""

    namespace: str
    title: str
    content: str
    entry_type: EntryType = EntryType.NOTE
    tags: tuple[str, ...] = ()
    source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    verified: bool = False


@dataclass(frozen=True, slots=True)
class EntryPatch:
    """Fields to change in an update; None means unchanged."""

    title: str | None = None
    content: str | None = None
    entry_type: EntryType | str | None = None  # validated by the service
    tags: tuple[str, ...] | None = None
    source: str | None = None
    metadata: dict[str, Any] | None = None
    verified: bool | None = None
    archived: bool | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, f) is None for f in self.__slots__)


# --- validation -------------------------------------------------------------


def validate_namespace(value: str) -> str:
    if not isinstance(value, str) or not _NAMESPACE_RE.fullmatch(value):
        raise ValidationError(
            "namespace must be 1-63 characters of a-z, 0-9, '_', '.', '-' "
            "starting with a letter or digit",
            field="namespace",
        )
    return value


def validate_entry_type(value: str | EntryType) -> EntryType:
    try:
        return EntryType(value)
    except ValueError:
        allowed = ", ".join(t.value for t in EntryType)
        raise ValidationError(
            f"unknown entry type; expected one of: {allowed}", field="entry_type"
        ) from None


def validate_content(value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("content must not be empty", field="content")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_CONTENT_BYTES:
        raise ValidationError("content is larger than 1 MB (1048576 bytes)", field="content")
    _check_encodable(value, "content")
    return value


def validate_title(value: str) -> str:
    value = value.strip()
    if len(value) > MAX_TITLE_CHARS:
        raise ValidationError(f"title is longer than {MAX_TITLE_CHARS} characters", field="title")
    _check_encodable(value, "title")
    return value


def validate_source(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if len(value) > MAX_SOURCE_CHARS:
        raise ValidationError(
            f"source is longer than {MAX_SOURCE_CHARS} characters", field="source"
        )
    _check_encodable(value, "source")
    return value


def validate_tags(values: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = []
    for raw in values:
        # Tags are identifiers: compare them NFKC-casefolded so "API" and "api" match
        # the same way in plaintext and encrypted mode (tokens are keyed hashes).
        tag = unicodedata.normalize("NFKC", raw).strip().casefold()
        if not tag or len(tag) > MAX_TAG_CHARS or not _TAG_RE.fullmatch(tag) or not _is_utf8(tag):
            raise ValidationError(
                f"invalid tag: tags are 1-{MAX_TAG_CHARS} characters without ',', '|' "
                "or control characters",
                field="tags",
            )
        if tag not in out:
            out.append(tag)
    if len(out) > MAX_TAGS:
        raise ValidationError(f"more than {MAX_TAGS} tags", field="tags")
    return tuple(out)


def validate_metadata(value: Any) -> dict[str, Any]:
    import json

    if not isinstance(value, dict):
        raise ValidationError("metadata must be a JSON object", field="metadata")
    try:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError):  # UnicodeEncodeError (lone surrogates) included
        raise ValidationError(
            "metadata must be a JSON object of valid UTF-8 text", field="metadata"
        ) from None
    if b"\\u0000" in encoded or b"\x00" in encoded:
        # PostgreSQL jsonb rejects NUL; refuse it in both modes so they behave alike.
        raise ValidationError("metadata must not contain NUL characters", field="metadata")
    if len(encoded) > MAX_METADATA_BYTES:
        raise ValidationError("metadata is larger than 64 KB", field="metadata")
    return value


def parse_entry_id(value: str | uuid.UUID) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value).strip())
    except ValueError:
        raise ValidationError("malformed entry id: expected a UUID", field="id") from None


def derive_title(content: str) -> str:
    """First non-empty line of the content, without markdown heading marks."""
    for line in content.splitlines():
        line = line.strip().lstrip("#").strip()
        if line:
            return line[:120]
    return "untitled"


def new_entry(
    content: str,
    *,
    title: str | None = None,
    entry_type: str | EntryType = EntryType.NOTE,
    tags: list[str] | tuple[str, ...] = (),
    namespace: str = DEFAULT_NAMESPACE,
    source: str | None = None,
    metadata: dict[str, Any] | None = None,
    verified: bool = False,
) -> NewEntry:
    """A validated :class:`NewEntry` (what ``KnowledgeBase.add``/``add_many`` write);
    raises ValidationError naming the first bad field."""
    return NewEntry(
        namespace=validate_namespace(namespace),
        content=validate_content(content),
        title=validate_title(title) if title else derive_title(content),
        entry_type=validate_entry_type(entry_type),
        tags=validate_tags(tags),
        source=validate_source(source),
        metadata=validate_metadata(metadata if metadata is not None else {}),
        verified=bool(verified),
    )


def _is_utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_encodable(value: str, field_name: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{field_name} is not valid UTF-8 text", field=field_name) from None
    if "\x00" in value:
        raise ValidationError(f"{field_name} contains a NUL character", field=field_name)


class KeyPurpose(StrEnum):
    CONTENT = "content"
    INDEX = "index"
    VECTOR = "vector"
    SNAPSHOT = "snapshot"


@dataclass(frozen=True, slots=True)
class WrappedDataKey:
    """A data key as stored in ``kb_data_keys``: wrapped, never plaintext."""

    id: uuid.UUID
    namespace: str
    purpose: KeyPurpose
    kms_key_uri: str
    wrapped: bytes
    created_at: datetime | None = None
    active: bool = True
