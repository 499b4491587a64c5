"""The console's Markdown rendering (no raw HTML, sanitised, safe links only) and its
server-side sessions (expiry, bound, CSRF), without a browser."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.responses import Response

from sealedkb.adapters.ui.app import Console
from sealedkb.adapters.ui.render import render_markdown
from sealedkb.adapters.ui.sessions import SessionStore

HOSTILE = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    "[x](javascript:alert(1))",
    "[x](JaVaScRiPt:alert(1))",
    "[x](  javascript:alert(1))",
    "[x](java\tscript:alert(1))",
    "[x](data:text/html;base64,PHNjcmlwdD4=)",
    "[x](vbscript:msgbox)",
    "[x](/relative/path)",
    "[x](//evil.example/path)",
    "<a href='javascript:alert(1)'>x</a>",
    '<svg onload="alert(1)">',
    "<iframe src=javascript:alert(1)>",
    "![img](http://evil.example/track.png)",
    '<div style="background:url(javascript:alert(1))">x</div>',
    "<style>body{display:none}</style>",
    "<!-- comment --><form action=x><button>go</button></form>",
]
ALLOWED_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "code",
    "em", "strong", "del", "s", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr",
    "th", "td",
}  # fmt: skip
ALLOWED_ATTRS = {"href", "title", "rel", "start", "style"}


class _Elements(HTMLParser):
    """The real elements of rendered HTML (escaped text is not an element)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, attrs))


def _safe(html: str) -> None:
    parser = _Elements()
    parser.feed(html)
    for tag, attrs in parser.found:
        assert tag in ALLOWED_TAGS, html
        for name, value in attrs:
            assert name in ALLOWED_ATTRS, html
            if name == "href":
                assert re.match(r"(https?|mailto):", value or "", re.I), html
            if name == "style":
                assert re.fullmatch(r"text-align:\s*\w+;?", value or ""), html


def test_hostile_markup_is_inert() -> None:
    for text in HOSTILE:
        _safe(render_markdown(text))
    out = render_markdown("\n\n".join(HOSTILE))
    _safe(out)
    assert "&lt;script&gt;" in out  # shown as text


def test_ordinary_markdown_renders() -> None:
    out = render_markdown(
        "# Title\n\n**bold** `code` [site](https://example.org) [mail](mailto:a@b.c)\n\n"
        "| a | b |\n|---|---|\n| 1 | 2 |\n\n- one\n- two\n\n~~old~~"
    )
    assert "<h1>Title</h1>" in out and "<strong>bold</strong>" in out
    assert 'href="https://example.org"' in out and 'href="mailto:a@b.c"' in out
    assert "<table>" in out and "<li>one</li>" in out and "<s>old</s>" in out
    assert 'rel="noopener noreferrer nofollow"' in out


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from([*HOSTILE, "<", ">", "[", "](", ")", "`", "\n", '"', "'", "javascript:"]),
        max_size=12,
    ),
    st.text(max_size=40),
)
def test_any_mix_stays_safe(parts: list[str], noise: str) -> None:
    _safe(render_markdown(noise.join(parts)))


def test_sessions_expire_are_bounded_and_check_csrf() -> None:
    now = [0.0]
    store = SessionStore(idle=10, lifetime=100, max_sessions=3, clock=lambda: now[0])
    sid, session = store.new("skb_secret")
    assert store.get(sid) is session
    assert session.csrf_ok(session.csrf)
    assert not session.csrf_ok(None) and not session.csrf_ok("") and not session.csrf_ok("x")
    now[0] = 11  # idle too long
    assert store.get(sid) is None
    sid, _ = store.new()
    for t in range(1, 100, 9):  # kept alive by use, but not past its lifetime
        now[0] = 11 + t
        assert store.get(sid) is not None
    now[0] = 11 + 101
    assert store.get(sid) is None
    ids = [store.new("skb_t")[0] for _ in range(5)]
    assert store.get(ids[0]) is None and store.get(ids[-1]) is not None
    # Sign-in forms fetched over and over evict no signed-in session.
    for _ in range(50):
        store.new()
    assert all(store.get(i) is not None for i in ids[-3:])
    assert store.get(None) is None and store.get("x" * 500) is None
    store.drop(ids[-1])
    assert store.get(ids[-1]) is None


def test_the_cookie_is_secure_under_tls() -> None:
    for tls in (True, False):
        console = Console(cast(Any, None), tls=tls)
        response = Response()
        console.set_cookie(response, "abc")
        header = response.headers["set-cookie"].lower()
        assert "httponly" in header and "samesite=strict" in header and "path=/ui" in header
        assert ("secure" in header.replace("samesite", "")) is tls
