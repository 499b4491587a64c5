"""Tampered snapshot files: a flipped byte in each part and anywhere, truncation,
reordered, dropped and spliced chunks, edits with fixed checksums; verify and restore
exit 6 naming the part, and a failed restore leaves no database behind."""

from __future__ import annotations

import hashlib
import json
import os
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from tests.cli_helpers import Cli, make_cli
from tests.cli_helpers import initialised_cli as initialised_cli  # the module's cli ran init
from tests.integration.test_tamper_cli import expect
from tests.snapshot_helpers import (
    SMALL_CHUNKS,
    add_varied,
    bulk_add,
    db_exists,
    flip,
)

from sealedkb.config import Settings, load_settings
from sealedkb.errors import (
    SealedKBError,
)
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.kb.snapshotting import snapshots_for
from sealedkb.snapshots import Snapshots
from sealedkb.snapshots.fileformat import SnapshotIntegrityError, read_envelope
from sealedkb.store.embedded import EmbeddedPostgres

pytest_plugins = ["tests.snapshot_fixtures"]


@dataclass(frozen=True)
class Pristine:
    """One knowledge base and one snapshot of it for the whole module: each test
    tampers with a fresh copy of the same bytes."""

    home: Path
    database_url: str
    path: Path
    data: bytes


@pytest.fixture(scope="module")
def pristine(
    pg_server: EmbeddedPostgres, template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pristine]:
    home = tmp_path_factory.mktemp("tamper") / "home"
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_db} STRATEGY file_copy")
    url = pg_server.uri(name)
    with pytest.MonkeyPatch.context() as mp:  # as tests/conftest.py's _clean_env does
        for var in [v for v in os.environ if v.startswith("SEALEDKB_")]:
            mp.delenv(var)
        expect(make_cli(home, url)("init"), 0)
        settings = load_settings(home, database_url=url, embedder="hash")
        kb = KnowledgeBase.open(settings)
        try:
            add_varied(kb)
            bulk_add(kb, 120, size=900)
            snaps = snapshots_for(settings, kb, chunk_size=SMALL_CHUNKS)
            info = snaps.create(name="tamper")
        finally:
            kb.close()
    env = read_envelope(info.path)
    assert env.chunk_count() >= 20, env.chunk_count()
    yield Pristine(home, url, info.path, info.path.read_bytes())
    with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def make_settings(pristine: Pristine) -> Callable[..., Settings]:
    """Settings of the module's knowledge base (instead of each test's own)."""

    def make(**overrides: object) -> Settings:
        overrides.setdefault("database_url", pristine.database_url)
        overrides.setdefault("embedder", "hash")
        return load_settings(pristine.home, **overrides)

    return make


@pytest.fixture
def tamper_setup(
    pristine: Pristine, make_settings: Callable[..., Settings]
) -> tuple[Cli, Snapshots, Path]:
    pristine.path.write_bytes(pristine.data)
    cli = make_cli(pristine.home, pristine.database_url)
    return cli, snapshots_for(make_settings()), pristine.path


def regions(path: Path) -> dict[str, int]:
    env = read_envelope(path)
    hlen = len(env.header_bytes)
    full = env.chunk_size + 16
    n = env.chunk_count()
    stream_end = env.stream_offset + env.stream_len
    tlen = len(env.trailer_bytes)
    return {
        "magic": 2,
        "version": 8,
        "header-length": 11,
        "header": 13 + hlen // 2,
        "header-checksum": 13 + hlen + 5,
        "header-mac": 13 + hlen + 32 + 5,
        "first-chunk": env.stream_offset + 3,
        "middle-chunk": env.stream_offset + (n // 2) * full + 100,
        "last-chunk": stream_end - 2,
        "trailer": stream_end + tlen // 2,
        "trailer-checksum": stream_end + tlen + 3,
        "trailer-mac": stream_end + tlen + 32 + 3,
        "trailer-length": env.size - 12 + 1,
        "end-marker": env.size - 3,
    }


EXPECTED_PART = {
    "magic": "not a sealedkb snapshot",
    "version": "format version",
    "header-length": "header",
    "header": "header is damaged",
    "header-checksum": "header is damaged",
    "header-mac": "header failed its authentication",
    "first-chunk": "chunk 0 of",
    "middle-chunk": "chunk .* of",
    "last-chunk": "chunk .* of",
    "trailer": "trailer is damaged",
    "trailer-checksum": "trailer is damaged",
    "trailer-mac": "trailer failed its authentication",
    "trailer-length": "trailer|end",
    "end-marker": "end marker",
}


def check_rejected(
    cli: Cli, snaps: Snapshots, path: Path, pattern: str, pg: EmbeddedPostgres, target: str
) -> None:
    sid = path.name.removesuffix(".snap")
    with pytest.raises(SnapshotIntegrityError, match=pattern) as info:
        snaps.verify(sid)
    assert info.value.exit_code == 6
    result = expect(cli("snapshot", "verify", sid, "--json"), 6)
    assert "INTEGRITY_ERROR" in result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["part"] and report["error"]["code"] == "INTEGRITY_ERROR"
    result = expect(cli("snapshot", "restore", sid, "--target", target), 6)
    assert not db_exists(pg, target), "a failed restore left its database behind"


@pytest.mark.parametrize("region", list(EXPECTED_PART))
def test_flipped_byte_in_each_part(
    region: str,
    tamper_setup: tuple[Cli, Snapshots, Path],
    pg_server: EmbeddedPostgres,
    scratch_names: Callable[[], str],
) -> None:
    """One flipped byte in each part of the file: verify and restore exit 6 with a
    message naming the part, and the restore leaves no database behind."""
    cli, snaps, path = tamper_setup
    original = path.read_bytes()
    flip(path, regions(path)[region])
    check_rejected(cli, snaps, path, EXPECTED_PART[region], pg_server, scratch_names())
    path.write_bytes(original)
    assert snaps.verify(path.name.removesuffix(".snap"))["ok"]


@pytest.mark.parametrize("case", range(40))
def test_flipped_byte_anywhere(tamper_setup: tuple[Cli, Snapshots, Path], case: int) -> None:
    """40 random positions (seeded): every one is caught, by verify and by restore."""
    _cli, snaps, path = tamper_setup
    original = path.read_bytes()
    sid = path.name.removesuffix(".snap")
    rng = random.Random(6)
    flips = [(offset, 1 << rng.randrange(8)) for offset in rng.sample(range(len(original)), 40)]
    offset, bit = flips[case]
    data = bytearray(original)
    data[offset] ^= bit
    path.write_bytes(bytes(data))
    with pytest.raises(SealedKBError) as info:
        snaps.verify(sid)
    assert info.value.exit_code == 6, (offset, info.value.message)
    path.write_bytes(original)
    assert snaps.verify(sid)["ok"]


@pytest.mark.parametrize(
    "what",
    [
        "last byte",
        "end marker",
        "inside the trailer",
        "after a whole chunk",
        "inside a chunk",
        "inside the header",
    ],
)
def test_truncation(
    what: str,
    tamper_setup: tuple[Cli, Snapshots, Path],
    pg_server: EmbeddedPostgres,
    scratch_names: Callable[[], str],
) -> None:
    cli, snaps, path = tamper_setup
    original = path.read_bytes()
    env = read_envelope(path)
    full = env.chunk_size + 16
    cuts = {
        "last byte": len(original) - 1,
        "end marker": len(original) - 8,
        "inside the trailer": env.stream_offset + env.stream_len + 10,
        "after a whole chunk": env.stream_offset + 3 * full,
        "inside a chunk": env.stream_offset + 3 * full + 77,
        "inside the header": 40,
    }
    path.write_bytes(original[: cuts[what]])
    check_rejected(cli, snaps, path, "truncated|end|header", pg_server, scratch_names())


def test_reordered_dropped_and_spliced_chunks(
    tamper_setup: tuple[Cli, Snapshots, Path],
    pg_server: EmbeddedPostgres,
    scratch_names: Callable[[], str],
    make_settings: Callable[..., Settings],
) -> None:
    cli, snaps, path = tamper_setup
    original = path.read_bytes()
    env = read_envelope(path)
    full = env.chunk_size + 16
    o = env.stream_offset

    def chunk(i: int, data: bytes = original) -> bytes:
        return data[o + i * full : o + (i + 1) * full]

    # swap chunks 4 and 5
    swapped = original[: o + 4 * full] + chunk(5) + chunk(4) + original[o + 6 * full :]
    path.write_bytes(swapped)
    check_rejected(cli, snaps, path, "chunk 4 of", pg_server, scratch_names())

    # drop the last chunk, keep the trailer: the trailer no longer matches the stream
    n = env.chunk_count()
    last_start = o + (n - 1) * full
    dropped = original[:last_start] + original[o + env.stream_len :]
    path.write_bytes(dropped)
    check_rejected(
        cli, snaps, path, "not the length the trailer records", pg_server, scratch_names()
    )

    # splice chunk 2 of another snapshot of the same database (same chunk size)
    kb = KnowledgeBase.open(make_settings())
    try:
        other = snapshots_for(make_settings(), kb, chunk_size=SMALL_CHUNKS).create()
    finally:
        kb.close()
    other_bytes = other.path.read_bytes()
    o2 = read_envelope(other.path).stream_offset
    spliced = (
        original[: o + 2 * full]
        + other_bytes[o2 + 2 * full : o2 + 3 * full]
        + original[o + 3 * full :]
    )
    path.write_bytes(spliced)
    check_rejected(cli, snaps, path, "chunk 2 of", pg_server, scratch_names())


def _rewrite_json(path: Path, part: str, edit: Callable[[bytes], bytes]) -> None:
    """An attacker's edit: change the header or trailer and fix its unkeyed checksum."""
    env = read_envelope(path)
    data = path.read_bytes()
    if part == "header":
        new = edit(env.header_bytes)
        assert len(new) == len(env.header_bytes)
        start = 13
    else:
        new = edit(env.trailer_bytes)
        assert len(new) == len(env.trailer_bytes)
        start = env.stream_offset + env.stream_len
    end = start + len(new)
    path.write_bytes(data[:start] + new + hashlib.sha256(new).digest() + data[end + 32 :])


def test_edits_with_fixed_checksums_fail_the_macs(
    tamper_setup: tuple[Cli, Snapshots, Path],
    pg_server: EmbeddedPostgres,
    scratch_names: Callable[[], str],
    make_settings: Callable[..., Settings],
) -> None:
    cli, snaps, path = tamper_setup
    original = path.read_bytes()
    env = read_envelope(path)
    # header: another creation time (same length)
    ts = env.header["created_at"].encode()
    newer = ts[:-2] + (b"1Z" if ts[-2:] != b"1Z" else b"2Z")
    _rewrite_json(path, "header", lambda b: b.replace(ts, newer))
    check_rejected(cli, snaps, path, "header failed its authentication", pg_server, scratch_names())
    # trailer: another row count
    path.write_bytes(original)
    rows = env.trailer["tables"]["kb_entries"]["rows"]
    _rewrite_json(
        path,
        "trailer",
        lambda b: b.replace(
            f'"rows":{rows}'.encode(), f'"rows":{rows + 1 if rows % 10 != 9 else rows - 1}'.encode()
        ),
    )
    check_rejected(
        cli, snaps, path, "trailer failed its authentication", pg_server, scratch_names()
    )
    # header: point it at another KMS key of the keystore
    path.write_bytes(original)
    kb = KnowledgeBase.open(make_settings())
    try:
        assert kb.keys is not None
        other = kb.keys.create("other")["key_id"]
    finally:
        kb.close()
    _rewrite_json(
        path, "header", lambda b: b.replace(env.header["kms_key_id"].encode(), other.encode())
    )
    check_rejected(cli, snaps, path, "wrapped key failed to open", pg_server, scratch_names())
