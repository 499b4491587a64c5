"""``sealedkb reindex``: new index and vector data keys for a namespace, and its
server-side search index rebuilt under them, online (docs/SEARCH.md, "Reindex").

What an attacker holding the database learned by mapping known documents to rows
(blind token -> word, the DCPE rotation) is tied to the namespace's index and vector
data keys. A reindex rotates both (the old ones are retired, kept), then rebuilds every
live row in batches: its sealed document and exact embedding are opened, keyword
tokens, tag tokens, fingerprint and encrypted vector are made again under the new keys
(keyword tokens in the hardened form, without positions; the vector with the current
β), and the document is re-sealed with the new index digest (kb/sealer.py). Each batch
is written in one audited transaction, only where the row is unchanged since it was
read (same version and sealed document); a row changed meanwhile was indexed by its
own update. Rebuilt rows carry the new index key's id (migration 008): killed at any
point, a rerun continues with the rows still to do, under the same keys.

While a reindex is unfinished (its marker in kb_meta names the active index key),
search also queries under the retired index and vector keys (SearchEngine, re-read
every 2 s), so rows not yet rebuilt are still found; only a tag filter matches the
active key's tag tokens alone. Gets, lists and writes are unaffected.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sealedkb.crypto.keyring import encryption_context
from sealedkb.errors import (
    EmbeddingError,
    IntegrityError,
    NotFoundError,
    SealedKBError,
    ValidationError,
)
from sealedkb.formats.aad import embedding_aad
from sealedkb.model import KeyPurpose, WrappedDataKey, validate_namespace
from sealedkb.search.engine import DB_DIM, vector_from_bytes
from sealedkb.store.rekey import RekeyTable

if TYPE_CHECKING:
    from sealedkb.kb.knowledge_base import KnowledgeBase

REINDEX_BATCH = 64
MAX_FAILED_IDS = 20


@dataclass(frozen=True, slots=True)
class ReindexResult:
    namespace: str
    index_key_id: str  # the new index data key (the vector key rotates with it)
    vector_key_id: str
    rotated: bool  # this run made the new keys (False: it continued an unfinished run)
    reindexed: int
    skipped: int  # changed while being rebuilt (its own write indexed it)
    remaining: int
    failed: int  # rows that failed their integrity check (left as they are)
    failed_ids: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "index_key_id": self.index_key_id,
            "vector_key_id": self.vector_key_id,
            "rotated": self.rotated,
            "reindexed": self.reindexed,
            "skipped": self.skipped,
            "remaining": self.remaining,
            "failed": self.failed,
            "failed_ids": list(self.failed_ids),
        }


def _check(kb: KnowledgeBase) -> None:
    if kb.keyring is None:
        raise ValidationError(
            "reindex rotates the keys of an encrypted knowledge base; this one is plaintext",
            field="encryption",
        )
    if kb.sealer.memory_index:
        raise ValidationError(
            "reindex rebuilds the server-side search index; this knowledge base keeps its"
            " index in memory (nothing searchable is stored)",
            field="search_index",
        )


def _rotate(kb: KnowledgeBase, namespace: str) -> tuple[uuid.UUID, uuid.UUID]:
    """New active index and vector data keys of ``namespace``, in one audited
    transaction with the reindex marker; the old keys are retired."""
    keys = kb.keys
    assert keys is not None
    made: dict[KeyPurpose, WrappedDataKey] = {}
    for purpose in (KeyPurpose.INDEX, KeyPurpose.VECTOR):
        kid = uuid.uuid4()
        try:
            _material, wrapped = keys.provider.generate_data_key(
                keys.kms_key_uri, encryption_context(namespace, purpose, kid)
            )
        except SealedKBError as exc:
            kb.audit.record_error(
                "RotateDataKey",
                exc,
                key_uri=keys.kms_key_uri,
                namespace=namespace,
                details={"purpose": purpose.value, "reason": "reindex"},
            )
            raise
        made[purpose] = WrappedDataKey(kid, namespace, purpose, keys.kms_key_uri, wrapped)
    with kb.audit.transaction("reindex key rotation") as conn:
        for purpose, new in made.items():
            retired = RekeyTable.rotate_data_key(conn, new)
            kb.audit.append(
                conn,
                "GenerateDataKey",
                key_uri=keys.kms_key_uri,
                namespace=namespace,
                details={"purpose": purpose.value, "data_key_id": str(new.id)},
            )
            kb.audit.append(
                conn,
                "RotateDataKey",
                key_uri=keys.kms_key_uri,
                namespace=namespace,
                details={
                    "purpose": purpose.value,
                    "data_key_id": str(new.id),
                    "retired_data_key_id": str(retired) if retired else None,
                    "reason": "reindex",
                },
            )
        kb.search_table.set_reindex_marker(conn, namespace, made[KeyPurpose.INDEX].id)
    assert kb.keyring is not None
    kb.keyring.forget_active(namespace)
    return made[KeyPurpose.INDEX].id, made[KeyPurpose.VECTOR].id


def _active_id(kb: KnowledgeBase, namespace: str, purpose: KeyPurpose) -> uuid.UUID | None:
    rec = kb.datakeys.get_active_data_key(namespace, purpose)
    return rec.id if rec is not None else None


def reindex(
    kb: KnowledgeBase,
    namespace: str,
    *,
    batch_size: int = REINDEX_BATCH,
    progress: Callable[[int, int], None] | None = None,
) -> ReindexResult:
    """Rotate the index and vector data keys of ``namespace`` and rebuild its search
    columns under them (see the module docstring). A run that finds an unfinished one
    (its marker names the active index key) continues it instead of rotating again."""
    _check(kb)
    assert kb.keyring is not None
    ns = validate_namespace(namespace)
    if not 1 <= batch_size <= 1000:
        raise ValidationError("--batch-size must be between 1 and 1000", field="batch_size")
    marker = kb.search_table.reindex_marker(ns)
    active_index = _active_id(kb, ns, KeyPurpose.INDEX)
    if active_index is None:
        raise NotFoundError(f"namespace {ns} has no search index yet", field="namespace")
    if marker is not None and marker == active_index:
        index_id, rotated = marker, False
        vector_id = _active_id(kb, ns, KeyPurpose.VECTOR) or uuid.UUID(int=0)
        kb.keyring.forget_active(ns)
    else:
        index_id, vector_id = _rotate(kb, ns)
        rotated = True
    total = kb.search_table.reindex_counts(ns, index_id)["remaining"]
    done = skipped = 0
    failed: list[str] = []
    after: uuid.UUID | None = None
    while True:
        batch = kb.search_table.needing_reindex(ns, index_id, after, batch_size)
        if not batch:
            break
        after = batch[-1].row.id
        prepared = []
        for item in batch:
            row = item.row
            try:
                doc = kb.sealer.open_row(row)
                vector = None
                if item.embedding_sealed is not None:
                    plain = kb.keyring.open(item.embedding_sealed, embedding_aad(ns, row.id))
                    vector = vector_from_bytes(plain, DB_DIM)
            except IntegrityError:
                if len(failed) < 10_000:
                    failed.append(str(row.id))
                continue
            if vector is not None and kb.indexer.embedder is None:
                raise EmbeddingError(
                    "reindex re-encrypts the entries' vectors and needs the embedder"
                    " configured (SEALEDKB_EMBEDDER)"
                )
            new_row, cols = kb.sealer.sealed_row(
                ns, row.entry_type, row.id, doc, vector, with_fingerprint=item.has_fingerprint
            )
            assert new_row.doc_sealed is not None
            prepared.append((row, new_row.doc_sealed, list(new_row.tag_tokens or []), cols))
        if not prepared:
            continue
        with kb.audit.transaction("reindex") as conn:
            moved = sum(
                kb.search_table.set_index(conn, row, index_id, doc_sealed, tags, cols)
                for row, doc_sealed, tags, cols in prepared
            )
            kb.audit.append(
                conn,
                "ReindexEntries",
                key_uri=kb.keyring.kms_key_uri,
                namespace=ns,
                details={"rows": moved, "skipped": len(prepared) - moved},
            )
        done += moved
        skipped += len(prepared) - moved
        if progress is not None:
            progress(done, total)
    remaining = kb.search_table.reindex_counts(ns, index_id)["remaining"]
    if remaining == 0:
        with kb.audit.transaction("reindex finished") as conn:
            kb.search_table.set_reindex_marker(conn, ns, None)
    return ReindexResult(
        namespace=ns,
        index_key_id=str(index_id),
        vector_key_id=str(vector_id),
        rotated=rotated,
        reindexed=done,
        skipped=skipped,
        remaining=remaining,
        failed=len(failed),
        failed_ids=tuple(failed[:MAX_FAILED_IDS]),
    )
