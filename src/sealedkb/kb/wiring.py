"""Wiring: settings -> database (embedded or external) -> key provider -> key ring.

Kept apart from kb/knowledge_base.py so the knowledge-base logic reads without plumbing.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg

from sealedkb.config import Settings
from sealedkb.errors import DatabaseError, NotInitializedError
from sealedkb.keys.local import scratch_provider
from sealedkb.keys.provider import KeyProvider
from sealedkb.keys.registry import provider_for
from sealedkb.store.db import Transport, classify_transport, mapped_errors
from sealedkb.store.transport import TlsFiles

log = logging.getLogger("sealedkb.runtime")

EMBEDDED_DBNAME = "sealedkb"


@dataclass(frozen=True)
class DatabaseTarget:
    url: str
    kind: str  # embedded | external
    transport: Transport


def resolve_database(settings: Settings, *, create: bool) -> DatabaseTarget:
    """Find (and for the embedded default, start) the database to use."""
    if settings.database_url is not None:
        transport = classify_transport(
            settings.database_url.get_secret_value(),
            allow_insecure=settings.database_allow_insecure,
            tls=tls_files(settings),
        )
        # transport.conninfo: the URL with the judged TLS parameters spelled out
        return DatabaseTarget(transport.conninfo, "external", transport)

    from sealedkb.store.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(settings.pgdata)
    if not server.is_initialized() and not create:
        raise NotInitializedError(
            f"no knowledge base at {settings.home}; run 'sealedkb init' first"
        )
    make_home(settings)
    server.start()
    with (
        mapped_errors("create database"),
        psycopg.connect(server.uri("postgres"), autocommit=True) as conn,
    ):
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (EMBEDDED_DBNAME,)
        ).fetchone()
        if not exists:
            # Another process may win the race to create it.
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(f'CREATE DATABASE "{EMBEDDED_DBNAME}"')
    url = server.uri(EMBEDDED_DBNAME)
    return DatabaseTarget(url, "embedded", classify_transport(url))


def psql_url(settings: Settings) -> str:
    """A libpq URI of the database for psql, its password removed."""
    target = resolve_database(settings, create=False)
    if target.kind == "embedded":
        return target.url
    params = psycopg.conninfo.conninfo_to_dict(target.url)
    params.pop("password", None)
    return psycopg.conninfo.make_conninfo("", **params)


def stop_embedded_database(settings: Settings) -> bool:
    """Stop this home's embedded PostgreSQL server; False when it was not running."""
    from sealedkb.store.embedded import EmbeddedPostgres

    return EmbeddedPostgres(settings.pgdata).stop()


def tls_files(settings: Settings) -> TlsFiles:
    """The database TLS files named in the settings (they fill in the URL)."""
    return TlsFiles(
        sslrootcert=settings.database_sslrootcert or None,
        sslcert=str(settings.database_sslcert) if settings.database_sslcert else None,
        sslkey=str(settings.database_sslkey) if settings.database_sslkey else None,
    )


def make_home(settings: Settings) -> None:
    home = settings.home
    if not home.exists():
        home.mkdir(parents=True, mode=0o700)
    elif not home.is_dir():
        raise DatabaseError(f"SEALEDKB_HOME is not a folder: {home}")


def key_provider(
    settings: Settings,
    *,
    key_uri: str | None = None,
    principal: str | None = None,
    now: Callable[[], datetime] | None = None,
) -> KeyProvider:
    """The provider serving ``key_uri`` (chosen by its scheme; the default scheme
    before a knowledge base has a key), acting for ``principal`` (default: the
    configured one). Keystore set-up goes through ``keys.provider.keystore_of``."""
    return provider_for(settings, key_uri, principal=principal, now=now)


def scratch_key_provider(keys_dir: Path) -> KeyProvider:
    """A throwaway local keystore, ready to use (``migrate plan``'s measurements)."""
    return scratch_provider(keys_dir)


def is_root() -> bool:
    return os.geteuid() == 0
