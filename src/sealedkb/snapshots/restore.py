"""Restoring a snapshot.

Restore loads into a new database (or an existing, empty one) in a single
transaction: schema at the snapshot's migrations, COPY, counts and digests
recomputed from the restored rows, a sample of sealed entries opened with the
restored data keys, then the schema brought up to this code. Any failure rolls
it all back, and a database created for the restore is dropped. A migration
rollback restores *over* the live tables instead (:meth:`SnapshotRestorer.restore_over`).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg import Connection
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import TupleRow

from sealedkb.audit.chain import AuditLog
from sealedkb.crypto.keyring import encryption_context
from sealedkb.crypto.sealed import DataKey, FieldOpener
from sealedkb.crypto.stream import SnapshotKeys, new_digest
from sealedkb.errors import ConflictError, IntegrityError, SealedKBError, ValidationError
from sealedkb.formats.aad import ENTRIES_TABLE, entry_doc_aad
from sealedkb.formats.entry_doc import decode_doc
from sealedkb.snapshots.base import RESTORE, DatabaseServer, KeyUse, SnapshotContext, log
from sealedkb.snapshots.fileformat import (
    Envelope,
    SnapshotIntegrityError,
    SnapshotReader,
    authenticate,
    read_envelope,
)
from sealedkb.snapshots.results import LoadReport, RestoreReport
from sealedkb.snapshots.store import snapshot_id_of
from sealedkb.store import snapshot_io as sio
from sealedkb.store.db import (
    Database,
    apply_migrations,
    connect,
    lock_schema,
    mapped_errors,
    migrations,
)

DB_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
RESTORE_SAMPLE = 32  # random sealed entries opened after a restore (plus one per data key)


def public_url(url: str) -> str:
    """The URL without a password, for output."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "?"
    params.pop("password", None)
    return make_conninfo("", **params)


def check_schema(env: Envelope) -> set[int]:
    """The schema migrations a restore of ``env`` builds; refused if any is unknown here."""
    schema = env.header["schema"]
    wanted = schema.get("migrations")
    if not isinstance(wanted, list) or not all(isinstance(v, int) for v in wanted):
        raise SnapshotIntegrityError("header", "the header's schema is damaged")
    known = {v for v, _, _ in migrations()}
    unknown = sorted(set(wanted) - known)
    if unknown:
        raise ValidationError(
            f"this snapshot was taken by a newer sealedkb (schema migrations "
            f"{', '.join(map(str, unknown))} are unknown here); restore it with that version",
            field="snapshot",
        )
    return set(wanted)


class SnapshotRestorer:
    """Restores into new or empty databases of one server, and over live ones."""

    def __init__(self, ctx: SnapshotContext, server: DatabaseServer) -> None:
        self.ctx = ctx
        self.server = server

    # --- where to ------------------------------------------------------------------

    @contextlib.contextmanager
    def _admin(self) -> Iterator[Connection[TupleRow]]:
        """A connection for CREATE/DROP DATABASE: to the configured database, or to
        the ``postgres`` database of its server when that one is gone."""
        url = self.server.admin_url()
        allow = self.ctx.settings.allow_insecure
        with mapped_errors("connect"):
            try:
                conn = connect(url, allow_insecure=allow)
            except psycopg.OperationalError:
                conn = connect(make_conninfo(url, dbname="postgres"), allow_insecure=allow)
        with conn:
            yield conn

    def _target(self, target: str) -> tuple[str, str, bool]:
        """(url, database name, created by us) for ``--target NAME|URL``."""
        text = target.strip()
        if "://" in text or "=" in text:
            conninfo = self.server.checked_url(text)
            try:
                dbname = conninfo_to_dict(conninfo).get("dbname")
            except psycopg.ProgrammingError:
                raise ValidationError("the target URL is malformed", field="target") from None
            return conninfo, str(dbname or "?"), False
        if not DB_NAME_RE.match(text):
            raise ValidationError(
                "the target must be a database URL or a new database name of 1-63 "
                "characters a-z, 0-9, '_' (starting with a letter or '_')",
                field="target",
            )
        return make_conninfo(self.server.admin_url(), dbname=text), text, True

    def drop(self, dbname: str) -> None:
        """Drop a database this code created (a failed restore's, a drill's scratch one)."""
        try:
            with self._admin() as admin, mapped_errors("drop database"):
                sio.drop_database(admin, dbname)
        except SealedKBError as exc:
            log.error("could not drop database %s after a failed restore: %s", dbname, exc)

    # --- restore -------------------------------------------------------------------

    def restore(self, ref: str, target: str, *, sample: int = RESTORE_SAMPLE) -> RestoreReport:
        """Restore into a new database (``target`` a name: CREATE DATABASE, refused if it
        exists) or an existing empty one (``target`` a URL: refused if any sealedkb table
        has rows). Never over a live database; on any failure nothing is left behind."""
        ctx = self.ctx
        path = ctx.folder.resolve(ref)
        sid = snapshot_id_of(path)
        details: dict[str, Any] = {"snapshot_id": sid, "kind": None}
        key_uri: str | None = None
        started = time.perf_counter()
        try:
            env = read_envelope(path)
            details["kind"] = env.header["kind"]
            key_uri = env.header["kms_key_id"]
            wanted, keys = self._authenticated(env)  # before anything is created
            url, dbname, create = self._target(target)
            details["database"] = dbname
            loaded = self._restore(env, keys, wanted, url, dbname, create, sample)
        except SealedKBError as exc:
            ctx.record_error(RESTORE, exc, key_uri, details)
            raise
        seconds = time.perf_counter() - started
        assert key_uri is not None
        result: RestoreReport = {
            **loaded,
            "id": sid,
            "kind": env.header["kind"],
            "kms_key_id": key_uri,
            "database": dbname,
            "url": public_url(url),
            "created_database": create,
            "seconds": round(seconds, 3),
        }
        ctx.record(
            RESTORE, key_uri, {**details, "entries": result["row_counts"].get(ENTRIES_TABLE)}
        )
        self._record_in_restored(url, details)
        return result

    def _authenticated(self, env: Envelope) -> tuple[set[int], SnapshotKeys]:
        """The schema versions a restore builds, and the snapshot's keys, once the
        schema is known here and every chunk of the file has been authenticated."""
        wanted = check_schema(env)
        keys = self.ctx.unwrap(env)
        authenticate(env, keys)
        return wanted, keys

    def _restore(
        self,
        env: Envelope,
        keys: SnapshotKeys,
        wanted: set[int],
        url: str,
        dbname: str,
        create: bool,
        sample: int,
    ) -> LoadReport:
        if create:
            with self._admin() as admin, mapped_errors("create database"):
                if sio.database_exists(admin, dbname):
                    raise ConflictError(
                        f"database {dbname} already exists: restore only goes into a new "
                        "database (choose another --target name)",
                        field="target",
                    )
                sio.create_database(admin, dbname)
        try:
            return self._load(env, keys, wanted, url, sample)
        except BaseException:
            if create:
                self.drop(dbname)
            raise

    def restore_over(
        self,
        ref: str,
        url: str,
        *,
        keep: frozenset[str] = frozenset({"kb_audit"}),
        after_load: Callable[[Connection[TupleRow]], None] | None = None,
        sample: int = RESTORE_SAMPLE,
    ) -> LoadReport:
        """Replace the live sealedkb tables of the database at ``url`` by the snapshot,
        in one transaction (migration rollback). Tables in ``keep`` stay as they are:
        the audit trail is append-only, a rollback is recorded in it, not rewound.
        ``after_load`` runs in the same transaction. Readers block on the table locks
        and then see either the old or the restored tables, never a mix."""
        ctx = self.ctx
        path = ctx.folder.resolve(ref)
        sid = snapshot_id_of(path)
        details: dict[str, Any] = {"snapshot_id": sid, "kind": None, "purpose": "rollback"}
        key_uri: str | None = None
        try:
            env = read_envelope(path)
            details["kind"] = env.header["kind"]
            key_uri = env.header["kms_key_id"]
            wanted, keys = self._authenticated(env)  # before anything is touched
            with (
                mapped_errors("restore"),
                connect(url, allow_insecure=ctx.settings.allow_insecure) as conn,
            ):
                sio.pin_session(conn)
                with conn.transaction():
                    lock_schema(conn)  # before the drops: openers wait, no lock cycle
                    for t in sio.list_tables(conn):
                        if t.name not in keep:
                            sio.drop_table(conn, t.name)
                    result = self._load_into(
                        conn, env, keys, wanted, sample, keep, audit_keys=False
                    )
                    if after_load is not None:
                        after_load(conn)
        except SealedKBError as exc:
            ctx.record_error(RESTORE, exc, key_uri, details)
            raise
        ctx.record(
            RESTORE, key_uri, {**details, "entries": result["row_counts"].get(ENTRIES_TABLE)}
        )
        return result

    def _load(
        self, env: Envelope, keys: SnapshotKeys, wanted: set[int], url: str, sample: int
    ) -> LoadReport:
        with (
            mapped_errors("restore"),
            connect(url, allow_insecure=self.ctx.settings.allow_insecure) as conn,
        ):
            sio.pin_session(conn)
            with conn.transaction():
                busy = sio.tables_with_rows(conn)
                if busy:
                    raise ConflictError(
                        f"the target database is not empty ({', '.join(busy)} hold rows): "
                        "restore only goes into a new or empty database",
                        field="target",
                    )
                return self._load_into(conn, env, keys, wanted, sample)

    def _load_into(
        self,
        conn: Connection[TupleRow],
        env: Envelope,
        keys: SnapshotKeys,
        wanted: set[int],
        sample: int,
        keep: frozenset[str] = frozenset(),
        *,
        audit_keys: bool = True,
    ) -> LoadReport:
        """Load the snapshot in the caller's transaction. Tables in ``keep`` are not
        loaded (their stream is still read and checked against the manifest).
        ``audit_keys`` False: the key proofs are not audited one by one (restoring over
        a live database, whose audit trail this transaction has locked)."""
        tables = [sio.TableInfo.from_dict(t) for t in env.header["tables"]]
        expected = env.trailer["tables"]
        newer = sorted(set(sio.applied_migrations(conn)) - wanted)
        if newer:
            raise ConflictError(
                "the target database has schema migrations the snapshot does not "
                f"({', '.join(map(str, newer))}); restore into a new database "
                "(--target NAME) or an empty, unmigrated one",
                field="target",
            )
        apply_migrations(conn, only=wanted)
        present = {t.name: t for t in sio.list_tables(conn)}
        for t in tables:
            if t.name not in present or present[t.name].columns != t.columns:
                raise ValidationError(
                    f"table {t.name} of the snapshot does not match the schema this "
                    "sealedkb builds for its migrations; restore with the sealedkb "
                    "version that took it",
                    field="snapshot",
                )
        triggers = sio.user_trigger_tables(conn, [t.name for t in tables])
        for name in triggers:
            sio.set_user_triggers(conn, name, enabled=False)
        # The snapshot's own migration rows replace those just written.
        sio.truncate(conn, sio.MIGRATIONS_TABLE)
        by_name = {t.name: t for t in tables}
        with SnapshotReader(env, keys) as reader:
            for ts in reader.tables():
                if ts.name in keep:
                    for _block in ts.blocks(count=True):
                        pass
                    ts.require_match()
                    continue
                loaded = sio.copy_in(conn, by_name[ts.name], ts.blocks(count=False))
                ts.require_match(loaded_rows=loaded)
        for name in triggers:
            sio.set_user_triggers(conn, name, enabled=True)
        for t in tables:
            sio.reset_sequences(conn, t)
        # Recompute counts and digests from the restored rows themselves.
        counts: dict[str, int] = {}
        for t in tables:
            if t.name in keep:
                continue
            digest = new_digest()
            rows = sio.copy_out(conn, t, digest.update)
            exp = expected[t.name]
            if (
                rows != exp["rows"]
                or sio.count_rows(conn, t.name) != exp["rows"]
                or digest.hexdigest() != exp["sha256"]
            ):
                raise SnapshotIntegrityError(
                    f"table {t.name}",
                    f"table {t.name}: the restored rows do not match the manifest",
                )
            counts[t.name] = rows
        unwrapped, opened = self._prove_keys(conn, sample, audited=audit_keys)
        apply_migrations(conn)  # bring the schema up to this code
        return {
            "ok": True,
            "row_counts": counts,
            "data_keys_unwrapped": unwrapped,
            "entries_opened": opened,
        }

    def _prove_keys(
        self, conn: Connection[TupleRow], sample: int, *, audited: bool = True
    ) -> tuple[int, int]:
        """Unwrap the restored active data keys and open a sample of sealed entries
        (one per content data key, plus ``sample`` at random): proof that the keystore
        matches the restored data. KeyUnavailableError (exit 5) if the KMS key is not
        usable; SnapshotIntegrityError if a document does not open. Returns (data keys
        unwrapped, entries opened)."""
        keys: KeyUse = self.ctx.keys() if audited else self.ctx.raw_keys()
        records = {k.id.bytes: k for k in sio.data_keys(conn)}
        unwrapped: dict[bytes, DataKey] = {}

        def resolve(key_id: bytes) -> DataKey:
            hit = unwrapped.get(key_id)
            if hit is None:
                rec = records.get(key_id)
                if rec is None:
                    raise IntegrityError("sealed value names a data key that does not exist")
                material = keys.decrypt(
                    rec.kms_key_uri,
                    rec.wrapped,
                    encryption_context(rec.namespace, rec.purpose, rec.id),
                )
                hit = unwrapped[key_id] = DataKey(key_id, material)
            return hit

        for key_id, rec in records.items():
            if rec.active:
                resolve(key_id)
        opener = FieldOpener(resolve)
        entries = sio.sample_sealed_entries(conn, sample)
        for entry_id, namespace, blob in entries:
            aad = entry_doc_aad(namespace, entry_id)
            try:
                decode_doc(opener.open(blob, aad))
            except IntegrityError:
                raise SnapshotIntegrityError(
                    "keys",
                    f"entry {entry_id} of the restored database does not open with the "
                    "restored data keys",
                ) from None
        return len(unwrapped), len(entries)

    def _record_in_restored(self, url: str, details: dict[str, Any]) -> None:
        """Continue the restored database's own audit chain with the restore, so its
        trail says where it came from. Best effort: the restore already committed."""
        ctx = self.ctx
        try:
            db = Database(url, max_size=1, allow_insecure=ctx.settings.allow_insecure)
        except SealedKBError as exc:
            log.warning("restore not recorded in the restored audit trail: %s", exc.message)
            return
        try:
            trail = AuditLog(
                db,
                principal=ctx.audit.principal if ctx.audit else ctx.settings.principal,
                checkpoint_dir=ctx.settings.restored_audit_dir,
                mac_key=None,  # never checkpoint another chain into this home's audit/
                now=ctx.now,
            )
            trail.record(RESTORE, key_uri=None, details={**details, "restored": True})
        except SealedKBError as exc:
            log.warning("restore not recorded in the restored audit trail: %s", exc.message)
        finally:
            db.close()
