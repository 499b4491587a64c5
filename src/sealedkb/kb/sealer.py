"""EntrySealer: the one place entry rows are sealed and opened (no database access).

In encrypted mode an entry's text fields (title, content, source, metadata, tags)
are sealed together as one document (formats/entry_doc.py, format v1 sealed field)
under the namespace's content data key, the AAD binding namespace, table, column and
entry id (formats/aad.py); tags are also stored as keyed blind tokens so they filter
in SQL. Sealing happens before any write, so a key failure never leaves a
half-encrypted row. In plaintext mode the same fields go to the ``*_plain`` columns
(the benchmark baseline and migration source).

Built once from the key ring, the search indexer and the process counters, and
injected into the knowledge base, the importer, the migrator and the search engine.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sealedkb.crypto.keyring import KeyRing
from sealedkb.crypto.sealed import OpenFailedError
from sealedkb.errors import IntegrityError, KeyUnavailableError
from sealedkb.formats.aad import embedding_aad, entry_doc_aad
from sealedkb.formats.entry_doc import EntryDoc, decode_doc, encode_doc
from sealedkb.model import Entry, EntryType, KeyPurpose
from sealedkb.monitoring.telemetry import Telemetry
from sealedkb.search.digest import index_digest, vec_hash
from sealedkb.search.engine import SearchIndexer, vector_bytes
from sealedkb.store.entries import EntryRow
from sealedkb.store.search import SearchColumns

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = ["EntrySealer"]


class EntrySealer:
    """Seals new and changed rows and opens stored ones, counting every row that
    fails its integrity check."""

    def __init__(
        self,
        keyring: KeyRing | None,
        indexer: SearchIndexer,
        telemetry: Telemetry,
        *,
        memory_index: bool = False,
    ) -> None:
        self._keyring = keyring
        self._indexer = indexer
        self._telemetry = telemetry
        # kb_meta search_index = memory (search/memory.py): rows get no searchable
        # column (no keyword tokens, encrypted vector, tag tokens or fingerprint).
        self.memory_index = memory_index and keyring is not None
        # Run (once, successfully) before the first row is sealed: the knowledge base's
        # check of a setting it could not check when it opened.
        self.write_guard: Callable[[], None] | None = None
        # Run before every row is sealed: the knowledge base follows a switch of the
        # search index (sealedkb migrate index) made while it runs.
        self.before_write: Callable[[], None] | None = None

    def _guarded(self) -> None:
        if self.before_write is not None:
            self.before_write()
        if self.write_guard is not None:
            self.write_guard()
            self.write_guard = None

    @property
    def encrypted(self) -> bool:
        return self._keyring is not None

    # --- write side -----------------------------------------------------------

    def store_columns(self, namespace: str, entry_id: uuid.UUID, doc: EntryDoc) -> dict[str, Any]:
        """The kb_entries columns that hold ``doc``: sealed + tag tokens, or plaintext."""
        self._guarded()
        if self._keyring is not None:
            sealer, blinder = self._keyring.writer(namespace)
            return {
                "doc_sealed": sealer.seal(encode_doc(doc), entry_doc_aad(namespace, entry_id)),
                "tag_tokens": [] if self.memory_index else [blinder.tag_token(t) for t in doc.tags],
            }
        return {
            "title_plain": doc.title,
            "content_plain": doc.content,
            "source_plain": doc.source,
            "metadata_plain": doc.metadata,
            "tags_plain": list(doc.tags),
        }

    def sealed_row(
        self,
        namespace: str,
        entry_type: str,
        entry_id: uuid.UUID,
        doc: EntryDoc,
        vector: NDArray[np.float32] | None,
        *,
        with_fingerprint: bool = True,
        **flags: Any,
    ) -> tuple[EntryRow, SearchColumns]:
        """The sealed kb_entries row and its search columns for one entry: the one
        place a new row is sealed and indexed (add, add_many, import, migration).
        ``flags``: further EntryRow fields (verified, archived, version) for rows that
        carry them over."""
        search_cols = self.search_columns(
            namespace, entry_id, doc, vector, with_fingerprint=with_fingerprint
        )
        # The document carries the digest of its search columns (search/digest.py).
        doc = doc._replace(index_digest=search_cols.index_digest)
        cols = self.store_columns(namespace, entry_id, doc)
        row = EntryRow(id=entry_id, namespace=namespace, entry_type=entry_type, **flags, **cols)
        return row, search_cols

    def search_columns(
        self,
        namespace: str,
        entry_id: uuid.UUID,
        doc: EntryDoc,
        vector: NDArray[np.float32] | None,
        *,
        with_fingerprint: bool = True,
    ) -> SearchColumns:
        """The search columns of a new or changed entry: the indexer's (server-side
        index), or in memory mode only the sealed exact embedding."""
        self._guarded()
        if self.memory_index:
            return self.vector_columns(namespace, entry_id, vector)
        return self._indexer.columns(
            namespace, entry_id, doc, vector, with_fingerprint=with_fingerprint
        )

    def vector_columns(
        self, namespace: str, entry_id: uuid.UUID, vector: NDArray[np.float32] | None
    ) -> SearchColumns:
        """The vector columns of an entry (reembed): in memory mode the sealed exact
        embedding alone, else the indexer's encrypted and sealed pair."""
        self._guarded()
        cols = SearchColumns()
        embedder = self._indexer.embedder
        if vector is None or embedder is None:
            return cols
        if not self.memory_index:
            self._indexer.set_vector(cols, namespace, entry_id, vector)
            return cols
        assert self._keyring is not None
        cols.embed_model = embedder.model_id
        cols.embed_dim = embedder.dim
        sealer = self._keyring.sealer(namespace, KeyPurpose.CONTENT)
        cols.embedding_sealed = sealer.seal(
            vector_bytes(vector), embedding_aad(namespace, entry_id)
        )
        return cols

    def reseal_with_vector(self, row: EntryRow, doc: EntryDoc, cols: SearchColumns) -> bytes | None:
        """The re-sealed document of a row whose search vector changes (reembed): its
        index digest covers the new vector. None in plaintext mode, and for documents
        written before the digest existed (they keep none)."""
        if self._keyring is None or doc.index_digest is None:
            return None
        kw = doc.index_digest[: len(doc.index_digest) // 2]
        doc = doc._replace(index_digest=index_digest(kw, vec_hash(cols.embedding_enc)))
        sealed = self.store_columns(row.namespace, row.id, doc)["doc_sealed"]
        assert isinstance(sealed, bytes)
        return sealed

    # --- read side ------------------------------------------------------------

    def open_sealed(self, namespace: str, entry_id: uuid.UUID, blob: bytes) -> EntryDoc:
        if self._keyring is None:
            raise KeyUnavailableError("row is sealed but this knowledge base has no key")
        try:
            return decode_doc(self._keyring.open(blob, entry_doc_aad(namespace, entry_id)))
        except IntegrityError:
            # Ids are not secret; naming the entry tells the operator which row to check.
            # (The key ring counts the failed open.)
            raise IntegrityError(f"entry {entry_id} failed its integrity check") from None

    def open_sealed_many(
        self, namespace: str, items: Sequence[tuple[uuid.UUID, bytes]]
    ) -> list[EntryDoc]:
        """Open several sealed documents of one namespace in one batch (search hits)."""
        if self._keyring is None:
            raise KeyUnavailableError("row is sealed but this knowledge base has no key")
        aads = [entry_doc_aad(namespace, eid) for eid, _ in items]
        try:
            plains = self._keyring.open_many([blob for _, blob in items], aads)
        except OpenFailedError as exc:
            bad = items[exc.index][0]
            raise IntegrityError(f"entry {bad} failed its integrity check") from None
        out = []
        for (eid, _), plain in zip(items, plains, strict=True):
            try:
                out.append(decode_doc(plain))
            except IntegrityError:
                raise IntegrityError(f"entry {eid} failed its integrity check") from None
        return out

    def open_row(self, row: EntryRow) -> EntryDoc:
        """The document of a stored row (get, list, update, stats alike)."""
        if row.doc_sealed is not None:
            return self.open_sealed(row.namespace, row.id, row.doc_sealed)
        if self._keyring is not None:
            # A plaintext row in an encrypted knowledge base was written around sealedkb
            # (or is a forgery): never serve it as if it were authentic.
            self._telemetry.integrity_failure()
            raise IntegrityError(f"entry {row.id} is not sealed in an encrypted knowledge base")
        if row.content_plain is None:
            raise IntegrityError("entry holds neither a sealed document nor plaintext")
        return EntryDoc(
            title=row.title_plain or "",
            content=row.content_plain,
            source=row.source_plain,
            metadata=row.metadata_plain or {},
            tags=tuple(row.tags_plain or ()),
        )

    def to_entry(self, row: EntryRow, doc: EntryDoc | None = None) -> Entry:
        """Build the Entry; ``doc`` skips opening when the caller just sealed it."""
        if doc is None:
            doc = self.open_row(row)
        assert row.created_at is not None and row.updated_at is not None
        return Entry(
            id=row.id,
            namespace=row.namespace,
            title=doc.title,
            content=doc.content,
            entry_type=EntryType(row.entry_type),
            tags=doc.tags,
            source=doc.source,
            metadata=doc.metadata,
            verified=row.verified,
            archived=row.archived,
            created_at=row.created_at,
            updated_at=row.updated_at,
            version=row.version,
            deleted_at=row.deleted_at,
        )
