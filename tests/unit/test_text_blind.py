"""Keyword pipeline and blind tokens: known-answer tests (docs/DESIGN.md §4)."""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from sealedkb.crypto.blind import Blinder, TextHasher
from sealedkb.search import text

KEY = bytes(range(32))


def test_pipeline_normalises_drops_stop_words_and_stems() -> None:
    got = text.terms("The Running Dogs were running QUICKLY to the Straße, ＡＢＣ!")
    # NFKC (full-width ABC), casefold (ß -> ss), stop words (the, were, to), Snowball stems
    assert got == ["run", "dog", "run", "quick", "strass", "abc"]


def test_pipeline_splits_on_non_word_characters() -> None:
    assert text.terms("sys.path/foo-bar_baz:qux") == ["sys", "path", "foo", "bar_baz", "qux"]
    assert text.terms("the and of") == []
    assert text.terms("x" * 65 + " kept") == ["kept"]  # over-long "words" are dropped


def _words_by_definition(s: str, tokenizer: int = text.TOKENIZER_V1) -> list[str]:
    norm = unicodedata.normalize("NFKC", s).casefold()
    if tokenizer == text.TOKENIZER_V1:
        return re.findall(r"\w+", norm)
    # version 2: a dotted number is one word, unless glued to a word character or a dot
    return re.findall(r"(?<![\w.])(?>\d+(?:\.\d+)+)(?!\w)|\w+", norm)


def test_tokenizer_v2_keeps_dotted_numbers_whole() -> None:
    s = "3.1.2. Strings (part 4): Python 3.11, 0.5 s, v1.2, 4.3.2a, 192.168.0.1 a.1.2 1..2"
    assert text.words(s, text.TOKENIZER_V1) == [
        *("3", "1", "2", "strings", "part", "4", "python", "3", "11", "0", "5", "s"),
        *("v1", "2", "4", "3", "2a", "192", "168", "0", "1", "a", "1", "2", "1", "2"),
    ]
    assert text.words(s, text.TOKENIZER_V2) == [
        *("3.1.2", "strings", "part", "4", "python", "3.11", "0.5", "s"),
        *("v1", "2", "4", "3", "2a", "192.168.0.1", "a", "1", "2", "1", "2"),
    ]
    assert text.query_terms("What changed in 3.11?", text.TOKENIZER_V2) == ["chang", "3.11"]
    assert text.TOKENIZER == text.TOKENIZER_V2  # new knowledge bases
    # the hashing test embedder keeps version 1: its vectors must not change
    from sealedkb.embed.hashing import HashingEmbedder

    h = HashingEmbedder()
    assert (h.embed(["release 3.11"])[0] != h.embed(["release 3 11"])[0]).sum() == 0


def test_words_fast_path_equals_the_regex_definition() -> None:
    # ASCII, non-ASCII separators only (the translate path), non-ASCII word characters
    # (the regex path), and what NFKC/casefold turn into ASCII.
    for s in [
        "Hello, World! sys.path/foo-bar_baz:qux 42x",
        "It\u2019s \u2014 a \u203a breadcrumb \u00b6 \u2026 done",
        "caf\u00e9 na\u00efve stra\u00dfe \u65e5\u672c\u8a9e \u0130stanbul",
        "\ufb01ne \uff21\uff22\uff23 \u2167 \u00b2 \u00bd x\u00a0y\u2028z",
        "\x00\x1f\x7f?? _ __ a_",
        "",
    ]:
        for v in text.TOKENIZERS:
            assert text.words(s, v) == _words_by_definition(s, v), (s, v)


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.characters(codec="utf-8"), max_size=60)
    | st.text(alphabet="0123456789.a _", max_size=30)
)
def test_words_equals_the_regex_definition_on_any_text(s: str) -> None:
    for v in text.TOKENIZERS:
        assert text.words(s, v) == _words_by_definition(s, v)


def test_query_terms_are_distinct_and_bounded() -> None:
    assert text.query_terms("running run runs dog") == ["run", "dog"]
    many = " ".join(f"w{i}x" for i in range(100))
    assert len(text.query_terms(many)) == text.MAX_QUERY_TERMS


def test_positions_title_first_then_content_after_a_gap() -> None:
    got = text.positioned_terms("Running dogs", "dogs run and run")
    assert got == {"run": ["1A", "5", "6"], "dog": ["2A", "4"]}


def test_positions_are_clamped_and_capped() -> None:
    content = " ".join(["alpha"] * 300 + ["filler"] * 17000 + ["omega", "omega"])
    got = text.positioned_terms("", content)
    assert len(got["alpha"]) == text.MAX_POSITIONS_PER_TERM
    # past 16383 every position is 16383, kept once
    assert got["omega"] == [str(text.MAX_POSITION)]


def test_tsvector_literal_weights_title_positions() -> None:
    lit = text.tsvector_literal([("ab12", ["1A", "5"]), ("cd34", ["2"])])
    assert lit == "ab12:1A,5 cd34:2"


def test_word_token_known_answers() -> None:
    b = Blinder(KEY)
    assert b.word_token("run") == "c88a8a4ed7f08b6dfe35"
    assert b.word_token("dog") == "2168dafa8e0e893e557e"
    assert b.word_token("strass") == "b6d763ceb01082e86991"
    # = first 10 bytes of HMAC-SHA256(index key, b"word\0" + stem), hex
    ref = hmac.new(KEY, b"word\x00run", hashlib.sha256).digest()[:10].hex()
    assert b.word_token("run") == ref


def test_domains_are_separated() -> None:
    b = Blinder(KEY)
    assert b.tag_token("run") == "5ce0c277dd009c1278b3" != b.word_token("run")
    assert b.fingerprint("hello world") == "808af553e56ab15ff209d47fd3199f27"
    assert b.file_token("/a/b.md") == "7fe9a9b3664efbbb1f4e0efe0b630776"
    assert b.fingerprint("x") != b.file_token("x") != b.digest("file-content", b"x")
    assert Blinder(bytes(32)).word_token("run") != b.word_token("run")  # keyed


def test_word_tokens_are_cached_with_a_bound() -> None:
    b = Blinder(KEY, cache_size=4)
    assert b.word_token("alpha") == b.word_token("alpha")
    assert b._token.cache_info().misses == 1  # the HMAC ran once
    for w in ("b", "c", "d", "e", "f"):
        b.word_token(w)
    assert len(b._words) <= 4


def test_text_hasher_is_keyed_per_instance() -> None:
    a, b = TextHasher(), TextHasher()
    assert a("same") == a("same") != b("same")
    assert a("same") != hashlib.sha256(b"same").digest()


def _canon(tsv: str) -> dict[str, list[str]]:
    """What PostgreSQL's tsvector input makes of a literal of unquoted lexemes: repeated
    lexemes merged, positions sorted, clamped to 16383 and de-duplicated, the first
    256 kept (checked against PostgreSQL in tests/integration/test_search.py)."""
    out: dict[str, dict[int, str]] = {}
    for item in tsv.split():
        lex, _, positions = item.partition(":")
        for p in positions.split(","):
            n = min(int(p.rstrip("A")), text.MAX_POSITION)
            out.setdefault(lex, {}).setdefault(n, p if n < text.MAX_POSITION else str(n))
    return {
        lex: [ps[n] for n in sorted(ps)][: text.MAX_POSITIONS_PER_TERM] for lex, ps in out.items()
    }


def test_lexeme_indexer_equals_the_general_pipeline() -> None:
    b = Blinder(KEY)
    lexer = text.LexemeIndexer(b.word_token, max_words=8)  # small: exercises clearing
    docs = [
        ("Running dogs", "dogs run and run"),
        ("", "The Straße of ＡＢＣ: sys.path/foo-bar_baz, " + "x" * 70 + " kept"),
        ("the and", "of"),
        ("", ""),
        ("Alpha", " ".join(["alpha"] * 300 + ["beta"])),  # capped at 256 positions
        ("", " ".join(["alpha"] * 300 + ["filler"] * 17000 + ["omega", "omega"])),  # clamped
    ]
    for title, content in docs * 2:  # second pass: from the word cache
        want = text.tsvector_literal(
            [(b.word_token(t), p) for t, p in text.positioned_terms(title, content).items()]
        )
        assert _canon(lexer.tsvector(title, content)) == _canon(want)
    run, dog = b.word_token("run"), b.word_token("dog")
    assert lexer.tsvector("Running dogs", "dogs run") == f"{run}:1A {dog}:2A {dog}:4 {run}:5"


def test_indexer_word_caches_follow_the_blinder_and_are_bounded() -> None:
    from sealedkb.search.engine import MAX_CACHED_NAMESPACES, SearchIndexer

    idx = SearchIndexer(None, None)
    b1, b2 = Blinder(KEY), Blinder(bytes(32))
    first = idx._lexer("a", b1)
    assert idx._lexer("a", b1) is first
    assert idx._lexer("a", b2) is not first  # another key: another cache
    for i in range(MAX_CACHED_NAMESPACES + 1):
        idx._lexer(f"ns{i}", b1)
    assert len(idx._lexers) <= MAX_CACHED_NAMESPACES
