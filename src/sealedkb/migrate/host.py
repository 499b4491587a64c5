"""What a migration needs from the knowledge-base layer above it, as Protocols: an
open knowledge base (its pool, audit trail, key ring, sealer, indexer, entries) and
the ways to get one. ``kb/migrating.py`` implements them over the KnowledgeBase, so
this package never imports the facade it serves."""

from __future__ import annotations

from typing import Protocol, TypedDict

from sealedkb.audit.chain import AuditLog
from sealedkb.config import Settings
from sealedkb.crypto.keyring import KeyRing
from sealedkb.embed import Embedder
from sealedkb.kb.sealer import EntrySealer
from sealedkb.kb.wiring import DatabaseTarget
from sealedkb.keys.provider import KeyProvider
from sealedkb.search.engine import SearchIndexer
from sealedkb.snapshots import Snapshots
from sealedkb.store.db import Database
from sealedkb.store.entries import EntryTable


class StorageFacts(TypedDict):
    """What ``status`` says about the storage, for ``migrate verify``."""

    storage_encrypted: bool
    entries_plaintext: int
    kms_key_id: str | None


class OpenKnowledgeBase(Protocol):
    """An open knowledge base, as much of it as a migration uses."""

    @property
    def db(self) -> Database: ...

    @property
    def audit(self) -> AuditLog: ...

    @property
    def keyring(self) -> KeyRing | None: ...

    @property
    def sealer(self) -> EntrySealer: ...

    @property
    def indexer(self) -> SearchIndexer: ...

    @property
    def embedder(self) -> Embedder | None: ...

    @property
    def entries(self) -> EntryTable: ...

    @property
    def kms_key_uri(self) -> str | None: ...

    @property
    def encrypted(self) -> bool: ...

    def close(self) -> None: ...


class KnowledgeBases(Protocol):
    """How a migration opens knowledge bases and reaches their snapshots."""

    def open(self, settings: Settings) -> OpenKnowledgeBase:
        """The initialised knowledge base of ``settings`` (NotInitializedError if none)."""
        ...

    def init(self, settings: Settings) -> OpenKnowledgeBase:
        """Create it when missing (encrypted), else open it."""
        ...

    def attach(
        self,
        settings: Settings,
        target: DatabaseTarget,
        db: Database,
        provider: KeyProvider | None,
        kms_key_uri: str | None,
    ) -> OpenKnowledgeBase:
        """A knowledge base over the migration's own pool, whatever kb_meta says:
        encrypted under ``kms_key_uri`` when ``provider`` is given, else plaintext."""
        ...

    def storage(self, kb: OpenKnowledgeBase) -> StorageFacts: ...

    def snapshots(self, settings: Settings, kb: OpenKnowledgeBase) -> Snapshots: ...
