"""Import Markdown, text and HTML files and folders as chunked entries.

Each file is split along its headings into sections, and sections longer than
the chunk limit at paragraph (then sentence, then word) boundaries; every chunk
becomes an entry whose ``source`` is ``file#heading-anchor``. A file's chunks
land in one transaction together with the removal of its previous chunks, so a
file is never half-imported or half-replaced. Files are identified by a keyed
token of their absolute path and compared by a keyed hash of their bytes
(plaintext mode: the path and a sha256), so re-importing an unchanged file adds
nothing and a changed one replaces its chunks.

Per-file problems (binary, not UTF-8, unreadable, too large, empty) are reported
in the summary with a reason and never stop the other files.

Trust boundary (the MCP ``kb_import`` tool reads server files for an agent):

- every file is resolved and must lie under the import root when one is given;
  a symbolic link inside an imported folder that leads out of that folder is
  skipped in any case (with a reason, never the target's path);
- a file is opened without following a symbolic link (``O_NOFOLLOW`` on the
  checked real path) and its ``fstat`` must be the file that was checked, so a
  link or another file swapped in after the check is refused, not read;
- the summary names files relative to the import root (or, without one, to the
  named folder), never by an absolute server path; so do the chunks' sources
  when a root is given.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import re
import stat
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lxml import etree
from markdown_it import MarkdownIt
from markdown_it.rules_block import StateBlock

from sealedkb.errors import AccessDeniedError, SealedKBError, ValidationError
from sealedkb.formats.entry_doc import EntryDoc
from sealedkb.model import (
    MAX_TITLE_CHARS,
    EntryType,
    validate_entry_type,
    validate_namespace,
    validate_source,
    validate_tags,
)
from sealedkb.store.entries import EntryRow
from sealedkb.store.search import SearchColumns

if TYPE_CHECKING:
    from sealedkb.kb.knowledge_base import KnowledgeBase

log = logging.getLogger("sealedkb.importer")

MARKDOWN_EXT = frozenset({".md", ".markdown", ".mdown", ".mkd"})
TEXT_EXT = frozenset({".txt", ".text", ".rst"})
HTML_EXT = frozenset({".html", ".htm", ".xhtml"})
SUPPORTED_EXT = MARKDOWN_EXT | TEXT_EXT | HTML_EXT
MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_PARSE_SECONDS = 30.0  # parsing and chunking one file (Markdown: ~0.4 s per MB)
MAX_HTML_DEPTH = 1000  # open elements; real pages stay far below
MAX_CHUNK_CHARS = 1500
# How much of a piece a long section's next piece repeats (whole sentences, up to this
# many characters). Off: measured on bench/bench_quality.py, a 200-character overlap
# gave nothing on the man pages and lost on the PostgreSQL manual, for 3-9 % more
# chunks (docs/SEARCH.md, "Chunking"); chunk_file(overlap=...) keeps the option.
OVERLAP_CHARS = 0
MIN_CHUNK_CHARS = 1  # a heading with any body text is worth an entry
TITLE_SEP = " › "


@dataclass(frozen=True, slots=True)
class Section:
    heading: str  # "" before the first heading
    anchor: str  # fragment for the source (HTML id or Markdown slug), "" if none
    body: str
    parents: tuple[str, ...] = ()  # the headings enclosing this one, outermost first


@dataclass(frozen=True, slots=True)
class Chunk:
    title: str
    content: str
    source: str
    heading: str
    index: int


@dataclass
class FileOutcome:
    path: str
    status: str  # imported | unchanged | skipped | failed
    chunks: int = 0
    removed: int = 0
    reason: str | None = None
    code: str | None = None  # error code of a skipped or failed file (errors.py codes)


@dataclass
class ImportSummary:
    files: int = 0
    imported: int = 0
    unchanged: int = 0
    chunks_added: int = 0
    chunks_removed: int = 0
    skipped: list[FileOutcome] = field(default_factory=list)
    failed: list[FileOutcome] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, o: FileOutcome) -> None:
        self.files += 1
        if o.status == "imported":
            self.imported += 1
            self.chunks_added += o.chunks
            self.chunks_removed += o.removed
        elif o.status == "unchanged":
            self.unchanged += 1
        elif o.status == "skipped":
            self.skipped.append(o)
        else:
            self.failed.append(o)

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "imported": self.imported,
            "unchanged": self.unchanged,
            "chunks_added": self.chunks_added,
            "chunks_removed": self.chunks_removed,
            "skipped": [{"path": o.path, "reason": o.reason, "code": o.code} for o in self.skipped],
            "failed": [{"path": o.path, "reason": o.reason, "code": o.code} for o in self.failed],
            "warnings": self.warnings,
        }


class FileProblem(Exception):
    """A reason this one file cannot be imported (reported, never raised to the user),
    with the error code the summary gives it."""

    def __init__(self, reason: str, code: str = "VALIDATION_ERROR") -> None:
        super().__init__(reason)
        self.code = code


# --- discovery ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    """A file to consider, checked when it was listed."""

    path: Path  # as listed (absolute, not resolved): the file's identity across imports
    display: str  # what the summary shows: relative to the root / the named folder
    source: str  # what the chunks' source and metadata name
    explicit: bool  # named by the caller (not found in a folder)
    real: Path | None = None  # the resolved file to open; None when refused
    base: Path | None = None  # the resolved folder it is opened beneath (None: named file)
    checked: tuple[int, int] | None = None  # (st_dev, st_ino) of ``real`` at the check
    refused: str | None = None  # why it is not read (with ``status`` and ``code``)
    status: str = "failed"  # failed | skipped, when refused
    code: str = "VALIDATION_ERROR"


def _under(path: Path, base: Path) -> bool:
    return path == base or path.is_relative_to(base)


def _rel(path: Path, base: Path) -> str:
    rel = path.relative_to(base).as_posix()
    return "" if rel == "." else rel


def _join(prefix: str, rest: str) -> str:
    return f"{prefix}/{rest}" if prefix and rest else prefix or rest


def _check(c: Candidate, root: Path | None, folder: Path | None) -> Candidate:
    """Resolve the file and check where it leads (root, named folder) and what it is."""
    real = Path(os.path.realpath(c.path))
    try:
        st = os.stat(real, follow_symlinks=False)
    except FileNotFoundError:
        return _refuse(c, "cannot read: file not found (dangling link?)", "failed", "NOT_FOUND")
    except PermissionError:
        return _refuse(c, "cannot read: permission denied", "failed", "ACCESS_DENIED")
    except OSError as exc:
        return _refuse(c, f"cannot read: {exc.strerror or type(exc).__name__}", "failed")
    if root is not None and not _under(real, root):
        if c.explicit:
            return _refuse(c, "outside the import root", "failed", "ACCESS_DENIED")
        why = "symbolic link to a file outside the import root"
        return _refuse(c, why, "skipped", "ACCESS_DENIED")
    if folder is not None and not _under(real, folder):
        why = "symbolic link to a file outside the imported folder"
        return _refuse(c, why, "skipped", "ACCESS_DENIED")
    if not stat.S_ISREG(st.st_mode):
        return _refuse(c, "cannot read: not a regular file", "failed")
    return Candidate(
        c.path,
        c.display,
        c.source,
        c.explicit,
        real=real,
        base=folder if folder is not None else root,
        checked=(st.st_dev, st.st_ino),
    )


def _refuse(c: Candidate, reason: str, status: str, code: str = "VALIDATION_ERROR") -> Candidate:
    return Candidate(
        c.path, c.display, c.source, c.explicit, refused=reason, status=status, code=code
    )


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def _open_checked(c: Candidate) -> int:
    """Open the checked file without following any symbolic link beneath its folder:
    each path component from the folder down is opened with ``O_NOFOLLOW`` relative to
    the one before, so a link swapped in anywhere after the check is refused (ELOOP /
    ENOTDIR), not followed out of the folder."""
    assert c.real is not None
    if c.base is None:
        return os.open(c.real, _FILE_FLAGS)
    *dirs, name = c.real.relative_to(c.base).parts
    fd = os.open(c.base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in dirs:
            inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
        return os.open(name, _FILE_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)


def discover(paths: Sequence[str | Path], root: str | Path | None = None) -> list[Candidate]:
    """Every file to consider, checked: resolved, under ``root`` when given (symlinks
    and '..' included), and, for files found in a folder, inside that folder.

    Folders are walked recursively in sorted order without following links to
    folders; hidden files and folders are left out. A path that does not exist is a
    usage error, raised before anything is written.
    """
    out: list[Candidate] = []
    missing = [str(p) for p in paths if not os.path.lexists(p)]
    if missing:
        raise ValidationError(f"no such file or folder: {missing[0]}", field="path")
    base = Path(os.path.realpath(root)) if root is not None else None
    for p in paths:
        path = Path(p)
        real = Path(os.path.realpath(path))
        if base is not None and not _under(real, base):
            raise AccessDeniedError("path is outside the import root", field="paths")
        if path.is_dir():
            # Displayed relative to the root, or from the folder's own name.
            prefix = _rel(real, base) if base is not None else real.name
            for dirpath, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if name.startswith("."):
                        continue
                    f = Path(dirpath) / name
                    display = _join(prefix, Path(os.path.relpath(f, path)).as_posix())
                    source = display if base is not None else str(f)
                    c = Candidate(Path(os.path.abspath(f)), display, source, False)
                    out.append(_check(c, base, real))
        else:
            display = _rel(real, base) if base is not None else path.name
            source = display if base is not None else str(path)
            c = Candidate(Path(os.path.abspath(path)), display, source, True)
            out.append(_check(c, base, None))
    return out


def read_text(c: Candidate) -> tuple[bytes, str]:
    """The checked file's bytes and text. Opened without following a symbolic link, and
    only if it is still the file that was checked."""
    if c.real is None or c.checked is None:
        raise FileProblem(c.refused or "not checked", c.code)
    too_large = f"file too large (more than {MAX_FILE_BYTES // (1024 * 1024)} MB): not imported"
    try:
        fd = _open_checked(c)
    except PermissionError:
        raise FileProblem("cannot read: permission denied", "ACCESS_DENIED") from None
    except FileNotFoundError:
        gone = "cannot read: the file was removed during the import"
        raise FileProblem(gone, "NOT_FOUND") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise FileProblem(
                "not read: the file or a folder on its path was replaced by a symbolic link "
                "after it was checked",
                "ACCESS_DENIED",
            ) from None
        raise FileProblem(f"cannot read: {exc.strerror or type(exc).__name__}") from None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != c.checked or not stat.S_ISREG(st.st_mode):
            raise FileProblem(
                "not read: the file was replaced after it was checked", "ACCESS_DENIED"
            )
        if st.st_size > MAX_FILE_BYTES:
            raise FileProblem(too_large)
        data = _read_fd(fd, MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise FileProblem(f"cannot read: {exc.strerror or type(exc).__name__}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:  # grew after the fstat
        raise FileProblem(too_large)
    if b"\x00" in data[:8192]:
        raise FileProblem("binary file (contains NUL bytes), not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise FileProblem("not UTF-8 text") from None
    if "\x00" in text:
        raise FileProblem("binary file (contains NUL bytes), not text")
    return data, text


def _read_fd(fd: int, limit: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < limit:
        part = os.read(fd, min(1 << 20, limit - got))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


# --- parsing ---------------------------------------------------------------------
#
# Both parsers run in linear time on any input: Markdown by markdown-it-py (its
# block rules only: headings, fences, quotes; inline markup is not needed to find
# sections), HTML by libxml2 (lxml) driving a small section collector. A regular
# expression over heading lines backtracked cubically on a line of spaces, and the
# standard library's HTMLParser quadratically on unclosed tags; every file is
# parsed and chunked under a deadline besides (:class:`Deadline`).


class Deadline:
    """The time one file may take to be parsed and chunked; :meth:`check` raises
    :class:`FileProblem` once it has passed, :meth:`tick` checks every 256th call
    (for the parsers' inner loops)."""

    def __init__(self, seconds: float | None = None) -> None:
        self.seconds = MAX_PARSE_SECONDS if seconds is None else seconds
        self.at = time.monotonic() + self.seconds
        self.ticks = 0

    def tick(self) -> None:
        self.ticks += 1
        if not self.ticks & 255:
            self.check()

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise FileProblem(
                f"took too long to parse (more than {self.seconds:g} s): not imported"
            )


def slug(heading: str) -> str:
    """GitHub-style anchor: lowercase, punctuation dropped, spaces to hyphens."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return re.sub(r"\s", "-", s)


def _deadline_rule(state: StateBlock, start: int, end: int, silent: bool) -> bool:
    """A block rule that matches nothing: it runs before every block and in every
    paragraph-continuation check, so a parse stops once the file's deadline passed."""
    deadline = state.env.get("deadline")
    if isinstance(deadline, Deadline):
        deadline.tick()
    return False


@functools.cache
def _markdown() -> MarkdownIt:
    # Block structure only (normalize + block): heading text is taken as written. ATX
    # headings only, as the importer always split: a setext underline stays body text.
    md = MarkdownIt("commonmark").disable(["inline", "text_join", "lheading"], ignoreInvalid=True)
    alt = ["paragraph", "reference", "blockquote", "list"]
    md.block.ruler.before("table", "deadline", _deadline_rule, {"alt": alt})
    return md


def parse_markdown(text: str, deadline: Deadline | None = None) -> tuple[str | None, list[Section]]:
    """(first H1 or None, sections split at the document's ATX headings, not inside
    fenced or indented code, HTML blocks, lists or quotes). A section's body is the
    source text between two headings, as written."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # markdown-it's line numbering
    lines = text.split("\n")
    tokens = _markdown().parse(text, {"deadline": deadline} if deadline is not None else None)
    if deadline is not None:
        deadline.check()
    sections: list[Section] = []
    heading, anchor = "", ""
    parents: tuple[str, ...] = ()
    open_headings = _HeadingStack()
    doc_title: str | None = None
    body_from = 0
    for i, tok in enumerate(tokens):
        if tok.type != "heading_open" or tok.level != 0 or tok.map is None:
            continue
        inline = tokens[i + 1] if i + 1 < len(tokens) else None
        content = inline.content if inline is not None and inline.type == "inline" else ""
        title = " ".join(line.strip() for line in content.strip().split("\n"))
        if not title:
            continue  # an empty heading ("#" alone) stays in the body
        first, after = tok.map
        sections.append(
            Section(heading, anchor, "\n".join(lines[body_from:first]).strip(), parents)
        )
        heading, anchor = title, slug(title)
        parents = open_headings.enter(int(tok.tag[1:]), title)
        if doc_title is None and tok.tag == "h1":
            doc_title = heading
        body_from = after
    sections.append(Section(heading, anchor, "\n".join(lines[body_from:]).strip(), parents))
    return doc_title, sections


class _HeadingStack:
    """The open headings at a point of a document: a heading closes every heading of
    its level or deeper, and is enclosed by the ones left."""

    def __init__(self) -> None:
        self.open: list[tuple[int, str]] = []

    def enter(self, level: int, text: str) -> tuple[str, ...]:
        """Open a heading; returns the headings enclosing it, outermost first."""
        while self.open and self.open[-1][0] >= level:
            self.open.pop()
        parents = tuple(t for _lvl, t in self.open)
        self.open.append((level, text))
        return parents


_SKIP_TAGS = frozenset(
    {"script", "style", "nav", "header", "footer", "aside", "noscript", "template", "svg", "head"}
)
_VOID_TAGS = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
)
_BLOCK_TAGS = frozenset(
    {
        "p", "div", "section", "article", "main", "li", "ul", "ol", "dl", "dt", "dd", "table",
        "tr", "blockquote", "pre", "figure", "figcaption", "br", "hr",
    }
)  # fmt: skip
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_MAIN_RE = re.compile(r"<main\b|role=[\"']main[\"']|<article\b", re.IGNORECASE)
_FEED_CHARS = 64 * 1024
_BLANKS_RE = re.compile(r"\n[ \t]*\n(\s*\n)+")


class _HTMLSections:
    """Collects (heading, anchor, body) sections from the main content of a page: the
    target of an lxml parser (start/end/data events of a well-formed tree, so every
    end matches the innermost open element). Constant work per event."""

    def __init__(self, main_only: bool, deadline: Deadline | None) -> None:
        self.main_only = main_only
        self.deadline = deadline
        self.events = 0
        self.stack: list[tuple[str, bool, bool]] = []  # (tag, main, skip)
        self.ids: list[tuple[int, str]] = []  # (depth, id) of open elements with an id
        self.main_depth = 0
        self.skip_depth = 0
        self.pre_depth = 0
        self.heading_level = 0
        self.heading_parts: list[str] = []
        self.heading_anchor = ""
        self.title_parts: list[str] = []
        self.in_title = False
        self.sections: list[Section] = []
        self.cur_heading = ""
        self.cur_anchor = ""
        self.cur_parents: tuple[str, ...] = ()
        self.open_headings = _HeadingStack()
        self.parts: list[str] = []
        self.first_h1: str | None = None
        self.result: list[Section] = []

    def _tick(self) -> None:
        self.events += 1
        if self.deadline is not None and not self.events & 1023:
            self.deadline.check()

    def _capturing(self) -> bool:
        return self.skip_depth == 0 and (not self.main_only or self.main_depth > 0)

    def start(self, tag: str | bytes, attrib: Mapping[str | bytes, str | bytes]) -> None:
        self._tick()
        tag = _text(tag).lower()
        if tag == "title":
            self.in_title = True
        ident = _text(attrib.get("id"))
        # Sphinx puts the id on the enclosing <section>; others on the heading.
        enclosing = self.ids[-1][1] if self.ids else ""
        is_main = tag in ("main", "article") or _text(attrib.get("role")) == "main"
        cls = _text(attrib.get("class"))
        skip = tag in _SKIP_TAGS or (tag == "a" and "headerlink" in cls.split())
        self.stack.append((tag, is_main, skip))
        if len(self.stack) > MAX_HTML_DEPTH:
            # libxml2 walks its open elements for every end tag that matches none.
            raise FileProblem(f"HTML nested deeper than {MAX_HTML_DEPTH} elements: not imported")
        if ident:
            self.ids.append((len(self.stack), ident))
        if is_main:
            self.main_depth += 1
        if skip:
            self.skip_depth += 1
        if tag == "pre":
            self.pre_depth += 1
        if not self._capturing():
            return
        if tag in ("br", "hr"):
            self.parts.append("\n")
        elif tag in _HEADINGS and self.heading_level == 0:
            self.heading_level = _HEADINGS[tag]
            self.heading_parts = []
            self.heading_anchor = ident or enclosing
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n" if tag in ("p", "pre", "div", "section") else "\n")

    def end(self, tag: str | bytes) -> None:
        self._tick()
        if not self.stack:
            return
        t, is_main, skip = self.stack.pop()
        if self.ids and self.ids[-1][0] > len(self.stack):
            self.ids.pop()
        if t == "title":
            self.in_title = False
        if is_main:
            self.main_depth -= 1
        if skip:
            self.skip_depth -= 1
        if t == "pre":
            self.pre_depth -= 1
        if t in _HEADINGS and self.heading_level == _HEADINGS[t]:
            self._end_heading()
        if t in _BLOCK_TAGS and t not in _VOID_TAGS and self._capturing():
            self.parts.append("\n")

    def _end_heading(self) -> None:
        text = " ".join("".join(self.heading_parts).split())
        level, self.heading_level = self.heading_level, 0
        if not text:
            return
        self.sections.append(
            Section(
                self.cur_heading, self.cur_anchor, "".join(self.parts).strip(), self.cur_parents
            )
        )
        self.parts = []
        self.cur_heading, self.cur_anchor = text, self.heading_anchor
        self.cur_parents = self.open_headings.enter(level, text)
        if self.first_h1 is None:
            self.first_h1 = text

    def data(self, data: str | bytes) -> None:
        self._tick()
        data = _text(data)
        if self.in_title:
            self.title_parts.append(data)
        if not self._capturing():
            return
        if self.heading_level:
            self.heading_parts.append(data)
        elif self.pre_depth:
            self.parts.append(data)
        else:
            self.parts.append(re.sub(r"\s+", " ", data))

    def comment(self, text: str | bytes) -> None:
        self._tick()  # comments carry no content

    def close(self) -> None:
        self.sections.append(
            Section(
                self.cur_heading, self.cur_anchor, "".join(self.parts).strip(), self.cur_parents
            )
        )
        self.result = [
            Section(s.heading, s.anchor, _BLANKS_RE.sub("\n\n", s.body).strip(), s.parents)
            for s in self.sections
        ]


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def parse_html(text: str, deadline: Deadline | None = None) -> tuple[str | None, list[Section]]:
    collector = _HTMLSections(bool(_MAIN_RE.search(text)), deadline)
    parser = etree.HTMLParser(
        target=collector, recover=True, remove_comments=True, remove_pis=True, no_network=True
    )
    for at in range(0, len(text), _FEED_CHARS):  # the deadline holds between pieces too
        parser.feed(text[at : at + _FEED_CHARS])
        if deadline is not None:
            deadline.check()
    parser.close()
    sections = collector.result
    title = collector.first_h1 or " ".join("".join(collector.title_parts).split()) or None
    return title, sections


def parse_text(text: str, deadline: Deadline | None = None) -> tuple[str | None, list[Section]]:
    return None, [Section("", "", text.strip())]


def split_long(body: str, limit: int = MAX_CHUNK_CHARS) -> list[str]:
    """Pieces of at most ``limit`` characters, cut at paragraphs, then sentences, then
    spaces; paragraphs are packed together while they fit."""
    if len(body) <= limit:
        return [body]
    units: list[str] = []
    for para in re.split(r"\n\s*\n", body):
        para = para.strip()
        if not para:
            continue
        if len(para) <= limit:
            units.append(para)
            continue
        for sent in re.split(r"(?<=[.!?])\s+", para):
            # Offsets into the sentence, never copies of its rest (linear time).
            at, end = 0, len(sent)
            while end - at > limit:
                cut = sent.rfind(" ", at, at + limit)
                cut = cut if cut - at > limit // 2 else at + limit
                units.append(sent[at:cut].strip())
                at = cut
                while at < end and sent[at].isspace():
                    at += 1
            if at < end:
                units.append(sent[at:end])
    pieces: list[str] = []
    cur = ""
    for u in units:
        joined = f"{cur}\n\n{u}" if cur else u
        if len(joined) <= limit:
            cur = joined
        else:
            if cur:
                pieces.append(cur)
            cur = u
    if cur:
        pieces.append(cur)
    return pieces


def section_path(doc_title: str, parents: Sequence[str], heading: str) -> list[str]:
    """The page and the headings down to a section, each once: the page title first,
    then the enclosing headings, then the section's own (``heading`` may be the page
    title itself, for the text before the first heading)."""
    path = [doc_title]
    for h in (*parents, heading):
        if h and h != path[-1] and not (h == doc_title and len(path) == 1):
            path.append(h)
    return path


def _tail(piece: str, limit: int) -> str:
    """The end of ``piece`` to repeat at the start of the next one: its last whole
    sentences within ``limit`` characters, else its last words within it ("" when
    ``limit`` is 0)."""
    if limit <= 0 or not piece:
        return ""
    end = piece[-limit:]
    if len(end) < len(piece):
        starts = [m.end() for m in re.finditer(r"[.!?]\s+|\n\s*\n", end)]
        if starts and starts[0] < len(end):
            end = end[starts[0] :]
        else:
            space = end.find(" ")
            end = end[space + 1 :] if space >= 0 else ""
    return " ".join(end.split())  # one paragraph, set off from the piece by a blank line


def chunk_file(
    text: str,
    kind: str,
    display: str,
    stem: str,
    deadline: Deadline | None = None,
    *,
    with_path: bool = True,
    overlap: int = OVERLAP_CHARS,
    max_chars: int = MAX_CHUNK_CHARS,
) -> list[Chunk]:
    """A file's chunks. Each is titled with its section path (``Page › Section ›
    Subsection``; ``with_path=False``: the page and the section's own heading only),
    which the embedded and keyword text carry with the content; a section longer than
    ``max_chars`` is split, and each piece after the first starts with the end of the
    one before it (``overlap`` characters at most; no chunk is longer than
    ``max_chars``)."""
    parser = {"markdown": parse_markdown, "html": parse_html, "text": parse_text}[kind]
    doc_title, sections = parser(text, deadline)
    doc_title = doc_title or stem
    chunks: list[Chunk] = []
    for s in sections:
        if deadline is not None:
            deadline.check()
        if len(s.body) < MIN_CHUNK_CHARS:
            continue
        heading = s.heading or doc_title
        base = TITLE_SEP.join(section_path(doc_title, s.parents if with_path else (), heading))
        # Pieces leave room for the carried text: no chunk is longer than max_chars.
        room = max(max_chars // 2, max_chars - overlap - 4) if overlap > 0 else max_chars
        pieces = split_long(s.body, max_chars if len(s.body) <= max_chars else room)
        for i, piece in enumerate(pieces):
            title = base if i == 0 else f"{base} (part {i + 1})"
            carried = _tail(pieces[i - 1], overlap) if i > 0 else ""
            chunks.append(
                Chunk(
                    title=title[:MAX_TITLE_CHARS],
                    content=f"… {carried}\n\n{piece}" if carried else piece,
                    source=f"{display}#{s.anchor}" if s.anchor else display,
                    heading=heading,
                    index=len(chunks),
                )
            )
    return chunks


def kind_of(path: Path) -> str | None:
    ext = path.suffix.lower()
    if ext in MARKDOWN_EXT:
        return "markdown"
    if ext in HTML_EXT:
        return "html"
    if ext in TEXT_EXT:
        return "text"
    return None


# --- the import ------------------------------------------------------------------------

ProgressFn = Callable[[str, int, int], None]  # (display path, done, total)


class Importer:
    """Imports files into one namespace of a knowledge base (kb/knowledge_base.py wires it)."""

    def __init__(
        self,
        kb: KnowledgeBase,
        *,
        namespace: str = "default",
        entry_type: str | EntryType = EntryType.DOC,
        tags: Sequence[str] = (),
    ) -> None:
        self.kb = kb
        self.namespace = validate_namespace(namespace)
        self.entry_type = validate_entry_type(entry_type)
        self.tags = validate_tags(list(tags))

    def run(
        self,
        paths: Sequence[str | Path],
        progress: ProgressFn | None = None,
        *,
        root: str | Path | None = None,
    ) -> ImportSummary:
        """Import ``paths``; with ``root``, only files that resolve under it."""
        files = discover(paths, root)
        summary = ImportSummary()
        for n, c in enumerate(files, start=1):
            outcome = self.import_file(c)
            summary.add(outcome)
            if progress is not None:
                progress(c.display, n, len(files))
        if summary.imported and self.kb.embedder is None:
            summary.warnings.append("no embedder configured: chunks have no vectors")
        return summary

    def import_file(self, c: Candidate) -> FileOutcome:
        path, display = c.path, c.display
        if c.refused is not None:
            return FileOutcome(display, c.status, reason=c.refused, code=c.code)
        kind = kind_of(path)
        if kind is None:
            return FileOutcome(
                display,
                "failed" if c.explicit else "skipped",
                reason=f"unsupported file type '{path.suffix or '(none)'}'"
                " (Markdown, text and HTML are imported)",
                code="VALIDATION_ERROR",
            )
        try:
            data, text = read_text(c)
            chunks = chunk_file(text, kind, c.source, path.stem, Deadline())
            if not chunks:
                raise FileProblem("no text to import (empty file)")
            for chunk in chunks:
                validate_source(chunk.source)
            return self._store(path, c.source, display, data, chunks, kind)
        except FileProblem as exc:
            return FileOutcome(display, "failed", reason=str(exc), code=exc.code)
        except ValidationError as exc:
            return FileOutcome(display, "failed", reason=exc.message, code=exc.code)
        except SealedKBError:
            raise  # key, database or integrity trouble concerns every file: stop

    def _identity(self, path: Path, data: bytes) -> tuple[str, str]:
        """(import_key, import_hash): keyed in encrypted mode, plain otherwise."""
        kr = self.kb.keyring
        if kr is not None:
            blinder = kr.blinder(self.namespace)
            return blinder.file_token(str(path)), blinder.file_hash(data)
        return str(path), hashlib.sha256(data).hexdigest()

    def _store(
        self, path: Path, source: str, display: str, data: bytes, chunks: list[Chunk], kind: str
    ) -> FileOutcome:
        kb = self.kb
        ns = self.namespace
        import_key, import_hash = self._identity(path, data)
        existing = kb.search_table.chunks_of(ns, import_key)
        if existing and all(h == import_hash for _, h in existing):
            return FileOutcome(display, "unchanged", reason="unchanged since the last import")
        vectors = kb.indexer.embed([(c.title, c.content) for c in chunks])

        def prepared() -> Iterator[tuple[EntryRow, SearchColumns]]:
            # Lazily: each chunk is sealed while PostgreSQL inserts the one before it.
            for i, c in enumerate(chunks):
                eid = uuid.uuid4()
                meta = {
                    "import": {
                        "file": source,
                        "format": kind,
                        "heading": c.heading,
                        "chunk": c.index + 1,
                        "chunks": len(chunks),
                    }
                }
                doc = EntryDoc(c.title, c.content, c.source, meta, self.tags)
                row, cols = kb.sealer.sealed_row(
                    ns,
                    self.entry_type.value,
                    eid,
                    doc,
                    vectors[i] if vectors is not None else None,
                )
                cols.import_key, cols.import_hash = import_key, import_hash
                sent.append((row, cols))
                yield row, cols

        sent: list[tuple[EntryRow, SearchColumns]] = []
        with kb.db.transaction("import") as conn:
            removed = kb.search_table.soft_delete_many(conn, [i for i, _ in existing])
            stored = kb.search_table.insert_many(conn, prepared(), dedup=True)
            for (row, cols), (_stored, created) in zip(sent, stored, strict=True):
                if not created:
                    # Same text as another live entry: keep the chunk, as a duplicate.
                    cols.fingerprint = None
                    kb.search_table.insert(row, cols, dedup=False, conn=conn)
        return FileOutcome(display, "imported", chunks=len(sent), removed=removed)


def iter_chunks(
    paths: Sequence[str | Path], *, with_path: bool = True, overlap: int = OVERLAP_CHARS
) -> Iterator[tuple[str, Chunk]]:
    """Chunks of supported, readable files (benchmarks and tools; no database), with
    :func:`chunk_file`'s options."""
    for cand in discover(paths):
        kind = kind_of(cand.path)
        if kind is None or cand.refused is not None:
            continue
        try:
            _data, text = read_text(cand)
        except FileProblem:
            continue
        for c in chunk_file(
            text,
            kind,
            cand.source,
            cand.path.stem,
            Deadline(),
            with_path=with_path,
            overlap=overlap,
        ):
            yield cand.source, c
