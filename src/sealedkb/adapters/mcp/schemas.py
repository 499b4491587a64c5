"""Pydantic models of the MCP tools' inputs and answers.

The answer models are what each tool publishes as its ``outputSchema``; the SDK
validates every successful answer against them before it leaves the server. They
describe the JSON the tools have always answered (same keys): an entry as
``Entry.to_dict`` without ``deleted_at``, a search result as ``SearchResult.to_dict``,
an import as ``ImportSummary.to_dict``. Errors are not answers: they come back as
``isError`` results with ``{code, message, field?}`` (tools.error_result), which
neither the SDK nor a client checks against the output schema.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from sealedkb.model import DEFAULT_NAMESPACE, EntryType

MAX_ADD_MANY = 100  # entries per kb_add_many call


# --- inputs ------------------------------------------------------------------------------


class NewEntryIn(BaseModel):
    """One entry of kb_add_many (the fields of kb_add)."""

    content: str = Field(description="The knowledge, as markdown.")
    title: str | None = Field(default=None, description="Short title; defaults to the first line.")
    entry_type: str = Field(default=EntryType.NOTE.value, description="note, doc, decision, ...")
    tags: list[str] | None = Field(default=None, description="Tags, e.g. ['postgres'].")
    namespace: str = Field(default=DEFAULT_NAMESPACE, description="Project or team namespace.")
    source: str | None = Field(default=None, description="Path, URL or reference.")
    metadata: dict[str, Any] | None = Field(default=None, description="Extra JSON attributes.")


# --- answers -----------------------------------------------------------------------------


class EntryOut(BaseModel):
    """One entry with its content (kb_add, kb_get, kb_update)."""

    id: str = Field(description="The entry id (UUID).")
    namespace: str
    title: str
    content: str = Field(description="The knowledge, as markdown.")
    entry_type: str
    tags: list[str]
    source: str | None
    metadata: dict[str, Any]
    verified: bool
    archived: bool
    created_at: str = Field(description="ISO 8601 time.")
    updated_at: str = Field(description="ISO 8601 time.")
    version: int = Field(description="Pass as expected_version to kb_update.")


class ListedEntryOut(EntryOut):
    """An entry of kb_list: content only when include_content was true."""

    content: str | None = Field(  # type: ignore[assignment]
        default=None, description="The knowledge, as markdown (with include_content)."
    )


class AddedOut(BaseModel):
    id: str
    title: str
    namespace: str
    version: int


class AddManyOut(BaseModel):
    entries: list[AddedOut] = Field(description="One per entry given, in order.")


class DeletedOut(BaseModel):
    deleted: str = Field(description="The id of the deleted entry.")


class ListOut(BaseModel):
    entries: list[ListedEntryOut]
    offset: int
    next_offset: int | None = Field(description="Offset of the next page; null on the last.")


class NamespaceStatsOut(BaseModel):
    total: int
    by_type: dict[str, int]
    top_tags: dict[str, int]


class StatsOut(BaseModel):
    entries_total: int
    namespaces: dict[str, NamespaceStatsOut]


class PrincipalOut(BaseModel):
    name: str
    role: str


class HealthOut(BaseModel):
    availability: str = Field(description="available or inaccessible-encryption-credentials.")
    storage_encrypted: bool
    encryption_scheme: str
    version: str
    principal: PrincipalOut


class SearchHitOut(BaseModel):
    id: str
    namespace: str
    title: str
    score: float
    snippet: str
    entry_type: str
    tags: list[str]
    source: str | None
    created_at: str


class SearchOut(BaseModel):
    mode: str = Field(description="The mode that ran (keyword when hybrid fell back).")
    requested_mode: str
    limit: int
    offset: int
    next_offset: int | None
    warnings: list[str]
    hits: list[SearchHitOut]


class FileOutcomeOut(BaseModel):
    path: str
    reason: str | None
    code: str | None


class ImportOut(BaseModel):
    files: int
    imported: int
    unchanged: int
    chunks_added: int
    chunks_removed: int
    skipped: list[FileOutcomeOut]
    failed: list[FileOutcomeOut]
    warnings: list[str]
