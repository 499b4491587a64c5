"""Hybrid search over sealed entries: blind keyword tokens + DCPE vectors (docs/DESIGN.md §4).

Where plaintext meets crypto for search, next to kb/knowledge_base.py:

* write side (:class:`SearchIndexer`): title and content go through the keyword
  pipeline (:mod:`sealedkb.search.text`); each stem becomes a keyed blind token and the
  tokens a tsvector without positions (each token once; a title token weight A at
  position 1), so the database cannot read word order or counts (docs/SEARCH.md,
  "Leakage"). The embedding of title +
  content is encrypted with DCPE for the HNSW index and sealed exactly beside it.
  A keyed fingerprint of the normalised content deduplicates. In plaintext mode
  the same features run on plaintext (to_tsvector, plain vectors, sha256).
* read side (:class:`SearchEngine`): the query's stems become tokens (OR-ed
  tsquery, ranked with ts_rank); the query vector is encrypted like a stored one
  (rotated and perturbed, fresh noise each time) and the HNSW index over-fetches
  ``k x oversample`` candidates, which
  are re-ranked by exact cosine after opening their sealed embeddings. Hybrid
  mode fuses both lists with weighted reciprocal rank fusion (:func:`fuse`, weights
  per embedding model, chosen on bench/bench_quality.py) and falls back to
  keyword-only when the embedder fails.

β, oversample and ef_search were chosen by measurement (docs/SEARCH.md,
bench/leakage/dcpe.py, bench/leakage/recall_e2e.py, bench/bench_search_perf.py): with
β = 2.5 and perturbed queries, recall@10 against exact plaintext search is >= 0.99 on
real MiniLM vectors at oversample 8 (0.998 end to end with the HNSW index) and on the
denser benchmark corpus (near-duplicate variants) at oversample 16 (0.979 at 8). The
re-rank remembers opened exact embeddings under each row's version stamp
(``rerank_cache``), so the over-fetched candidates cost graph search, not opens.
While a ``sealedkb reindex`` is unfinished, queries are also made under the retired
keys (search/reindex.py).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from sealedkb._lru import LRUCache
from sealedkb.crypto.blind import Blinder
from sealedkb.crypto.keyring import KeyRing
from sealedkb.crypto.sealed import FieldSealer, OpenFailedError
from sealedkb.embed import Embedder
from sealedkb.embed.minilm import MODEL_ID as MINILM_MODEL_ID
from sealedkb.errors import EmbeddingError, IntegrityError, ValidationError
from sealedkb.formats.aad import embedding_aad, embedding_aad_prefix
from sealedkb.formats.entry_doc import EntryDoc
from sealedkb.model import (
    EntryType,
    KeyPurpose,
    validate_entry_type,
    validate_namespace,
    validate_tags,
)
from sealedkb.model import SearchMode as SearchMode  # a plain type; also exported here
from sealedkb.monitoring.telemetry import Telemetry
from sealedkb.search import digest, text
from sealedkb.store.search import (
    HitRow,
    SearchColumns,
    SearchFilter,
    SearchTable,
    VectorCandidate,
)

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from sealedkb.kb.knowledge_base import KnowledgeBase

log = logging.getLogger("sealedkb.search")


DB_DIM = 384  # vector(384) columns of migration 003

# DCPE and ANN settings, chosen by measurement (docs/SEARCH.md).
DCPE_BETA = 2.5
OVERSAMPLE = 16
QUERY_NOISE = True  # query vectors are perturbed as stored ones are (fresh noise each)
KEYWORD_POSITIONS = False  # keyword tokens are stored without positions (docs/SEARCH.md)
EF_SEARCH_MIN = 40
# The encrypted vector arm's graph search walks at least this far: with over-fetch x16
# recall@10 vs exact reached 0.99 only from ef_search 200 (0.987-0.988 at 176; the
# sweep of bench/bench_search_perf.py --recall-sweep, docs/SEARCH.md).
EF_SEARCH_ENCRYPTED_MIN = 200
# Opened exact embeddings a process remembers for the re-rank, keyed by (namespace, id,
# row version stamp): a candidate met before costs neither a TOAST read nor an AES-GCM
# open (docs/SEARCH.md, "Re-rank cache"). 384 x 4 bytes each: ~80 MB at the bound.
RERANK_CACHE_ENTRIES = 50_000
RERANK_CACHE_SECONDS = 600.0
RRF_K = 60
# Hybrid fusion (fuse): (k, keyword weight) per embedding model, chosen on
# bench/bench_quality.py (docs/SEARCH.md, "Quality"). How much the keyword arm may move
# the semantic arm's order depends on how good the model is: with MiniLM a strong
# semantic arm leads and keyword matches reorder its candidates; a model not measured
# keeps equal-weight reciprocal rank fusion (k = 60), which never lost to its better
# arm with the weak hashing embedder.
FUSION_DEFAULT = (float(RRF_K), 1.0)
FUSION_BY_MODEL: dict[str, tuple[float, float]] = {MINILM_MODEL_ID: (5.0, 0.2)}
SEARCH_WORKERS = 4  # threads running hybrid searches' keyword arms
MATCH_BUDGET = 0.05  # keyword search ranks the rows of its rarest words, up to ~5 % of rows

MAX_QUERY_CHARS = 1000
MAX_LIMIT = 50  # hits per page
MAX_WINDOW = 200  # offset + limit: the hard cap on how deep a search pages
MIN_FUSION_DEPTH = 10
RETIRED_KEYS_MAX_AGE = 2.0  # seconds a search trusts its view of a running reindex
MAX_CACHED_NAMESPACES = 16  # word -> token caches kept by the indexer (<= 65,536 words each)
EMBED_TEXT_CHARS = 4000  # the model sees 256 tokens (~1,000 chars); cut early


@dataclass(frozen=True, slots=True)
class SearchHit:
    id: uuid.UUID
    namespace: str
    title: str
    score: float
    snippet: str
    entry_type: EntryType
    tags: tuple[str, ...]
    source: str | None
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "namespace": self.namespace,
            "title": self.title,
            "score": round(self.score, 6),
            "snippet": self.snippet,
            "entry_type": self.entry_type.value,
            "tags": list(self.tags),
            "source": self.source,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class SearchResult:
    hits: list[SearchHit]
    mode: SearchMode  # what ran (keyword when hybrid fell back)
    requested_mode: SearchMode
    limit: int
    offset: int
    next_offset: int | None  # None: no further page (or the depth cap is reached)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode.value,
            "requested_mode": self.requested_mode.value,
            "limit": self.limit,
            "offset": self.offset,
            "next_offset": self.next_offset,
            "warnings": self.warnings,
            "hits": [h.to_dict() for h in self.hits],
        }


# --- helpers shared by write and read side ------------------------------------

_WS_RE = re.compile(r"\s+")
_WORD_SPAN_RE = re.compile(r"\w+")


def normalize_content(content: str) -> str:
    """What dedup compares: NFKC, whitespace runs collapsed, ends stripped."""
    return _WS_RE.sub(" ", unicodedata.normalize("NFKC", content)).strip()


def embedding_text(title: str, content: str) -> str:
    return f"{title}\n\n{content[:EMBED_TEXT_CHARS]}" if title else content[:EMBED_TEXT_CHARS]


def vector_bytes(v: NDArray[np.float32]) -> bytes:
    import numpy as np

    return np.asarray(v, dtype="<f4").tobytes()


def vector_from_bytes(b: bytes, dim: int) -> NDArray[np.float32]:
    import numpy as np

    if len(b) != 4 * dim:
        raise IntegrityError("sealed embedding has the wrong size")
    return np.frombuffer(b, dtype="<f4").astype(np.float32)


def check_embedder(embedder: Embedder) -> None:
    if embedder.dim != DB_DIM:
        raise EmbeddingError(
            f"embedder {embedder.model_id} makes {embedder.dim}-d vectors; the database "
            f"stores {DB_DIM}-d vectors (a different dimension needs a schema migration)"
        )


class SearchIndexer:
    """Computes the search columns of an entry (write side)."""

    def __init__(
        self,
        keyring: KeyRing | None,
        embedder: Embedder | None,
        tokenizer: int = text.TOKENIZER,
    ) -> None:
        self.keyring = keyring
        self.embedder = embedder
        self.tokenizer = tokenizer  # the knowledge base's keyword_tokenizer (kb_meta)
        # Keyword tokens without positions (docs/SEARCH.md, "Leakage"): True writes the
        # earlier form with positions and title weights (benchmarks of the leakage).
        self.keyword_positions = KEYWORD_POSITIONS
        # namespace -> (its blinder, a word -> blind token cache over that blinder);
        # replaced when the key ring hands out another blinder (key expiry, rotation).
        self._lexers: dict[str, tuple[Blinder, text.LexemeIndexer]] = {}

    def _lexer(self, namespace: str, blinder: Blinder) -> text.LexemeIndexer:
        hit = self._lexers.get(namespace)
        if hit is not None and hit[0] is blinder and hit[1].tokenizer == self.tokenizer:
            return hit[1]
        if len(self._lexers) >= MAX_CACHED_NAMESPACES:
            self._lexers.clear()
        lexer = text.LexemeIndexer(blinder.word_token, tokenizer=self.tokenizer)
        self._lexers[namespace] = (blinder, lexer)
        return lexer

    def embed(self, docs: Sequence[tuple[str, str]]) -> NDArray[np.float32] | None:
        """Vectors of (title, content) pairs, or None when there is no embedder or it
        fails: the entry is stored without a vector and ``reembed`` fills it in later."""
        if self.embedder is None or not docs:
            return None
        try:
            check_embedder(self.embedder)
            return self.embedder.embed([embedding_text(t, c) for t, c in docs])
        except EmbeddingError as exc:
            log.warning("storing without embeddings: %s", exc.message)
            return None

    def columns(
        self,
        namespace: str,
        entry_id: uuid.UUID,
        doc: EntryDoc,
        vector: NDArray[np.float32] | None,
        *,
        with_fingerprint: bool = True,
    ) -> SearchColumns:
        cols = SearchColumns()
        norm = normalize_content(doc.content)
        sealer: FieldSealer | None = None
        lexemes: set[str] = set()
        if self.keyring is not None:
            sealer, blinder = self.keyring.writer(namespace)  # the content sealer
            cols.kw_tokens, lexemes = self._lexer(namespace, blinder).index(
                doc.title, doc.content, positions=self.keyword_positions
            )
            if with_fingerprint:
                cols.fingerprint = blinder.fingerprint(norm)
        elif with_fingerprint:
            cols.fingerprint = hashlib.sha256(norm.encode()).hexdigest()
        if vector is not None and self.embedder is not None:
            self.set_vector(cols, namespace, entry_id, vector, sealer=sealer)
        if self.keyring is not None:
            cols.index_digest = digest.index_digest(
                digest.kw_hash(lexemes), digest.vec_hash(cols.embedding_enc)
            )
        return cols

    def set_vector(
        self,
        cols: SearchColumns,
        namespace: str,
        entry_id: uuid.UUID,
        vector: NDArray[np.float32],
        *,
        sealer: FieldSealer | None = None,
    ) -> None:
        import numpy as np

        assert self.embedder is not None
        cols.embed_model = self.embedder.model_id
        cols.embed_dim = self.embedder.dim
        if self.keyring is not None:
            cipher = self.keyring.vector_cipher(namespace, self.embedder.dim, DCPE_BETA)
            cols.embedding_enc = cipher.encrypt(vector)[0]
            if sealer is None:
                sealer = self.keyring.sealer(namespace, KeyPurpose.CONTENT)
            aad = embedding_aad(namespace, entry_id)
            cols.embedding_sealed = sealer.seal(vector_bytes(vector), aad)
        else:
            cols.embedding_plain = np.asarray(vector, dtype=np.float32)


# --- read side ------------------------------------------------------------------


def parse_since(value: str | datetime | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    from datetime import UTC

    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValidationError(
            "since must be a date (YYYY-MM-DD) or an ISO 8601 time", field="since"
        ) from None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


SNIPPET_SCAN_CHARS = 20_000  # look for the best window in the first 20 KB only
SNIPPET_CHARS = 240


def _is_word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def snippet(content: str, stems: set[str], width: int = SNIPPET_CHARS) -> str:
    """About ``width`` characters of the content around the densest cluster of query
    words (the start when none occur), cut at spaces, whitespace collapsed, with
    ellipses where it was cut.

    Stems are looked up once per distinct word and matches found with str.find (no
    per-query regex to compile): a snippet costs tens of microseconds.
    """
    head = content[:SNIPPET_SCAN_CHARS]
    low = head.lower()
    start = 0
    if stems and len(low) == len(head):  # lower() kept the offsets (nearly always)
        term_of = text.term_of
        pos: list[int] = []
        for w in [w for w in set(_WORD_SPAN_RE.findall(low)) if term_of(w) in stems]:
            i = low.find(w)
            while i >= 0:
                e = i + len(w)
                if (i == 0 or not _is_word_char(low[i - 1])) and (
                    e == len(low) or not _is_word_char(low[e])
                ):
                    pos.append(i)
                i = low.find(w, e)
        pos.sort()
        best, best_n, j = 0, 0, 0
        for i, p in enumerate(pos):  # most matches within one window
            while pos[j] < p - width * 3 // 4:
                j += 1
            if i - j + 1 > best_n:
                best, best_n = pos[j], i - j + 1
        start = max(0, best - width // 4)
        if start:
            space = head.rfind(" ", 0, start)
            start = space + 1 if space >= 0 else 0
    end = start + width
    if end < len(content):
        space = content.find(" ", end)
        end = space if space >= 0 and space - end < 40 else end
    out = _WS_RE.sub(" ", content[start:end]).strip()
    return ("… " if start > 0 else "") + out + (" …" if end < len(content.rstrip()) else "")


class CandidateSource(Protocol):
    """Search candidates from an index other than PostgreSQL's (search/memory.py)."""

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
    ) -> tuple[list[tuple[uuid.UUID, float]], list[tuple[uuid.UUID, float]]]: ...


class SearchEngine:
    """The read side. ``open_doc`` opens a sealed entry document (kb/knowledge_base.py)."""

    def __init__(
        self,
        table: SearchTable,
        keyring: KeyRing | None,
        embedder: Embedder | None,
        open_doc: Callable[[str, uuid.UUID, bytes], EntryDoc],
        *,
        open_docs: Callable[[str, Sequence[tuple[uuid.UUID, bytes]]], list[EntryDoc]] | None = None,
        tokenizer: int = text.TOKENIZER,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.table = table
        self.telemetry = telemetry or Telemetry()  # counts forged rows met by search
        self.tokenizer = tokenizer  # as the indexer's: query words split as stored ones
        self.keyring = keyring
        self.embedder = embedder
        self.open_doc = open_doc
        self.open_docs = open_docs  # a page of hits in one batch, when given
        self.oversample = OVERSAMPLE
        self.query_noise = QUERY_NOISE
        self.ef_search_min = EF_SEARCH_MIN
        self.ef_search_encrypted_min = EF_SEARCH_ENCRYPTED_MIN
        self.parallel_arms = True  # hybrid: keyword and vector arms concurrently
        # kb_meta search_index = memory: both arms answered by the process's own
        # index (search/memory.py) instead of PostgreSQL's.
        self.memory: CandidateSource | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        # namespace -> (monotonic expiry, the keys an unfinished reindex moves off)
        self._retired: dict[str, tuple[float, tuple[uuid.UUID, uuid.UUID] | None]] = {}
        self.rerank_cache = LRUCache[tuple[str, str, int], "NDArray[np.float32]"](
            RERANK_CACHE_ENTRIES, max_age=RERANK_CACHE_SECONDS
        )

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            with self._executor_lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(
                        max_workers=SEARCH_WORKERS, thread_name_prefix="sealedkb-search"
                    )
        return self._executor

    def _retired_keys(self, ns: str) -> tuple[uuid.UUID, uuid.UUID] | None:
        """The index and vector keys an unfinished ``reindex`` of ``ns`` moves rows off
        (search/reindex.py), re-read every RETIRED_KEYS_MAX_AGE seconds: while it runs,
        queries are also made under them, so rows not yet rebuilt are still found."""
        now = time.monotonic()
        hit = self._retired.get(ns)
        if hit is not None and hit[0] > now:
            return hit[1]
        keys = self.table.reindex_retired_keys(ns)
        if len(self._retired) >= MAX_CACHED_NAMESPACES:
            self._retired.clear()
        self._retired[ns] = (now + RETIRED_KEYS_MAX_AGE, keys)
        return keys

    def close(self) -> None:
        """Stop the worker threads of hybrid search (running searches finish first)."""
        with self._executor_lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    def search(
        self,
        query: str,
        *,
        mode: str | SearchMode = SearchMode.HYBRID,
        limit: int = 10,
        offset: int = 0,
        namespace: str = "default",
        entry_type: str | None = None,
        tags: Sequence[str] = (),
        since: str | datetime | None = None,
    ) -> SearchResult:
        # --- validate everything before any work
        try:
            requested = SearchMode(mode)
        except ValueError:
            raise ValidationError(
                "mode must be hybrid, semantic or keyword", field="mode"
            ) from None
        if not isinstance(query, str) or not query.strip():
            raise ValidationError("query must not be empty", field="query")
        if len(query) > MAX_QUERY_CHARS:
            raise ValidationError(
                f"query is longer than {MAX_QUERY_CHARS} characters", field="query"
            )
        if not 1 <= limit <= MAX_LIMIT:
            raise ValidationError(f"limit must be between 1 and {MAX_LIMIT}", field="limit")
        if offset < 0 or offset + limit > MAX_WINDOW:
            raise ValidationError(
                f"offset must be >= 0 and offset + limit <= {MAX_WINDOW}", field="offset"
            )
        ns = validate_namespace(namespace)
        et = validate_entry_type(entry_type).value if entry_type is not None else None
        norm_tags = validate_tags(list(tags))
        filt = SearchFilter(
            ns,
            et,
            tag_tokens=tuple(self.keyring.blinder(ns).tag_token(t) for t in norm_tags)
            if self.keyring is not None and self.memory is None
            else (),
            tags_plain=() if self.keyring is not None else norm_tags,
            since=parse_since(since),
        )

        warnings: list[str] = []
        used = requested
        stems = text.query_terms(query, self.tokenizer)
        window = offset + limit

        # --- query vector (semantic and hybrid)
        qvec: NDArray[np.float32] | None = None
        if requested is not SearchMode.KEYWORD:
            try:
                if self.embedder is None:
                    raise EmbeddingError("no embedder is configured (SEALEDKB_EMBEDDER=none)")
                check_embedder(self.embedder)
                qvec = self.embedder.embed([query])[0]
            except EmbeddingError as exc:
                if requested is SearchMode.SEMANTIC:
                    raise
                used = SearchMode.KEYWORD
                warnings.append(f"semantic search unavailable, keyword results only: {exc.message}")
                log.warning("hybrid search fell back to keyword: %s", exc.code)

        # One more than the page tells whether another page exists. Hybrid fuses lists
        # of the same depth (at least MIN_FUSION_DEPTH): deeper lists cost the encrypted
        # mode k x oversample opened vectors each, and did not change the FAQ results.
        depth = window + 1 if used is not SearchMode.HYBRID else max(MIN_FUSION_DEPTH, window + 1)
        if self.memory is not None:
            mem_kw, mem_sem = self.memory.candidates(
                ns,
                stems=stems if used is not SearchMode.SEMANTIC else (),
                vector=qvec,
                entry_type=et,
                tags=norm_tags,
                since=filt.since,
                depth=depth,
            )
            return self._result(
                mem_kw, mem_sem, used, requested, limit, offset, stems, norm_tags, warnings
            )
        kw_query = kw_filter = None
        retired = self._retired_keys(ns) if self.keyring is not None else None
        if used is not SearchMode.SEMANTIC and stems:
            if self.keyring is not None:
                tok = self.keyring.blinder(ns).word_token
                lexemes = [tok(s) for s in stems]
                if retired is not None:  # rows a running reindex has not rebuilt yet
                    old_tok = self.keyring.blinder_of(ns, retired[0]).word_token
                    lexemes += [old_tok(s) for s in stems]
                kw_query = " | ".join(lexemes)
                freqs = self.table.term_frequencies("kw_tokens")
            else:
                lexemes = [f"'{s}'" for s in stems]  # [\w.] stems: nothing to escape
                kw_query = query
                freqs = self.table.term_frequencies("kw_plain")
            keep = match_terms(
                lexemes, [freqs.get(s) for s in (lexemes if self.keyring is not None else stems)]
            )
            # No pruning: the ranking query selects the rows itself (in plaintext mode
            # PostgreSQL's parser may make lexemes, e.g. 'sys.path', that our split
            # does not).
            kw_filter = " | ".join(keep) if len(keep) < len(lexemes) else None
        encrypted = self.keyring is not None
        model_id = self.embedder.model_id if self.embedder is not None else None

        def keyword_arm() -> list[tuple[uuid.UUID, float]]:
            assert kw_query is not None
            return self.table.keyword_candidates(
                filt,
                encrypted=encrypted,
                keyword_query=kw_query,
                keyword_filter=kw_filter,
                depth=depth,
            )

        # Hybrid: the keyword arm runs on another pooled connection while this thread
        # runs the vector arm and its re-rank (both modes alike): the slower arm sets
        # the latency, and the encrypted mode's re-rank overlaps the keyword scan.
        kw_job = (
            self._pool().submit(keyword_arm)
            if kw_query and qvec is not None and self.parallel_arms
            else None
        )
        try:
            vec_arg: NDArray[np.float32] | None = None
            old_arg: NDArray[np.float32] | None = None
            fetch = depth
            ef_search = self.ef_search_min
            if qvec is not None:
                if self.keyring is not None:
                    assert self.embedder is not None
                    cipher = self.keyring.vector_cipher(ns, self.embedder.dim, DCPE_BETA)
                    # Queries are perturbed as stored vectors are (fresh noise each
                    # time), so the database cannot link or invert repeated queries.
                    vec_arg = (cipher.encrypt if self.query_noise else cipher.rotate)(qvec)[0]
                    fetch = depth * self.oversample
                    ef_search = self.ef_search_encrypted_min
                    if retired is not None:
                        old = self.keyring.vector_cipher_of(
                            ns, retired[1], self.embedder.dim, DCPE_BETA
                        )
                        old_arg = (old.encrypt if self.query_noise else old.rotate)(qvec)[0]
                else:
                    vec_arg = qvec
            sem: list[tuple[uuid.UUID, float]] = []
            if vec_arg is not None and qvec is not None:
                vec = self.table.vector_candidates(
                    filt,
                    encrypted=encrypted,
                    vector=vec_arg,
                    model_id=model_id,
                    depth=fetch,
                    ef_search=max(ef_search, fetch),
                )
                if old_arg is not None:
                    seen = {c.id for c in vec}
                    vec += [
                        c
                        for c in self.table.vector_candidates(
                            filt,
                            encrypted=encrypted,
                            vector=old_arg,
                            model_id=model_id,
                            depth=fetch,
                            ef_search=max(ef_search, fetch),
                        )
                        if c.id not in seen
                    ]
                sem = self._rerank(ns, qvec, vec, depth)
        except BaseException:
            if kw_job is not None:
                kw_job.cancel()
            raise
        kw = kw_job.result() if kw_job is not None else keyword_arm() if kw_query else []

        # --- rank
        ranked: list[tuple[uuid.UUID, float]]
        if used is SearchMode.KEYWORD:
            ranked = kw
        elif used is SearchMode.SEMANTIC:
            ranked = sem
        else:
            ranked = fuse(kw, sem, *fusion_for(model_id))
        page = ranked[offset:window]
        more = len(ranked) > window and window < MAX_WINDOW
        hits = self._hits(page, set(stems), norm_tags)
        return SearchResult(
            hits=hits,
            mode=used,
            requested_mode=requested,
            limit=limit,
            offset=offset,
            next_offset=window if more else None,
            warnings=warnings,
        )

    def _result(
        self,
        kw: list[tuple[uuid.UUID, float]],
        sem: list[tuple[uuid.UUID, float]],
        used: SearchMode,
        requested: SearchMode,
        limit: int,
        offset: int,
        stems: Sequence[str],
        tags: Sequence[str],
        warnings: list[str],
    ) -> SearchResult:
        """Rank (fusion in hybrid mode), page, open and check the hits."""
        window = offset + limit
        ranked = kw if used is SearchMode.KEYWORD else sem if used is SearchMode.SEMANTIC else None
        if ranked is None:
            model_id = self.embedder.model_id if self.embedder is not None else None
            ranked = fuse(kw, sem, *fusion_for(model_id))
        page = ranked[offset:window]
        more = len(ranked) > window and window < MAX_WINDOW
        return SearchResult(
            hits=self._hits(page, set(stems), tags),
            mode=used,
            requested_mode=requested,
            limit=limit,
            offset=offset,
            next_offset=window if more else None,
            warnings=warnings,
        )

    def _rerank(
        self,
        ns: str,
        qvec: NDArray[np.float32],
        cands: list[VectorCandidate],
        depth: int,
    ) -> list[tuple[uuid.UUID, float]]:
        """The ``depth`` best candidates by exact cosine. Encrypted: each candidate's
        exact embedding is the one remembered under its row stamp, or its sealed
        embedding read and opened (all the misses in one batch) and remembered."""
        import numpy as np

        if self.keyring is None:
            return [
                (c.id, c.score)
                for c in cands
                if c.score is not None and isinstance(c.id, uuid.UUID)
            ][:depth]
        if not cands:
            return []
        dim = qvec.shape[0]
        ids = [str(c.id) for c in cands]
        vecs: dict[str, NDArray[np.float32]] = {}
        missing: list[str] = []
        remembered = self.rerank_cache.get_many(
            [(ns, i, c.stamp or 0) for i, c in zip(ids, cands, strict=True)]
        )
        for i, hit in zip(ids, remembered, strict=True):
            if hit is None:
                missing.append(i)
            else:
                vecs[i] = hit
        if missing:
            vecs.update(self._open_embeddings(ns, missing, dim))
        keep = [i for i in ids if i in vecs]  # a row gone between the two reads drops out
        if not keep:
            return []
        scores = np.stack([vecs[i] for i in keep]) @ qvec
        order = np.argsort(-scores, kind="stable")[:depth]
        return [(uuid.UUID(keep[i]), float(scores[i])) for i in order]

    def _open_embeddings(self, ns: str, ids: list[str], dim: int) -> dict[str, NDArray[np.float32]]:
        """Read, open and remember the exact embeddings of ``ids`` (one batch)."""
        import numpy as np

        assert self.keyring is not None
        sealed = self.table.sealed_embeddings(ns, ids)
        found = [i for i in ids if i in sealed]
        prefix = embedding_aad_prefix(ns)
        try:
            plains = self.keyring.open_many(
                [sealed[i][1] for i in found], [prefix + i.encode() for i in found]
            )
        except OpenFailedError as exc:
            raise IntegrityError(f"entry {found[exc.index]} failed its integrity check") from None
        out: dict[str, NDArray[np.float32]] = {}
        for i, plain in zip(found, plains, strict=True):
            if len(plain) != 4 * dim:
                self.telemetry.integrity_failure()
                raise IntegrityError(f"entry {i} failed its integrity check")
            vec = np.frombuffer(plain, dtype="<f4")
            self.rerank_cache.put((ns, i, sealed[i][0]), vec)
            out[i] = vec
        return out

    def _forged(self, entry_id: object, why: str) -> None:
        self.telemetry.integrity_failure()
        log.warning("search dropped entry %s: %s", entry_id, why)

    def _authentic(self, r: HitRow, doc: EntryDoc, tags: Sequence[str]) -> bool:
        """Whether a hit's stored search columns are the ones its sealed document was
        indexed with (search/digest.py), and it really carries the filter's tags."""
        if self.keyring is None:
            return True
        if doc.index_digest is not None and not digest.matches(
            doc.index_digest, r.kw_hash or b"", r.vec_hash or b""
        ):
            self._forged(r.id, "its search columns do not match its sealed document")
            return False
        if tags and not set(tags) <= set(doc.tags):
            self._forged(r.id, "its tag tokens do not match its sealed document")
            return False
        return True

    def _hits(
        self, page: list[tuple[uuid.UUID, float]], stems: set[str], tags: Sequence[str] = ()
    ) -> list[SearchHit]:
        rows = self.table.hit_rows(
            [i for i, _ in page],
            column_hashes=(digest.KW_HASH_SQL, digest.VEC_HASH_SQL)
            if self.keyring is not None
            else None,
        )
        opened: dict[uuid.UUID, EntryDoc] = {}
        if self.open_docs is not None:
            by_ns: dict[str, list[tuple[uuid.UUID, bytes]]] = {}
            for hit in rows.values():
                if hit.doc_sealed is not None:
                    by_ns.setdefault(hit.namespace, []).append((hit.id, hit.doc_sealed))
            for ns, items in by_ns.items():
                opened.update(zip([i for i, _ in items], self.open_docs(ns, items), strict=True))
        out = []
        for eid, score in page:
            r = rows.get(eid)
            if r is None:  # deleted between the two queries
                continue
            doc = opened.get(eid) or self._doc(r)
            if not self._authentic(r, doc, tags):
                continue  # a forged hit is dropped (and counted), never shown
            out.append(
                SearchHit(
                    id=r.id,
                    namespace=r.namespace,
                    title=doc.title,
                    score=score,
                    snippet=snippet(doc.content, stems),
                    entry_type=EntryType(r.entry_type),
                    tags=doc.tags,
                    source=doc.source,
                    created_at=r.created_at,
                )
            )
        return out

    def _doc(self, r: HitRow) -> EntryDoc:
        if r.doc_sealed is not None:
            return self.open_doc(r.namespace, r.id, r.doc_sealed)
        if self.keyring is not None:
            self.telemetry.integrity_failure()  # a forged row met by search counts as by get
            raise IntegrityError(f"entry {r.id} is not sealed in an encrypted knowledge base")
        return EntryDoc(
            r.title_plain or "",
            r.content_plain or "",
            r.source_plain,
            {},
            tuple(r.tags_plain or ()),
        )


def match_terms(lexemes: Sequence[str], freqs: Sequence[float | None]) -> list[str]:
    """The query lexemes whose rows are ranked: the rarest first, adding more while the
    share of rows they select stays within MATCH_BUDGET (at least one lexeme). Lexemes
    without a statistic are rarer than every listed one, so they are always kept.

    ts_rank_cd still scores with every query word; only rows that hold nothing but
    very common words (say "object" and "method" in a Python manual) go unranked —
    what an IDF weighting would rank last anyway — and ranking stays ~10x cheaper.
    """
    if not freqs or all(f is None for f in freqs):
        return list(lexemes)
    order = sorted(range(len(lexemes)), key=lambda i: freqs[i] or 0.0)
    keep: list[str] = []
    share = 0.0
    for i in order:
        f = freqs[i] or 0.0
        if keep and share + f > MATCH_BUDGET:
            break
        keep.append(lexemes[i])
        share += f
    return keep


def rrf(
    lists: Sequence[Sequence[tuple[uuid.UUID, float]]], k: int = RRF_K
) -> list[tuple[uuid.UUID, float]]:
    """Reciprocal rank fusion: score(d) = sum over lists of 1 / (k + rank_d), rank from 1."""
    scores: dict[uuid.UUID, float] = {}
    for lst in lists:
        for rank, (eid, _s) in enumerate(lst, start=1):
            scores[eid] = scores.get(eid, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], str(kv[0])))


def fusion_for(model_id: str | None) -> tuple[float, float]:
    """(k, keyword weight) of hybrid fusion for vectors of ``model_id``."""
    return FUSION_BY_MODEL.get(model_id or "", FUSION_DEFAULT)


def fuse(
    keyword: Sequence[tuple[uuid.UUID, float]],
    semantic: Sequence[tuple[uuid.UUID, float]],
    k: float = FUSION_DEFAULT[0],
    keyword_weight: float = FUSION_DEFAULT[1],
) -> list[tuple[uuid.UUID, float]]:
    """Hybrid search's fusion of its two arms (every index mode): weighted reciprocal
    rank fusion, score(d) = keyword_weight / (k + keyword rank) + 1 / (k + semantic
    rank). Ranks only, so the arms' score scales (ts_rank, cosine; PostgreSQL's index or
    the memory index) do not matter; (k, keyword_weight) come from :func:`fusion_for`.
    The default is :func:`rrf` of the two lists."""
    scores: dict[uuid.UUID, float] = {}
    for w, lst in ((keyword_weight, keyword), (1.0, semantic)):
        for rank, (eid, _s) in enumerate(lst, start=1):
            scores[eid] = scores.get(eid, 0.0) + w / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], str(kv[0])))


REEMBED_BATCH = 32


def reembed(
    kb: KnowledgeBase,
    *,
    namespace: str | None = None,
    redo_all: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Recompute the vectors of live entries whose vector is missing or was made by
    another model (``redo_all``: every entry), a batch per transaction.

    Resumable: each committed batch is done, and a rerun selects only what still
    differs from the current model. An entry updated meanwhile keeps the vector its
    own update wrote.
    """
    emb = kb.embedder
    if emb is None:
        raise EmbeddingError("no embedder is configured (SEALEDKB_EMBEDDER=none)")
    check_embedder(emb)
    ns = validate_namespace(namespace) if namespace is not None else None
    done = 0
    after: uuid.UUID | None = None
    while True:
        rows = kb.search_table.needing_embedding(
            emb.model_id, emb.dim, ns, after, REEMBED_BATCH, redo_all=redo_all
        )
        if not rows:
            break
        after = rows[-1].id
        docs = [kb.sealer.open_row(r) for r in rows]
        vectors = emb.embed([embedding_text(d.title, d.content) for d in docs])
        with kb.db.transaction("reembed") as conn:
            for r, d, v in zip(rows, docs, vectors, strict=True):
                cols = kb.sealer.vector_columns(r.namespace, r.id, v)
                sealed = kb.sealer.reseal_with_vector(r, d, cols)
                if kb.search_table.set_embedding(conn, r.id, r.version, cols, sealed):
                    done += 1
        if progress is not None:
            progress(done)
    return {"reembedded": done, "model": emb.model_id, "dim": emb.dim}
