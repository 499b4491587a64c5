"""basic-memory's project folder: one Markdown file per entity, read-only.

The format is basic-memory's note format, read from basicmachines-co/basic-memory,
docs/NOTE-FORMAT.md (and the knowledge-format note of its docs): a file starts
with YAML frontmatter between ``---`` fences with ``title`` (default: the file
name), ``type`` (default ``note``), ``tags`` (a list or a comma-separated
string), ``permalink`` (a stable identity, default made from the path) and any
custom fields; the body is Markdown in which observations are list items
``- [category] content #tag (context)`` and relations ``- relation_type
[[Target]] (context)``.

Mapping: the body -> content (observations and relations stay in it, word for
word, and are also listed in ``metadata.observations`` / ``metadata.relations``),
title, tags, type -> entry type (others kept in ``metadata.imported.type``),
custom fields -> metadata (a ``metadata`` mapping is merged in: what
``sealedkb export --format markdown`` writes), ``created``/``modified`` or the
file's modification time -> ``metadata.imported``; key ``basic-memory:<permalink>``,
source ``memory://<permalink>`` (basic-memory's own address of a note).

Files are listed without following symbolic links (a linked file or folder is
skipped); hidden folders (``.basic-memory``, ``.git``) are not read.
"""

from __future__ import annotations

import os
import re
import stat
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import yaml

from sealedkb.errors import ValidationError
from sealedkb.ingest.peers.base import ItemProblem, PeerItem, PeerRead, bookkeeping, mapped_type

FORMAT = "basic-memory"
MAX_FILE_BYTES = 2 * 1024 * 1024
STANDARD = frozenset({"title", "type", "tags", "permalink", "created", "modified", "metadata"})
# what ``sealedkb export --format markdown`` adds to the frontmatter
EXPORTED = frozenset({"sealedkb_id", "source", "verified", "archived"})
_OBSERVATION = re.compile(r"^\s*[-*]\s+\[(?P<category>[^\]\[]+)\]\s+(?P<content>\S.*)$")
_RELATION = re.compile(r"^\s*[-*]\s+(?P<type>[^\s\[][^\[]*?)\s+\[\[(?P<target>[^\]]+)\]\]")
_TASK = re.compile(r"^\s*[-*]\s+\[[ xX-]\]")
_SLUG = re.compile(r"[^a-z0-9/]+")


class BadNote(Exception):
    """A note that cannot be imported (the reason names no content)."""


def _plain(value: Any) -> Any:
    """YAML values as JSON values (dates become ISO 8601 text)."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def split_frontmatter(text: str) -> tuple[dict[str, Any], str]:
    """The frontmatter mapping and the body; no frontmatter is an empty mapping."""
    if not text.startswith("---"):
        return {}, text
    first, _, rest = text.partition("\n")
    if first.strip() != "---":
        return {}, text
    lines = rest.split("\n")
    for i, line in enumerate(lines):
        if line.rstrip() == "---":
            head, body = "\n".join(lines[:i]), "\n".join(lines[i + 1 :])
            break
    else:
        raise BadNote("malformed frontmatter: no closing '---'")
    try:
        data = yaml.safe_load(head) if head.strip() else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 2}" if mark is not None else ""
        raise BadNote(f"malformed frontmatter: not valid YAML{where}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadNote("malformed frontmatter: not a mapping of fields")
    return {str(k): _plain(v) for k, v in data.items()}, body.lstrip("\n")


def _tags(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(t.strip().lstrip("#") for t in value.split(",") if t.strip())
    if isinstance(value, list) and all(isinstance(t, str | int | float) for t in value):
        return tuple(str(t).strip() for t in value if str(t).strip())
    raise BadNote("malformed frontmatter: tags are neither a list nor comma-separated text")


def _permalink(rel: str) -> str:
    stem = rel[: -len(".md")] if rel.endswith(".md") else rel
    return _SLUG.sub("-", stem.casefold()).strip("-") or "note"


def graph(body: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Observations and relations of a note body, as basic-memory reads them."""
    observations: list[dict[str, str]] = []
    relations: list[dict[str, str]] = []
    for line in body.splitlines():
        if _TASK.match(line):
            continue
        m = _OBSERVATION.match(line)
        if m:
            observations.append({"category": m["category"].strip(), "content": m["content"]})
            continue
        r = _RELATION.match(line)
        if r:
            relations.append({"type": r["type"].strip(), "target": r["target"].strip()})
    return observations, relations


def _stamp(value: Any, fallback: float) -> str:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return datetime.fromtimestamp(fallback, UTC).isoformat()


def note(path: Path, rel: str) -> PeerItem:
    """One note file as an item (raises BadNote)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadNote("not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise BadNote(f"larger than {MAX_FILE_BYTES} bytes")
        with os.fdopen(os.dup(fd), "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadNote("not UTF-8 text") from None
    front, body = split_frontmatter(text.replace("\r\n", "\n"))
    permalink = front.get("permalink")
    if permalink is not None and (not isinstance(permalink, str) or not permalink.strip()):
        raise BadNote("malformed frontmatter: permalink is not text")
    link = permalink.strip() if isinstance(permalink, str) else _permalink(rel)
    title = front.get("title")
    if title is not None and not isinstance(title, str | int | float):
        raise BadNote("malformed frontmatter: title is not text")
    meta_field = front.get("metadata")
    if meta_field is not None and not isinstance(meta_field, dict):
        raise BadNote("malformed frontmatter: metadata is not a mapping")
    metadata: dict[str, Any] = {
        k: v for k, v in front.items() if k not in STANDARD and k not in EXPORTED
    }
    source = front.get("source")
    if source is not None and not isinstance(source, str):
        raise BadNote("malformed frontmatter: source is not text")
    metadata.update(meta_field or {})
    observations, relations = graph(body)
    if observations and "observations" not in metadata:
        metadata["observations"] = observations
    if relations and "relations" not in metadata:
        metadata["relations"] = relations
    key, metadata = bookkeeping(
        FORMAT,
        f"{FORMAT}:{link}",
        metadata,
        created_at=_stamp(front.get("created"), st.st_mtime),
        updated_at=_stamp(front.get("modified"), st.st_mtime),
        peer_type=front.get("type"),
    )
    return PeerItem(
        key=key,
        label=f"{rel}: note {link}",
        content=body,
        title=str(title) if title is not None else Path(rel).stem,
        entry_type=mapped_type(front.get("type")),
        tags=_tags(front.get("tags")),
        source=source if "source" in front else f"memory://{link}",
        metadata=metadata,
        verified=front.get("verified") is True,
        archived=front.get("archived") is True,
    )


def read(folder: Path) -> PeerRead:
    """Every note (``*.md``) under ``folder``, in path order."""
    if not folder.is_dir() or folder.is_symlink():
        raise ValidationError(f"{folder.name}: not a basic-memory folder", field="path")
    items: list[PeerItem] = []
    failed: list[ItemProblem] = []
    skipped: list[ItemProblem] = []
    base = folder.absolute()
    for here, dirs, files in os.walk(base, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.endswith(".md"):
                continue
            path = Path(here) / name
            rel = path.relative_to(base).as_posix()
            if path.is_symlink():
                skipped.append(ItemProblem(rel, "symbolic link: not followed", "ACCESS_DENIED"))
                continue
            try:
                items.append(note(path, rel))
            except BadNote as exc:
                failed.append(ItemProblem(rel, str(exc)))
            except OSError as exc:
                reason = f"cannot read ({exc.strerror or type(exc).__name__})"
                failed.append(ItemProblem(rel, reason))
    return PeerRead(FORMAT, tuple(items), tuple(failed), tuple(skipped))
