"""Test helper (not a conftest): one fast, throwaway PostgreSQL server per session.

Kept out of conftest so each suite decides its own fixture scope; the caller
stops the server.
"""

from __future__ import annotations

from pathlib import Path

from sealedkb.store.embedded import EmbeddedPostgres


def start_test_server(base: Path) -> EmbeddedPostgres:
    """Init and start a crash-unsafe (fsync off) server under ``base``; ~1 s."""
    server = EmbeddedPostgres(base / "pgdata", fast=True)
    server.start()
    return server
