"""Typed results of the knowledge base's status and stats (what ``status --json``,
``kb_stats`` and ``kb_health`` print; plain dicts at run time, keys fixed here)."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

__all__ = ["DatabaseStatus", "KeyStatus", "KnowledgeBaseStatus", "NamespaceStats", "Stats"]


class DatabaseStatus(TypedDict):
    kind: str  # embedded | external
    transport: str  # unix-socket | loopback | tls | insecure-tcp
    tls_protocol: str | None
    tls_cipher: str | None
    server_version: str
    pgvector: str | None
    schema_version: int


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
