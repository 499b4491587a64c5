"""Migrations wired to the knowledge base: :class:`Migrator` is
:class:`sealedkb.migrate.Migrator` with this layer's side of it (open, create or
attach a KnowledgeBase, its storage facts, its snapshots), so the migrate package
never imports the facade it serves. ``sealedkb migrate`` and the tests use this."""

from __future__ import annotations

from sealedkb.config import Settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.kb.snapshotting import snapshots_for
from sealedkb.kb.wiring import DatabaseTarget
from sealedkb.keys.provider import KeyProvider
from sealedkb.migrate import migrator as _migrator
from sealedkb.migrate.common import DEFAULT_BATCH, ProgressFn
from sealedkb.migrate.foreign import ForeignSpec
from sealedkb.migrate.host import OpenKnowledgeBase, StorageFacts
from sealedkb.migrate.reports import (
    Marker,
    PlanReport,
    RollbackReport,
    RunReport,
    VerifyReport,
)
from sealedkb.model import EncryptionMode
from sealedkb.snapshots import Snapshots
from sealedkb.store.db import Database

__all__ = [
    "ForeignSpec",
    "Marker",
    "Migrator",
    "PlanReport",
    "RollbackReport",
    "RunReport",
    "VerifyReport",
]


def _own(kb: OpenKnowledgeBase) -> KnowledgeBase:
    """Every knowledge base a migration holds came from :class:`KnowledgeBaseSide`."""
    assert isinstance(kb, KnowledgeBase)
    return kb


class KnowledgeBaseSide:
    """:class:`sealedkb.migrate.host.KnowledgeBases` over the KnowledgeBase."""

    def open(self, settings: Settings) -> OpenKnowledgeBase:
        return KnowledgeBase.open(settings)

    def init(self, settings: Settings) -> OpenKnowledgeBase:
        kb, _created = KnowledgeBase.init(settings)
        return kb

    def attach(
        self,
        settings: Settings,
        target: DatabaseTarget,
        db: Database,
        provider: KeyProvider | None,
        kms_key_uri: str | None,
    ) -> OpenKnowledgeBase:
        mode = EncryptionMode.ON if provider is not None else EncryptionMode.OFF
        return KnowledgeBase(settings, target, db, mode, provider, kms_key_uri)

    def storage(self, kb: OpenKnowledgeBase) -> StorageFacts:
        status = _own(kb).status()
        return {
            "storage_encrypted": bool(status["storage_encrypted"]),
            "entries_plaintext": int(status["entries_plaintext"]),
            "kms_key_id": status["kms_key_id"],
        }

    def snapshots(self, settings: Settings, kb: OpenKnowledgeBase) -> Snapshots:
        return snapshots_for(settings, _own(kb))


class Migrator(_migrator.Migrator):
    """One migration of the knowledge base at ``settings`` (in place when ``foreign``
    is None); see :class:`sealedkb.migrate.Migrator`."""

    def __init__(
        self,
        settings: Settings,
        foreign: ForeignSpec | None = None,
        *,
        batch: int = DEFAULT_BATCH,
        progress: ProgressFn | None = None,
        sample_size: int = 200,
    ) -> None:
        super().__init__(
            settings,
            foreign,
            host=KnowledgeBaseSide(),
            batch=batch,
            progress=progress,
            sample_size=sample_size,
        )
