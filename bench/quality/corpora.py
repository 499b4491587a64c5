"""Corpora for the quality harness: real documentation nobody on this project wrote,
installed from Debian packages, each with questions and the documents that answer them.

* ``python-faq``: the Python 3.11 FAQ (python3.11-doc). Each answer is stored under its
  page's title only (never its question) among the tutorial and HOWTO pages as
  distractors; the questions are the FAQ's own headings, the relevant document the
  answer's section.
* ``postgresql``: the PostgreSQL 15 manual (postgresql-doc-15); questions written the way
  a user asks (bench/quality/postgresql_questions.tsv), each with the page answering it.
  The questions' pages plus a fixed sample of other pages (``pages``) are stored.
* ``manpages``: the Linux system call manual pages (manpages-dev, section 2), rendered
  from roff; the query is a page's one-line NAME description ("open and possibly create
  a file"), and the stored page has no NAME section: what a user recalls of a call.

Documents are chunked by sealedkb's own importer (ingest/importer.py ``chunk_file``),
with the options of the chunking variant :data:`CHUNKING` names (``--chunking``).
"""

from __future__ import annotations

import gzip
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sealedkb.ingest.importer import MAX_CHUNK_CHARS, OVERLAP_CHARS, TITLE_SEP, Chunk, chunk_file

HERE = Path(__file__).resolve().parent
PYDOC = Path("/usr/share/doc/python3.11/html")
PGDOC = Path("/usr/share/doc/postgresql-doc-15/html")
MAN2 = Path("/usr/share/man/man2")
PACKAGES = {
    "python-faq": ("python3.11-doc", PYDOC / "faq" / "programming.html"),
    "postgresql": ("postgresql-doc-15", PGDOC / "index.html"),
    "manpages": ("manpages-dev", MAN2 / "open.2.gz"),
}


@dataclass(frozen=True, slots=True)
class Doc:
    """One stored entry; ``label`` is what a question's answer is matched by."""

    title: str
    content: str
    source: str
    label: str


@dataclass(frozen=True, slots=True)
class Question:
    text: str
    relevant: frozenset[str]  # labels of the documents that answer it


@dataclass(frozen=True, slots=True)
class Corpus:
    name: str
    description: str
    docs: tuple[Doc, ...]
    questions: tuple[Question, ...]


@dataclass(frozen=True, slots=True)
class Chunking:
    """chunk_file's options: section path in the title, overlap, piece size."""

    with_path: bool = True
    overlap: int = OVERLAP_CHARS
    max_chars: int = MAX_CHUNK_CHARS


CHUNKINGS = {
    "sections": Chunking(),  # what sealedkb import does: section path, no overlap
    "overlap": Chunking(overlap=200),  # and pieces repeating the end of the one before
    "before": Chunking(with_path=False, overlap=0),  # page + own heading only
    "small": Chunking(max_chars=1000),
}
CHUNKING = CHUNKINGS["sections"]


def _chunk(text: str, kind: str, display: str, stem: str) -> list[Chunk]:
    c = CHUNKING
    return chunk_file(
        text, kind, display, stem, with_path=c.with_path, overlap=c.overlap, max_chars=c.max_chars
    )


def ensure_package(corpus: str) -> None:
    """Install the corpus's Debian package when its files are missing (root + apt)."""
    package, probe = PACKAGES[corpus]
    if probe.exists():
        return
    if shutil.which("apt-get") is None:
        sys.exit(f"bench: {package} is not installed and apt-get is missing: install it")
    print(f"bench: installing Debian's {package} (the {corpus} corpus)", file=sys.stderr)
    try:
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True)
    except (subprocess.CalledProcessError, OSError):
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True)


def _html_chunks(path: Path, display: str) -> list[Chunk]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return _chunk(text, "html", display, path.stem)


def _without_question(c: Chunk) -> str:
    """A chunk's title without its own heading (the question): the page and, with the
    section path, the headings enclosing the question ("General Questions")."""
    path = c.title.split(TITLE_SEP)
    return TITLE_SEP.join(path[:-1]) if len(path) > 1 else path[0]


# --- (a) the Python FAQ -------------------------------------------------------------


def python_faq(distractors: Sequence[str] = ("tutorial", "howto"), limit: int = 0) -> Corpus:
    ensure_package("python-faq")
    docs: list[Doc] = []
    questions: dict[str, set[str]] = {}
    for path in sorted((PYDOC / "faq").glob("*.html")):
        if path.name == "index.html":
            continue
        for c in _html_chunks(path, f"faq/{path.name}"):
            label = c.source
            if c.heading.endswith("?") and "#" in c.source:
                questions.setdefault(c.heading, set()).add(label)
            # the answer without its question: under the page's title (and the
            # headings above the question, as the chunking variant titles them)
            docs.append(Doc(_without_question(c), c.content, c.source, label))
    qs = [Question(q, frozenset(r)) for q, r in questions.items()]
    for sec in distractors:
        for path in sorted((PYDOC / sec).rglob("*.html")):
            if path.name == "index.html":
                continue
            for c in _html_chunks(path, f"{sec}/{path.name}"):
                docs.append(Doc(c.title, c.content, c.source, c.source))
    qs, docs = _subset(qs, docs, limit)
    return Corpus(
        "python-faq",
        f"Python 3.11 FAQ answers without their questions among {'+'.join(distractors)}",
        tuple(docs),
        tuple(qs),
    )


# --- (b) the PostgreSQL manual ---------------------------------------------------------


def postgresql_questions() -> list[Question]:
    out = []
    for line in (HERE / "postgresql_questions.tsv").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        text, pages = line.split("\t")
        out.append(Question(text.strip(), frozenset(p.strip() for p in pages.split(","))))
    return out


def postgresql(pages: int = 150, limit: int = 0) -> Corpus:
    """The pages answering the questions plus a fixed random sample of the others, up to
    ``pages`` pages in all (the whole manual is ~1,170 pages, ~10k chunks)."""
    ensure_package("postgresql")
    qs = postgresql_questions()
    wanted = sorted({p for q in qs for p in q.relevant})
    missing = [p for p in wanted if not (PGDOC / p).exists()]
    if missing:
        raise SystemExit(f"bench: question pages missing from the manual: {missing}")
    others = sorted(
        p.name for p in PGDOC.glob("*.html") if p.name not in wanted and p.name != "index.html"
    )
    random.Random(15).shuffle(others)
    chosen = wanted + others[: max(0, pages - len(wanted))]
    docs = []
    for name in chosen:
        for c in _html_chunks(PGDOC / name, name):
            docs.append(Doc(c.title, c.content, c.source, name))
    qs, docs = _subset(qs, docs, limit)
    return Corpus(
        "postgresql",
        f"PostgreSQL 15 manual, {len(chosen)} pages; user questions (postgresql_questions.tsv)",
        tuple(docs),
        tuple(qs),
    )


# --- (c) Linux system call manual pages ------------------------------------------------

_FONT_RE = re.compile(r"\\f(?:\[[^\]]*\]|\(..|.)")
_ESCAPES = {
    r"\-": "-",
    r"\(em": "—",
    r"\(en": "–",
    r"\(aq": "'",
    r"\(dq": '"',
    r"\(lq": '"',
    r"\(rq": '"',
    r"\e": "\\",
    r"\&": "",
    r"\~": " ",
    r"\ ": " ",
    r"\|": "",
    r"\^": "",
    r"\%": "",
}
_OTHER_ESCAPE_RE = re.compile(r"\\\*?\(..|\\\*?\[[^\]]*\]|\\[a-zA-Z]")


def _roff_inline(s: str) -> str:
    s = _FONT_RE.sub("", s)
    for k, v in _ESCAPES.items():
        s = s.replace(k, v)
    return _OTHER_ESCAPE_RE.sub("", s)


def _roff_args(rest: str) -> list[str]:
    return [a.strip('"') for a in re.findall(r'"[^"]*"|\S+', rest)]


def man_to_markdown(roff: str) -> tuple[str, str, str]:
    """(page name, NAME description, the page as Markdown without its NAME section)."""
    name = ""
    desc = ""
    out: list[str] = []
    section = ""
    para: list[str] = []

    def flush() -> None:
        if para:
            out.append(" ".join(para).strip())
            out.append("")
            para.clear()

    for raw in roff.splitlines():
        line = raw.rstrip()
        if line.startswith('.\\"') or line.startswith("'\\\""):
            continue
        if line.startswith("."):
            req, _, rest = line[1:].partition(" ")
            if req == "TH":
                args = _roff_args(rest)
                name = f"{args[0]}({args[1]})" if len(args) > 1 else rest
                continue
            if req in ("SH", "SS"):
                flush()
                section = _roff_inline(" ".join(_roff_args(rest))).strip()
                if section != "NAME":
                    out.append(("## " if req == "SH" else "### ") + section.capitalize())
                    out.append("")
                continue
            if req in ("B", "I", "BR", "IR", "RB", "RI", "BI", "IB", "SM", "SB"):
                text = "".join(_roff_args(rest)) if req not in ("B", "I") else rest.strip('"')
                line = text
            elif req in ("PP", "P", "LP", "TP", "IP", "sp", "br", "in", "RS", "RE"):
                flush()
                if req == "IP" and rest:
                    para.append(_roff_inline(_roff_args(rest)[0]))
                continue
            else:
                continue
        text = _roff_inline(line).strip()
        if not text:
            flush()
            continue
        if section == "NAME":
            desc = (desc + " " + text).strip()
        else:
            para.append(text)
    flush()
    if " - " in desc:
        desc = desc.split(" - ", 1)[1].strip()
    return name, desc, f"# {name}\n\n" + "\n".join(out)


def manpages(pages: int = 120, limit: int = 0) -> Corpus:
    """A fixed random sample of ``pages`` pages (all ~500 pages are ~6,300 chunks)."""
    ensure_package("manpages")
    docs: list[Doc] = []
    qs: dict[str, set[str]] = {}
    paths = sorted(MAN2.glob("*.2.gz"))
    random.Random(2).shuffle(paths)
    taken = 0
    for path in paths:
        if taken >= pages > 0:
            break
        roff = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
        if roff.lstrip().startswith(".so "):
            continue  # a link to another page
        name, desc, md = man_to_markdown(roff)
        if not name or not desc:
            continue
        taken += 1
        qs.setdefault(desc, set()).add(name)
        for c in _chunk(md, "markdown", f"man2/{path.name}", name):
            docs.append(Doc(c.title, c.content, c.source, name))
    questions = [Question(q, frozenset(r)) for q, r in qs.items()]
    questions, docs = _subset(questions, docs, limit)
    return Corpus(
        "manpages",
        f"Linux system call manual pages (manpages-dev, section 2), {taken} pages;"
        " query: the NAME line",
        tuple(docs),
        tuple(questions),
    )


def _subset(qs: list[Question], docs: list[Doc], limit: int) -> tuple[list[Question], list[Doc]]:
    """``limit`` > 0: that many questions (every k-th, deterministic), and the documents
    answering them plus as many distractors as keep the corpus ~``limit`` x 8 chunks."""
    if limit <= 0 or limit >= len(qs):
        return qs, docs
    step = len(qs) / limit
    keep_q = [qs[int(i * step)] for i in range(limit)]
    wanted = {label for q in keep_q for label in q.relevant}
    rel = [d for d in docs if d.label in wanted]
    rest = [d for d in docs if d.label not in wanted]
    n = max(0, limit * 8 - len(rel))
    stride = max(1, len(rest) // n) if n else len(rest) + 1
    return keep_q, rel + rest[::stride][:n]


BUILDERS: dict[str, Callable[[int], Corpus]] = {
    "python-faq": lambda limit: python_faq(limit=limit),
    "postgresql": lambda limit: postgresql(limit=limit),
    "manpages": lambda limit: manpages(limit=limit),
}
