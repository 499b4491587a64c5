"""The keyword pipeline: text -> normalised, stemmed terms with positions (docs/DESIGN.md §4).

NFKC + casefold, split on non-word characters, drop English stop words, Snowball
English stem. The same pipeline feeds the blind-token index (encrypted mode),
query terms, snippets and import chunking, so a word matches the same way at
write and at query time. No crypto here: :mod:`sealedkb.search.engine` turns the stems
into keyed tokens with :class:`sealedkb.crypto.blind.Blinder`.

Stemming goes through snowballstemmer, which uses the C implementation of the
same Snowball algorithms (PyStemmer) when it is installed (~1 µs a word instead
of ~20 µs); stems are also cached in a bounded LRU, since vocabularies are Zipfian.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from itertools import repeat
from operator import add

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

# Word splitting, versioned (kb_meta ``keyword_tokenizer``; blind tokens of one
# version never match another's, so a knowledge base keeps the version it began with):
#   1: every ``\w+`` run ("3.1.2" -> "3", "1", "2");
#   2: as 1, but a dotted number ("3.1.2", "3.11", "0.5" — digit groups joined by
#      single dots, not glued to a word character or another dot) is one word, as
#      PostgreSQL's parser makes it one lexeme. Splitting them filled the index
#      with "1", "2", "3" from every section and version number: those tokens held
#      20-48 % of the rows, and queries naming a section ranked thousands of rows.
TOKENIZER_V1 = 1
TOKENIZER_V2 = 2
TOKENIZERS = (TOKENIZER_V1, TOKENIZER_V2)
TOKENIZER = TOKENIZER_V2  # what new knowledge bases use
_WORD_RE = re.compile(r"\w+")
_WORD_RE_V2 = re.compile(r"(?<![\w.])(?>\d+(?:\.\d+)+)(?!\w)|\w+")
_DOTTED_NUMBER_RE = re.compile(r"\d\.\d")  # absent: version 2 splits as version 1
_NON_ASCII_RE = re.compile(r"[^\x00-\x7f]")
# bytes.translate table of the ASCII fast path: [A-Za-z0-9_] kept (letters lowered),
# every other byte (including "?", which encode("ascii", "replace") substitutes for a
# non-ASCII character) becomes a space, so str.split() yields the \w+ runs.
_ASCII_WORD_TABLE = bytes(
    ord(chr(b).lower()) if b < 128 and (chr(b).isalnum() or b == ord("_")) else 0x20
    for b in range(256)
)
_stemmer = snowballstemmer.stemmer("english")

# word -> stem, or None for a stop word / over-long word. A plain dict (cleared when
# full) rather than functools.lru_cache: the write path looks up every word.
_STEMS: dict[str, str | None] = {}
_STEMS_MAX = 200_000
_MISSING = "\x00"  # never a word (words are \\w+)
# Position strings of a tsvector literal, prebuilt: formatting ints per word costs more.
_POS = [str(i) for i in range(MAX_POSITION + 1)]
_POS_A = [f"{i}A" for i in range(MAX_POSITION + 1)]
_SUFFIX = [":" + p for p in _POS]  # ":17", appended to a lexeme
_SUFFIX_A = [":" + p for p in _POS_A]


def _stem_slow(word: str) -> str | None:
    out = None if word in STOP_WORDS or len(word) > MAX_WORD_CHARS else _stemmer.stemWord(word)
    if len(_STEMS) >= _STEMS_MAX:
        _STEMS.clear()
    _STEMS[word] = out
    return out


def stem(word: str) -> str:
    """Snowball English stem of one already-normalised word (stop words included)."""
    return str(_stemmer.stemWord(word))


def term_of(word: str) -> str | None:
    """Cached stem of one normalised word, None for a stop word or an over-long word."""
    t = _STEMS.get(word, _MISSING)
    return _stem_slow(word) if t is _MISSING else t


def normalize(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def words(text: str, tokenizer: int = TOKENIZER) -> list[str]:
    """Normalised words of ``text`` (stop words included), in order: the ``\\w+`` runs
    of its NFKC casefolded form (version 2: dotted numbers whole, see TOKENIZER_V2).

    On the write path of every entry, so the regex only runs when the text holds a
    non-ASCII *word* character (é, ß, 日): otherwise every non-ASCII character is a
    separator (’ — › ¶ …) and a bytes translate + split (C, ~3x faster) gives the same
    list. ``c.isalnum() or c == "_"`` is exactly the ``re`` module's Unicode ``\\w``.
    """
    s = normalize(text)
    if tokenizer != TOKENIZER_V1 and _DOTTED_NUMBER_RE.search(s):
        return _WORD_RE_V2.findall(s)
    if s.isascii():
        raw = s.encode("ascii")
    else:
        for c in set(_NON_ASCII_RE.findall(s)):
            if c.isalnum() or c == "_":
                return _WORD_RE.findall(s)
        raw = s.encode("ascii", "replace")
    return raw.translate(_ASCII_WORD_TABLE).decode("ascii").split()


def terms(text: str, tokenizer: int = TOKENIZER) -> list[str]:
    """Stems of the non-stop words of ``text``, in order (duplicates kept)."""
    get = _STEMS.get
    out = []
    for w in words(text, tokenizer):
        s = get(w, _MISSING)
        if s is _MISSING:
            s = _stem_slow(w)
        if s is not None:
            out.append(s)
    return out


def query_terms(text: str, tokenizer: int = TOKENIZER) -> list[str]:
    """Distinct stems of a query, first occurrence order, at most MAX_QUERY_TERMS."""
    seen: dict[str, None] = {}
    for t in terms(text, tokenizer):
        seen.setdefault(t, None)
        if len(seen) >= MAX_QUERY_TERMS:
            break
    return list(seen)


def positioned_terms(title: str, content: str, tokenizer: int = TOKENIZER) -> dict[str, list[str]]:
    """term -> its positions as tsvector text (``"3A"`` in the title, ``"17"`` in the
    content), title first (positions 1..), content after a gap.

    Positions are clamped to 16383 and de-duplicated, at most 256 per term, as
    PostgreSQL's tsvector requires; ts_rank_cd needs them for cover density.
    On the write path of every entry, hence one fused loop over the words.
    """
    out: dict[str, list[str]] = {}
    get_stem = _STEMS.get
    get_out = out.get
    pos = 0
    for table, text in ((_POS_A, title), (_POS, content)):
        for w in words(text, tokenizer):
            t = get_stem(w, _MISSING)
            if t is _MISSING:
                t = _stem_slow(w)
            if t is None:
                continue
            pos += 1
            p = table[pos] if pos < MAX_POSITION else table[MAX_POSITION]
            lst = get_out(t)
            if lst is None:
                out[t] = [p]
            elif len(lst) < MAX_POSITIONS_PER_TERM and lst[-1] != p:
                lst.append(p)
        pos += 1  # a gap, so no cover spans title and content
    return out


def tsvector_literal(lexemes: Iterable[tuple[str, list[str]]]) -> str:
    """A tsvector in PostgreSQL's text form, e.g. ``a1b2:1A,5 c3d4:2``, from
    (lexeme, position strings) pairs. Only for lexemes made of [0-9a-f] (blind
    tokens): they need no quoting.
    """
    return " ".join([lex + ":" + ",".join(positions) for lex, positions in lexemes])


class LexemeIndexer:
    """Builds tsvector text straight from title and content, for lexemes that are a
    function of the term (the blind token of its stem, in encrypted mode).

    Means the same tsvector as ``tsvector_literal`` over ``positioned_terms`` with
    each term mapped by ``lexeme_of``, but it is on the write path of every entry, so:

    * each distinct *word* is mapped to its lexeme (or None for a stop word) once and
      cached, and the words of an entry are looked up in one C-level ``map``;
    * the text lists every occurrence (``lex:1A lex:5 other:2A``) instead of grouping
      positions per lexeme in Python: PostgreSQL's tsvector input merges repeated
      lexemes, sorts their positions and keeps the first 256, exactly what the
      grouped form holds. Documents that reach the position limit (16,383) take
      the grouped path, which also keeps the text under tsvector's 1 MB input limit.

    Lexemes must need no quoting ([0-9a-f]).
    """

    def __init__(
        self, lexeme_of: Callable[[str], str], max_words: int = 65536, tokenizer: int = TOKENIZER
    ) -> None:
        self._lexeme_of = lexeme_of
        self.tokenizer = tokenizer
        self._cache: dict[str, str | None] = {}
        self._max = max_words

    def _lexemes(self, words: list[str]) -> list[str]:
        cache = self._cache
        lex = list(map(cache.get, words, repeat(_MISSING)))
        if _MISSING in lex:
            new = set(words).difference(cache)  # only the unseen words, once each
            if len(cache) + len(new) > self._max:
                cache.clear()
                new = set(words)
            for w in new:
                t = term_of(w)
                cache[w] = None if t is None else self._lexeme_of(t)
            lex = list(map(cache.get, words))
        return list(filter(None, lex))  # None: stop word (lexemes are never empty)

    def tsvector(self, title: str, content: str) -> str:
        """tsvector text of title (positions ``nA``) and content (after a gap)."""
        return self.index(title, content)[0]

    def index(self, title: str, content: str, *, positions: bool = True) -> tuple[str, set[str]]:
        """The tsvector text and the set of its lexemes (what the index digest covers).

        ``positions=False``: each lexeme once, without positions (as PostgreSQL's
        ``strip()`` makes), except that a title lexeme keeps its weight A at the one
        position 1, so titles still rank first: the stored index then says which words
        a row holds and which of them are in its title, not how often, where or in which
        order.
        """
        tl = self._lexemes(words(title, self.tokenizer))
        cl = self._lexemes(words(content, self.tokenizer))
        if not positions:
            in_title = set(tl)
            lexemes = in_title.union(cl)
            return " ".join(
                [lex + ":1A" if lex in in_title else lex for lex in sorted(lexemes)]
            ), lexemes
        nt, nc = len(tl), len(cl)
        if nt + nc + 1 >= MAX_POSITION:  # positions would be clamped: the grouped path
            lexeme_of = self._lexeme_of
            grouped = [
                (lexeme_of(t), p)
                for t, p in positioned_terms(title, content, self.tokenizer).items()
            ]
            return tsvector_literal(grouped), {lex for lex, _ in grouped}
        parts = list(map(add, tl, _SUFFIX_A[1 : nt + 1]))
        parts.extend(map(add, cl, _SUFFIX[nt + 2 : nt + 2 + nc]))
        return " ".join(parts), set(tl).union(cl)
