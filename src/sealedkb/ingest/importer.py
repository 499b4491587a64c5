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
import hashlib
import html
import logging
import os
import re
import stat
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
MAX_CHUNK_CHARS = 1500
MIN_CHUNK_CHARS = 1  # a heading with any body text is worth an entry
TITLE_SEP = " › "


@dataclass(frozen=True, slots=True)
class Section:
    heading: str  # "" before the first heading
    anchor: str  # fragment for the source (HTML id or Markdown slug), "" if none
    body: str


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
            "skipped": [{"path": o.path, "reason": o.reason} for o in self.skipped],
            "failed": [{"path": o.path, "reason": o.reason} for o in self.failed],
            "warnings": self.warnings,
        }


class FileProblem(Exception):
    """A reason this one file cannot be imported (reported, never raised to the user)."""


# --- discovery ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    """A file to consider, checked when it was listed."""

    path: Path  # as listed (absolute, not resolved): the file's identity across imports
    display: str  # what the summary shows: relative to the root / the named folder
    source: str  # what the chunks' source and metadata name
    explicit: bool  # named by the caller (not found in a folder)
    real: Path | None = None  # the resolved file to open; None when refused
    checked: tuple[int, int] | None = None  # (st_dev, st_ino) of ``real`` at the check
    refused: str | None = None  # why it is not read (with ``status``)
    status: str = "failed"  # failed | skipped, when refused


def _under(path: Path, base: Path) -> bool:
    return path == base or path.is_relative_to(base)


def _rel(path: Path, base: Path) -> str:
    rel = path.relative_to(base).as_posix()
    return "" if rel == "." else rel


def _join(prefix: str, rest: str) -> str:
    return f"{prefix}/{rest}" if prefix and rest else prefix or rest


def _check(c: Candidate, root: Path | None, folder: Path | None) -> Candidate:
    """Resolve the file and check where it leads (root, named folder) and what it is."""
    try:
        st = os.stat(c.path)
    except FileNotFoundError:
        return _refuse(c, "cannot read: file not found (dangling link?)", "failed")
    except PermissionError:
        return _refuse(c, "cannot read: permission denied", "failed")
    except OSError as exc:
        return _refuse(c, f"cannot read: {exc.strerror or type(exc).__name__}", "failed")
    real = Path(os.path.realpath(c.path))
    if root is not None and not _under(real, root):
        why = "symbolic link to a file outside the import root" if not c.explicit else None
        return _refuse(c, why or "outside the import root", "failed" if c.explicit else "skipped")
    if folder is not None and not _under(real, folder):
        return _refuse(c, "symbolic link to a file outside the imported folder", "skipped")
    if not stat.S_ISREG(st.st_mode):
        return _refuse(c, "cannot read: not a regular file", "failed")
    return Candidate(
        c.path, c.display, c.source, c.explicit, real=real, checked=(st.st_dev, st.st_ino)
    )


def _refuse(c: Candidate, reason: str, status: str) -> Candidate:
    return Candidate(c.path, c.display, c.source, c.explicit, refused=reason, status=status)


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
        raise FileProblem(c.refused or "not checked")
    try:
        fd = os.open(c.real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except PermissionError:
        raise FileProblem("cannot read: permission denied") from None
    except FileNotFoundError:
        raise FileProblem("cannot read: the file was removed during the import") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileProblem(
                "not read: the file was replaced by a symbolic link after it was checked"
            ) from None
        raise FileProblem(f"cannot read: {exc.strerror or type(exc).__name__}") from None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != c.checked or not stat.S_ISREG(st.st_mode):
            raise FileProblem("not read: the file was replaced after it was checked")
        if st.st_size > MAX_FILE_BYTES:
            raise FileProblem(f"file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB")
        data = _read_fd(fd, MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise FileProblem(f"cannot read: {exc.strerror or type(exc).__name__}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:  # grew after the fstat
        raise FileProblem(f"file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB")
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


# --- parsing -------------------------------------------------------------------------

_ATX_RE = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$")
_FENCE_RE = re.compile(r"^\s*(```|~~~)")


def slug(heading: str) -> str:
    """GitHub-style anchor: lowercase, punctuation dropped, spaces to hyphens."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return re.sub(r"\s", "-", s)


def parse_markdown(text: str) -> tuple[str | None, list[Section]]:
    """(first H1 or None, sections split at ATX headings outside fenced code)."""
    sections: list[Section] = []
    heading, anchor = "", ""
    lines: list[str] = []
    in_fence = False
    doc_title: str | None = None
    for line in text.splitlines():
        if _FENCE_RE.match(line):
            in_fence = not in_fence
        m = None if in_fence else _ATX_RE.match(line)
        if m:
            sections.append(Section(heading, anchor, "\n".join(lines).strip()))
            heading = m.group(2).strip()
            anchor = slug(heading)
            if doc_title is None and len(m.group(1)) == 1:
                doc_title = heading
            lines = []
        else:
            lines.append(line)
    sections.append(Section(heading, anchor, "\n".join(lines).strip()))
    return doc_title, sections


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


class _HTMLSections(HTMLParser):
    """Collects (heading, anchor, body) sections from the main content of a page."""

    def __init__(self, main_only: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.main_only = main_only
        self.stack: list[tuple[str, bool, str | None, bool]] = []  # (tag, main, id, skip)
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
        self.parts: list[str] = []
        self.first_h1: str | None = None

    def _capturing(self) -> bool:
        return self.skip_depth == 0 and (not self.main_only or self.main_depth > 0)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "title":
            self.in_title = True
        if tag in _VOID_TAGS:
            if tag in ("br", "hr") and self._capturing():
                self.parts.append("\n")
            return
        is_main = tag in ("main", "article") or a.get("role") == "main"
        cls = a.get("class") or ""
        skip = tag in _SKIP_TAGS or (tag == "a" and "headerlink" in cls.split())
        self.stack.append((tag, is_main, a.get("id"), skip))
        if is_main:
            self.main_depth += 1
        if skip:
            self.skip_depth += 1
        if tag == "pre":
            self.pre_depth += 1
        if not self._capturing():
            return
        if tag in _HEADINGS and self.heading_level == 0:
            self.heading_level = _HEADINGS[tag]
            self.heading_parts = []
            # Sphinx puts the id on the enclosing <section>; others on the heading.
            self.heading_anchor = a.get("id") or self._enclosing_id()
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n" if tag in ("p", "pre", "div", "section") else "\n")

    def _enclosing_id(self) -> str:
        for _tag, _m, ident, _s in reversed(self.stack[:-1]):
            if ident:
                return ident
        return ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        if tag in _VOID_TAGS or not any(t == tag for t, _, _, _ in self.stack):
            return
        while self.stack:
            t, is_main, _ident, skip = self.stack.pop()
            if is_main:
                self.main_depth -= 1
            if skip:
                self.skip_depth -= 1
            if t == "pre":
                self.pre_depth -= 1
            if t in _HEADINGS and self.heading_level == _HEADINGS[t]:
                self._end_heading()
            if t == tag:
                break
        if tag in _BLOCK_TAGS and self._capturing():
            self.parts.append("\n")

    def _end_heading(self) -> None:
        text = " ".join("".join(self.heading_parts).split())
        self.heading_level = 0
        if not text:
            return
        self.sections.append(
            Section(self.cur_heading, self.cur_anchor, "".join(self.parts).strip())
        )
        self.parts = []
        self.cur_heading, self.cur_anchor = text, self.heading_anchor
        if self.first_h1 is None:
            self.first_h1 = text

    def handle_data(self, data: str) -> None:
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

    def finish(self) -> list[Section]:
        self.close()
        self.sections.append(
            Section(self.cur_heading, self.cur_anchor, "".join(self.parts).strip())
        )
        return [
            Section(s.heading, s.anchor, re.sub(r"\n[ \t]*\n(\s*\n)+", "\n\n", s.body).strip())
            for s in self.sections
        ]


def parse_html(text: str) -> tuple[str | None, list[Section]]:
    p = _HTMLSections(main_only=bool(_MAIN_RE.search(text)))
    p.feed(text)
    sections = p.finish()
    title = p.first_h1 or html.unescape(" ".join("".join(p.title_parts).split())) or None
    return title, sections


def parse_text(text: str) -> tuple[str | None, list[Section]]:
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
            while len(sent) > limit:
                cut = sent.rfind(" ", 0, limit)
                cut = cut if cut > limit // 2 else limit
                units.append(sent[:cut].strip())
                sent = sent[cut:].strip()
            if sent:
                units.append(sent)
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


def chunk_file(text: str, kind: str, display: str, stem: str) -> list[Chunk]:
    parser = {"markdown": parse_markdown, "html": parse_html, "text": parse_text}[kind]
    doc_title, sections = parser(text)
    doc_title = doc_title or stem
    chunks: list[Chunk] = []
    for s in sections:
        if len(s.body) < MIN_CHUNK_CHARS:
            continue
        heading = s.heading or doc_title
        base = doc_title if heading == doc_title else f"{doc_title}{TITLE_SEP}{heading}"
        pieces = split_long(s.body)
        for i, piece in enumerate(pieces):
            title = base if i == 0 else f"{base} (part {i + 1})"
            chunks.append(
                Chunk(
                    title=title[:MAX_TITLE_CHARS],
                    content=piece,
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
            return FileOutcome(display, c.status, reason=c.refused)
        kind = kind_of(path)
        if kind is None:
            return FileOutcome(
                display,
                "failed" if c.explicit else "skipped",
                reason=f"unsupported file type '{path.suffix or '(none)'}'"
                " (Markdown, text and HTML are imported)",
            )
        try:
            data, text = read_text(c)
            chunks = chunk_file(text, kind, c.source, path.stem)
            if not chunks:
                raise FileProblem("no text to import (empty file)")
            for chunk in chunks:
                validate_source(chunk.source)
            return self._store(path, c.source, display, data, chunks, kind)
        except FileProblem as exc:
            return FileOutcome(display, "failed", reason=str(exc))
        except ValidationError as exc:
            return FileOutcome(display, "failed", reason=exc.message)
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


def iter_chunks(paths: Sequence[str | Path]) -> Iterator[tuple[str, Chunk]]:
    """Chunks of supported, readable files (benchmarks and tools; no database)."""
    for cand in discover(paths):
        kind = kind_of(cand.path)
        if kind is None or cand.refused is not None:
            continue
        try:
            _data, text = read_text(cand)
        except FileProblem:
            continue
        for c in chunk_file(text, kind, cand.source, cand.path.stem):
            yield cand.source, c
