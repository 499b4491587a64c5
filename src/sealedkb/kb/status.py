"""Typed results of the knowledge base's status and stats (what ``status --json``,
``kb_stats`` and ``kb_health`` print; plain dicts at run time, keys fixed here)."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

__all__ = [
    "SEARCH_INDEX_DOCS",
    "SEARCH_INDEX_LEAKAGE",
    "DatabaseStatus",
    "KeyStatus",
    "KnowledgeBaseStatus",
    "NamespaceStats",
    "SearchIndexStatus",
    "Stats",
]

# Where the search index lives and what PostgreSQL learns from it, in one line each
# (status, the auditor summary, init); the analysis is in docs/SEARCH.md.
SEARCH_INDEX_DOCS = "docs/SEARCH.md#what-is-stored-and-what-leaks"
SEARCH_INDEX_LEAKAGE = {
    "memory": "none: PostgreSQL holds no searchable column (the index is in process memory)",
    "server": "PostgreSQL learns which entries share words, tags or content, "
    "and approximate distances between them",
    "plaintext": "PostgreSQL indexes the plaintext (encryption is off)",
}


class DatabaseStatus(TypedDict):
    kind: str  # embedded | external
    transport: str  # unix-socket | loopback | tls | insecure-tcp
    tls_protocol: str | None
    tls_cipher: str | None
    server_version: str
    pgvector: str | None
    schema_version: int


class SearchIndexStatus(TypedDict):
    """Where the search index lives (kb_meta search_index) and what that leaks."""

    mode: str  # memory | server
    leakage: str  # one line
    docs: str  # where the leakage is analysed
    migration: NotRequired[dict[str, Any] | None]  # a switch under way or done


class KnowledgeBaseStatus(TypedDict):
    storage_encrypted: bool
    encryption_mode: str
    encryption_scheme: str
    kms_key_id: str | None
    key_state: str | None
    key_provider: str | None
    root_key_source: str | None
    data_key_max_age_seconds: float
    data_keys: dict[str, int]
    entries_total: int
    entries_plaintext: int
    entries_sealed: int
    namespaces: int
    keyword_tokenizer: int
    search_index: SearchIndexStatus
    availability: str
    database: DatabaseStatus
    home: str
    principal: str
    key_rotation: dict[str, Any] | None
    data_keys_on_newest_key_version: NotRequired[Any]
    entries_by_data_key: dict[str, int] | None
    embeddings_on_retired_keys: NotRequired[int]
    audit: dict[str, Any]
    warnings: list[str]


class KeyStatus(TypedDict):
    """The rotation facts and where the rows are, spread into the status."""

    key_rotation: dict[str, Any] | None
    data_keys_on_newest_key_version: NotRequired[Any]
    entries_by_data_key: dict[str, int] | None
    embeddings_on_retired_keys: NotRequired[int]


class NamespaceStats(TypedDict):
    total: int
    by_type: dict[str, int]
    top_tags: dict[str, int]


class Stats(TypedDict):
    entries_total: int
    namespaces: dict[str, NamespaceStats]
