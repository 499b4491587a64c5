"""What the rest of sealedkb needs to know about a migration (migration.py), without
importing it: the kb_meta marker and guard, and the rule for opening meanwhile.

- ``migration`` (kb_meta): JSON progress of the current or last migration
  (kind, state, checkpoint, rollback snapshot id). States: preparing, copying,
  switched, complete, rolling-back, rolled-back.
- ``migration_guard`` (kb_meta): the KMS key id and the knowledge base id, MACed
  with the keystore's audit MAC key. A plaintext knowledge base normally refuses
  to open beside a keystore (someone may have flipped kb_meta to make writes land
  in clear); the guard, which SQL access alone cannot forge, says the keystore
  is the one an in-place migration created (running, or rolled back).
"""

from __future__ import annotations

import json
from typing import Any

from psycopg import Connection
from psycopg.rows import TupleRow

from sealedkb.config import Settings
from sealedkb.errors import SealedKBError
from sealedkb.kb.wiring import key_provider
from sealedkb.keys.provider import KeyProvider

MARKER = "migration"
GUARD = "migration_guard"
PREPARING, COPYING, SWITCHED, COMPLETE = "preparing", "copying", "switched", "complete"
ROLLING_BACK, ROLLED_BACK = "rolling-back", "rolled-back"


class MigrationInProgressError(SealedKBError):
    """A migration rollback is rewriting the knowledge base: retry when it is done."""

    code = "MIGRATION_IN_PROGRESS"
    exit_code = 1


def get_meta(conn: Connection[TupleRow], key: str) -> str | None:
    row = conn.execute("SELECT value FROM kb_meta WHERE key = %s", (key,)).fetchone()
    return str(row[0]) if row else None


def set_meta(conn: Connection[TupleRow], key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO kb_meta (key, value) VALUES (%s, %s) ON CONFLICT (key)"
        " DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
        (key, value),
    )


def read_marker(conn: Connection[TupleRow]) -> dict[str, Any] | None:
    text = get_meta(conn, MARKER)
    return parse_marker(text)


def parse_marker(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def write_marker(conn: Connection[TupleRow], marker: dict[str, Any]) -> None:
    set_meta(conn, MARKER, json.dumps(marker, sort_keys=True))


def _guard_message(body: dict[str, Any]) -> bytes:
    return b"sealedkb migration guard v1\x00" + json.dumps(body, sort_keys=True).encode()


def make_guard(provider: KeyProvider, key_uri: str, kb_id: str) -> str:
    body = {"key_uri": key_uri, "kb_id": kb_id}
    return json.dumps({**body, "mac": provider.generate_mac(_guard_message(body)).hex()})


def guard_allows_keystore(settings: Settings, guard_text: str | None) -> bool:
    """True when kb_meta carries a migration guard MACed by this home's keystore."""
    if not guard_text:
        return False
    try:
        guard = json.loads(guard_text)
        body = {"key_uri": str(guard["key_uri"]), "kb_id": str(guard["kb_id"])}
        mac = bytes.fromhex(guard["mac"])
    except (ValueError, KeyError, TypeError):
        return False
    try:
        return key_provider(settings).verify_mac(_guard_message(body), mac)
    except SealedKBError:
        return False


def check_open_allowed(marker_text: str | None) -> None:
    """Opening is refused while a rollback restores the database."""
    marker = parse_marker(marker_text)
    if marker is not None and marker.get("state") == ROLLING_BACK:
        raise MigrationInProgressError(
            "a migration rollback is restoring this knowledge base; retry when it is done"
        )
