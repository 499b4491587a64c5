"""``sealedkb migrate``: plaintext knowledge base -> encrypted, online, resumable,
verifiable, with a rollback point (runbook: docs/ENCRYPTION-KEY-MANAGEMENT.md §25).

The facade ``sealedkb migrate`` calls (through kb/migrating.py, which gives it the
knowledge-base side: :class:`~sealedkb.migrate.host.KnowledgeBases`); each capability
lives in its own module: in place
(in_place.py), foreign tables (foreign.py), the duration model (estimate.py),
``verify`` (verify.py), ``rollback`` (rollback.py), the marker and the guard
(guard.py), the typed reports (reports.py).

Every migrated row gets a keyed digest of its source form (``sealedkb_mig_rows``);
``verify`` opens every entry and compares. ``rollback`` before the switch drops
the shadow; after it, it restores the rollback snapshot over the database in one
transaction (the audit trail is kept, not rewound).
"""

from __future__ import annotations

from sealedkb.config import Settings
from sealedkb.errors import ValidationError
from sealedkb.kb.wiring import resolve_database
from sealedkb.migrate import rollback as _rollback
from sealedkb.migrate import verify as _verify
from sealedkb.migrate.common import DEFAULT_BATCH, ProgressFn, connect_vectors
from sealedkb.migrate.foreign import ForeignMigration, ForeignSource, ForeignSpec
from sealedkb.migrate.guard import read_marker
from sealedkb.migrate.host import KnowledgeBases
from sealedkb.migrate.in_place import InPlaceMigration
from sealedkb.migrate.reports import Marker, PlanReport, RollbackReport, RunReport, VerifyReport
from sealedkb.store.db import mapped_errors

__all__ = ["DEFAULT_BATCH", "ForeignSpec", "Migrator", "ProgressFn"]


def _no_progress(phase: str, done: int, total: int) -> None:
    return None


class Migrator:
    """One migration of the knowledge base at ``settings`` (in place when ``foreign``
    is None). ``progress`` gets (phase, done, total) after each batch."""

    def __init__(
        self,
        settings: Settings,
        foreign: ForeignSpec | None = None,
        *,
        host: KnowledgeBases,
        batch: int = DEFAULT_BATCH,
        progress: ProgressFn | None = None,
        sample_size: int = 200,
    ) -> None:
        if not 10 <= batch <= 10_000:
            raise ValidationError("--batch must be between 10 and 10000", field="batch")
        self.settings = settings
        self.host = host
        self.progress = progress or _no_progress
        self.source = ForeignSource(settings, foreign) if foreign is not None else None
        self._migration: InPlaceMigration | ForeignMigration
        if self.source is not None:
            self._migration = ForeignMigration(
                settings,
                self.source,
                host=host,
                batch=batch,
                progress=self.progress,
                sample_size=sample_size,
            )
        else:
            self._migration = InPlaceMigration(
                settings,
                host=host,
                batch=batch,
                progress=self.progress,
                sample_size=sample_size,
            )

    @property
    def kind(self) -> str:
        return "foreign" if self.source is not None else "in-place"

    def plan(self) -> PlanReport:
        """Inspect the source, measure sealing on a sample, estimate; changes nothing."""
        with mapped_errors("migration plan"):
            return self._migration.plan()

    def run(self) -> RunReport:
        with mapped_errors("migration"):
            return self._migration.run()

    def status(self) -> Marker | None:
        target = resolve_database(self.settings, create=False)
        with mapped_errors("migration status"), connect_vectors(self.settings, target.url) as conn:
            return read_marker(conn)

    def verify(self) -> VerifyReport:
        """Every migrated row opens and equals its source (keyed digests); no plaintext
        row is left; the switch and the scrub happened (in place)."""
        return _verify.verify(self.host, self.settings, self.source, self.progress)

    def rollback(self) -> RollbackReport:
        """Back to the state before the migration (rollback.py)."""
        return _rollback.rollback(self.host, self.settings)
