"""``sealedkb export``: every live entry written out as plaintext, on purpose.

Plaintext leaves the knowledge base here, so the export is guarded:

- the target must be a new folder (created 0700), outside the sealedkb home, the
  database's data directory and the other folders the caller names (keys, audit,
  snapshots): plaintext there would sit beside what it was sealed to protect;
- every file is created 0600 with ``O_EXCL | O_NOFOLLOW``;
- the export is recorded in the audit chain (``ExportEntries``: format, count,
  namespace), and a failure to record it removes what was written: no export goes
  unaudited; a failure while writing removes the folder: nothing half written.

Formats: ``jsonl`` (one file, ``entries.jsonl``: the format ``import --from
jsonl`` reads, :func:`entry_line`) and ``markdown`` (one file a entry,
``<namespace>/<permalink>.md`` with YAML frontmatter that ``import --from
basic-memory`` reads back).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from sealedkb.errors import ValidationError
from sealedkb.model import Entry, validate_namespace

EXPORT_FORMATS = ("jsonl", "markdown")
AUDIT_ACTION = "ExportEntries"
LIST_PAGE = 1000
JSONL_FILE = "entries.jsonl"
_SLUG = re.compile(r"[^a-z0-9]+")


class EntrySource(Protocol):
    """What an export needs of the knowledge base (``KnowledgeBase`` is one)."""

    def list(
        self,
        *,
        namespace: str | None = None,
        entry_type: str | None = None,
        tag: str | None = None,
        limit: int = 50,
        offset: int = 0,
        include_archived: bool = True,
        namespaces: list[str] | None = None,
    ) -> list[Entry]: ...


AuditRecord = Callable[[str, str | None, dict[str, str | int | bool | None]], None]


@dataclass(frozen=True, slots=True)
class ExportResult:
    format: str
    folder: str
    entries: int
    files: int

    def to_dict(self) -> dict[str, str | int]:
        return {
            "format": self.format,
            "folder": self.folder,
            "entries": self.entries,
            "files": self.files,
        }


def entry_line(e: Entry) -> dict[str, Any]:
    """An entry as one JSON Lines object (what ``import --from jsonl`` reads)."""
    return {
        "id": str(e.id),
        "namespace": e.namespace,
        "title": e.title,
        "content": e.content,
        "type": e.entry_type.value,
        "tags": list(e.tags),
        "source": e.source,
        "metadata": e.metadata,
        "verified": e.verified,
        "archived": e.archived,
        "created_at": e.created_at.isoformat(),
        "updated_at": e.updated_at.isoformat(),
    }


def note_text(e: Entry) -> str:
    """An entry as a basic-memory note: frontmatter, then the content."""
    front: dict[str, Any] = {
        "title": e.title,
        "type": e.entry_type.value,
        "permalink": permalink(e),
        "tags": list(e.tags),
        "created": e.created_at.isoformat(),
        "modified": e.updated_at.isoformat(),
        "sealedkb_id": str(e.id),
        "source": e.source,  # written even when empty: no memory:// address made up
    }
    if e.verified:
        front["verified"] = True
    if e.archived:
        front["archived"] = True
    if e.metadata:
        front["metadata"] = e.metadata
    head = yaml.safe_dump(front, allow_unicode=True, sort_keys=False, width=10_000)
    return f"---\n{head}---\n\n{e.content}"


def permalink(e: Entry) -> str:
    slug = _SLUG.sub("-", e.title.casefold()).strip("-")[:60].strip("-") or "entry"
    return f"{e.namespace}/{slug}-{str(e.id)[:8]}"


def check_target(target: Path, protected: Sequence[Path]) -> Path:
    """The absolute, resolved path of a new export folder, or a ValidationError."""
    if target.exists() or target.is_symlink():
        raise ValidationError(
            "the export folder must not exist yet (a new folder is created)", field="dir"
        )
    parent = Path(os.path.realpath(target.absolute().parent))
    if not parent.is_dir():
        raise ValidationError("the export folder's parent does not exist", field="dir")
    resolved = parent / target.name
    for p in protected:
        real = Path(os.path.realpath(p.absolute()))
        if resolved == real or resolved.is_relative_to(real):
            raise ValidationError(
                "refused: the export folder is inside the sealedkb home or the database's "
                "data directory (plaintext must not sit beside the sealed data)",
                field="dir",
            )
    return resolved


def entries_of(source: EntrySource, namespace: str | None) -> Iterator[Entry]:
    offset = 0
    while True:
        page = source.list(namespace=namespace, limit=LIST_PAGE, offset=offset)
        yield from page
        if len(page) < LIST_PAGE:
            return
        offset += LIST_PAGE


def _write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(os.dup(fd), "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        os.close(fd)


def _mkdir(path: Path) -> None:
    os.mkdir(path, 0o700)
    os.chmod(path, 0o700)


def export_entries(
    source: EntrySource,
    target: Path,
    *,
    fmt: str,
    protected: Sequence[Path],
    record: AuditRecord,
    namespace: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ExportResult:
    """Write every live entry (of ``namespace``, or all) to the new folder ``target``."""
    if fmt not in EXPORT_FORMATS:
        raise ValidationError(
            f"unknown export format; expected one of: {', '.join(EXPORT_FORMATS)}",
            field="format",
        )
    ns = validate_namespace(namespace) if namespace is not None else None
    folder = check_target(target, protected)
    try:
        _mkdir(folder)
    except OSError as exc:
        raise ValidationError(
            f"cannot create the export folder ({exc.strerror or type(exc).__name__})",
            field="dir",
        ) from None
    count = files = 0
    try:
        if fmt == "jsonl":
            lines: list[str] = []
            for e in entries_of(source, ns):
                lines.append(json.dumps(entry_line(e), ensure_ascii=False, sort_keys=True))
                count += 1
                if progress is not None:
                    progress(count)
            _write(folder / JSONL_FILE, "".join(f"{line}\n" for line in lines))
            files = 1
        else:
            made: set[str] = set()
            for e in entries_of(source, ns):
                if e.namespace not in made:
                    _mkdir(folder / e.namespace)
                    made.add(e.namespace)
                _write(folder / f"{permalink(e)}.md", note_text(e))
                count += 1
                files += 1
                if progress is not None:
                    progress(count)
        record(AUDIT_ACTION, ns, {"format": fmt, "entries": count, "files": files})
    except BaseException as exc:
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(exc, OSError):
            raise ValidationError(
                f"cannot write the export ({exc.strerror or type(exc).__name__}); "
                "nothing was left behind",
                field="dir",
            ) from None
        raise
    return ExportResult(fmt, str(folder), count, files)
