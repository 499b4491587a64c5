"""Snapshots wired from the settings and a live knowledge base: the narrow pieces
:class:`sealedkb.snapshots.Snapshots` takes (settings values, key provider, audit
trail, the database it snapshots, the server restores go to) are chosen here, so
the snapshots package never sees a KnowledgeBase."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from pydantic import SecretStr

from sealedkb.config import Settings
from sealedkb.crypto.stream import DEFAULT_CHUNK_SIZE
from sealedkb.errors import KeyUnavailableError
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.kb.wiring import key_provider, make_home, tls_files
from sealedkb.keys.provider import KeyProvider, keystore_of
from sealedkb.objectstore import BucketConfig
from sealedkb.snapshots import (
    DailyWindow,
    LiveDatabase,
    Snapshots,
    SnapshotScheduler,
    SnapshotSettings,
)
from sealedkb.store.db import classify_transport
from sealedkb.store.jobs import Leadership

RESTORED_AUDIT_DIR = "audit-restored"


def snapshot_settings(settings: Settings) -> SnapshotSettings:
    return SnapshotSettings(
        folder=settings.snapshots_dir,
        principal=settings.principal,
        restored_audit_dir=settings.home / RESTORED_AUDIT_DIR,
        allow_insecure=settings.database_allow_insecure,
        bucket=(
            BucketConfig(
                settings.snapshot_bucket,
                settings.snapshot_prefix,
                endpoint_url=settings.s3_endpoint_url,
                region=settings.s3_region,
            )
            if settings.snapshot_bucket
            else None
        ),
    )


class SettingsServer:
    """The PostgreSQL server of the settings: the configured URL's, or the embedded one."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def checked_url(self, url: str) -> str:
        transport = classify_transport(
            url,
            allow_insecure=self.settings.database_allow_insecure,
            tls=tls_files(self.settings),
        )
        return transport.conninfo

    def admin_url(self) -> str:
        if self.settings.database_url is not None:
            return self.checked_url(self.settings.database_url.get_secret_value())
        from sealedkb.store.embedded import EmbeddedPostgres

        make_home(self.settings)
        server = EmbeddedPostgres(self.settings.pgdata)
        server.start()  # in disaster recovery this initialises a fresh, empty server
        return server.uri("postgres")


def keystore_opener(settings: Settings) -> Callable[[], KeyProvider]:
    """Opens this home's keystore on first use; KeyUnavailableError if there is none."""

    def open_keystore() -> KeyProvider:
        provider = key_provider(settings)
        keystore = keystore_of(provider)
        if keystore is not None and not keystore.exists():
            raise KeyUnavailableError(
                f"no keystore at {settings.keys_dir}: a snapshot needs the keystore "
                "(keys/) and the root key it was made with; restore them from backup"
            )
        return provider

    return open_keystore


def snapshots_for(
    settings: Settings,
    kb: KnowledgeBase | None = None,
    *,
    now: Callable[[], datetime] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Snapshots:
    """The snapshots of this home; ``kb`` (the live knowledge base) is the source of
    create and drill and the audit trail every operation is recorded in."""
    return Snapshots(
        snapshot_settings(settings),
        SettingsServer(settings),
        database=(
            LiveDatabase(kb.target.url, kb.mode.value, kb.kms_key_uri) if kb is not None else None
        ),
        provider=kb.provider if kb is not None else None,
        open_keystore=keystore_opener(settings),
        audit=kb.audit if kb is not None else None,
        now=now,
        chunk_size=chunk_size,
    )


def start_scheduler(
    kb: KnowledgeBase, leadership: Leadership | None = None
) -> SnapshotScheduler | None:
    """For ``serve``: automated snapshots in ``SEALEDKB_SNAPSHOT_WINDOW`` (None when the
    window is off or the knowledge base is not encrypted). Stop it before closing."""
    window = DailyWindow.parse(kb.settings.snapshot_window)
    if window is None or not kb.encrypted:
        return None
    return SnapshotScheduler(
        snapshots_for(kb.settings, kb),
        window,
        kb.settings.snapshot_retention_days,
        leadership=leadership,
    ).start()


def open_restored(settings: Settings, url: str) -> KnowledgeBase:
    """A KnowledgeBase on a restored database, with this home's keystore: for tests,
    drills and checking a restore by hand. Its audit checkpoints go to
    ``<home>/audit-restored/``, never into ``audit/`` (another chain's checkpoint
    there would make ``audit verify`` of the live database fail)."""
    kb = KnowledgeBase.open(settings.model_copy(update={"database_url": SecretStr(url)}))
    kb.audit.checkpoint_dir = settings.home / RESTORED_AUDIT_DIR
    return kb
