"""Source rows -> sealed insert parameters and keyed digests, shared by the in-place and
foreign migrations, their plan's measurements and ``verify``."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
from numpy.typing import NDArray

from sealedkb.config import Settings
from sealedkb.crypto.keyring import KeyRing
from sealedkb.embed import load_embedder
from sealedkb.errors import ConflictError
from sealedkb.formats.entry_doc import EntryDoc
from sealedkb.kb.sealer import EntrySealer
from sealedkb.kb.wiring import scratch_key_provider
from sealedkb.migrate.host import OpenKnowledgeBase
from sealedkb.migrate.source import SourceEntry, digest_fields, key_to_json, migrated_id
from sealedkb.model import KeyPurpose, WrappedDataKey
from sealedkb.monitoring.telemetry import Telemetry
from sealedkb.search.engine import SearchIndexer
from sealedkb.store import migration_sql as msql
from sealedkb.store.entries import EntryRow

DIGEST_DOMAIN = "migration-row"


class InPlaceFacts(TypedDict):
    """Row facts an in-place migration keeps as they were (part of its digest)."""

    verified: bool
    archived: bool
    version: int
    created_at: datetime | None
    updated_at: datetime | None
    deleted_at: datetime | None


def in_place_facts(
    verified: bool,
    archived: bool,
    version: int,
    created_at: datetime | None,
    updated_at: datetime | None,
    deleted_at: datetime | None,
) -> InPlaceFacts:
    return {
        "verified": verified,
        "archived": archived,
        "version": version,
        "created_at": created_at,
        "updated_at": updated_at,
        "deleted_at": deleted_at,
    }


def row_digest(ring: KeyRing, namespace: str, entry_type: str, doc: EntryDoc, **facts: Any) -> str:
    """The keyed digest ``migrate verify`` compares: of the source row when it is
    sealed, of the opened entry afterwards (same fields, same code)."""
    data = digest_fields(
        namespace=namespace,
        entry_type=entry_type,
        title=doc.title,
        content=doc.content,
        source=doc.source,
        metadata=doc.metadata,
        tags=doc.tags,
        **facts,
    )
    return ring.blinder(namespace).digest(DIGEST_DOMAIN, data)


def entry_digest(kb: OpenKnowledgeBase, row: EntryRow, *, in_place: bool) -> str:
    """The digest of a stored entry, opened (an in-place one with its row facts)."""
    assert kb.keyring is not None
    doc = kb.sealer.open_row(row)
    if in_place:
        facts = in_place_facts(
            row.verified, row.archived, row.version, row.created_at, row.updated_at, row.deleted_at
        )
        return row_digest(kb.keyring, row.namespace, row.entry_type, doc, **facts)
    return row_digest(kb.keyring, row.namespace, row.entry_type, doc)


def as_vector(v: Any) -> NDArray[np.float32] | None:
    """A pgvector value (Vector in binary fetches, ndarray in text ones) as float32."""
    if v is None:
        return None
    if hasattr(v, "to_numpy"):
        v = v.to_numpy()
    return np.asarray(v, dtype=np.float32)


# --- a throwaway keyring for plan (nothing written anywhere) -----------------------------


class _MemoryDataKeys:
    def __init__(self) -> None:
        self.keys: dict[uuid.UUID, WrappedDataKey] = {}

    def get_data_key(self, key_id: uuid.UUID) -> WrappedDataKey | None:
        return self.keys.get(key_id)

    def get_active_data_key(self, namespace: str, purpose: KeyPurpose) -> WrappedDataKey | None:
        for k in self.keys.values():
            if k.namespace == namespace and k.purpose == purpose:
                return k
        return None

    def insert_data_key(self, key: WrappedDataKey) -> WrappedDataKey:
        self.keys[key.id] = key
        return key


@contextmanager
def scratch_keyring() -> Iterator[KeyRing]:
    """A keyring over a temporary keystore: plan measures sealing without creating a
    key in the real keystore or a data key in the database."""
    with tempfile.TemporaryDirectory(prefix="sealedkb-plan-") as tmp:
        provider = scratch_key_provider(Path(tmp) / "keys")
        key = provider.create_key("migration plan (throwaway)")
        yield KeyRing(provider, _MemoryDataKeys(), key.key_id)


# --- sealing -------------------------------------------------------------------------------


@dataclass
class Sealed:
    """One row ready to write: parameters for the insert and its digest record."""

    values: list[Any]
    digest: tuple[uuid.UUID, str, str]


class RowSealer:
    """Source rows -> sealed insert parameters (+ keyed digests), in batches. Uses the
    knowledge base's own sealing and indexing (EntrySealer, SearchIndexer) so a
    migrated entry is bit-for-bit the kind ``add`` writes."""

    def __init__(self, ring: KeyRing, sealer: EntrySealer, indexer: SearchIndexer) -> None:
        self.ring = ring
        self.sealer = sealer
        self.indexer = indexer
        self.embedder = indexer.embedder

    @classmethod
    def of(cls, kb: OpenKnowledgeBase) -> RowSealer:
        """Sealing as the encrypted knowledge base ``kb`` does it."""
        assert kb.keyring is not None
        return cls(kb.keyring, kb.sealer, kb.indexer)

    @classmethod
    def offline(cls, settings: Settings, ring: KeyRing) -> RowSealer:
        """Sealing under ``ring`` with this home's embedder, no database (plan's
        measurements over a scratch keyring)."""
        indexer = SearchIndexer(ring, load_embedder(settings.embedder))
        return cls(ring, EntrySealer(ring, indexer, Telemetry()), indexer)

    def _vectors(
        self, docs: list[tuple[str, str]], given: list[Any], model: str | None
    ) -> list[Any]:
        """Source vectors when they come from our model, else re-embedded (batched)."""
        emb = self.embedder
        out: list[Any] = list(given)
        if emb is None:
            return [None] * len(docs)
        redo = [i for i, v in enumerate(given) if v is None or model != emb.model_id]
        if redo:
            vecs = self.indexer.embed([docs[i] for i in redo])
            for j, i in enumerate(redo):
                out[i] = vecs[j] if vecs is not None else None
        return out

    def seal_plain_rows(self, rows: Sequence[tuple[Any, ...]]) -> list[Sealed]:
        """Rows of msql.PLAIN_COLS -> shadow upserts."""
        emb_model = self.embedder.model_id if self.embedder is not None else None
        docs = []
        for r in rows:
            if r[4] is None:
                raise ConflictError(
                    f"entry {r[0]} is already sealed in a plaintext knowledge base; "
                    "run 'sealedkb doctor'"
                )
            docs.append(EntryDoc(r[3] or "", r[4], r[5], r[6] or {}, tuple(r[7] or ())))
        given = [as_vector(r[14]) if r[15] == emb_model else None for r in rows]
        vectors = self._vectors([(d.title, d.content) for d in docs], given, emb_model)
        out = []
        for r, doc, vec in zip(rows, docs, vectors, strict=True):
            eid, ns = r[0], r[1]
            row, cols = self.sealer.sealed_row(
                ns,
                r[2],
                eid,
                doc,
                vec,
                with_fingerprint=r[16] is not None,
                verified=r[8],
                archived=r[9],
                version=r[12],
            )
            if r[17] is not None:
                cols.import_key = self.ring.blinder(ns).file_token(r[17])
            facts = {"created_at": r[10], "updated_at": r[11], "deleted_at": r[13]}
            digest = row_digest(
                self.ring, ns, r[2], doc, **in_place_facts(r[8], r[9], r[12], r[10], r[11], r[13])
            )
            out.append(Sealed(msql.row_values(row, cols, facts), (eid, str(eid), digest)))
        return out

    def foreign_digest(self, e: SourceEntry) -> str:
        doc = EntryDoc(e.title, e.content, e.source, e.metadata, e.tags)
        return row_digest(self.ring, e.namespace, e.entry_type, doc)

    def seal_foreign(
        self, entries: Sequence[SourceEntry], source_id: str, model: str | None
    ) -> list[Sealed]:
        emb_model = self.embedder.model_id if self.embedder is not None else None
        docs = [EntryDoc(e.title, e.content, e.source, e.metadata, e.tags) for e in entries]
        given = [as_vector(e.vector) for e in entries]
        vectors = self._vectors([(d.title, d.content) for d in docs], given, model or emb_model)
        out = []
        now = datetime.now(UTC)
        for e, doc, vec in zip(entries, docs, vectors, strict=True):
            eid = migrated_id(source_id, key_to_json(e.key))
            row, cols = self.sealer.sealed_row(e.namespace, e.entry_type, eid, doc, as_vector(vec))
            created = e.created_at or now
            facts = {
                "created_at": created,
                "updated_at": e.updated_at or created,
                "deleted_at": None,
            }
            out.append(
                Sealed(
                    msql.row_values(row, cols, facts),
                    (
                        eid,
                        str(key_to_json(e.key)),
                        row_digest(self.ring, e.namespace, e.entry_type, doc),
                    ),
                )
            )
        return out
