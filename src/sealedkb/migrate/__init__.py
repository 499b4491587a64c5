"""Migrations: a plaintext knowledge base to encrypted storage in place, foreign tables
into an encrypted one, verify, rollback.

- :class:`Migrator` (migrator.py): the facade — ``plan``, ``run``, ``status``,
  ``verify``, ``rollback``; :class:`ForeignSpec` names a foreign source table. It
  takes the knowledge-base side as a ``host`` (host.py Protocols);
  ``sealedkb.kb.migrating.Migrator`` is the one wired to the KnowledgeBase.
- Typed results (reports.py): :class:`PlanReport`, :class:`RunReport`,
  :class:`VerifyReport`, :class:`RollbackReport`, the progress :class:`Marker`.
- guard.py: what the knowledge base itself needs (the marker, the guard that lets a
  plaintext knowledge base open beside the keystore of its running migration).

Names are loaded on first use: the knowledge base imports guard.py, and the
migrations import the knowledge base.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sealedkb.migrate.foreign import ForeignSpec
    from sealedkb.migrate.migrator import Migrator
    from sealedkb.migrate.reports import (
        Marker,
        PlanReport,
        RollbackReport,
        RunReport,
        VerifyReport,
    )

__all__ = [
    "ForeignSpec",
    "Marker",
    "Migrator",
    "PlanReport",
    "RollbackReport",
    "RunReport",
    "VerifyReport",
]

_HOME = {
    "ForeignSpec": "sealedkb.migrate.foreign",
    "Migrator": "sealedkb.migrate.migrator",
    "Marker": "sealedkb.migrate.reports",
    "PlanReport": "sealedkb.migrate.reports",
    "RollbackReport": "sealedkb.migrate.reports",
    "RunReport": "sealedkb.migrate.reports",
    "VerifyReport": "sealedkb.migrate.reports",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
