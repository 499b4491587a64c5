"""Entry content as safe HTML: Markdown rendered with raw HTML disabled, then
sanitised by an allow-list (nh3, the Ammonia sanitiser).

Two layers, so a bug in one is caught by the other: markdown-it-py never passes raw
HTML through (``html=False``: ``<script>`` arrives as text) and refuses links
outside its safe schemes; nh3 then keeps only the tags and attributes listed
here, links only with http, https or mailto (no relative links), and no images (an image would make
the reader's browser fetch from wherever the author chose).
"""

from __future__ import annotations

from functools import lru_cache

import nh3
from markdown_it import MarkdownIt

__all__ = ["ALLOWED_SCHEMES", "render_markdown"]

ALLOWED_SCHEMES = frozenset({"http", "https", "mailto"})
_TAGS = frozenset(
    {
        "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "code",
        "em", "strong", "del", "s", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr",
        "th", "td",
    }
)  # fmt: skip
_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}, "th": {"style"}, "td": {"style"}}


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable("table")
    md.enable("strikethrough")
    md.disable("image")  # images are text here (see the module docstring)
    default = md.validateLink

    def validate(url: str) -> bool:
        scheme, sep, _ = url.strip().partition(":")
        if not sep or scheme.lower() not in ALLOWED_SCHEMES:
            return False  # relative links too: only http, https and mailto
        return bool(default(url))

    md.validateLink = validate  # type: ignore[method-assign]
    return md


def render_markdown(text: str) -> str:
    """Sanitised HTML of ``text`` (Markdown); safe to insert unescaped."""
    html = _markdown().render(text)
    return nh3.clean(
        html,
        tags=set(_TAGS),
        attributes={k: set(v) for k, v in _ATTRIBUTES.items()},
        url_schemes=set(ALLOWED_SCHEMES),
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
        filter_style_properties={"text-align"},
        url_relative="deny",
    )
