"""A known-document attack on the server-side search index (docs/SEARCH.md, "Leakage").

The attacker holds:

* the database: every row's ``kw_tokens`` (a tsvector of keyed blind tokens),
  ``embedding_enc`` (DCPE ciphertext) and the length of ``doc_sealed``
  (:func:`read_rows`, plain SQL, no key);
* the public code: sealedkb's keyword pipeline (``sealedkb.search.text``) and the public
  embedding model (all-MiniLM-L6-v2);
* the plaintext (title, content) and so the model's embedding of a fraction of the
  documents: public pages that were imported too (:class:`KnownDoc`).

Steps (:func:`run`):

(a) map known documents to rows without any key, by the shape of each row's index:
    with positions, the partition of positions among lexemes is a near-unique
    fingerprint of a text; without positions, the number of distinct lexemes and the
    sealed length narrow the candidates, and token co-occurrence decides the rest;
(b) learn blind token -> stem from the mapped pairs (the lexeme at position p is the
    stem at position p; without positions: the token and the stem that occur in
    exactly the same mapped documents);
(c) recover the words of every other row (and their order, from positions);
(d) DCPE: estimate the secret rotation by orthogonal Procrustes from the mapped
    (plaintext embedding, ciphertext) pairs, "decrypt" every other row's vector and
    compare it with the true embedding (mean cosine, nearest-neighbour identification).

Ground truth (the other rows' real words and vectors) is only used to score the
attack, never by it.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from numpy.typing import NDArray

from sealedkb.search import text

F32 = NDArray[np.float32]

_LEXEME_RE = re.compile(r"'((?:[^']|'')*)'(?::([0-9A-D,]+))?")


@dataclass(frozen=True, slots=True)
class Row:
    """One kb_entries row as the database holds it (no key needed to read it)."""

    id: str
    lexemes: Mapping[str, tuple[int, ...]]  # blind token -> positions (empty: stripped)
    title_positions: frozenset[int]  # positions of weight A (the title)
    sealed_len: int
    vector: F32 | None  # embedding_enc


@dataclass(frozen=True, slots=True)
class KnownDoc:
    """What the attacker knows of one document, or the truth used to score."""

    id: str  # the truth: which row holds it (never used by the attack to map)
    title: str
    content: str
    vector: F32 | None  # the public model's embedding of the document's text


@dataclass(frozen=True, slots=True)
class AttackResult:
    known: int  # documents the attacker knows
    mapped: int  # known documents mapped to a row
    mapped_correct: int  # of those, mapped to the right row
    tokens_mapped: int  # blind tokens whose stem was learned
    tokens_correct: int  # of those, correct
    private_rows: int
    private_occurrences: int  # word occurrences (non-stop words) in the other rows
    recovered_occurrences: int  # of those, whose stem the attacker recovered correctly
    private_words: int  # distinct stems per private row, summed
    recovered_words: int  # of those, recovered (the row's word set, without counts)
    order_recovered: bool  # the index holds positions the attacker can read
    ordered_bigrams: float  # share of the private rows' adjacent word pairs recovered in order
    rotation_cosine: float | None  # mean cosine of decrypted vectors to the true ones
    nn_identification: float | None  # share of rows whose decrypted vector's NN is itself
    ciphertext_cosine: float | None  # the same without the attack (c vs x: ~0, a baseline)

    @property
    def recovered_fraction(self) -> float:
        return self.recovered_occurrences / max(1, self.private_occurrences)

    @property
    def recovered_word_fraction(self) -> float:
        return self.recovered_words / max(1, self.private_words)


def parse_tsvector(tsv: str | None) -> tuple[dict[str, tuple[int, ...]], frozenset[int]]:
    """tsvector text (``'ab':1A,5 'cd':2`` or stripped ``'ab' 'cd'``) -> lexeme ->
    positions, and the positions of weight A."""
    lex: dict[str, tuple[int, ...]] = {}
    title: set[int] = set()
    for m in _LEXEME_RE.finditer(tsv or ""):
        positions: list[int] = []
        for p in (m.group(2) or "").split(","):
            if not p:
                continue
            if p[-1] in "ABCD":
                if p[-1] == "A":
                    title.add(int(p[:-1]))
                p = p[:-1]
            positions.append(int(p))
        lex[m.group(1).replace("''", "'")] = tuple(positions)
    return lex, frozenset(title)


def read_rows(conn: object, namespace: str) -> list[Row]:
    """Every live row of a namespace, as an attacker with SQL access reads it."""
    cur = conn.execute(  # type: ignore[attr-defined]
        "SELECT id::text, kw_tokens::text, embedding_enc::text, length(doc_sealed)"
        " FROM kb_entries WHERE namespace = %s AND deleted_at IS NULL ORDER BY id",
        (namespace,),
    )
    out = []
    for rid, tsv, vec, n in cur.fetchall():
        lex, title = parse_tsvector(tsv)
        v = None if vec is None else np.array(vec.strip("[]").split(","), dtype=np.float32)
        out.append(Row(rid, lex, title, int(n or 0), v))
    return out


def doc_terms(doc: KnownDoc, tokenizer: int = text.TOKENIZER) -> dict[str, tuple[int, ...]]:
    """stem -> positions, exactly as the public pipeline indexes the document."""
    out: dict[str, tuple[int, ...]] = {}
    for stem, ps in text.positioned_terms(doc.title, doc.content, tokenizer).items():
        out[stem] = tuple(int(p.rstrip("A")) for p in ps)
    return out


def _shape(groups: Mapping[str, tuple[int, ...]]) -> tuple[tuple[int, ...], ...]:
    return tuple(sorted(groups.values()))


# --- (a) map known documents to rows ------------------------------------------


def map_by_positions(
    rows: Sequence[Row], known: Sequence[dict[str, tuple[int, ...]]]
) -> dict[int, int]:
    """known index -> row index where the partition of positions is the same and unique."""
    by_shape: dict[tuple[tuple[int, ...], ...], list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        if r.lexemes and any(r.lexemes.values()):
            by_shape[_shape(r.lexemes)].append(i)
    known_shapes = Counter(_shape(k) for k in known)
    out = {}
    for j, k in enumerate(known):
        s = _shape(k)
        cands = by_shape.get(s, [])
        if len(cands) == 1 and known_shapes[s] == 1:
            out[j] = cands[0]
    return out


def map_by_cooccurrence(
    rows: Sequence[Row],
    known: Sequence[dict[str, tuple[int, ...]]],
    sealed_len: Sequence[int | None],
    known_title: Sequence[int],
    rounds: int = 6,
) -> dict[int, int]:
    """Without positions: candidates by the number of distinct lexemes and of title
    lexemes (and sealed length when the attacker can predict it), then token
    co-occurrence.

    Each round learns token -> stem from the pairs mapped so far (tokens and stems that
    occur in exactly the same mapped documents), then maps a further known document to
    the one candidate row whose learned tokens agree with its stems."""
    by_count: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_count[(len(r.lexemes), sum(bool(ps) for ps in r.lexemes.values()))].append(i)

    def candidates(j: int) -> list[int]:
        c = by_count.get((len(known[j]), known_title[j]), [])
        if sealed_len[j] is not None:
            c = [i for i in c if rows[i].sealed_len == sealed_len[j]]
        return c

    cands = {j: candidates(j) for j in range(len(known))}
    mapped = {j: c[0] for j, c in cands.items() if len(c) == 1}
    taken = Counter(mapped.values())
    mapped = {j: i for j, i in mapped.items() if taken[i] == 1}
    for _ in range(rounds):
        stem_of = learn_by_cooccurrence(rows, known, mapped)
        if not stem_of:
            break
        used = set(mapped.values())
        grown = False
        for j, c in cands.items():
            if j in mapped:
                continue
            stems = set(known[j])
            best, best_score, second = -1, -1.0, -1.0
            for i in c:
                if i in used:
                    continue
                learned = [stem_of[t] for t in rows[i].lexemes if t in stem_of]
                if not learned:
                    continue
                score = sum(s in stems for s in learned) / len(learned)
                if score > best_score:
                    best, best_score, second = i, score, best_score
                elif score > second:
                    second = score
            if best >= 0 and best_score >= 0.95 and second < 0.8:
                mapped[j] = best
                used.add(best)
                grown = True
        if not grown:
            break
    return mapped


# --- (b) learn blind token -> stem ----------------------------------------------


def learn_by_positions(
    rows: Sequence[Row], known: Sequence[dict[str, tuple[int, ...]]], mapped: Mapping[int, int]
) -> dict[str, str]:
    """token -> stem: the lexeme holding position p is the stem at position p."""
    votes: dict[str, Counter[str]] = defaultdict(Counter)
    for j, i in mapped.items():
        at = {p: s for s, ps in known[j].items() for p in ps}
        for tok, ps in rows[i].lexemes.items():
            for p in ps:
                if p in at:
                    votes[tok][at[p]] += 1
    return {t: c.most_common(1)[0][0] for t, c in votes.items()}


def learn_by_cooccurrence(
    rows: Sequence[Row], known: Sequence[dict[str, tuple[int, ...]]], mapped: Mapping[int, int]
) -> dict[str, str]:
    """token -> stem when both occur in exactly the same mapped documents (and that set
    is unique to them)."""
    tok_docs: dict[str, set[int]] = defaultdict(set)
    stem_docs: dict[str, set[int]] = defaultdict(set)
    for j, i in mapped.items():
        for t in rows[i].lexemes:
            tok_docs[t].add(j)
        for s in known[j]:
            stem_docs[s].add(j)
    by_set_t: dict[frozenset[int], list[str]] = defaultdict(list)
    by_set_s: dict[frozenset[int], list[str]] = defaultdict(list)
    for t, d in tok_docs.items():
        by_set_t[frozenset(d)].append(t)
    for s, d in stem_docs.items():
        by_set_s[frozenset(d)].append(s)
    out = {}
    for key, toks in by_set_t.items():
        stems = by_set_s.get(key, [])
        if len(toks) == 1 and len(stems) == 1:
            out[toks[0]] = stems[0]
    return out


# --- (d) DCPE: Procrustes -------------------------------------------------------


def decrypt_cosine(r_hat: NDArray[np.float64], c: F32, x: F32) -> float:
    """Mean cosine of ``c R`` (ciphertexts "decrypted" with an estimated rotation) to
    the true vectors ``x``."""
    dec = _unit(c.astype(np.float64) @ r_hat)
    return float(np.mean(np.sum(dec * _unit(x), axis=1)))


def procrustes(x: F32, c: F32) -> NDArray[np.float64]:
    """The orthogonal R minimising ||x R^T - c|| (rows are vectors): R = U V^T from the
    SVD of c^T x."""
    u, _s, vt = np.linalg.svd(c.astype(np.float64).T @ x.astype(np.float64))
    return np.asarray(u @ vt)


def _unit(m: NDArray[np.floating]) -> NDArray[np.float64]:
    m = np.asarray(m, dtype=np.float64)
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)


# --- the whole attack -------------------------------------------------------------


def run(
    rows: Sequence[Row],
    known_docs: Sequence[KnownDoc],
    private_docs: Sequence[KnownDoc],
    *,
    tokenizer: int = text.TOKENIZER,
) -> AttackResult:
    """Run (a)-(d). ``private_docs`` are the truth of the other rows (scoring only)."""
    row_index = {r.id: i for i, r in enumerate(rows)}
    known = [doc_terms(d, tokenizer) for d in known_docs]
    # positions beyond 1 (the hardened index keeps only "1A" for a title lexeme)
    positional = any(len(ps) > 1 or ps[0] > 1 for r in rows for ps in r.lexemes.values() if ps)
    if positional:
        mapped = map_by_positions(rows, known)
        stem_of = learn_by_positions(rows, known, mapped)
    else:
        titles = [len(set(text.terms(d.title, tokenizer))) for d in known_docs]
        mapped = map_by_cooccurrence(rows, known, [None] * len(known), titles)
        stem_of = learn_by_cooccurrence(rows, known, mapped)
    correct_map = sum(rows[i].id == known_docs[j].id for j, i in mapped.items())

    # scoring the token map: the truth of a token is the stem at its positions
    # (positional) or, via the truly mapped rows, the same co-occurrence test.
    truth_rows = [row_index[d.id] for d in known_docs if d.id in row_index]
    true_map = {j: row_index[d.id] for j, d in enumerate(known_docs) if d.id in row_index}
    truth = (
        learn_by_positions(rows, known, true_map)
        if positional
        else learn_by_cooccurrence(rows, known, true_map)
    )
    del truth_rows
    tokens_correct = sum(truth.get(t) == s for t, s in stem_of.items())

    # (c) recover the other rows' words
    occ = rec = words = words_ok = 0
    bigrams = bigrams_ok = 0
    private_rows = 0
    for d in private_docs:
        i = row_index.get(d.id)
        if i is None:
            continue
        private_rows += 1
        terms = doc_terms(d, tokenizer)
        r = rows[i]
        # the stems the attacker reads in this row: occurrences if positions, else one each
        guessed: Counter[str] = Counter()
        at_guess: dict[int, str] = {}
        for tok, ps in r.lexemes.items():
            s = stem_of.get(tok)
            if s is None:
                continue
            guessed[s] += max(1, len(ps)) if positional else 1
            for p in ps:
                at_guess[p] = s
        for s, ps in terms.items():
            occ += len(ps)
            rec += min(len(ps), guessed.get(s, 0))
            words += 1
            words_ok += s in guessed
        seq = sorted((p, s) for s, ps in terms.items() for p in ps)
        for (p1, s1), (p2, s2) in pairwise(seq):
            bigrams += 1
            bigrams_ok += at_guess.get(p1) == s1 and at_guess.get(p2) == s2 and p1 < p2

    # (d) DCPE rotation from mapped pairs
    rot_cos = nn = base = None
    pairs = [
        (known_docs[j].vector, rows[i].vector)
        for j, i in mapped.items()
        if known_docs[j].vector is not None and rows[i].vector is not None
    ]
    priv = [
        (d.vector, rows[row_index[d.id]].vector)
        for d in private_docs
        if d.id in row_index and d.vector is not None and rows[row_index[d.id]].vector is not None
    ]
    if len(pairs) >= 2 and priv:
        x = np.stack([p[0] for p in pairs])  # type: ignore[misc]
        c = np.stack([p[1] for p in pairs])  # type: ignore[misc]
        r_hat = procrustes(x, c)
        truth_v = _unit(np.stack([p[0] for p in priv]))  # type: ignore[misc]
        ct = np.stack([p[1] for p in priv])  # type: ignore[misc]
        dec = _unit(ct.astype(np.float64) @ r_hat)  # x = R^T c, row form: c R
        rot_cos = float(np.mean(np.sum(dec * truth_v, axis=1)))
        base = float(np.mean(np.sum(_unit(ct) * truth_v, axis=1)))
        sims = dec @ truth_v.T
        nn = float(np.mean(np.argmax(sims, axis=1) == np.arange(len(priv))))
    return AttackResult(
        known=len(known_docs),
        mapped=len(mapped),
        mapped_correct=correct_map,
        tokens_mapped=len(stem_of),
        tokens_correct=tokens_correct,
        private_rows=private_rows,
        private_occurrences=occ,
        recovered_occurrences=rec,
        private_words=words,
        recovered_words=words_ok,
        order_recovered=positional and bigrams_ok > 0,
        ordered_bigrams=bigrams_ok / max(1, bigrams),
        rotation_cosine=rot_cos,
        nn_identification=nn,
        ciphertext_cosine=base,
    )
