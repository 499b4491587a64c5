"""The keyword pipeline: text -> normalised, stemmed terms with positions (DESIGN.md §4).

NFKC + casefold, split on non-word characters, drop English stop words, Snowball
English stem. The same pipeline feeds the blind-token index (encrypted mode),
query terms, snippets and import chunking, so a word matches the same way at
write and at query time. No crypto here: :mod:`sealedkb.search` turns the stems
into keyed tokens with :class:`sealedkb.crypto.blind.Blinder`.

Stemming is pure Python (snowballstemmer) and costs ~5 µs a word, so stems are
cached in a bounded LRU: vocabularies are Zipfian and the cache turns the cost
into a dict lookup on the write path.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

import snowballstemmer

# The Snowball English stop list (the one PostgreSQL's 'english' configuration uses),
# so the plaintext baseline (to_tsvector) and the blind index drop the same words.
STOP_WORDS = frozenset(
    """
    i me my myself we our ours ourselves you your yours yourself yourselves he him his
    himself she her hers herself it its itself they them their theirs themselves what
    which who whom this that these those am is are was were be been being have has had
    having do does did doing a an the and but if or because as until while of at by for
    with about against between into through during before after above below to from up
    down in out on off over under again further then once here there when where why how
    all any both each few more most other some such no nor not only own same so than too
    very s t can will just don should now
    """.split()  # noqa: SIM905 - the list reads as the published stop list
)

# tsvector limits (PostgreSQL): positions 1..16383, at most 256 positions per lexeme.
MAX_POSITION = 16383
MAX_POSITIONS_PER_TERM = 256
MAX_WORD_CHARS = 64  # longer "words" are base64 blobs or hashes: no search value
MAX_QUERY_TERMS = 32

_WORD_RE = re.compile(r"\w+")
_stemmer = snowballstemmer.stemmer("english")


@lru_cache(maxsize=200_000)
def stem(word: str) -> str:
    """Snowball English stem of one already-normalised word."""
    return str(_stemmer.stemWord(word))


def normalize(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def words(text: str) -> list[str]:
    """Normalised words of ``text`` (stop words included), in order."""
    return _WORD_RE.findall(normalize(text))


def terms(text: str) -> list[str]:
    """Stems of the non-stop words of ``text``, in order (duplicates kept)."""
    out = []
    for w in _WORD_RE.findall(normalize(text)):
        if w in STOP_WORDS or len(w) > MAX_WORD_CHARS:
            continue
        out.append(stem(w))
    return out


def query_terms(text: str) -> list[str]:
    """Distinct stems of a query, first occurrence order, at most MAX_QUERY_TERMS."""
    seen: dict[str, None] = {}
    for t in terms(text):
        seen.setdefault(t, None)
        if len(seen) >= MAX_QUERY_TERMS:
            break
    return list(seen)


def positioned_terms(title: str, content: str) -> dict[str, list[tuple[int, bool]]]:
    """term -> [(position, in_title)], title first (positions 1..), content after a gap.

    Positions are clamped to 16383 and de-duplicated, at most 256 per term, as
    PostgreSQL's tsvector requires; ts_rank_cd needs them for cover density.
    """
    out: dict[str, list[tuple[int, bool]]] = {}
    pos = 0
    for is_title, text in ((True, title), (False, content)):
        for t in terms(text):
            pos += 1
            p = pos if pos < MAX_POSITION else MAX_POSITION
            lst = out.get(t)
            if lst is None:
                out[t] = [(p, is_title)]
            elif len(lst) < MAX_POSITIONS_PER_TERM and lst[-1][0] != p:
                lst.append((p, is_title))
        pos += 1  # a gap, so no cover spans title and content
    return out


def tsvector_literal(lexemes: Iterable[tuple[str, list[tuple[int, bool]]]]) -> str:
    """A tsvector in PostgreSQL's text form, e.g. ``a1b2:1A,5 c3d4:2``.

    Only for lexemes made of [0-9a-f] (blind tokens): they need no quoting.
    Title positions get weight A, content positions the default D.
    """
    parts = []
    for lex, positions in lexemes:
        parts.append(lex + ":" + ",".join(f"{p}A" if t else str(p) for p, t in positions))
    return " ".join(parts)
