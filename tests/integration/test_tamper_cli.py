"""The CLI against a real database: tampering, wrong keys, exit codes, JSON output.

Tampering is done the way a database administrator would: plain SQL on
``kb_entries``. Sealed columns are discovered from the catalog (``*_sealed``).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.cli_helpers import Cli, make_cli
from typer.testing import Result

from sealedkb.config import load_settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import MAX_CONTENT_BYTES, EncryptionMode
from sealedkb.store.embedded import EmbeddedPostgres

SECRET = "s3cr3t-body-text"  # appears in entry contents; must never show in error output

# --- helpers ----------------------------------------------------------------


def sql(url: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params or None)
        return cur.fetchall() if cur.description else []


def sealed_columns(url: str) -> list[str]:
    rows = sql(
        url,
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'kb_entries'"
        " AND column_name LIKE '%\\_sealed' ORDER BY ordinal_position",
    )
    cols = [r[0] for r in rows]
    assert cols, "kb_entries has no sealed columns"
    return cols


def counts(url: str) -> tuple[int, int]:
    (r,) = sql(url, "SELECT (SELECT count(*) FROM kb_entries), (SELECT count(*) FROM kb_data_keys)")
    return int(r[0]), int(r[1])


def expect(result: Result, code: int) -> Result:
    """Assert the exit code, that no exception escaped, and that nothing leaked."""
    detail = f"exit {result.exit_code}, output:\n{result.output}\nexception: {result.exception!r}"
    assert result.exit_code == code, detail
    assert result.exception is None or isinstance(result.exception, SystemExit), detail
    if code != 0:
        assert "SELECT" not in result.output
        assert "INSERT" not in result.output
        assert SECRET not in result.output
        assert "Traceback" not in result.output
    return result


@pytest.fixture
def other_database(pg_server: EmbeddedPostgres, template_db: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_db} STRATEGY file_copy")
    yield pg_server.uri(name)
    with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def api_init(
    home: Path, url: str, mode: EncryptionMode = EncryptionMode.ON, **overrides: Any
) -> None:
    kb, _ = KnowledgeBase.init(load_settings(home, database_url=url, **overrides), mode)
    kb.close()


@pytest.fixture
def initialised(cli: Cli) -> None:
    result = expect(cli("init"), 0)
    assert "Initialised" in result.stdout


def add(cli: Cli, *args: str, env: dict[str, str] | None = None) -> str:
    result = expect(cli("add", *args, env=env), 0)
    entry_id = result.stdout.strip()
    uuid.UUID(entry_id)
    return entry_id


@pytest.fixture
def three(cli: Cli, initialised: None) -> list[str]:
    return [
        add(
            cli,
            f"{SECRET} number {i}",
            "--title",
            f"title {i}",
            "--tag",
            f"tag{i}",
            "--source",
            f"src/{i}.md",
            "--metadata",
            json.dumps({"i": i}),
        )
        for i in range(3)
    ]


# --- tampering ------------------------------------------------------------------


def test_swapped_rows_fail_integrity(cli: Cli, database_url: str, three: list[str]) -> None:
    a, b, c = three
    cols = sealed_columns(database_url)
    sets = ", ".join(f"{col} = o.{col}" for col in cols)
    sql(
        database_url,
        f"UPDATE kb_entries e SET {sets} FROM kb_entries o"
        " WHERE (e.id = %s AND o.id = %s) OR (e.id = %s AND o.id = %s)",
        (a, b, b, a),
    )
    for victim in (a, b):
        result = expect(cli("get", victim), 6)
        assert "INTEGRITY_ERROR" in result.output
        assert "number" not in result.output
    assert f"{SECRET} number 2" in expect(cli("get", c), 0).stdout
    expect(cli("list"), 6)  # listing opens every row


def test_value_replayed_from_another_row_fails(
    cli: Cli, database_url: str, three: list[str]
) -> None:
    a, b, _ = three
    col = sealed_columns(database_url)[0]
    sql(
        database_url,
        f"UPDATE kb_entries SET {col} = (SELECT {col} FROM kb_entries WHERE id = %s) WHERE id = %s",
        (a, b),
    )
    expect(cli("get", b), 6)
    expect(cli("get", a), 0)


# byte offsets in a sealed value: 0 format | 1-16 data key id | 17-32 salt | 33-44 nonce | body
FLIPS = {"format": 0, "key-id": 5, "salt": 20, "nonce": 40, "ciphertext": 50, "tag": -1}


@pytest.mark.parametrize("where", list(FLIPS))
def test_flipped_byte_fails_integrity(
    cli: Cli, database_url: str, three: list[str], where: str
) -> None:
    a, b, c = three
    col = sealed_columns(database_url)[0]
    pos = FLIPS[where]
    offset = f"length({col}) - 1" if pos < 0 else str(pos)
    sql(
        database_url,
        f"UPDATE kb_entries SET {col} = set_byte({col}, {offset},"
        f" get_byte({col}, {offset}) # 1) WHERE id = %s",
        (b,),
    )
    result = expect(cli("get", b), 6)
    assert "INTEGRITY_ERROR" in result.output
    expect(cli("get", a), 0)
    expect(cli("get", c), 0)


@pytest.mark.parametrize(
    ("column", "value"), [("namespace", "'elsewhere'"), ("id", "gen_random_uuid()")]
)
def test_row_moved_to_another_place_fails(
    cli: Cli, database_url: str, three: list[str], column: str, value: str
) -> None:
    """The AAD binds namespace and entry id: re-labelling a row breaks it."""
    b = three[1]
    (row,) = sql(
        database_url,
        f"UPDATE kb_entries SET {column} = {value} WHERE id = %s RETURNING id::text",
        (b,),
    )
    result = expect(cli("get", row[0]), 6)
    assert "INTEGRITY_ERROR" in result.output
    expect(cli("get", three[0]), 0)


# --- root key ---------------------------------------------------------------------


def write_key(path: Path) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, os.urandom(32))
    finally:
        os.close(fd)
    return path


def root_keys(tmp_path: Path) -> tuple[dict[str, str], dict[str, str]]:
    right = {"SEALEDKB_ROOT_KEY_FILE": str(write_key(tmp_path / "right.key"))}
    wrong = {"SEALEDKB_ROOT_KEY_FILE": str(write_key(tmp_path / "wrong.key"))}
    return right, wrong


def test_wrong_root_key(cli: Cli, home: Path, database_url: str, tmp_path: Path) -> None:
    right, wrong = root_keys(tmp_path)
    init = json.loads(expect(cli("init", "--json", env=right), 0).stdout)
    assert init["root_key_source"] == "file"
    assert not any("development root key" in w for w in init["warnings"])
    assert not (home / "keys" / "root.key").exists()
    entry_id = add(cli, f"{SECRET} guarded", env=right)
    before = counts(database_url)

    result = expect(cli("get", entry_id, env=wrong), 5)
    assert "KEY_UNAVAILABLE" in result.output
    assert "root key" in result.output
    expect(cli("list", env=wrong), 5)
    expect(cli("update", entry_id, "--title", "x", env=wrong), 5)
    expect(cli("add", "more text", env=wrong), 5)
    expect(cli("add", "more text", "-n", "new-ns", env=wrong), 5)
    assert "KEY_UNAVAILABLE" in expect(cli("init", env=wrong), 5).output
    assert counts(database_url) == before  # nothing written, not even a data key
    status = json.loads(expect(cli("status", "--json", env=wrong), 0).stdout)
    assert status["availability"] == "inaccessible-encryption-credentials"
    assert status["key_state"] == "Unavailable"
    assert any("root key" in w for w in status["warnings"])
    # no root key file at all: the generated-key path must not silently take over
    result = expect(cli("get", entry_id), 5)
    assert "SEALEDKB_ROOT_KEY_FILE" in result.output
    # the right key still works
    assert f"{SECRET} guarded" in expect(cli("get", entry_id, env=right), 0).stdout


def test_root_key_file_readable_by_others_is_refused(
    cli: Cli, database_url: str, tmp_path: Path
) -> None:
    key = write_key(tmp_path / "loose.key")
    key.chmod(0o644)
    result = expect(cli("init", env={"SEALEDKB_ROOT_KEY_FILE": str(key)}), 2)
    assert "chmod 600" in result.output
    assert counts(database_url)[1] == 0


# --- exit codes -----------------------------------------------------------------


def test_usage_errors_exit_2_and_write_nothing(
    cli: Cli, database_url: str, tmp_path: Path, initialised: None
) -> None:
    existing = add(cli, f"{SECRET} existing")
    big = tmp_path / "big.md"
    big.write_bytes(b"x" * (MAX_CONTENT_BYTES + 1))
    exactly = tmp_path / "exact.md"
    exactly.write_bytes(b"y" * MAX_CONTENT_BYTES)
    before = counts(database_url)
    cases: list[tuple[list[str], str | None]] = [
        (["add", ""], "content"),
        (["add", "   \n "], "content"),
        (["add"], "content"),
        (["add", "--file", str(big)], "1 MB"),
        (["add", "--file", str(tmp_path / "missing.md")], "file"),
        (["add", "text", "--file", str(exactly)], "not both"),
        (["add", "text", "--type", "memo"], "entry_type"),
        (["add", "text", "--namespace", "A|b"], "namespace"),
        (["add", "text", "-n", "x" * 64], "namespace"),
        (["add", "text", "--tag", "a,b"], "tags"),
        (["add", "text", "--metadata", "[1, 2]"], "metadata"),
        (["add", "text", "--metadata", "{not json"], "metadata"),
        (["add", "text", "--bogus"], None),
        (["get", "not-a-uuid"], "id"),
        (["update", "not-a-uuid", "--title", "x"], "id"),
        (["update", existing], "update"),
        (["update", existing, "--type", "memo"], "entry_type"),
        (["delete", "12345"], "id"),
        (["list", "--limit", "0"], "limit"),
        (["list", "--tag", "x"], "namespace"),  # encrypted: tags need a namespace
        (["list", "--bogus"], None),
        (["bogus-command"], None),
    ]
    for args, hint in cases:
        result = expect(cli(*args), 2)
        if hint is not None:
            assert hint in result.output, (args, result.output)
    assert counts(database_url) == before
    # exactly 1 MB is fine
    expect(cli("add", "--file", str(exactly)), 0)
    assert counts(database_url)[0] == before[0] + 1


def test_not_found_exits_3(cli: Cli, initialised: None) -> None:
    unknown = str(uuid.uuid4())
    for args in (["get", unknown], ["update", unknown, "--title", "x"], ["delete", unknown]):
        result = expect(cli(*args), 3)
        assert "NOT_FOUND" in result.output
    entry_id = add(cli, "short-lived")
    expect(cli("delete", entry_id), 0)
    expect(cli("get", entry_id), 3)
    expect(cli("delete", entry_id), 3)
    expect(cli("update", entry_id, "--title", "back"), 3)


def test_stale_expected_version_is_a_conflict(cli: Cli, initialised: None) -> None:
    entry_id = add(cli, f"{SECRET} v1")
    assert expect(cli("update", entry_id, "v2 text", "--expected-version", "1"), 0).stdout.split()[
        1
    ] == ("v2")
    result = expect(cli("update", entry_id, f"{SECRET} stale", "--expected-version", "1"), 1)
    assert "CONFLICT" in result.output
    got = json.loads(expect(cli("get", entry_id, "--json"), 0).stdout)
    assert (got["content"], got["version"]) == ("v2 text", 2)


# --- status and init ----------------------------------------------------------------


@pytest.mark.db_transports("socket")  # asserts transport unix-socket
def test_status_json(cli: Cli, database_url: str) -> None:
    init = json.loads(expect(cli("init", "--json"), 0).stdout)
    assert init["created"] is True and init["storage_encrypted"] is True
    add(cli, "one")
    status = json.loads(expect(cli("status", "--json"), 0).stdout)
    assert status["storage_encrypted"] is True
    assert status["kms_key_id"].startswith("local:key/")
    assert status["key_state"] == "Enabled"
    assert status["entries_plaintext"] == 0
    assert status["entries_total"] == 1
    assert status["availability"] == "available"
    assert status["database"]["kind"] == "external"
    assert status["database"]["transport"] == "unix-socket"
    assert isinstance(status["warnings"], list)
    assert any("development root key" in w for w in status["warnings"])
    # the human form prints too
    assert "storage_encrypted" in expect(cli("status"), 0).stdout


def test_init_plaintext_mode(home: Path, other_database: str) -> None:
    cli = make_cli(home, other_database)
    init = json.loads(expect(cli("init", "--encryption", "off", "--json"), 0).stdout)
    assert init["created"] is True
    add(cli, "plain words")
    status = json.loads(expect(cli("status", "--json"), 0).stdout)
    assert status["storage_encrypted"] is False
    assert status["encryption_mode"] == "off"
    assert status["kms_key_id"] is None
    assert status["entries_plaintext"] == 1
    # and the mode sticks
    expect(cli("init", "--encryption", "on"), 2)


def test_init_is_idempotent(cli: Cli, database_url: str) -> None:
    first = json.loads(expect(cli("init", "--json"), 0).stdout)
    assert first["created"] is True
    entry_id = add(cli, "kept across init")
    second = json.loads(expect(cli("init", "--json"), 0).stdout)
    assert second["created"] is False
    assert second["kms_key_id"] == first["kms_key_id"]
    assert "Already initialised" in expect(cli("init"), 0).stdout
    assert "kept across init" in expect(cli("get", entry_id), 0).stdout
    assert counts(database_url)[0] == 1
    result = expect(cli("init", "--encryption", "off"), 2)
    assert "migrat" in result.output
    assert json.loads(expect(cli("status", "--json"), 0).stdout)["storage_encrypted"] is True


def test_init_cannot_switch_modes(
    cli: Cli, tmp_path: Path, database_url: str, other_database: str, initialised: None
) -> None:
    entry_id = add(cli, f"{SECRET} kept")
    before = counts(database_url)
    result = expect(cli("init", "--encryption", "off"), 2)
    assert "migrat" in result.output
    assert counts(database_url) == before
    assert f"{SECRET} kept" in expect(cli("get", entry_id), 0).stdout
    # and the other way round (a plaintext KB gets a home of its own)
    plain_home = tmp_path / "plain-home"
    api_init(plain_home, other_database, EncryptionMode.OFF)
    plain = make_cli(plain_home, other_database)
    expect(plain("init", "--encryption", "on"), 2)
    assert counts(other_database) == (0, 0)


def test_commands_before_init_fail_cleanly(cli: Cli, database_url: str) -> None:
    result = expect(cli("get", str(uuid.uuid4())), 1)
    assert "init" in result.output
    expect(cli("status"), 1)


# --- input and JSON output -----------------------------------------------------------


def test_stdin_and_json_output(cli: Cli, initialised: None) -> None:
    text = "# From stdin\n\nline two ✓\n"
    entry = json.loads(
        expect(
            cli(
                "add",
                "-",
                "--json",
                "--tag",
                "Alpha",
                "-n",
                "proj",
                "--type",
                "runbook",
                "--source",
                "s.md",
                "--metadata",
                '{"a": [1, 2]}',
                input=text,
            ),
            0,
        ).stdout
    )
    assert entry["content"] == text
    assert entry["title"] == "From stdin"
    assert (entry["namespace"], entry["entry_type"], entry["tags"]) == (
        "proj",
        "runbook",
        ["alpha"],
    )
    assert (entry["source"], entry["metadata"], entry["version"]) == ("s.md", {"a": [1, 2]}, 1)
    got = json.loads(expect(cli("get", entry["id"], "--json"), 0).stdout)
    assert got == entry
    listed = json.loads(expect(cli("list", "--json", "-n", "proj", "--tag", "ALPHA"), 0).stdout)
    assert listed == [entry]
    assert json.loads(expect(cli("list", "--json", "-n", "nobody"), 0).stdout) == []
    # update from stdin and the flags
    updated = json.loads(
        expect(
            cli("update", entry["id"], "-", "--archived", "--verified", "--json", input="new\n"),
            0,
        ).stdout
    )
    assert (updated["content"], updated["archived"], updated["verified"]) == ("new\n", True, True)
    assert updated["version"] == 2
    # human-readable forms
    assert "new" in expect(cli("get", entry["id"]), 0).stdout
    assert entry["id"][:8] in expect(cli("list"), 0).stdout  # the table may wrap the id
    assert expect(cli("delete", entry["id"]), 0).stdout.strip() == f"deleted {entry['id']}"


# --- text that looks like markup, and a bug found while writing these tests ----------


def test_metadata_with_lone_surrogate_is_a_usage_error(
    cli: Cli, database_url: str, initialised: None
) -> None:
    before = counts(database_url)
    expect(cli("add", "text", "--metadata", '{"k": "\\ud800"}'), 2)
    assert counts(database_url) == before


def test_error_message_with_brackets_is_printed_verbatim(
    cli: Cli, tmp_path: Path, initialised: None
) -> None:
    path = tmp_path / "notes[/x]" / "missing.md"
    result = expect(cli("add", "--file", str(path)), 2)
    assert str(path) in result.output


def test_get_prints_titles_with_brackets_verbatim(cli: Cli, initialised: None) -> None:
    title = "Paths like [/etc] and [bold]tags[/bold]"
    entry_id = add(cli, "body", "--title", title)
    assert title in expect(cli("get", entry_id), 0).stdout
