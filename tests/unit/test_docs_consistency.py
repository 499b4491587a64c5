"""The documentation agrees with the tree: the schema version and the table columns
docs/FORMATS.md states are the ones the migrations create, every numbered section
reference (``docs/NAME.md §N``, ``runbook §N``) names a heading that exists, and
every file a doc or docstring names is in the tree. No database needed: the
migrations are parsed as SQL text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MIGRATIONS = ROOT / "src" / "sealedkb" / "store" / "migrations"
FORMATS = DOCS / "FORMATS.md"
RUNBOOK = DOCS / "ENCRYPTION-KEY-MANAGEMENT.md"
THIS = Path(__file__).resolve()

# Where references are looked for: the docs, the README, and the comments and
# docstrings of the code, its tests and benchmarks.
SCANNED_DIRS = ("src", "tests", "bench", "docs")
SCANNED_SUFFIXES = {".py", ".md", ".sql", ".json", ".toml", ".txt"}


def scanned_files() -> list[Path]:
    out = [ROOT / "README.md", ROOT / "pyproject.toml"]
    for d in SCANNED_DIRS:
        for p in sorted((ROOT / d).rglob("*")):
            if (
                p.is_file()
                and p.suffix in SCANNED_SUFFIXES
                and p.resolve() != THIS
                and ".egg-info" not in p.parts[-2]
                and "__pycache__" not in p.parts
                and ("results" not in p.relative_to(ROOT).parts[:2] or p.suffix == ".md")
            ):
                out.append(p)
    return out


# --- the schema, from the migrations -------------------------------------------------


def migration_files() -> list[tuple[int, Path]]:
    out = []
    for p in MIGRATIONS.glob("*.sql"):
        m = re.match(r"(\d+)_", p.name)
        if m:
            out.append((int(m.group(1)), p))
    return sorted(out)


def schema_version() -> int:
    return max(n for n, _ in migration_files())


def _strip_sql_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)


def _split_top_level(s: str, sep: str) -> list[str]:
    """Split on ``sep`` outside parentheses and single-quoted strings."""
    parts, depth, quoted, cur = [], 0, False, []
    for c in s:
        if c == "'":
            quoted = not quoted
        elif not quoted and c == "(":
            depth += 1
        elif not quoted and c == ")":
            depth -= 1
        if c == sep and depth == 0 and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


_NOT_COLUMNS = {"CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN", "EXCLUDE", "LIKE"}


def migration_columns() -> dict[str, list[str]]:
    """table -> its columns, in order, after every migration has run."""
    tables: dict[str, list[str]] = {}
    for _, path in migration_files():
        for stmt in _split_top_level(_strip_sql_comments(path.read_text("utf-8")), ";"):
            create = re.match(
                r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)\s*\((.*)\)\s*$",
                stmt,
                re.S | re.I,
            )
            if create:
                cols = [
                    item.split()[0]
                    for item in _split_top_level(create.group(2), ",")
                    if item.split()[0].upper() not in _NOT_COLUMNS
                ]
                tables[create.group(1)] = cols
                continue
            alter = re.match(r"ALTER\s+TABLE\s+(?:ONLY\s+)?(\w+)\s+(.*)$", stmt, re.S | re.I)
            if not alter:
                continue
            cols = tables.setdefault(alter.group(1), [])
            for action in _split_top_level(alter.group(2), ","):
                add = re.match(r"ADD\s+COLUMN\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", action, re.I)
                drop = re.match(r"DROP\s+COLUMN\s+(?:IF\s+EXISTS\s+)?(\w+)", action, re.I)
                rename = re.match(r"RENAME\s+COLUMN\s+(\w+)\s+TO\s+(\w+)", action, re.I)
                if add and add.group(1) not in cols:
                    cols.append(add.group(1))
                elif drop and drop.group(1) in cols:
                    cols.remove(drop.group(1))
                elif rename and rename.group(1) in cols:
                    cols[cols.index(rename.group(1))] = rename.group(2)
    return tables


def test_migration_parser_reads_the_known_tables() -> None:
    tables = migration_columns()
    assert {"kb_meta", "kb_data_keys", "kb_entries", "kb_audit", "kb_tokens"} <= set(tables)
    assert tables["kb_entries"][:3] == ["id", "namespace", "entry_type"]
    assert "data_key_id" in tables["kb_entries"]  # added by ALTER TABLE in 002
    assert "embedding_enc" in tables["kb_entries"]  # added by ALTER TABLE in 003
    assert "kb_entries_one_form" not in tables["kb_entries"]  # a constraint, not a column


# --- (a) the schema version ------------------------------------------------------------


def test_formats_states_the_current_schema_version() -> None:
    stated = re.findall(r"schema version (\d+)", FORMATS.read_text("utf-8"), re.I)
    assert stated, "docs/FORMATS.md does not state the schema version"
    assert {int(v) for v in stated} == {schema_version()}


@pytest.mark.parametrize("doc", ["ENCRYPTION-KEY-MANAGEMENT.md", "THREAT-MODEL.md", "DESIGN.md"])
def test_other_docs_state_the_current_schema_version(doc: str) -> None:
    stated = re.findall(r"schema version (\d+)", (DOCS / doc).read_text("utf-8"), re.I)
    assert {int(v) for v in stated} <= {schema_version()}


# --- (b) the column tables ---------------------------------------------------------------


def documented_columns(doc: Path, tables: set[str]) -> dict[str, list[str]]:
    """table -> the column names of the first ``| column | ...`` table under each
    heading that names the table in backticks."""
    out: dict[str, list[str]] = {}
    lines = doc.read_text("utf-8").splitlines()
    for i, line in enumerate(lines):
        heading = re.match(r"#{2,4}\s+(.*)", line)
        if not heading:
            continue
        named = [t for t in re.findall(r"`(\w+)`", heading.group(1)) if t in tables]
        if len(named) != 1:
            continue
        cols: list[str] = []
        in_table = False
        for row in lines[i + 1 :]:
            if row.startswith("#"):
                break
            if not row.startswith("|"):
                if in_table:
                    break
                continue
            first = row.split("|")[1].strip()
            if not in_table:
                if first != "column":
                    break
                in_table = True
                continue
            if set(first) <= {"-", ":"}:
                continue
            cols.extend(re.findall(r"`(\w+)`", first))
        if cols:
            out[named[0]] = cols
    return out


def test_formats_documents_every_table_and_column_the_migrations_create() -> None:
    actual = migration_columns()
    documented = documented_columns(FORMATS, set(actual))
    assert set(documented) == set(actual), "tables without a column table in FORMATS.md"
    for table, cols in actual.items():
        assert sorted(documented[table]) == sorted(cols), table


def test_runbook_column_table_of_kb_entries_matches_the_migrations() -> None:
    actual = migration_columns()
    documented = documented_columns(RUNBOOK, {"kb_entries"})
    assert sorted(documented["kb_entries"]) == sorted(actual["kb_entries"])


# --- (c) numbered section references ---------------------------------------------------

_SECTION_REF = re.compile(
    r"(?:(?<![\w/])docs/|(?<![\w/.-]))([A-Z][A-Z-]*\.md)`?,?\s*(?:§|sections?\s+)"
    r"(\d+)(?:\s*[-–]\s*§?(\d+))?"
)
_RUNBOOK_REF = re.compile(r"\brunbook,?\s*§\s*(\d+)(?:\s*[-–]\s*§?(\d+))?")


def headings(doc: Path) -> set[int]:
    return {
        int(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(\d+)\.\s", doc.read_text("utf-8"), re.M)
    }


def section_refs() -> list[tuple[str, str, int]]:
    """(where, document, section) of every numbered reference."""
    refs = []
    for path in scanned_files():
        text = path.read_text("utf-8", errors="replace")
        where = str(path.relative_to(ROOT))
        for m in _SECTION_REF.finditer(text):
            for n in (m.group(2), m.group(3)):
                if n:
                    refs.append((where, m.group(1), int(n)))
        for m in _RUNBOOK_REF.finditer(text):
            for n in (m.group(1), m.group(2)):
                if n:
                    refs.append((where, RUNBOOK.name, int(n)))
    return refs


def test_section_references_name_headings_that_exist() -> None:
    refs = section_refs()
    assert len(refs) > 20  # the pattern still finds the references
    broken = []
    for where, doc, n in refs:
        target = DOCS / doc
        if not target.is_file() or n not in headings(target):
            broken.append(f"{where}: {doc} §{n}")
    assert broken == []


def test_design_references_point_at_docs_design() -> None:
    """``DESIGN.md §N`` means this repository's docs/DESIGN.md, and says so."""
    bare = []
    for path in scanned_files():
        for m in re.finditer(r"(\S*)DESIGN\.md", path.read_text("utf-8", errors="replace")):
            if not m.group(1).endswith("docs/") and path != DOCS / "DESIGN.md":
                bare.append(f"{path.relative_to(ROOT)}: {m.group(0)}")
    assert bare == []


# --- (d) file references -------------------------------------------------------------

_PY_PATH = re.compile(r"(?<![\w./-])((?:src/)?sealedkb/[\w/]+\.py)\b")
_DOC_PY = re.compile(r"`((?:[\w.-]+/)*[\w-]+\.py)`")


def test_sealedkb_paths_name_files_that_exist() -> None:
    missing = []
    for path in scanned_files():
        for m in _PY_PATH.finditer(path.read_text("utf-8", errors="replace")):
            ref = m.group(1)
            target = ROOT / ref if ref.startswith("src/") else ROOT / "src" / ref
            if not target.is_file():
                missing.append(f"{path.relative_to(ROOT)}: {ref}")
    assert missing == []


def _resolves(ref: str) -> bool:
    if "/" not in ref:
        return any(
            p.name == ref and "__pycache__" not in p.parts
            for d in ("src", "tests", "bench", "deploy", "scripts")
            for p in (ROOT / d).rglob(ref)
        )
    bases = (ROOT, ROOT / "src", ROOT / "src" / "sealedkb", ROOT / "bench", ROOT / "tests")
    return any((base / ref).is_file() for base in bases)


def test_file_names_in_the_docs_exist() -> None:
    """Every ``name.py`` in backticks in docs/ and the README is a file of the tree
    (a bare name somewhere in it; a path under the root, src/, src/sealedkb/, bench/ or tests/)."""
    missing = []
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for m in _DOC_PY.finditer(path.read_text("utf-8")):
            if not _resolves(m.group(1)):
                missing.append(f"{path.relative_to(ROOT)}: {m.group(1)}")
    assert missing == []


_ANY_PY = re.compile(r"(?<![\w./-])((?:[a-z0-9_]+/)*[a-z0-9_]+\.py)\b")


def _ours(ref: str) -> bool:
    """Whether a path names a file of this repository (not another project's, as an
    importer of a peer format may cite): its first folder is one of ours."""
    if "/" not in ref:
        return True
    first = ref.split("/")[0]
    if first == "src":
        return ref.startswith("src/sealedkb/")
    ours = {"sealedkb", "tests", "bench", "deploy", "scripts", "docs"}
    ours |= {p.name for p in (ROOT / "src" / "sealedkb").iterdir() if p.is_dir()}
    ours |= {p.name for p in (ROOT / "bench").iterdir() if p.is_dir()}
    ours |= {p.name for p in (ROOT / "tests").iterdir() if p.is_dir()}
    return first in ours


def test_file_names_in_comments_and_docstrings_exist() -> None:
    """Every ``name.py`` or ``package/name.py`` a comment, docstring or doc names is
    a file of the tree: a module that moved leaves no reference to its old name."""
    missing = []
    for path in scanned_files():
        for n, line in enumerate(path.read_text("utf-8", errors="replace").splitlines(), 1):
            for m in _ANY_PY.finditer(line):
                if _ours(m.group(1)) and not _resolves(m.group(1)):
                    missing.append(f"{path.relative_to(ROOT)}:{n}: {m.group(1)}")
    assert missing == []


_TEST_REF = re.compile(r"((?:tests|bench)/[\w/]+\.py)::(\w+)")


def test_named_tests_exist() -> None:
    """``tests/...py::test_name`` in the docs names a test function of that file."""
    missing = []
    for path in scanned_files():
        for m in _TEST_REF.finditer(path.read_text("utf-8", errors="replace")):
            target = ROOT / m.group(1)
            text = target.read_text("utf-8") if target.is_file() else ""
            if not re.search(rf"^\s*(?:async\s+)?def {m.group(2)}\b", text, re.M):
                missing.append(f"{path.relative_to(ROOT)}: {m.group(0)}")
    assert missing == []


_WORK_ITEM = re.compile(r"\b[Ii]ssues?\s*#?\d+|\(issue\b")


def test_features_are_named_not_work_items() -> None:
    """Comments, docstrings and docs name a feature by what it does ("search
    columns", "key lifecycle"), never by a tracker number."""
    found = []
    for path in scanned_files():
        for n, line in enumerate(path.read_text("utf-8", errors="replace").splitlines(), 1):
            if _WORK_ITEM.search(line):
                found.append(f"{path.relative_to(ROOT)}:{n}")
    assert found == []
