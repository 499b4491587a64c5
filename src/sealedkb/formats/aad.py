"""The one place AAD strings are made (specified in docs/FORMATS.md §3).

Every sealed field binds its place: ``sealedkb/v1|<namespace>|<table>|<column>|<id>``.
A value copied to another row, column or namespace therefore fails to open. Callers
ask for the AAD of a *place* (the entry document, the exact embedding) and never
spell table or column names themselves.
"""

from __future__ import annotations

import uuid

__all__ = [
    "AAD_PREFIX",
    "DOC_COLUMN",
    "EMBEDDING_COLUMN",
    "ENTRIES_TABLE",
    "embedding_aad",
    "embedding_aad_prefix",
    "entry_doc_aad",
    "field_aad",
    "memory_image_aad",
]

AAD_PREFIX = "sealedkb/v1"
ENTRIES_TABLE = "kb_entries"
DOC_COLUMN = "doc"  # the sealed entry document (column doc_sealed)
EMBEDDING_COLUMN = "embedding"  # the sealed exact embedding (column embedding_sealed)
MEMORY_IMAGE = "memory_image"  # the warm-start image of the memory search index (a home file)


def field_aad(namespace: str, table: str, column: str, entry_id: str) -> bytes:
    """The AAD that binds a sealed value to its place (namespace, table, column, row)."""
    for part in (namespace, table, column, entry_id):
        if "|" in part:
            raise ValueError("AAD components must not contain '|'")
    return f"{AAD_PREFIX}|{namespace}|{table}|{column}|{entry_id}".encode()


def entry_doc_aad(namespace: str, entry_id: uuid.UUID | str) -> bytes:
    """AAD of an entry's sealed document."""
    return field_aad(namespace, ENTRIES_TABLE, DOC_COLUMN, str(entry_id))


def embedding_aad(namespace: str, entry_id: uuid.UUID | str) -> bytes:
    """AAD of an entry's sealed exact embedding."""
    return field_aad(namespace, ENTRIES_TABLE, EMBEDDING_COLUMN, str(entry_id))


def embedding_aad_prefix(namespace: str) -> bytes:
    """``embedding_aad(namespace, id) == embedding_aad_prefix(namespace) + id`` (the
    hot search path appends ids to it instead of formatting each)."""
    return field_aad(namespace, ENTRIES_TABLE, EMBEDDING_COLUMN, "")


def memory_image_aad(
    namespace: str, key_id: uuid.UUID, version: int, epoch: str, position: str
) -> bytes:
    """AAD of the sealed warm-start image of a namespace's memory search index
    (search/warm_start.py): binds the namespace, the data key it is sealed under, the
    image format version, the database's change-feed epoch and the change-feed
    position the image covers (its horizon and last change number), so an image of
    another namespace or knowledge base, or one whose clear header was edited, fails
    to open."""
    for part in (namespace, epoch, position):
        if "|" in part:
            raise ValueError("AAD components must not contain '|'")
    return (
        f"{AAD_PREFIX}|{namespace}|{MEMORY_IMAGE}|{key_id}|v{int(version)}|{epoch}|{position}"
    ).encode()
