"""What the rest of sealedkb needs to know about a migration, without importing it:
the kb_meta marker and guard, and the rule for opening meanwhile.

- ``migration`` (kb_meta): JSON progress of the current or last migration
  (kind, state, checkpoint, rollback snapshot id). States: preparing, copying,
  switched, complete, rolling-back, rolled-back.
- ``migration_guard`` (kb_meta): the KMS key id, the knowledge base id and a random
  nonce, MACed with the keystore's audit MAC key. A plaintext knowledge base
  normally refuses to open beside a keystore (someone may have flipped kb_meta to
  make writes land in clear); the guard says the keystore is the one an in-place
  migration created (running, or rolled back).

SQL access alone can neither forge a guard (the MAC) nor revive an old one: a guard
counts only while this home's guard file (``<home>/migration-guard.json``, outside
the database) names the same knowledge base and nonce. The file is written after the
guard's transaction commits (the migration starts, or a rollback restores the
plaintext database) and removed just before the switch to encrypted storage commits,
the transaction that also deletes the kb_meta guard. So once a knowledge base is
encrypted, no guard value the database ever held opens it in plaintext mode.
"""

from __future__ import annotations

import hmac
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from psycopg import Connection
from psycopg.rows import TupleRow

from sealedkb._fs import write_private
from sealedkb.config import Settings
from sealedkb.errors import SealedKBError
from sealedkb.kb.wiring import key_provider
from sealedkb.keys.provider import KeyProvider
from sealedkb.migrate.reports import Marker

MARKER = "migration"
GUARD = "migration_guard"
GUARD_FILE = "migration-guard.json"
PREPARING, COPYING, SWITCHED, COMPLETE = "preparing", "copying", "switched", "complete"
ROLLING_BACK, ROLLED_BACK = "rolling-back", "rolled-back"

_GUARD_DOMAIN = b"sealedkb migration guard v2\x00"
_GUARD_FIELDS = ("key_uri", "kb_id", "nonce")


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


def delete_meta(conn: Connection[TupleRow], key: str) -> None:
    conn.execute("DELETE FROM kb_meta WHERE key = %s", (key,))


def read_marker(conn: Connection[TupleRow]) -> Marker | None:
    text = get_meta(conn, MARKER)
    return parse_marker(text)


def parse_marker(text: str | None) -> Marker | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return cast(Marker, value) if isinstance(value, dict) else None


def write_marker(conn: Connection[TupleRow], marker: Marker) -> None:
    set_meta(conn, MARKER, json.dumps(marker, sort_keys=True))


# --- the guard ---------------------------------------------------------------------------


def _guard_message(body: dict[str, str]) -> bytes:
    return _GUARD_DOMAIN + json.dumps(body, sort_keys=True).encode()


def _guard_path(settings: Settings) -> Path:
    return settings.home / GUARD_FILE


@dataclass(frozen=True)
class Guard:
    """A fresh guard: ``meta`` goes into kb_meta (with the transaction that needs it),
    ``arm`` then writes this home's guard file naming it (after that commit)."""

    body: dict[str, str]
    meta: str

    def arm(self, settings: Settings) -> None:
        path = _guard_path(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, json.dumps(self.body, sort_keys=True).encode())


def new_guard(provider: KeyProvider, key_uri: str, kb_id: str) -> Guard:
    body = {"key_uri": key_uri, "kb_id": kb_id, "nonce": secrets.token_hex(16)}
    mac = provider.generate_mac(_guard_message(body)).hex()
    return Guard(body, json.dumps({**body, "mac": mac}, sort_keys=True))


def put_guard(conn: Connection[TupleRow], guard: Guard) -> None:
    """The guard into kb_meta; it counts once ``guard.arm`` ran after the commit (until
    then a plaintext open beside the keystore is refused: fail closed)."""
    set_meta(conn, GUARD, guard.meta)


def disarm_guard(conn: Connection[TupleRow] | None, settings: Settings) -> None:
    """No guard opens this knowledge base in plaintext any more: the guard file goes
    (now, before ``conn``'s transaction commits: if the commit fails, the plaintext
    knowledge base refuses to open until the migration is run again, never the other
    way round) and the kb_meta guard with it."""
    _guard_path(settings).unlink(missing_ok=True)
    if conn is not None:
        delete_meta(conn, GUARD)


def guard_is_armed(settings: Settings, guard_text: str | None) -> bool:
    """True when this home's guard file names the guard in ``guard_text`` (MAC unchecked)."""
    body = _guard_body(guard_text)
    local = _local_guard(settings)
    return (
        body is not None
        and local is not None
        and all(hmac.compare_digest(body[f], local.get(f, "")) for f in _GUARD_FIELDS)
    )


def guard_allows_keystore(settings: Settings, guard_text: str | None) -> bool:
    """True when kb_meta carries a migration guard MACed by this home's keystore and
    armed by this home's guard file (a migration running, or rolled back)."""
    if not guard_is_armed(settings, guard_text):
        return False
    body = _guard_body(guard_text)
    try:
        assert guard_text is not None and body is not None
        mac = bytes.fromhex(json.loads(guard_text)["mac"])
    except (ValueError, KeyError, TypeError):
        return False
    try:
        return key_provider(settings).verify_mac(_guard_message(body), mac)
    except SealedKBError:
        return False


def _guard_body(guard_text: str | None) -> dict[str, str] | None:
    if not guard_text:
        return None
    try:
        guard = json.loads(guard_text)
        return {f: str(guard[f]) for f in _GUARD_FIELDS}
    except (ValueError, KeyError, TypeError):
        return None


def _local_guard(settings: Settings) -> dict[str, str] | None:
    try:
        value = json.loads(_guard_path(settings).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(value, dict):
        return None
    return {str(k): str(v) for k, v in value.items()}


def check_open_allowed(marker_text: str | None) -> None:
    """Opening is refused while a rollback restores the database."""
    marker = parse_marker(marker_text)
    if marker is not None and marker.get("state") == ROLLING_BACK:
        raise MigrationInProgressError(
            "a migration rollback is restoring this knowledge base; retry when it is done"
        )
