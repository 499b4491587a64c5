"""Acceptance: entries holding a unique marker are added (and, since the search columns, keyword
indexed, tagged, embedded and imported from a file, and searched); after CHECKPOINT the marker
appears nowhere under the PostgreSQL data directory (tables, WAL, everything) nor
in a pg_dump of the database. With ``--encryption off`` the same test finds it in
both places, which shows the search can fail.

Each case runs the real product path (tests/canary_helpers.py): no database URL, so
``KnowledgeBase.init`` starts an embedded server in ``<home>/pgdata`` (crash-safe
settings, as users get). The same run under every external key provider is in
tests/providers/test_provider_e2e.py.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from tests.canary_helpers import embedded_home as embedded_home  # the fixture
from tests.canary_helpers import run_canary

from sealedkb.model import EncryptionMode


@pytest.mark.parametrize(
    ("mode", "search_index"),
    [
        (EncryptionMode.ON, "server"),
        (EncryptionMode.ON, "memory"),  # the memory search index (search/memory.py)
        (EncryptionMode.OFF, "server"),
    ],
    ids=["on", "on-memory", "off"],
)
def test_marker_never_reaches_disk_or_dump(
    embedded_home: Path, mode: EncryptionMode, search_index: str
) -> None:
    found = run_canary(embedded_home, mode, search_index)
    if mode is EncryptionMode.ON:
        assert found.disk_hits == {}, f"marker found in the data directory: {found.disk_hits}"
        assert found.dump_hits == [], "marker found in pg_dump output"
        # nor anywhere else in the home folder (keystore, sockets, logs)
        assert found.home_hits == {}
        keys = embedded_home / "keys"
        assert stat.S_IMODE(keys.stat().st_mode) == 0o700
        assert stat.S_IMODE((keys / "root.key").stat().st_mode) == 0o600
        for f in keys.iterdir():
            assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f
    else:
        # the control: the same search does find plaintext
        disk_hits = found.disk_hits
        assert any(name.startswith("base/") for name in disk_hits), disk_hits
        assert any(name.startswith("pg_wal/") for name in disk_hits), disk_hits
        marker = found.marker
        assert marker.encode() in found.dump and marker.lower().encode() in found.dump
        assert not (embedded_home / "keys").exists()
