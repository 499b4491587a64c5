"""The knowledge base: where plaintext meets crypto.

In encrypted mode an entry's text fields (title, content, source, metadata,
tags) are sealed together as one document (formats/entry_doc.py) with format v1 under the
namespace's content data key, the AAD binding namespace, table, column and
entry id; tags are also stored as keyed blind tokens so they filter in SQL.
Sealing happens before any write, so a key failure never leaves a half-encrypted
row. In plaintext mode the same
fields go to the ``*_plain`` columns (the benchmark baseline and migration source).
"""

from __future__ import annotations

import builtins
import logging
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sealedkb.audit.chain import AuditLog
from sealedkb.config import Settings
from sealedkb.crypto.keyring import KeyRing
from sealedkb.embed import load_embedder
from sealedkb.errors import (
    AccessDeniedError,
    ConflictError,
    IntegrityError,
    KeyUnavailableError,
    NotFoundError,
    NotInitializedError,
    SealedKBError,
    ValidationError,
)
from sealedkb.formats.entry_doc import EntryDoc
from sealedkb.kb.access import Principal
from sealedkb.kb.oauth import (
    ConsentRequest,
    ConsentResult,
    OAuthAccess,
    OAuthClient,
    OAuthCode,
    OAuthRefresh,
    OAuthService,
    OAuthTokens,
)
from sealedkb.kb.sealer import EntrySealer
from sealedkb.kb.status import (
    SEARCH_INDEX_DOCS,
    SEARCH_INDEX_LEAKAGE,
    DatabaseStatus,
    KeyStatus,
    KnowledgeBaseStatus,
    NamespaceStats,
    SearchIndexStatus,
    Stats,
)
from sealedkb.kb.tokens import TokenService
from sealedkb.kb.wiring import DatabaseTarget, key_provider, resolve_database
from sealedkb.keys.instrumented import InstrumentedKeyProvider
from sealedkb.keys.lifecycle import AuditedDataKeys, AuditedKeyUse, Housekeeper, KeyLifecycle
from sealedkb.keys.migrate import KeyCustody, SchemeRouter
from sealedkb.keys.provider import KeyProvider, keystore_of
from sealedkb.migrate.guard import GUARD, MARKER, check_open_allowed, guard_allows_keystore
from sealedkb.migrate.index_mode import (
    INDEX_MIGRATION_BATCH,
    SEARCH_INDEX_RECHECK_SECONDS,
    IndexMigrationResult,
    migrate_index,
)
from sealedkb.model import (
    DEFAULT_NAMESPACE,
    MAX_ADD_BATCH,
    EncryptionMode,
    Entry,
    EntryPatch,
    EntryType,
    KeyPurpose,
    NewEntry,
    new_entry,
    parse_entry_id,
    validate_content,
    validate_entry_type,
    validate_metadata,
    validate_namespace,
    validate_source,
    validate_tags,
    validate_title,
)
from sealedkb.monitoring.telemetry import Telemetry
from sealedkb.search import text
from sealedkb.search.engine import (
    DB_DIM,
    SearchEngine,
    SearchIndexer,
    SearchMode,
    SearchResult,
    normalize_content,
    reembed,
)
from sealedkb.search.memory import MemoryIndex
from sealedkb.search.warm_start import FOLDER as WARM_START_FOLDER
from sealedkb.search.warm_start import WarmStart
from sealedkb.store.changes import ChangeFeed, lock_namespace
from sealedkb.store.datakeys import DataKeyTable, MetaTable
from sealedkb.store.db import Database
from sealedkb.store.entries import EntryRow, EntryTable, ListFilter
from sealedkb.store.index_mode import IndexModeTable
from sealedkb.store.oauth import OAuthTable
from sealedkb.store.search import SearchColumns, SearchTable
from sealedkb.store.tokens import TokenRecord, TokenTable

if TYPE_CHECKING:
    from sealedkb.ingest.importer import ImportSummary
    from sealedkb.search.reindex import ReindexResult

log = logging.getLogger("sealedkb.service")

ENCRYPTION_SCHEME = "AES-256-GCM envelope (sealedkb field format v1, HKDF-SHA256 subkeys)"
MAX_LIST_LIMIT = 1000


TOKENIZER_KEY = "keyword_tokenizer"  # kb_meta: the word splitting of the keyword index


def keyword_tokenizer(meta: dict[str, str]) -> int:
    """The keyword tokenizer version a knowledge base was indexed with (kb_meta; absent
    in those made before version 2 existed: version 1)."""
    raw = meta.get(TOKENIZER_KEY, str(text.TOKENIZER_V1))
    if not raw.isdigit() or int(raw) not in text.TOKENIZERS:
        raise IntegrityError(
            f"this knowledge base's keyword index uses tokenizer version {raw!r}, which this "
            "sealedkb does not know; upgrade sealedkb"
        )
    return int(raw)


SEARCH_INDEX_KEY = "search_index"  # kb_meta: memory or server (search/memory.py)
SEARCH_INDEX_MAC_KEY = "search_index_mac"  # kb_meta: its MAC under the key provider
SEARCH_INDEXES = ("memory", "server")
_SEARCH_INDEX_LABEL = b"sealedkb/meta/v1/search_index|"


def _search_index_message(value: str) -> bytes:
    # Not bound to the KMS key: a snapshot copied under another KMS key of the same
    # provider keeps a valid setting. Another provider has another MAC key.
    return _SEARCH_INDEX_LABEL + value.encode()


def signed_search_index(provider: KeyProvider, value: str) -> dict[str, str]:
    """The kb_meta values that set the search index to ``value``, with its MAC under
    ``provider`` (``sealedkb migrate index`` writes them, migrate/index_mode.py)."""
    if value not in SEARCH_INDEXES:
        raise ValidationError("search index must be memory or server", field="search_index")
    mac = provider.generate_mac(_search_index_message(value))
    return {SEARCH_INDEX_KEY: value, SEARCH_INDEX_MAC_KEY: mac.hex()}


def verified_search_index(
    values: dict[str, str],
    mode: EncryptionMode,
    provider: KeyProvider | None,
    kms_key_uri: str | None,
    feed: ChangeFeed,
) -> str:
    """Where this knowledge base's search index lives, as kb_meta says, checked.

    The setting changes what every write stores, so a database writer must not be
    able to flip it: in an encrypted knowledge base the value carries a MAC under
    the key provider, and a value without a valid one is
    refused. A knowledge base from before the setting has neither: server, unless
    its rows show it was in memory mode (the setting was deleted)."""
    raw = values.get(SEARCH_INDEX_KEY)
    if mode is EncryptionMode.OFF or provider is None or kms_key_uri is None:
        if raw not in (None, "server"):
            raise IntegrityError(
                "kb_meta says search_index is not server in a plaintext knowledge base"
            )
        return "server"
    if raw is None:
        if values.get(SEARCH_INDEX_MAC_KEY) is not None or feed.has_memory_indexed_rows():
            raise IntegrityError(
                "kb_meta has lost its search_index setting, but this knowledge base holds "
                "rows of the memory search index; refusing to write searchable columns"
            )
        return "server"
    mac_hex = values.get(SEARCH_INDEX_MAC_KEY) or ""
    try:
        mac = bytes.fromhex(mac_hex)
    except ValueError:
        mac = b""
    if (
        raw not in SEARCH_INDEXES
        or not mac
        or not provider.verify_mac(_search_index_message(raw), mac)
    ):
        raise IntegrityError(
            "kb_meta's search_index setting failed its integrity check (it was not "
            "written by sealedkb); refusing to open"
        )
    return raw


def _refuse_plaintext_with_keystore(settings: Settings, guard: str | None) -> None:
    """kb_meta says plaintext, but this home holds a keystore: someone with SQL access
    may have flipped the mode to make new writes land in clear. Refuse, unless an
    in-place migration guard MACed under that keystore says it is the migration's
    (migrate/guard.py)."""
    if (settings.keys_dir / "root.json").exists() and not guard_allows_keystore(settings, guard):
        raise IntegrityError(
            "the database says encryption is off, but this home has a keystore; refusing "
            "to store plaintext (check kb_meta, or use a separate home for a plaintext KB)"
        )


def _search_index_at_open(
    values: dict[str, str],
    mode: EncryptionMode,
    provider: KeyProvider | None,
    kms_key_uri: str | None,
    feed: ChangeFeed,
) -> tuple[str, bool]:
    """The search index setting when opening, and whether it is still unchecked: with
    the keys unavailable (a wrong root key, a key service down) the knowledge base
    still opens for status and the like, and the first write checks the setting."""
    try:
        return verified_search_index(values, mode, provider, kms_key_uri, feed), False
    except KeyUnavailableError:
        raw = values.get(SEARCH_INDEX_KEY)
        return (raw if raw in SEARCH_INDEXES else "server"), True


def _init_search_index(
    meta: MetaTable,
    settings: Settings,
    mode: EncryptionMode,
    provider: KeyProvider | None,
    kms_key_uri: str | None,
    *,
    new: bool,
    asked: str | None,
) -> str:
    """The search index of a knowledge base being initialised: for a new one the
    one asked for (default: the ``search_index`` setting, memory), written to kb_meta
    with its MAC; an existing one keeps its own (switching is not an init)."""
    if asked is not None and asked not in SEARCH_INDEXES:
        raise ValidationError("search index must be memory or server", field="search_index")
    if new:
        value = asked or settings.search_index
        if mode is EncryptionMode.OFF or provider is None or kms_key_uri is None:
            if asked == "memory":
                raise ValidationError(
                    "--search-index memory needs --encryption on (a plaintext knowledge "
                    "base is searched by PostgreSQL)",
                    field="search_index",
                )
            return "server"
        mac = provider.generate_mac(_search_index_message(value))
        meta.set_default(SEARCH_INDEX_MAC_KEY, mac.hex())
        meta.set_default(SEARCH_INDEX_KEY, value)
    current = verified_search_index(meta.all(), mode, provider, kms_key_uri, ChangeFeed(meta.db))
    if asked is not None and asked != current:
        raise ValidationError(
            f"this knowledge base was initialised with --search-index {current}; "
            "switching is not an init",
            field="search_index",
        )
    return current


def _in_scope(row: EntryRow | None, namespaces: Collection[str] | None) -> EntryRow:
    """The row, if it exists and lies in the access scope; otherwise NOT_FOUND, the same
    answer for a missing id and for another namespace's entry (no oracle)."""
    if row is None or (namespaces is not None and row.namespace not in namespaces):
        raise NotFoundError("entry not found", field="id")
    return row


class KnowledgeBase:
    """Open with :meth:`open` (or :meth:`init`); close when done."""

    def __init__(
        self,
        settings: Settings,
        target: DatabaseTarget,
        db: Database,
        mode: EncryptionMode,
        provider: KeyProvider | None,
        kms_key_uri: str | None,
        *,
        principal: str | None = None,
        now: Callable[[], datetime] | None = None,
        tokenizer: int | None = None,
        search_index: str | None = None,
    ) -> None:
        self.settings = settings
        self.target = target
        self.db = db
        self.mode = mode
        self.provider = provider
        self.kms_key_uri = kms_key_uri
        self.entries = EntryTable(db)
        self.datakeys = DataKeyTable(db)
        self.meta = MetaTable(db)
        self.keyring: KeyRing | None = None
        # Process counters (key-provider calls, integrity failures) for metrics and
        # alarms (monitoring/metrics.py, monitoring/alarms.py); plain integers, no
        # metrics library here.
        self.telemetry = Telemetry()
        # Key lifecycle and audit trail (keys/lifecycle.py, audit/chain.py): every key operation
        # of this process is recorded under its principal.
        self.principal = provider.principal if provider else (principal or settings.principal)
        self.audit = AuditLog(
            db,
            principal=self.principal,
            checkpoint_dir=settings.audit_dir,
            mac_key=provider,
            now=now,
        )
        self._tokens = TokenService(
            TokenTable(db),
            self.audit,
            provider if mode is EncryptionMode.ON else None,
            self.telemetry,
            now=now,
        )
        self._oauth = OAuthService(
            OAuthTable(db),
            self.audit,
            provider if mode is EncryptionMode.ON else None,
            self.telemetry,
            access_seconds=settings.oauth_access_seconds,
            refresh_days=settings.oauth_refresh_days,
            subject_active=self._tokens.active,
            now=now,
        )
        self.keys: KeyLifecycle | None = None
        if mode is EncryptionMode.ON:
            assert provider is not None and kms_key_uri is not None
            # Data keys may sit under another provider's key while custody changes
            # (keys/migrate.py): the ring unwraps each with the provider of its key.
            routed = SchemeRouter(
                provider,
                lambda uri: key_provider(settings, key_uri=uri, principal=self.principal, now=now),
            )
            self.keyring = KeyRing(
                AuditedKeyUse(InstrumentedKeyProvider(routed, self.telemetry), self.audit),
                AuditedDataKeys(self.datakeys, self.audit),
                kms_key_uri,
                max_age=settings.data_key_max_age,
            )
            self.keys = KeyLifecycle(db, provider, kms_key_uri, self.audit, self.keyring, now=now)
        # Search (search/engine.py): the model loads lazily, on the first text to embed.
        self.embedder = load_embedder(settings.embedder)
        self.search_table = SearchTable(db)
        values = self.meta.all() if tokenizer is None or search_index is None else {}
        if tokenizer is None:
            tokenizer = keyword_tokenizer(values)
        unchecked = False
        if search_index is None:
            search_index, unchecked = _search_index_at_open(
                values, mode, provider, kms_key_uri, ChangeFeed(db)
            )
        self.search_index = search_index
        self.indexer = SearchIndexer(self.keyring, self.embedder, tokenizer)
        self.sealer = EntrySealer(
            self.keyring, self.indexer, self.telemetry, memory_index=search_index == "memory"
        )
        if unchecked:
            # The key provider could not check the setting at open (keys unavailable):
            # the first write checks it, before anything is sealed.
            self.sealer.write_guard = self._check_search_index
        self.engine = SearchEngine(
            self.search_table,
            self.keyring,
            self.embedder,
            self.sealer.open_sealed,
            open_docs=self.sealer.open_sealed_many,
            telemetry=self.telemetry,
            tokenizer=tokenizer,
        )
        # The memory search index (search/memory.py): built in this process at first use.
        self.memory_index: MemoryIndex | None = None
        if search_index == "memory" and self.keyring is not None:
            self.memory_index = self._new_memory_index()
            self.engine.memory = self.memory_index
        # A switch of the search index by 'sealedkb migrate index' while this process
        # runs is followed before each write and search (follow_search_index).
        self._index_lock = threading.Lock()
        self._index_raw = values.get(SEARCH_INDEX_KEY) if values else search_index
        self._index_read_at = time.monotonic()
        if self.keyring is not None:
            self.sealer.before_write = self.follow_search_index

    def current_search_index(self) -> str:
        """The search index setting as kb_meta says now, verified."""
        return verified_search_index(
            self.meta.all(), self.mode, self.provider, self.kms_key_uri, ChangeFeed(self.db)
        )

    def signed_search_index(self, value: str) -> dict[str, str]:
        """The kb_meta values that set the search index to ``value``, MACed."""
        if self.provider is None or self.keyring is None:
            raise ValidationError(
                "a plaintext knowledge base is searched by PostgreSQL", field="search_index"
            )
        return signed_search_index(self.provider, value)

    def migrate_search_index(
        self,
        to: str,
        *,
        batch: int = INDEX_MIGRATION_BATCH,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> IndexMigrationResult:
        """Move the search index to ``to`` (memory or server), online and resumable
        (``sealedkb migrate index``, migrate/index_mode.py)."""
        return migrate_index(self, to, batch=batch, progress=progress)

    def _new_memory_index(self) -> MemoryIndex:
        assert self.keyring is not None
        return MemoryIndex(
            ChangeFeed(self.db),
            self.keyring,
            self.sealer.open_sealed_many,
            model_id=self.embedder.model_id if self.embedder is not None else None,
            dim=DB_DIM,
            tokenizer=self.indexer.tokenizer,
            max_entries=self.settings.memory_index_max_entries,
            telemetry=self.telemetry,
            # the sealed warm-start images of the index (search/warm_start.py)
            warm=WarmStart(self.settings.home / WARM_START_FOLDER, self.keyring),
        )

    def follow_search_index(self, *, force: bool = False) -> None:
        """Adopt a switch of the search index made since this process last looked
        (``sealedkb migrate index``, migrate/index_mode.py): kb_meta is read again at
        most every SEARCH_INDEX_RECHECK_SECONDS, and a changed value is verified under
        the key provider before this process writes or searches by it."""
        if self.keyring is None:
            return
        with self._index_lock:
            now = time.monotonic()
            if not force and now - self._index_read_at < SEARCH_INDEX_RECHECK_SECONDS:
                return
            raw = self.meta.get(SEARCH_INDEX_KEY)
            if raw != self._index_raw:
                value = verified_search_index(
                    self.meta.all(), self.mode, self.provider, self.kms_key_uri, ChangeFeed(self.db)
                )
                if value != self.search_index:
                    self.search_index = value
                    self.sealer.memory_index = value == "memory"
                    self.memory_index = self._new_memory_index() if value == "memory" else None
                    self.engine.memory = self.memory_index
                self._index_raw = raw
            self._index_read_at = now

    # --- lifecycle --------------------------------------------------------------

    @classmethod
    def init(
        cls,
        settings: Settings,
        encryption: EncryptionMode | None = None,
        *,
        now: Callable[[], datetime] | None = None,
        search_index: str | None = None,
    ) -> tuple[KnowledgeBase, bool]:
        """Create or open the knowledge base; idempotent, never destroys data.

        Returns the knowledge base and whether anything was created.
        """
        target = resolve_database(settings, create=True)
        db = Database(
            target.url,
            max_size=settings.pool_max_size,
            allow_insecure=settings.database_allow_insecure,
        )
        try:
            meta = MetaTable(db)
            existing = meta.get("encryption")
            if existing is not None and encryption is not None and existing != encryption.value:
                raise ValidationError(
                    f"this knowledge base was initialised with --encryption {existing}; "
                    "switching modes is a migration ('sealedkb migrate'), not an init",
                    field="encryption",
                )
            mode = EncryptionMode(existing or (encryption or EncryptionMode.ON).value)
            created = existing is None
            provider = None
            kms_key_uri = None
            new_key_uri = None
            if mode is EncryptionMode.OFF:
                _refuse_plaintext_with_keystore(settings, meta.get(GUARD))
            if mode is EncryptionMode.ON:
                bound_key = meta.get("kms_key_uri")
                # A new knowledge base is sealed under SEALEDKB_KMS_KEY_URI when it is set.
                provider = key_provider(
                    settings, key_uri=bound_key or settings.kms_key_uri, now=now
                )
                keystore = keystore_of(provider)
                if bound_key is not None and keystore is not None and not keystore.exists():
                    # A fresh keystore could never open this data; making one would
                    # only hide the real problem (a lost or misplaced keys/ folder).
                    raise KeyUnavailableError(
                        f"this database is sealed under {bound_key}, but there is no keystore "
                        f"at {settings.keys_dir}; restore keys/ (and the root key) from backup"
                    )
                if keystore is not None and not keystore.exists():
                    keystore.initialize()
                    created = True
                kms_key_uri = meta.get("kms_key_uri")
                if kms_key_uri is None and settings.kms_key_uri is not None:
                    # It exists and we may use it; kb_meta keeps the key's canonical URI
                    # (an AWS alias given at init is stored as the key's ARN).
                    chosen = provider.describe_key(settings.kms_key_uri).key_id
                    kms_key_uri = meta.set_default("kms_key_uri", chosen)
                    created = True
                elif kms_key_uri is None:
                    new_key = provider.create_key("sealedkb knowledge base key")
                    kms_key_uri = meta.set_default("kms_key_uri", new_key.key_id)
                    new_key_uri = new_key.key_id
                    created = True
                elif settings.kms_key_uri not in (None, kms_key_uri):
                    assert settings.kms_key_uri is not None
                    given = key_provider(settings, key_uri=settings.kms_key_uri, now=now)
                    if given.describe_key(settings.kms_key_uri).key_id != kms_key_uri:
                        raise ValidationError(
                            f"this knowledge base is sealed under {kms_key_uri}; init does "
                            "not move it to another KMS key ('sealedkb key migrate' does)",
                            field="kms_key_id",
                        )
                provider.describe_key(kms_key_uri)
            if existing is None:  # a new knowledge base: today's word splitting
                meta.set_default(TOKENIZER_KEY, str(text.TOKENIZER))
            index = _init_search_index(
                meta,
                settings,
                mode,
                provider,
                kms_key_uri,
                new=existing is None,
                asked=search_index,
            )
            meta.set_default("encryption", mode.value)
            kb = cls(settings, target, db, mode, provider, kms_key_uri, now=now, search_index=index)
            if new_key_uri is not None:
                kb.audit.record(
                    "CreateKey", key_uri=new_key_uri, details={"in_use": new_key_uri == kms_key_uri}
                )
            if kb.keyring is not None:
                # Create the default namespace's data keys now, so a wrong key fails at init.
                kb.keyring.sealer(DEFAULT_NAMESPACE, KeyPurpose.CONTENT)
                kb.keyring.blinder(DEFAULT_NAMESPACE)
            return kb, created
        except BaseException:
            db.close()
            raise

    @classmethod
    def open(
        cls,
        settings: Settings,
        *,
        principal: str | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> KnowledgeBase:
        """Open an initialised knowledge base acting for ``principal`` (default: the
        configured one; ``serve`` passes its service principal). Scheduled key work
        that is due (destruction after the pending window, automatic rotation) runs
        first, so no command ever uses a key past its date."""
        target = resolve_database(settings, create=False)
        db = Database(
            target.url,
            max_size=settings.pool_max_size,
            allow_insecure=settings.database_allow_insecure,
        )
        try:
            # One read of kb_meta: a consistent view even while a migration switches or
            # a rollback restores the database (they rewrite kb_meta in one transaction).
            values = MetaTable(db).all()
            mode_value = values.get("encryption")
            if mode_value is None:
                raise NotInitializedError("the database has no knowledge base; run 'sealedkb init'")
            check_open_allowed(values.get(MARKER))
            mode = EncryptionMode(mode_value)
            if mode is EncryptionMode.OFF:
                _refuse_plaintext_with_keystore(settings, values.get(GUARD))
            kms_key_uri = values.get("kms_key_uri") if mode is EncryptionMode.ON else None
            if mode is EncryptionMode.ON and kms_key_uri is None:
                raise IntegrityError("the database says encryption is on but names no KMS key")
            provider = (
                key_provider(settings, key_uri=kms_key_uri, principal=principal, now=now)
                if mode is EncryptionMode.ON
                else None
            )
            kb = cls(
                settings,
                target,
                db,
                mode,
                provider,
                kms_key_uri,
                principal=principal,
                now=now,
                tokenizer=keyword_tokenizer(values),
            )
            if kb.keys is not None:
                kb.keys.run_due()
            return kb
        except BaseException:
            db.close()
            raise

    def custody(self) -> KeyCustody:
        """Changing custody (``sealedkb key migrate``, keys/migrate.py): every data key
        of this knowledge base re-wrapped under another KMS key, then the switch."""
        if self.mode is not EncryptionMode.ON or self.provider is None or not self.kms_key_uri:
            raise ValidationError(
                "encryption is off in this knowledge base: there are no keys to move",
                field="encryption",
            )
        settings, principal = self.settings, self.principal

        def provider_of(uri: str) -> KeyProvider:
            return key_provider(settings, key_uri=uri, principal=principal)

        return KeyCustody(
            self.db,
            self.audit,
            self.kms_key_uri,
            provider_of,
            checkpoint_dir=settings.audit_dir,
            resign=self._resign_for_custody,
        )

    def _check_search_index(self) -> None:
        checked = verified_search_index(
            self.meta.all(), self.mode, self.provider, self.kms_key_uri, ChangeFeed(self.db)
        )
        if checked != self.search_index:
            raise IntegrityError("kb_meta's search_index setting changed while open; reopen")

    def _resign_for_custody(
        self, old: KeyProvider, new: KeyProvider, new_uri: str
    ) -> dict[str, str]:
        """The kb_meta values signed under the provider, checked under the old one and
        signed again under the new one (the custody switch writes them)."""
        assert self.kms_key_uri is not None
        values = self.meta.all()
        if values.get(SEARCH_INDEX_KEY) is None:
            return {}
        value = verified_search_index(values, self.mode, old, self.kms_key_uri, ChangeFeed(self.db))
        mac = new.generate_mac(_search_index_message(value))
        return {SEARCH_INDEX_MAC_KEY: mac.hex()}

    def close(self) -> None:
        """Close the pool; first sign a checkpoint if this process appended events
        (so a CLI command's events are covered by a checkpoint when it exits)."""
        try:
            self.engine.close()
            if self.audit.appended:
                self.audit.checkpoint_quietly()
        finally:
            self.db.close()

    def start_housekeeping(self, interval: float | None = None) -> Housekeeper:
        """For long-running processes (``serve``): run the key schedule and write a
        signed audit checkpoint now and then every ``interval`` seconds (default
        ``audit_checkpoint_interval``, at most 60). Stop it before :meth:`close`."""
        every = interval if interval is not None else self.settings.audit_checkpoint_interval
        return Housekeeper(self.keys, self.audit, every).start()

    def __enter__(self) -> KnowledgeBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def encrypted(self) -> bool:
        return self.mode is EncryptionMode.ON

    # --- operations ---------------------------------------------------------

    def add(
        self,
        content: str,
        *,
        title: str | None = None,
        entry_type: str | EntryType = EntryType.NOTE,
        tags: list[str] | tuple[str, ...] = (),
        namespace: str = DEFAULT_NAMESPACE,
        source: str | None = None,
        metadata: dict[str, Any] | None = None,
        verified: bool = False,
        force: bool = False,
    ) -> Entry:
        """Add an entry. Identical content (after normalising whitespace) already in
        the namespace returns the existing entry instead, unless ``force``."""
        new = new_entry(
            content,
            title=title,
            entry_type=entry_type,
            tags=tags,
            namespace=namespace,
            source=source,
            metadata=metadata,
            verified=verified,
        )
        return self.add_entry(new, force=force)

    def add_entry(self, new: NewEntry, *, force: bool = False) -> Entry:
        entry_id = uuid.uuid4()
        doc = EntryDoc(new.title, new.content, new.source, new.metadata, new.tags)
        vectors = self.indexer.embed([(doc.title, doc.content)])
        # Seal and index before touching the database: nothing is ever half-encrypted.
        row, search_cols = self.sealer.sealed_row(
            new.namespace,
            new.entry_type.value,
            entry_id,
            doc,
            vectors[0] if vectors is not None else None,
            with_fingerprint=not force,
            verified=new.verified,
        )
        if self.memory_index is not None:
            return self._add_memory_mode([(row, search_cols, doc)], force=force)[0]
        stored, created = self.search_table.insert(row, search_cols, dedup=not force)
        if created:
            return self.sealer.to_entry(stored, doc)
        existing = self.sealer.to_entry(stored)
        if self._same_content(existing, doc):
            return existing
        # A fingerprint that does not belong to its row's content: a forged column would
        # make this add vanish into another entry. Store the entry after all.
        search_cols.fingerprint = None
        stored, _ = self.search_table.insert(row, search_cols, dedup=False)
        return self.sealer.to_entry(stored, doc)

    def _add_memory_mode(
        self, items: Sequence[tuple[EntryRow, SearchColumns, EntryDoc]], *, force: bool
    ) -> list[Entry]:
        """Insert sealed rows of a memory-mode knowledge base, dedup answered by the
        memory index: under a per-namespace lock (so two processes cannot both miss
        a duplicate), the index catches up with the change feed, then each entry whose
        normalised content is live in its namespace (or earlier in the batch) returns
        that entry instead of being stored, unless ``force``."""
        assert self.memory_index is not None
        out: list[Entry | None] = [None] * len(items)
        spaces = sorted({row.namespace for row, _, _ in items})
        if not force:
            for ns in spaces:  # build and catch up first, outside the lock
                self.memory_index.prepare(ns)
        with self.db.transaction("add") as conn:
            if not force:
                for ns in spaces:
                    lock_namespace(conn, ns)
            seen: dict[tuple[str, str], int] = {}
            dups: dict[int, uuid.UUID | int] = {}
            for i, (row, _, doc) in enumerate(items):
                if force:
                    break
                norm = normalize_content(doc.content)
                earlier = seen.get((row.namespace, norm))
                if earlier is not None:
                    dups[i] = earlier
                    continue
                found = self.memory_index.duplicate(row.namespace, norm, conn)
                if found is not None:
                    dups[i] = found
                else:
                    seen[(row.namespace, norm)] = i
            pending = [i for i in range(len(items)) if i not in dups]
            stored = self.search_table.insert_many(
                conn, iter([(items[i][0], items[i][1]) for i in pending]), dedup=False
            )
            for i, (srow, _) in zip(pending, stored, strict=True):
                out[i] = self.sealer.to_entry(srow, items[i][2])
            for i, dup in dups.items():
                if isinstance(dup, int):
                    out[i] = out[dup]
                    continue
                existing = self.entries.get(dup)
                entry = self.sealer.to_entry(existing) if existing is not None else None
                if entry is None or not self._same_content(entry, items[i][2]):
                    # gone meanwhile, or not what the index said: store it after all
                    ((srow, _),) = self.search_table.insert_many(
                        conn, iter([(items[i][0], items[i][1])]), dedup=False
                    )
                    entry = self.sealer.to_entry(srow, items[i][2])
                out[i] = entry
        result = [e for e in out if e is not None]
        assert len(result) == len(items)
        return result

    def _same_content(self, existing: Entry, doc: EntryDoc) -> bool:
        """Dedup found ``existing`` for ``doc``: true when it really holds the same
        content; otherwise its fingerprint was forged (counted, logged)."""
        if normalize_content(existing.content) == normalize_content(doc.content):
            return True
        self.telemetry.integrity_failure()
        log.warning("entry %s has a fingerprint of other content: not used for dedup", existing.id)
        return False

    def add_many(self, entries: Sequence[NewEntry], *, force: bool = False) -> list[Entry]:
        """Add up to MAX_ADD_BATCH entries (see :func:`new_entry`) in one transaction:
        all or none. Dedup as :meth:`add`, also within the batch. Returns the entries
        in order (an existing entry where a duplicate was not added).

        The bulk path: one embedding batch, and each entry is sealed and indexed while
        PostgreSQL inserts the one before it (pipeline mode), so the encryption work
        overlaps the database's instead of adding to it. Every row is complete before
        it is sent; an error anywhere rolls the whole batch back."""
        if not 1 <= len(entries) <= MAX_ADD_BATCH:
            raise ValidationError(f"a batch holds 1 to {MAX_ADD_BATCH} entries", field="entries")
        for new in entries:
            if not isinstance(new, NewEntry):
                raise ValidationError("entries must be validated (new_entry)", field="entries")
        docs = [EntryDoc(n.title, n.content, n.source, n.metadata, n.tags) for n in entries]
        vectors = self.indexer.embed([(d.title, d.content) for d in docs])

        def prepared() -> Iterator[tuple[EntryRow, SearchColumns]]:
            for i, (new, doc) in enumerate(zip(entries, docs, strict=True)):
                yield self.sealer.sealed_row(
                    new.namespace,
                    new.entry_type.value,
                    uuid.uuid4(),
                    doc,
                    vectors[i] if vectors is not None else None,
                    with_fingerprint=not force,
                    verified=new.verified,
                )

        if self.memory_index is not None:
            rows = [(row, cols, doc) for (row, cols), doc in zip(prepared(), docs, strict=True)]
            return self._add_memory_mode(rows, force=force)
        out: list[Entry] = []
        with self.db.transaction("add") as conn:
            stored = self.search_table.insert_many(conn, prepared(), dedup=not force)
            for i, ((row, created), doc) in enumerate(zip(stored, docs, strict=True)):
                if created:
                    out.append(self.sealer.to_entry(row, doc))
                    continue
                existing = self.sealer.to_entry(row)
                if not self._same_content(existing, doc):
                    existing = self._add_after_forged_dedup(conn, entries[i], doc)
                out.append(existing)
        return out

    def _add_after_forged_dedup(self, conn: Any, new: NewEntry, doc: EntryDoc) -> Entry:
        vectors = self.indexer.embed([(doc.title, doc.content)])
        row, cols = self.sealer.sealed_row(
            new.namespace,
            new.entry_type.value,
            uuid.uuid4(),
            doc,
            vectors[0] if vectors is not None else None,
            with_fingerprint=False,
            verified=new.verified,
        )
        ((stored, _),) = self.search_table.insert_many(conn, iter([(row, cols)]), dedup=False)
        return self.sealer.to_entry(stored, doc)

    def get(self, entry_id: str | uuid.UUID, *, namespaces: Collection[str] | None = None) -> Entry:
        """One entry. ``namespaces`` (an access scope) is checked on the row before any
        key is touched: an entry outside it is not found, whatever state it is in."""
        eid = parse_entry_id(entry_id)
        row = _in_scope(self.entries.get(eid), namespaces)
        return self.sealer.to_entry(row)

    def update(
        self,
        entry_id: str | uuid.UUID,
        patch: EntryPatch,
        *,
        expected_version: int | None = None,
        namespaces: Collection[str] | None = None,
    ) -> Entry:
        eid = parse_entry_id(entry_id)
        if patch.is_empty():
            raise ValidationError("nothing to update", field="update")
        values: dict[str, Any] = {}
        if patch.title is not None:
            values["title"] = validate_title(patch.title)
        if patch.content is not None:
            values["content"] = validate_content(patch.content)
        if patch.source is not None:
            values["source"] = validate_source(patch.source)
        if patch.metadata is not None:
            values["metadata"] = validate_metadata(patch.metadata)
        if patch.tags is not None:
            values["tags"] = validate_tags(patch.tags)
        flags: dict[str, Any] = {}
        if patch.entry_type is not None:
            flags["entry_type"] = validate_entry_type(patch.entry_type).value
        if patch.verified is not None:
            flags["verified"] = patch.verified
        if patch.archived is not None:
            flags["archived"] = patch.archived
        with self.db.transaction("update") as conn:
            row = _in_scope(self.entries.get_for_update(conn, eid), namespaces)
            if expected_version is not None and row.version != expected_version:
                raise ConflictError(
                    f"entry is at version {row.version}, not {expected_version}; "
                    "get it again and retry",
                    field="expected_version",
                )
            changes: dict[str, Any] = dict(flags)
            doc = self.sealer.open_row(row)
            if values:
                old = doc
                doc = doc._replace(**values)
                if (doc.title, doc.content) != (old.title, old.content):
                    search, digest = self._search_changes(conn, row.namespace, eid, doc)
                    changes.update(search)
                    doc = doc._replace(index_digest=digest)
                # else the search columns stay, and so does the digest that covers them
                changes.update(self.sealer.store_columns(row.namespace, eid, doc))
            updated = self.entries.update(conn, eid, changes)
        return self.sealer.to_entry(updated, doc)

    def _search_changes(
        self, conn: Any, namespace: str, eid: uuid.UUID, doc: EntryDoc
    ) -> tuple[dict[str, Any], bytes | None]:
        """Search columns for changed title/content: tokens, vector, fingerprint (kept
        only while no other live entry of the namespace has the same content), and the
        index digest the re-sealed document carries."""
        vectors = self.indexer.embed([(doc.title, doc.content)])
        cols = self.sealer.search_columns(
            namespace, eid, doc, vectors[0] if vectors is not None else None
        )
        if cols.fingerprint and self.search_table.fingerprint_taken(
            conn, namespace, cols.fingerprint, eid
        ):
            cols.fingerprint = None
        changes = cols.as_changes()
        del changes["import_key"], changes["import_hash"]  # an edited chunk stays imported
        return changes, cols.index_digest

    def delete(
        self, entry_id: str | uuid.UUID, *, namespaces: Collection[str] | None = None
    ) -> None:
        eid = parse_entry_id(entry_id)
        scope = tuple(namespaces) if namespaces is not None else None
        if not self.entries.soft_delete(eid, namespaces=scope):
            raise NotFoundError("entry not found", field="id")

    def list(
        self,
        *,
        namespace: str | None = None,
        entry_type: str | None = None,
        tag: str | None = None,
        limit: int = 50,
        offset: int = 0,
        include_archived: bool = True,
        namespaces: list[str] | None = None,
    ) -> list[Entry]:
        """Entries newest first. ``namespaces`` restricts the result to an access scope."""
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise ValidationError(f"limit must be between 1 and {MAX_LIST_LIMIT}", field="limit")
        if offset < 0:
            raise ValidationError("offset must not be negative", field="offset")
        ns = validate_namespace(namespace) if namespace is not None else None
        et = validate_entry_type(entry_type).value if entry_type is not None else None
        tag_token = tag_plain = None
        if tag is not None:
            (norm,) = validate_tags([tag])
            if self.memory_index is not None:
                return self._list_tagged(ns, norm, et, include_archived, limit, offset, namespaces)
            if self.encrypted:
                if ns is None:
                    raise ValidationError(
                        "filtering by tag needs --namespace in encrypted mode "
                        "(tag tokens are keyed per namespace)",
                        field="namespace",
                    )
                assert self.keyring is not None
                tag_token = self.keyring.blinder(ns).tag_token(norm)
            else:
                tag_plain = norm
        rows = self.entries.list(
            ListFilter(
                ns,
                et,
                tag_token,
                tag_plain,
                include_archived,
                limit,
                offset,
                tuple(namespaces) if namespaces is not None else None,
            )
        )
        out = [self.sealer.to_entry(r) for r in rows]
        if tag_token is not None:
            # The tag filter ran on tag tokens the database holds: keep only entries
            # whose sealed document really carries the tag (a copied column is dropped).
            kept = [e for e in out if norm in e.tags]
            for _ in range(len(out) - len(kept)):
                self.telemetry.integrity_failure()
            out = kept
        return out

    def _list_tagged(
        self,
        ns: str | None,
        tag: str,
        entry_type: str | None,
        include_archived: bool,
        limit: int,
        offset: int,
        namespaces: builtins.list[str] | None,
    ) -> builtins.list[Entry]:
        """A tag-filtered list in memory mode: the memory index knows the tags."""
        assert self.memory_index is not None
        if ns is None:
            raise ValidationError(
                "filtering by tag needs --namespace in encrypted mode "
                "(tag tokens are keyed per namespace)",
                field="namespace",
            )
        if namespaces is not None and ns not in namespaces:
            return []
        ids = self.memory_index.tagged(
            ns, tag, entry_type=entry_type, include_archived=include_archived
        )[offset : offset + limit]
        rows = ChangeFeed(self.db).entries(ids)
        out = [self.sealer.to_entry(rows[i]) for i in ids if i in rows]
        kept = [e for e in out if tag in e.tags]
        for _ in range(len(out) - len(kept)):
            self.telemetry.integrity_failure()
        return kept

    def stats(self, namespaces: builtins.list[str] | None = None, top_tags: int = 20) -> Stats:
        """Counts by namespace and type, and the most used tags per namespace.

        In encrypted mode tags are keyed tokens; a token's name is recovered by
        opening one entry that carries it, so this costs one open per tag listed.
        """
        by_ns: dict[str, NamespaceStats] = {}
        for ns, et, n in self.entries.stats(namespaces):
            item = by_ns.setdefault(ns, {"total": 0, "by_type": {}, "top_tags": {}})
            item["total"] += n
            item["by_type"][et] = n
        for ns, item in by_ns.items():
            if self.memory_index is not None:
                item["top_tags"] = dict(self.memory_index.tag_counts(ns, top_tags))
                continue
            for tag, n, sample_id in self.entries.tag_counts(ns, top_tags):
                if self.keyring is not None:
                    row = self.entries.get(sample_id)
                    if row is None:
                        continue
                    blinder = self.keyring.blinder(ns)
                    names = [
                        t for t in self.sealer.open_row(row).tags if blinder.tag_token(t) == tag
                    ]
                    if not names:
                        continue
                    tag = names[0]
                item["top_tags"][tag] = n
        return {
            "entries_total": sum(i["total"] for i in by_ns.values()),
            "namespaces": by_ns,
        }

    # --- bearer tokens (HTTP MCP; kb/tokens.py) -------------------------------------

    def create_token(
        self,
        name: str,
        role: str,
        namespaces: builtins.list[str],
        expires_days: int | None = None,
    ) -> tuple[TokenRecord, str]:
        """Create a bearer token; returns its record and the token, which is not stored."""
        return self._tokens.create(name, role, namespaces, expires_days)

    def list_tokens(self, include_revoked: bool = False) -> builtins.list[TokenRecord]:
        return self._tokens.list_all(include_revoked)

    def revoke_token(self, name: str) -> None:
        self._tokens.revoke(name)

    def rekey_tokens(self) -> builtins.list[TokenRecord]:
        """Give tokens of earlier versions the keyed hash and row MAC (kb/tokens.py)."""
        return self._tokens.rekey()

    def authenticate(self, secret: str) -> Principal | None:
        """The principal a bearer token stands for, or None (unknown, revoked, expired,
        or a row that fails its integrity check)."""
        return self._tokens.authenticate(secret)

    # --- OAuth 2.1 for hosted MCP clients (kb/oauth.py; adapters/oauth/) ------------------

    def oauth_register_client(
        self, client_id: str, secret: str | None, metadata: dict[str, Any]
    ) -> None:
        self._oauth.register_client(client_id, secret, metadata)

    def oauth_client(self, client_id: str) -> OAuthClient | None:
        return self._oauth.get_client(client_id)

    def oauth_check_client_secret(self, client_id: str, secret: str | None) -> bool:
        return self._oauth.check_client_secret(client_id, secret)

    def oauth_begin(
        self,
        client_id: str,
        *,
        redirect_uri: str,
        redirect_uri_explicit: bool,
        state: str | None,
        scopes: Sequence[str],
        code_challenge: str,
        resource: str,
    ) -> str:
        """A pending consent request; returns the secret its consent page opens with."""
        return self._oauth.begin(
            client_id,
            redirect_uri=redirect_uri,
            redirect_uri_explicit=redirect_uri_explicit,
            state=state,
            scopes=scopes,
            code_challenge=code_challenge,
            resource=resource,
        )

    def oauth_pending(self, request: str) -> ConsentRequest | None:
        return self._oauth.pending(request)

    def oauth_consent(
        self, request: str, bearer: str, role: str, namespaces: Sequence[str]
    ) -> ConsentResult:
        """The holder of bearer token ``bearer`` grants ``role`` on ``namespaces`` (no
        wider than that token) to the client of consent request ``request``."""
        principal = self._tokens.authenticate(bearer)
        if principal is None:
            raise AccessDeniedError("sign in with a valid bearer token", field="token")
        return self._oauth.consent(request, principal, role, namespaces)

    def oauth_deny(self, request: str) -> ConsentRequest | None:
        return self._oauth.deny(request)

    def oauth_load_code(self, client_id: str, code: str) -> OAuthCode | None:
        return self._oauth.load_code(client_id, code)

    def oauth_exchange_code(self, client_id: str, code: str) -> OAuthTokens:
        return self._oauth.exchange_code(client_id, code)

    def oauth_load_refresh(self, client_id: str, token: str) -> OAuthRefresh | None:
        return self._oauth.load_refresh(client_id, token)

    def oauth_exchange_refresh(self, client_id: str, token: str) -> OAuthTokens:
        return self._oauth.exchange_refresh(client_id, token)

    def oauth_authenticate(self, token: str) -> OAuthAccess | None:
        """The access an OAuth access token grants (None: unknown, expired, revoked,
        used up or a row that fails its integrity check)."""
        return self._oauth.authenticate(token)

    def oauth_revoke(self, client_id: str, token: str) -> bool:
        return self._oauth.revoke(client_id, token)

    def oauth_grant(
        self,
        client_id: str,
        bearer: str,
        role: str,
        namespaces: Sequence[str],
        resource: str,
    ) -> OAuthTokens:
        """Tokens for a registered client granted by the holder of ``bearer``, without
        the browser round trip (audited like a consent)."""
        principal = self._tokens.authenticate(bearer)
        if principal is None:
            raise AccessDeniedError("sign in with a valid bearer token", field="token")
        return self._oauth.grant(client_id, principal, role, namespaces, resource)

    # --- search, import (search/engine.py, ingest/importer.py) --------------------------------

    def search(
        self,
        query: str,
        *,
        mode: str | SearchMode = SearchMode.HYBRID,
        limit: int = 10,
        offset: int = 0,
        namespace: str = DEFAULT_NAMESPACE,
        entry_type: str | None = None,
        tags: Sequence[str] = (),
        since: str | datetime | None = None,
    ) -> SearchResult:
        """Hybrid (default), semantic or keyword search within one namespace, newest
        information first on ties; ``tags`` must all match; ``since`` is a date or ISO
        time. Every hit is opened and checked before it is returned."""
        self.follow_search_index()
        return self.engine.search(
            query,
            mode=mode,
            limit=limit,
            offset=offset,
            namespace=namespace,
            entry_type=entry_type,
            tags=tags,
            since=since,
        )

    def import_paths(
        self,
        paths: Sequence[str],
        *,
        namespace: str = DEFAULT_NAMESPACE,
        entry_type: str = "doc",
        tags: Sequence[str] = (),
        progress: Callable[[str, int, int], None] | None = None,
        root: Path | None = None,
    ) -> ImportSummary:
        """Import Markdown, text and HTML files and folders as chunked entries; with
        ``root``, only files that resolve under it (named relative to it)."""
        from sealedkb.ingest.importer import Importer  # the parsers load on first import

        importer = Importer(self, namespace=namespace, entry_type=entry_type, tags=tags)
        return importer.run(paths, progress, root=root)

    def reembed(
        self,
        *,
        namespace: str | None = None,
        redo_all: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, int]:
        """Recompute vectors made by another model (or missing); resumable."""
        return reembed(self, namespace=namespace, redo_all=redo_all, progress=progress)

    def reindex(
        self,
        namespace: str | None = None,
        *,
        batch_size: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> builtins.list[ReindexResult]:
        """New index and vector data keys for a namespace (or every namespace that has
        a search index) and its search columns rebuilt under them; online, resumable,
        audited (search/reindex.py)."""
        from sealedkb.search.reindex import REINDEX_BATCH, reindex

        if namespace is not None or self.keys is None:
            names = [validate_namespace(namespace or DEFAULT_NAMESPACE)]
        else:
            names = self.keys.rekey.active_namespaces(KeyPurpose.INDEX, None)
        return [
            reindex(
                self,
                ns,
                batch_size=REINDEX_BATCH if batch_size is None else batch_size,
                progress=progress,
            )
            for ns in names
        ]

    # --- status ----------------------------------------------------------------

    def availability(self) -> tuple[str, str | None]:
        """('available', None) or ('inaccessible-encryption-credentials', reason)."""
        if self.keyring is None:
            return "available", None
        try:
            self.keyring.check_available(DEFAULT_NAMESPACE)
        except SealedKBError as exc:
            return "inaccessible-encryption-credentials", exc.message
        return "available", None

    def status(self) -> KnowledgeBaseStatus:
        counts = self.entries.counts()
        warnings: list[str] = []
        availability, reason = self.availability()
        key_state: str | None = None
        provider_name: str | None = None
        root_source: str | None = None
        if self.encrypted:
            assert self.provider is not None and self.kms_key_uri is not None
            provider_name = self.provider.scheme
            keystore = keystore_of(self.provider)  # local keystore administration
            try:
                key_state = self.provider.describe_key(self.kms_key_uri).state.value
                root_source = keystore.root_key_source() if keystore is not None else None
            except SealedKBError as exc:
                key_state = "Unavailable"
                reason = reason or exc.message
            warnings.extend(keystore.warnings() if keystore is not None else [])
        else:
            warnings.append("encryption is off: entries are stored in plaintext")
        if reason:
            warnings.append(f"keys unavailable: {reason}")
        if self.target.transport.kind == "insecure-tcp":
            warnings.append("database connection is not TLS-verified (opt-out in effect)")
        return {
            "storage_encrypted": self.encrypted and counts["plaintext"] == 0,
            "encryption_mode": self.mode.value,
            "encryption_scheme": ENCRYPTION_SCHEME if self.encrypted else "none",
            "kms_key_id": self.kms_key_uri,
            "key_state": key_state,
            "key_provider": provider_name,
            "root_key_source": root_source,
            "data_key_max_age_seconds": self.settings.data_key_max_age,
            "data_keys": {**self.datakeys.counts(), **self._data_key_states()},
            "entries_total": counts["total"],
            "entries_plaintext": counts["plaintext"],
            "entries_sealed": counts["sealed"],
            "namespaces": counts["namespaces"],
            "keyword_tokenizer": self.indexer.tokenizer,  # docs/FORMATS.md §5
            "search_index": self.search_index_status(),
            "availability": availability,
            "database": self._database_status(),
            "home": str(self.settings.home),
            "principal": self.principal,
            **self._key_status(),
            "audit": self.audit.head(),
            "warnings": warnings,
        }

    def search_index_status(self) -> SearchIndexStatus:
        """Where the search index lives and, in one line, what PostgreSQL learns."""
        leakage = self.search_index if self.encrypted else "plaintext"
        return {
            "mode": self.search_index,
            "leakage": SEARCH_INDEX_LEAKAGE[leakage],
            "docs": SEARCH_INDEX_DOCS,
            "migration": IndexModeTable(self.db).marker(),  # sealedkb migrate index
        }

    def _data_key_states(self) -> dict[str, int]:
        if self.keys is None:
            return {}
        return self.keys.rekey.data_key_counts()

    def _database_status(self) -> DatabaseStatus:
        tls = self.db.tls_session()  # negotiated TLS (none over a Unix socket)
        return {
            "kind": self.target.kind,
            "transport": self.target.transport.kind,
            "tls_protocol": tls.protocol if tls else None,
            "tls_cipher": tls.cipher if tls else None,
            "server_version": self.db.server_version(),
            "pgvector": self.db.pgvector_version(),
            "schema_version": self.db.schema_version,
        }

    def _key_status(self) -> KeyStatus:
        """Rotation facts, and where the rows are (key lifecycle): data keys on the newest
        KMS key version, entries on active / retired data keys."""
        if self.keys is None:
            return {"key_rotation": None, "entries_by_data_key": None}
        info = self.keys.status()
        return {
            "key_rotation": info["key_rotation"],
            "data_keys_on_newest_key_version": info["data_keys_on_newest_key_version"],
            "entries_by_data_key": info["entries_by_data_key"],
            "embeddings_on_retired_keys": info["embeddings_on_retired_keys"],
        }
