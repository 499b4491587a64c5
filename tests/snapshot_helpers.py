"""Helpers for snapshot tests and bench/bench_snapshots.py (not a conftest).

``bulk_add`` fills a knowledge base fast: each entry is sealed exactly as
``KnowledgeBase.add`` seals it (the knowledge base's own ``EntrySealer.store_columns``:
same data keys, AAD and tag tokens), and the rows go in by COPY in batches instead of one
INSERT per entry. So 10k entries take about a second instead of ~20 s, and they
read back through the normal service API.

The rest is shared by the snapshot tests (tests/integration/test_snapshots_*.py); their
fixtures are in tests/snapshot_fixtures.py.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from sealedkb.formats.entry_doc import EntryDoc
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EntryPatch, EntryType
from sealedkb.store import snapshot_io as sio
from sealedkb.store.embedded import EmbeddedPostgres

WORDS = [
    "deploy",
    "rollback",
    "cluster",
    "index",
    "vacuum",
    "replica",
    "schema",
    "migration",
    "token",
    "latency",
    "cache",
    "runbook",
    "incident",
    "decision",
    "pattern",
    "retry",
    "backoff",
    "timeout",
    "queue",
    "worker",
    "lease",
    "shard",
    "partition",
    "snapshot",
    "restore",
    "verify",
    "rotate",
    "policy",
    "audit",
    "alarm",
    "threshold",
    "baseline",
]
TYPES = [t.value for t in EntryType]


def make_text(rng: random.Random, approx_bytes: int) -> str:
    lines: list[str] = []
    size = 0
    while size < approx_bytes:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))).capitalize() + "."
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines)


def synthetic_docs(
    n: int, *, size: int = 1500, seed: int = 0, marker: str = ""
) -> Iterator[tuple[str, str, EntryDoc]]:
    """(namespace, entry_type, document) for ``n`` entries of about ``size`` bytes."""
    rng = random.Random(seed)
    for i in range(n):
        content = f"# Note {i} {marker}\n\n" + make_text(rng, size)
        doc = EntryDoc(
            title=f"Note {i} {marker}".strip(),
            content=content,
            source=f"https://wiki.test/{i}" if i % 4 == 0 else None,
            metadata={"n": i, "marker": marker} if i % 5 == 0 else {},
            tags=(rng.choice(WORDS), f"t{i % 50}"),
        )
        yield ("default" if i % 3 else "ops"), TYPES[i % len(TYPES)], doc


def bulk_add(
    kb: KnowledgeBase,
    n: int,
    *,
    size: int = 1500,
    seed: int = 0,
    batch: int = 2000,
    marker: str = "",
) -> int:
    """Add ``n`` sealed (or, in plaintext mode, plain) entries by COPY; returns n."""
    cols = [
        "id",
        "namespace",
        "entry_type",
        "doc_sealed",
        "tag_tokens",
        "title_plain",
        "content_plain",
        "source_plain",
        "metadata_plain",
        "tags_plain",
        "verified",
    ]
    docs = synthetic_docs(n, size=size, seed=seed, marker=marker)
    done = 0
    while done < n:
        rows = []
        for ns, et, doc in (next(docs) for _ in range(min(batch, n - done))):
            eid = uuid.uuid4()
            stored = kb.sealer.store_columns(ns, eid, doc)  # exactly what add() stores
            meta = stored.get("metadata_plain")
            rows.append(
                (
                    eid,
                    ns,
                    et,
                    stored.get("doc_sealed"),
                    stored.get("tag_tokens", []),
                    stored.get("title_plain"),
                    stored.get("content_plain"),
                    stored.get("source_plain"),
                    None if meta is None else json.dumps(meta),
                    stored.get("tags_plain"),
                    bool(done % 2),
                )
            )
        with (
            kb.db.transaction("bulk add") as conn,
            conn.cursor().copy(f"COPY kb_entries ({', '.join(cols)}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row(row)
        done += len(rows)
    return done


# --- shared by the snapshot tests -----------------------------------------------------------

SECRET = "s3cr3t-body-text"
SMALL_CHUNKS = 4096  # many chunks from a small database


def db_exists(pg: EmbeddedPostgres, name: str) -> bool:
    with psycopg.connect(pg.uri(), autocommit=True) as conn:
        return sio.database_exists(conn, name)


def audit_rows(url: str, action: str) -> list[dict[str, Any]]:
    from tests.integration.test_tamper_cli import sql

    rows = sql(
        url,
        "SELECT principal, outcome, error_code, key_uri, details FROM kb_audit"
        " WHERE action = %s ORDER BY seq",
        (action,),
    )
    keys = ("principal", "outcome", "error_code", "key_uri", "details")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def add_varied(kb: KnowledgeBase, n: int = 12) -> list[str]:
    ids = []
    for i in range(n):
        e = kb.add(
            f"{SECRET} entry {i}\n\nbody {i}",
            title=f"title {i}",
            tags=["alpha", f"t{i}"],
            namespace="default" if i % 3 else "team-b",
            source=f"https://wiki.test/{i}",
            metadata={"i": i, "nested": {"k": [i, "v"]}},
            entry_type="decision" if i % 2 else "note",
        )
        ids.append(str(e.id))
    kb.update(ids[0], EntryPatch(content=f"{SECRET} rewritten", archived=True))
    kb.delete(ids[1])
    return ids


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x20
    path.write_bytes(bytes(data))


class Clock:
    """An injected clock: ``now`` is whatever the test sets."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now
