"""The memory search index: nothing searchable in PostgreSQL (docs/SEARCH.md, "The
memory search index").

In a knowledge base initialised with ``--search-index memory`` (kb_meta
``search_index``) the rows hold only the sealed document and the sealed exact
embedding; no keyword tokens, encrypted vectors, tag tokens or fingerprints. Each
serving process builds, per namespace and at first use, an index in its own memory
from the sealed rows (documents and embeddings opened in batches):

* a BM25 keyword index (k1 = 1.2, b = 0.75) over the stems of the keyword pipeline
  (search/text.py), title words counted twice (the server index weights them A);
* an exact vector index: a float32 matrix of the opened embeddings, scored by
  cosine (a dot product: the embedders make unit vectors);
* per entry its type, tags, creation time and archived flag (the filters), and the
  SHA-256 of its normalised content (dedup), all computed from the opened rows.

Nothing of it is written in plaintext. A process that builds a namespace's index
writes it as a sealed warm-start image in the home (search/warm_start.py), which
the next process loads instead of opening every row, then applies the change feed
from the position the image records; an image that cannot be trusted is refused
and the index rebuilt. Before every answer the index applies the
changes other processes made (the kb_changes feed, store/changes.py). It is
bounded by ``memory_index_max_entries``: past it a search fails with
INDEX_CAPACITY naming the setting, never answering from a partial index.

A row that fails to open (a forged or damaged row) is left out and counted as an
integrity failure, as search does with a forged hit.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sealedkb.crypto.keyring import KeyRing
from sealedkb.crypto.sealed import OpenFailedError
from sealedkb.errors import IntegrityError, SealedKBError
from sealedkb.formats.aad import embedding_aad
from sealedkb.formats.entry_doc import EntryDoc
from sealedkb.monitoring.telemetry import Telemetry
from sealedkb.search import text
from sealedkb.search.engine import normalize_content
from sealedkb.search.warm_start import LoadedImage, SpaceImage, WarmStart
from sealedkb.store.changes import ChangeFeed, IndexRow

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray
    from psycopg import Connection
    from psycopg.rows import TupleRow

__all__ = ["IndexCapacityError", "MemoryIndex", "content_fingerprint"]

log = logging.getLogger("sealedkb.search.memory")

BM25_K1 = 1.2
BM25_B = 0.75
TITLE_WEIGHT = 2  # a title word counts as this many content words
OPEN_BATCH = 256  # sealed values opened per batch while building
CAPACITY_SETTING = "memory_index_max_entries"
# The change feed keeps a week of changes; a process that has not read it for half
# of that rebuilds its index instead of trusting what is left. Pruning runs at
# most hourly, from whichever process reads the feed.
FEED_KEEP_SECONDS = 7 * 86400
REBUILD_AFTER_SECONDS = FEED_KEEP_SECONDS / 2
PRUNE_EVERY_SECONDS = 3600
# An add catches up before its lock only when the index was last read longer ago
# than this (MemoryIndex.prepare); otherwise under the lock, on its own transaction.
PREPARE_FRESH_SECONDS = 1.0
# A loaded warm-start image is written again once this many changes were applied to
# it (so the feed a later process replays stays short).
REWRITE_AFTER_CHANGES = 256
REWRITE_EVERY_SECONDS = 60.0  # and at most this often by a long-running process

OpenDocs = Callable[[str, Sequence[tuple[uuid.UUID, bytes]]], list[EntryDoc]]
Ranked = list[tuple[uuid.UUID, float]]


class IndexCapacityError(SealedKBError):
    """The memory search index would hold more entries than its setting allows."""

    code = "INDEX_CAPACITY"
    exit_code = 1


def content_fingerprint(normalized: str) -> str:
    """The in-memory dedup key of normalised content (never stored)."""
    return hashlib.sha256(normalized.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class MemoryStats:
    namespaces: int
    entries: int
    vectors: int
    terms: int


class _Space:
    """The index of one namespace. Slots are reused after a removal."""

    def __init__(self, dim: int) -> None:
        import numpy as np

        self.dim = dim
        self.slot_of: dict[uuid.UUID, int] = {}
        self.ids: list[uuid.UUID | None] = []
        self.free: list[int] = []
        self.types: list[str] = []
        self.tags: list[frozenset[str]] = []
        self.archived: list[bool] = []
        self.fp: list[str | None] = []
        self.by_fp: dict[str, set[uuid.UUID]] = {}
        # each slot's distinct terms (its counts live in the postings)
        self.terms: list[tuple[str, ...] | None] = []
        self.postings: dict[str, dict[int, int]] = {}
        self.doclen = np.zeros(0, dtype=np.float32)
        self.total_len = 0
        self.vecs = np.zeros((0, dim), dtype=np.float32)
        self.has_vec = np.zeros(0, dtype=bool)
        self.live = np.zeros(0, dtype=bool)
        self.created_ts = np.zeros(0, dtype=np.float64)
        self._cache: dict[str, tuple[NDArray[np.int64], NDArray[np.float32]]] = {}
        # Postings loaded from a warm-start image and not touched since: term -> its
        # row in the image's CSR arrays (turned into a postings dict on first change).
        self._base: dict[str, int] = {}
        self._base_ptr = np.zeros(1, dtype=np.int64)
        self._base_slot = np.zeros(0, dtype=np.int32)
        self._base_tf = np.zeros(0, dtype=np.int32)
        self._base_vocab: list[str] = []
        self._base_n = 0  # slots 0.._base_n-1 came from the image
        self._base_terms: tuple[NDArray[np.int64], NDArray[np.int64]] | None = None

    def __len__(self) -> int:
        return len(self.slot_of)

    def _grow(self, need: int) -> None:
        import numpy as np

        cap = len(self.doclen)
        if need <= cap:
            return
        new = max(need, cap * 2, 64)
        self.doclen = np.concatenate([self.doclen, np.zeros(new - cap, dtype=np.float32)])
        self.vecs = np.concatenate([self.vecs, np.zeros((new - cap, self.dim), dtype=np.float32)])
        self.has_vec = np.concatenate([self.has_vec, np.zeros(new - cap, dtype=bool)])
        self.live = np.concatenate([self.live, np.zeros(new - cap, dtype=bool)])
        self.created_ts = np.concatenate([self.created_ts, np.zeros(new - cap)])

    def remove(self, eid: uuid.UUID) -> None:
        slot = self.slot_of.pop(eid, None)
        if slot is None:
            return
        terms = self.terms[slot]
        if terms is None and slot < self._base_n:
            terms = self._image_terms(slot)
        if terms:
            if self._base:
                self._touch(terms)
            for term in terms:
                post = self.postings.get(term)
                if post is not None:
                    post.pop(slot, None)
                    if not post:
                        del self.postings[term]
                self._cache.pop(term, None)
        self.total_len -= int(self.doclen[slot])
        fp = self.fp[slot]
        if fp is not None:
            holders = self.by_fp.get(fp)
            if holders is not None:
                holders.discard(eid)
                if not holders:
                    del self.by_fp[fp]
        self.ids[slot] = None
        self.terms[slot] = None
        self.fp[slot] = None
        self.tags[slot] = frozenset()
        self.doclen[slot] = 0
        self.has_vec[slot] = False
        self.live[slot] = False
        self.free.append(slot)

    def put(
        self,
        row: IndexRow,
        doc: EntryDoc,
        vector: NDArray[np.float32] | None,
        tokenizer: int,
    ) -> None:
        self.remove(row.id)
        if self.free:
            slot = self.free.pop()
        else:
            slot = len(self.ids)
            self.ids.append(None)
            self.types.append("")
            self.tags.append(frozenset())
            self.archived.append(False)
            self.fp.append(None)
            self.terms.append(None)
            self._grow(slot + 1)
        self.slot_of[row.id] = slot
        self.ids[slot] = row.id
        self.types[slot] = row.entry_type
        self.tags[slot] = frozenset(doc.tags)
        self.created_ts[slot] = row.created_at.timestamp()
        self.archived[slot] = row.archived
        self.live[slot] = True
        fp = content_fingerprint(normalize_content(doc.content))
        self.fp[slot] = fp
        self.by_fp.setdefault(fp, set()).add(row.id)
        tf = Counter(text.terms(doc.content, tokenizer))  # counted in C
        for t in text.terms(doc.title, tokenizer):
            tf[t] += TITLE_WEIGHT
        self.terms[slot] = tuple(tf)
        if self._base:
            self._touch(tf)
        length = tf.total()
        self.doclen[slot] = length
        self.total_len += length
        postings = self.postings
        for term, n in tf.items():
            post = postings.get(term)
            if post is None:
                postings[term] = {slot: n}
            else:
                post[slot] = n
        if self._cache:
            for term in tf:
                self._cache.pop(term, None)
        if vector is not None:
            self.vecs[slot] = vector
            self.has_vec[slot] = True

    def _posting(self, term: str) -> tuple[NDArray[np.int64], NDArray[np.float32]] | None:
        import numpy as np

        hit = self._cache.get(term)
        if hit is not None:
            return hit
        row = self._base.get(term)
        if row is not None:  # untouched since the image was loaded: a slice of it
            a, b = int(self._base_ptr[row]), int(self._base_ptr[row + 1])
            arr = (
                self._base_slot[a:b].astype(np.int64),
                self._base_tf[a:b].astype(np.float32),
            )
            self._cache[term] = arr
            return arr
        post = self.postings.get(term)
        if not post:
            return None
        arr = (
            np.fromiter(post.keys(), dtype=np.int64, count=len(post)),
            np.fromiter(post.values(), dtype=np.float32, count=len(post)),
        )
        self._cache[term] = arr
        return arr

    # --- the warm-start image (search/warm_start.py) -------------------------

    def _touch(self, terms: Iterable[str]) -> None:
        """Turn the image postings of these terms into postings dicts (before a change)."""
        base = self._base
        for term in terms:
            row = base.pop(term, None)
            if row is not None:
                a, b = int(self._base_ptr[row]), int(self._base_ptr[row + 1])
                self.postings[term] = dict(
                    zip(self._base_slot[a:b].tolist(), self._base_tf[a:b].tolist(), strict=True)
                )

    def _image_terms(self, slot: int) -> tuple[str, ...]:
        """The distinct terms of a slot loaded from the image (by-slot index built on
        the first removal)."""
        import numpy as np

        if self._base_terms is None:
            counts = np.diff(self._base_ptr)
            term_of = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
            order = np.argsort(self._base_slot, kind="stable")
            ptr = np.zeros(self._base_n + 1, dtype=np.int64)
            np.cumsum(np.bincount(self._base_slot, minlength=self._base_n), out=ptr[1:])
            self._base_terms = (ptr, term_of[order])
        ptr, term_ids = self._base_terms
        vocab = self._base_vocab
        return tuple(vocab[int(t)] for t in term_ids[ptr[slot] : ptr[slot + 1]])

    def to_image(self) -> SpaceImage:
        """The index as flat arrays, live slots renumbered 0..n-1."""
        import numpy as np

        live = sorted(self.slot_of.values())
        n = len(live)
        remap = np.full(max(len(self.ids), 1), -1, dtype=np.int64)
        remap[live] = np.arange(n, dtype=np.int64)
        ids = [self.ids[s] for s in live]
        type_names: dict[str, int] = {}
        tag_names: dict[str, int] = {}
        type_idx = [type_names.setdefault(self.types[s], len(type_names)) for s in live]
        tag_ptr = [0]
        tag_idx: list[int] = []
        for s in live:
            tag_idx.extend(tag_names.setdefault(t, len(tag_names)) for t in sorted(self.tags[s]))
            tag_ptr.append(len(tag_idx))
        self._touch(list(self._base))  # every posting as a dict
        vocab = list(self.postings)
        post_ptr = [0]
        slots: list[int] = []
        tfs: list[int] = []
        for post in self.postings.values():
            slots.extend(post.keys())
            tfs.extend(post.values())
            post_ptr.append(len(slots))
        idx = np.asarray(live, dtype=np.int64)
        return SpaceImage(
            ids=np.frombuffer(
                b"".join(e.bytes for e in ids if e is not None), dtype=np.uint8
            ).reshape(n, 16),
            type_idx=np.asarray(type_idx, dtype=np.int32),
            types=list(type_names),
            tag_ptr=np.asarray(tag_ptr, dtype=np.int64),
            tag_idx=np.asarray(tag_idx, dtype=np.int32),
            tags=list(tag_names),
            created_ts=self.created_ts[idx],
            archived=np.asarray([self.archived[s] for s in live], dtype=bool),
            fp=np.frombuffer(
                bytes.fromhex("".join(self.fp[s] or "" for s in live)), dtype=np.uint8
            ).reshape(n, 32),
            doclen=self.doclen[idx],
            vecs=self.vecs[idx],
            has_vec=self.has_vec[idx],
            vocab=vocab,
            post_ptr=np.asarray(post_ptr, dtype=np.int64),
            post_slot=remap[np.asarray(slots, dtype=np.int64)].astype(np.int32),
            post_tf=np.asarray(tfs, dtype=np.int32),
            total_len=self.total_len,
        )

    @classmethod
    def from_image(cls, img: SpaceImage, dim: int) -> _Space:
        import numpy as np

        space = cls(dim)
        n = len(img)
        raw = img.ids.tobytes()
        ids = [uuid.UUID(bytes=raw[i : i + 16]) for i in range(0, 16 * n, 16)]
        space.slot_of = dict(zip(ids, range(n), strict=True))
        if len(space.slot_of) != n:
            raise ValueError("image holds an entry twice")
        space.ids = list(ids)
        types = img.types
        space.types = [types[i] for i in img.type_idx.tolist()]
        tags = img.tags
        ptr = img.tag_ptr.tolist()
        tag_idx = img.tag_idx.tolist()
        sets: dict[tuple[int, ...], frozenset[str]] = {}  # entries share few tag sets
        space.tags = []
        for i in range(n):
            key = tuple(tag_idx[ptr[i] : ptr[i + 1]])
            got = sets.get(key)
            if got is None:
                got = sets[key] = frozenset(tags[j] for j in key)
            space.tags.append(got)
        space.archived = img.archived.tolist()
        fp_hex = img.fp.tobytes().hex()
        fps = [fp_hex[i : i + 64] for i in range(0, 64 * n, 64)]
        space.fp = list(fps)
        by_fp: dict[str, set[uuid.UUID]] = {}
        for eid, fp in zip(ids, fps, strict=True):
            by_fp.setdefault(fp, set()).add(eid)
        space.by_fp = by_fp
        space.terms = [None] * n
        space.doclen = img.doclen.astype(np.float32, copy=False)
        space.total_len = img.total_len
        space.vecs = img.vecs.astype(np.float32, copy=False)
        space.has_vec = img.has_vec.astype(bool, copy=False)
        space.live = np.ones(n, dtype=bool)
        space.created_ts = img.created_ts.astype(np.float64, copy=False)
        space._base = dict(zip(img.vocab, range(len(img.vocab)), strict=True))
        space._base_ptr = img.post_ptr
        space._base_slot = img.post_slot
        space._base_tf = img.post_tf
        space._base_vocab = img.vocab
        space._base_n = n
        return space

    def mask(
        self, entry_type: str | None, tags: Sequence[str], since: datetime | None
    ) -> NDArray[np.bool_]:
        import numpy as np

        m = self.live.copy()  # slots past len(self.ids) are never live
        n = len(self.ids)
        if entry_type is not None:
            m[:n] &= np.fromiter((t == entry_type for t in self.types), dtype=bool, count=n)
        if since is not None:
            m &= self.created_ts >= since.timestamp()
        if tags:
            want = frozenset(tags)
            m[:n] &= np.fromiter((want <= t for t in self.tags), dtype=bool, count=n)
        return m

    def _top(self, scores: NDArray[np.float64], m: NDArray[np.bool_], depth: int) -> Ranked:
        import numpy as np

        idx = np.flatnonzero(m)
        if not len(idx) or depth <= 0:
            return []
        sub = scores[idx]
        if len(idx) > depth:
            # the depth-th best score, then everything at least as good (ties kept,
            # ordered by id below as the server index orders them)
            kth = np.partition(-sub, depth - 1)[depth - 1]
            keep = sub >= -kth
            idx, sub = idx[keep], sub[keep]
        ranked = sorted(
            ((self.ids[int(i)], float(s)) for i, s in zip(idx, sub, strict=True)),
            key=lambda kv: (-kv[1], str(kv[0])),
        )
        return [(eid, s) for eid, s in ranked[:depth] if eid is not None]

    def keyword(self, stems: Sequence[str], m: NDArray[np.bool_], depth: int) -> Ranked:
        import numpy as np

        n = len(self)
        if not n or not stems:
            return []
        avgdl = max(self.total_len / n, 1e-9)
        cap = len(self.doclen)
        scores = np.zeros(cap, dtype=np.float64)
        matched = np.zeros(cap, dtype=bool)
        norm = BM25_K1 * (1.0 - BM25_B + BM25_B * self.doclen / avgdl)
        for term in dict.fromkeys(stems):
            post = self._posting(term)
            if post is None:
                continue
            slots, tfs = post
            df = len(slots)
            idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
            scores[slots] += idf * tfs * (BM25_K1 + 1.0) / (tfs + norm[slots])
            matched[slots] = True
        return self._top(scores, m & matched, depth)

    def vector(self, q: NDArray[np.float32], m: NDArray[np.bool_], depth: int) -> Ranked:
        import numpy as np

        m = m & self.has_vec
        if not m.any():
            return []
        n = len(self.ids)  # one pass over the contiguous matrix; masked slots are dropped
        scores = np.full(len(self.doclen), -np.inf, dtype=np.float64)
        # einsum, not `@`: OpenBLAS splits a matrix-vector product this size over its
        # threads, and the hand-off stalls whenever the cores are busy (10k x 384:
        # 0.3 ms on an idle machine, a median of 16-34 ms at load 10); einsum's loop
        # runs in this thread (0.6-1.3 ms), and at 100k both are bound by memory.
        scores[:n] = np.einsum("ij,j->i", self.vecs[:n], np.asarray(q, dtype=np.float32))
        return self._top(scores, m, depth)


class MemoryIndex:
    """The in-memory search index of one process, over every namespace it met."""

    def __init__(
        self,
        feed: ChangeFeed,
        keyring: KeyRing,
        open_docs: OpenDocs,
        *,
        model_id: str | None,
        dim: int,
        tokenizer: int = text.TOKENIZER,
        max_entries: int = 200_000,
        telemetry: Telemetry | None = None,
        warm: WarmStart | None = None,
    ) -> None:
        self.feed = feed
        self.keyring = keyring
        self.open_docs = open_docs
        self.model_id = model_id
        self.dim = dim
        self.tokenizer = tokenizer
        self.max_entries = max_entries
        self.telemetry = telemetry or Telemetry()
        self._spaces: dict[str, _Space] = {}
        self._horizon: int | None = None
        self._applied: set[int] = set()
        self._lock = threading.RLock()
        self._synced_at = 0.0  # time.monotonic() of the last read of the feed
        self._pruned_at = 0.0
        # The sealed warm-start images (search/warm_start.py); per namespace, the
        # changes applied since its image was loaded or written.
        self.warm = warm
        self._unsaved: dict[str, int] = {}
        self._saved_at: dict[str, float] = {}  # time.monotonic() of the last write
        self.builds = 0  # namespaces built from the sealed rows
        self.warm_loads = 0  # namespaces loaded from their image

    # --- keeping up --------------------------------------------------------

    def _total(self) -> int:
        return sum(len(s) for s in self._spaces.values())

    def _capacity_error(self, need: int) -> IndexCapacityError:
        return IndexCapacityError(
            f"the memory search index would hold {need} entries, more than "
            f"{CAPACITY_SETTING} = {self.max_entries} (SEALEDKB_MEMORY_INDEX_MAX_ENTRIES); "
            "raise the setting or give the process more memory",
            field=CAPACITY_SETTING,
        )

    def sync(self, conn: Connection[TupleRow] | None = None) -> None:
        """Apply the changes of every process since the last call (one indexed query
        when nothing changed); ``conn``: on the caller's transaction."""
        with self._lock:
            now = time.monotonic()
            if self._horizon is not None and now - self._synced_at > REBUILD_AFTER_SECONDS:
                # changes older than the feed keeps may be gone: start afresh
                self._spaces.clear()
                self._horizon = None
                self._applied = set()
            if conn is None and now - self._pruned_at > PRUNE_EVERY_SECONDS:
                self._pruned_at = now
                self.feed.prune(FEED_KEEP_SECONDS)
            self._synced_at = now
            if self._horizon is None:
                self._horizon = self.feed.horizon(conn)
                return
            horizon, changes = self.feed.since(self._horizon, conn)
            fresh = [c for c in changes if c.seq not in self._applied]
            ids = list(dict.fromkeys(c.entry_id for c in fresh if c.namespace in self._spaces))
            step = OPEN_BATCH * 4
            for i in range(0, len(ids), step):
                self._apply(self.feed.rows(ids[i : i + step], conn), ids[i : i + step])
            self._applied = {c.seq for c in changes if c.xid >= horizon}
            self._horizon = horizon
            if self.warm is not None and fresh:
                for c in fresh:
                    if c.namespace in self._unsaved:
                        self._unsaved[c.namespace] += 1
                if conn is None:  # not inside a caller's (locking) transaction
                    for ns, n in list(self._unsaved.items()):
                        if (
                            n >= REWRITE_AFTER_CHANGES
                            and now - self._saved_at.get(ns, -math.inf) >= REWRITE_EVERY_SECONDS
                        ):
                            self._save(ns)

    def _apply(self, rows: list[IndexRow], ids: Sequence[uuid.UUID]) -> None:
        found = {r.id for r in rows}
        for eid in ids:
            if eid not in found:  # the row is gone (deleted outright)
                for each in self._spaces.values():
                    each.remove(eid)
        live = []
        for r in rows:
            space = self._spaces.get(r.namespace)
            if space is None:
                continue
            if r.deleted:
                space.remove(r.id)
            else:
                live.append(r)
        self._put(live)

    def _space(self, namespace: str, conn: Connection[TupleRow] | None = None) -> _Space:
        """The namespace's index, built from its sealed rows on first use."""
        known = self._spaces.get(namespace)
        if known is not None:
            return known
        if self.warm is not None:
            loaded = self._load_image(namespace, conn)
            if loaded is not None:
                return loaded
        need = self._total() + self.feed.count_live(namespace, conn)
        if need > self.max_entries:
            raise self._capacity_error(need)
        space = _Space(self.dim)
        self._spaces[namespace] = space
        try:
            for batch in self.feed.live_rows(namespace, conn=conn):
                self._put(batch)
        except BaseException:
            del self._spaces[namespace]
            raise
        self.builds += 1
        log.info("memory index of namespace %s built: %d entries", namespace, len(space))
        self._unsaved[namespace] = 0
        if self.warm is not None and conn is None and len(space):
            self._save(namespace)
        return space

    # --- the warm-start image (search/warm_start.py) -----------------------

    def _load_image(self, namespace: str, conn: Connection[TupleRow] | None) -> _Space | None:
        """The namespace's index from its sealed image, brought up to date from the
        change feed; None when there is no image or it cannot be trusted (then the
        caller builds from the rows). Runs after :meth:`sync` set the horizon."""
        assert self.warm is not None
        if not self.warm.exists(namespace) or self._horizon is None:
            return None
        image: LoadedImage | None = self.warm.load(
            namespace,
            feed=self.feed.position(),
            horizon_now=self._horizon,
            model_id=self.model_id,
            dim=self.dim,
            tokenizer=self.tokenizer,
            max_age=REBUILD_AFTER_SECONDS,
            max_entries=max(self.max_entries - self._total(), 0),
        )
        if image is None:
            return None
        try:
            space = _Space.from_image(image.space, self.dim)
        except ValueError:
            self.warm.refused += 1
            log.warning("memory index image of namespace %s refused (malformed)", namespace)
            return None
        self._spaces[namespace] = space
        try:
            # Every change since the image's position, applied from the rows as they
            # are now (a change also at or above this process's horizon is applied
            # again by the next sync: applying reads the current row, so twice is harmless).
            _, changes = self.feed.since(image.meta.horizon, conn)
            done = set(image.meta.applied)
            ids = list(
                dict.fromkeys(
                    c.entry_id for c in changes if c.namespace == namespace and c.seq not in done
                )
            )
            step = OPEN_BATCH * 4
            for i in range(0, len(ids), step):
                self._apply(self.feed.rows(ids[i : i + step], conn), ids[i : i + step])
            live = self.feed.count_live(namespace, conn)
        except BaseException:
            del self._spaces[namespace]
            raise
        if live != len(space):
            # The rows and the image disagree (a change the feed no longer holds, a
            # restore, a concurrent write): rebuild rather than guess.
            del self._spaces[namespace]
            self.warm.refused += 1
            log.warning(
                "memory index image of namespace %s refused (%d entries after the change "
                "feed, %d live rows): rebuilding",
                namespace,
                len(space),
                live,
            )
            return None
        self.warm_loads += 1
        self._unsaved[namespace] = len(ids)
        log.info(
            "memory index of namespace %s loaded from its image: %d entries, %d changes applied",
            namespace,
            len(space),
            len(ids),
        )
        if len(ids) >= REWRITE_AFTER_CHANGES and conn is None:
            self._save(namespace)
        return space

    def _save(self, namespace: str) -> None:
        """Write the namespace's sealed image at this index's change-feed position."""
        assert self.warm is not None and self._horizon is not None
        space = self._spaces[namespace]
        try:
            self.warm.save(
                namespace,
                space.to_image(),
                model_id=self.model_id,
                dim=self.dim,
                tokenizer=self.tokenizer,
                horizon=self._horizon,
                applied=tuple(sorted(self._applied)),
                feed=self.feed.position(),
            )
        except SealedKBError as exc:  # an image is a cache: never fail the caller for it
            log.warning("memory index image of namespace %s not written: %s", namespace, exc.code)
        self._unsaved[namespace] = 0
        self._saved_at[namespace] = time.monotonic()

    def save(self, namespace: str | None = None) -> None:
        """Write the warm-start image of a namespace (or of every one with changes
        since its image): ``serve`` calls this when it closes."""
        if self.warm is None:
            return
        with self._lock:
            if self._horizon is None:
                return
            for ns in [namespace] if namespace is not None else list(self._spaces):
                if (
                    ns in self._spaces
                    and len(self._spaces[ns])
                    and (namespace is not None or self._unsaved.get(ns, 1))
                ):
                    self._save(ns)

    def _put(self, rows: Sequence[IndexRow]) -> None:
        by_ns: dict[str, list[IndexRow]] = {}
        for r in rows:
            by_ns.setdefault(r.namespace, []).append(r)
        for ns, items in by_ns.items():
            space = self._spaces[ns]
            for i in range(0, len(items), OPEN_BATCH):
                batch = items[i : i + OPEN_BATCH]
                docs = self._open_docs(ns, batch)
                vecs = self._open_vectors(ns, batch)
                for r, d, v in zip(batch, docs, vecs, strict=True):
                    if d is None:
                        space.remove(r.id)
                    else:
                        space.put(r, d, v, self.tokenizer)

    def _bad(self, eid: uuid.UUID, what: str) -> None:
        self.telemetry.integrity_failure()
        log.warning("memory index left out entry %s: its %s failed its integrity check", eid, what)

    def _open_docs(self, ns: str, rows: Sequence[IndexRow]) -> list[EntryDoc | None]:
        out: list[EntryDoc | None] = [None] * len(rows)
        items = [(i, (r.id, r.doc_sealed)) for i, r in enumerate(rows) if r.doc_sealed is not None]
        for r in rows:
            if r.doc_sealed is None:
                self._bad(r.id, "document")  # a plaintext row in an encrypted knowledge base
        try:
            docs = self.open_docs(ns, [it for _, it in items])
            for (i, _), d in zip(items, docs, strict=True):
                out[i] = d
            return out
        except IntegrityError:
            pass
        for i, it in items:  # find the bad ones
            try:
                out[i] = self.open_docs(ns, [it])[0]
            except IntegrityError:
                self._bad(it[0], "document")
        return out

    def _open_vectors(self, ns: str, rows: Sequence[IndexRow]) -> list[NDArray[np.float32] | None]:
        import numpy as np

        out: list[NDArray[np.float32] | None] = [None] * len(rows)
        pos = [
            i
            for i, r in enumerate(rows)
            if r.embedding_sealed is not None and r.embed_model == self.model_id
        ]
        if not pos or self.model_id is None:
            return out
        blobs = [rows[i].embedding_sealed or b"" for i in pos]
        aads = [embedding_aad(ns, rows[i].id) for i in pos]
        plains: list[bytes | None]
        try:
            plains = list(self.keyring.open_many(blobs, aads))
        except OpenFailedError:
            plains = []
            for b, a, i in zip(blobs, aads, pos, strict=True):
                try:
                    plains.append(self.keyring.open(b, a))
                except IntegrityError:
                    self._bad(rows[i].id, "embedding")
                    plains.append(None)
        for i, p in zip(pos, plains, strict=True):
            if p is None:
                continue
            if len(p) != 4 * self.dim:
                self._bad(rows[i].id, "embedding")
                continue
            out[i] = np.frombuffer(p, dtype="<f4").astype(np.float32)
        return out

    def _ready(self, namespace: str, conn: Connection[TupleRow] | None = None) -> _Space:
        self.sync(conn)
        space = self._space(namespace, conn)
        total = self._total()
        if total > self.max_entries:
            raise self._capacity_error(total)
        return space

    # --- answers -----------------------------------------------------------

    def candidates(
        self,
        namespace: str,
        *,
        stems: Sequence[str],
        vector: NDArray[np.float32] | None,
        entry_type: str | None,
        tags: Sequence[str],
        since: datetime | None,
        depth: int,
    ) -> tuple[Ranked, Ranked]:
        """(keyword candidates by BM25, vector candidates by exact cosine), best
        first, ``depth`` each, after the filters."""
        with self._lock:
            space = self._ready(namespace)
            m = space.mask(entry_type, tags, since)
            kw = space.keyword(stems, m, depth) if stems else []
            sem = space.vector(vector, m, depth) if vector is not None else []
            return kw, sem

    def prepare(self, namespace: str) -> None:
        """Build the namespace's index and catch up (before taking a lock, so that
        :meth:`duplicate` under it has only the latest changes to read). An index
        read up to date less than PREPARE_FRESH_SECONDS ago is left for
        :meth:`duplicate` to catch up on the caller's transaction: what it has to read
        there is that short moment's changes (one statement and their rows, against
        a transaction of its own here: the difference in a run of single adds)."""
        with self._lock:
            if (
                namespace in self._spaces
                and self._horizon is not None
                and time.monotonic() - self._synced_at < PREPARE_FRESH_SECONDS
            ):
                return
            self._ready(namespace)

    def duplicate(
        self, namespace: str, normalized: str, conn: Connection[TupleRow] | None = None
    ) -> uuid.UUID | None:
        """The oldest live entry of the namespace with this normalised content, if any;
        ``conn``: catch up on the caller's transaction (the one holding the add lock,
        so a pool of busy connections cannot stall it)."""
        with self._lock:
            space = self._ready(namespace, conn)
            holders = space.by_fp.get(content_fingerprint(normalized))
            if not holders:
                return None
            # the oldest: the entry that later copies (forced duplicates) were made of
            return min(holders, key=lambda e: (space.created_ts[space.slot_of[e]], e))

    def tagged(
        self,
        namespace: str,
        tag: str,
        *,
        entry_type: str | None = None,
        include_archived: bool = True,
    ) -> list[uuid.UUID]:
        """Live entries of the namespace carrying ``tag``, newest first (then by id)."""
        with self._lock:
            space = self._ready(namespace)
            out = []
            for eid, slot in space.slot_of.items():
                if tag not in space.tags[slot]:
                    continue
                if entry_type is not None and space.types[slot] != entry_type:
                    continue
                if not include_archived and space.archived[slot]:
                    continue
                out.append((space.created_ts[slot], eid))
            out.sort(key=lambda te: (-te[0], te[1]))
            return [eid for _, eid in out]

    def tag_counts(self, namespace: str, top: int) -> list[tuple[str, int]]:
        """The most used tags of a namespace (count, then name)."""
        with self._lock:
            space = self._ready(namespace)
            counts: dict[str, int] = {}
            for slot in space.slot_of.values():
                for t in space.tags[slot]:
                    counts[t] = counts.get(t, 0) + 1
            return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]

    def stats(self) -> MemoryStats:
        with self._lock:
            spaces = self._spaces.values()
            return MemoryStats(
                namespaces=len(self._spaces),
                entries=sum(len(s) for s in spaces),
                vectors=sum(int(s.has_vec.sum()) for s in spaces),
                terms=sum(len(s.postings) + len(s._base) for s in spaces),
            )
