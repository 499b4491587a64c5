"""Import parsers on hostile input: every crafted file finishes in well under a second
(the old heading regex backtracked cubically, the standard library's HTMLParser went
quadratic on unclosed tags), and a file that would take longer than its deadline, or
nests HTML without end, is refused with a reason instead of being half-parsed."""

from __future__ import annotations

import time

import pytest

from sealedkb.ingest.importer import (
    MAX_CHUNK_CHARS,
    Deadline,
    FileProblem,
    chunk_file,
    parse_html,
    parse_markdown,
    split_long,
)

REDOS_MARKDOWN = {
    "atx-line-of-spaces": "# a" + " " * 4000 + "b#x",
    "crafted-2.5KB-file": "# a" + " " * 2490 + "b#x\n",
    "spaces-and-tabs": "# a" + " \t" * 2000 + "b#x",
    "many-lines": ("# a" + " " * 500 + "b#x\n") * 5,
    "h6-closing-run": "######" + " #" * 2000 + " x",
    "nested-quotes": "> " * 75_000,
    "list-markers": "- " * 75_000,
    "unclosed-fences": "```\n~~~\n" * 18_000,
    "reference-brackets": "[a]: <" * 25_000,
    "html-block-starts": "<div\n" * 30_000,
}

HOSTILE_HTML = {
    "unclosed-tags-150KB": "<a " * 50_000,
    "unclosed-attributes": "<a " + "x=1 " * 37_500,
    "unmatched-end-tags": "<div>" * 900 + "</span>" * 20_000,
    "headings-in-sections": "<section id=s>" * 900 + "<h2>t</h2>" * 13_000,
    "lone-brackets": "<" * 150_000,
    "unclosed-comments": "<!--" * 37_500,
    "entities": "&amp;&#" * 21_000,
}


# The bounds are on this thread's CPU time: the work a crafted input makes the parser do
# (what a ReDoS consumes), the same on a busy machine as on an idle one.


@pytest.mark.parametrize("text", REDOS_MARKDOWN.values(), ids=REDOS_MARKDOWN.keys())
def test_crafted_markdown_parses_in_under_a_second(text: str) -> None:
    started = time.thread_time()
    chunks = chunk_file(text, "markdown", "crafted.md", "crafted", Deadline())
    assert time.thread_time() - started < 1.0
    assert all(len(c.content) <= MAX_CHUNK_CHARS for c in chunks)


def test_the_heading_of_the_redos_line_is_still_a_heading() -> None:
    title, sections = parse_markdown("# a" + " " * 4000 + "b#x\n\nbody\n")
    assert title == "a" + " " * 4000 + "b#x"
    assert sections[-1].body == "body"


@pytest.mark.parametrize("text", HOSTILE_HTML.values(), ids=HOSTILE_HTML.keys())
def test_crafted_html_parses_in_under_a_second(text: str) -> None:
    assert len(text) >= 140_000
    started = time.thread_time()
    chunk_file(text, "html", "crafted.html", "crafted", Deadline())
    assert time.thread_time() - started < 1.0


def test_html_nested_without_end_is_refused() -> None:
    with pytest.raises(FileProblem, match="nested deeper than 1000"):
        parse_html("<div>" * 30_000 + "</span>" * 20_000, Deadline())
    # real pages nest far less, and parse
    title, _ = parse_html("<div>" * 200 + "<h1>Deep</h1><p>x</p>")
    assert title == "Deep"


@pytest.mark.parametrize("kind", ["markdown", "html", "text"])
def test_a_file_over_its_deadline_is_refused(kind: str) -> None:
    text = {"markdown": "# h\n\nx\n", "html": "<h1>h</h1><p>x</p>", "text": "x"}[kind] * 5_000
    with pytest.raises(FileProblem, match="took too long") as info:
        chunk_file(text, kind, "f", "f", Deadline(seconds=0.0))
    assert info.value.code == "VALIDATION_ERROR"
    assert chunk_file(text, kind, "f", "f", Deadline())  # and parses with time to spare


def test_the_deadline_holds_inside_the_markdown_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parse itself is interrupted (a block rule ticks the deadline), not only the
    steps around it."""
    calls = {"n": 0}
    real_check = Deadline.check

    def counting(self: Deadline) -> None:
        calls["n"] += 1
        real_check(self)

    monkeypatch.setattr(Deadline, "check", counting)
    parse_markdown("# h\n\npara\n" * 20_000, Deadline())
    assert calls["n"] > 50


def test_markdown_sections_as_before() -> None:
    doc = (
        "Intro before any heading.\n\n"
        "# Title #\n\nbody one\n\n"
        "## Closing hashes ##\n\ntwo\n\n"
        "~~~\n# not a heading (tilde fence)\n```\nstill fenced\n~~~\n\n"
        "    # indented code, not a heading\n\n"
        "#hashtag is text\n\n"
        "Setext stays body\n=================\n\n"
        "###### Six\n\nsix\n"
    )
    title, sections = parse_markdown(doc)
    assert title == "Title"
    assert [(s.heading, s.anchor) for s in sections] == [
        ("", ""),
        ("Title", "title"),
        ("Closing hashes", "closing-hashes"),
        ("Six", "six"),
    ]
    assert sections[0].body == "Intro before any heading."
    closing = sections[2].body
    for kept in ("# not a heading (tilde fence)", "still fenced", "    # indented code"):
        assert kept in closing
    assert "#hashtag is text" in closing and "Setext stays body\n====" in closing
    assert parse_markdown("a\r\n# B\r\nc\r\n")[1][1].body == "c"


def test_split_long_is_linear() -> None:
    started = time.thread_time()
    pieces = split_long("> " * 2_000_000)
    assert time.thread_time() - started < 2.0
    assert all(len(p) <= MAX_CHUNK_CHARS for p in pieces)
