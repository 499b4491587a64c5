"""sealedkb: an encrypted-at-rest knowledge base on PostgreSQL + pgvector.

The public Python API::

    from sealedkb import KnowledgeBase, Settings

    with KnowledgeBase.open(Settings(home="~/.sealedkb")) as kb:
        entry = kb.add("Use pgbouncer in session mode", entry_type="decision")
        hits = kb.search("connection pooling").hits

Names are loaded on first use, so ``import sealedkb`` (and the CLI) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from sealedkb import errors
    from sealedkb.config import Settings
    from sealedkb.errors import (
        AccessDeniedError,
        ConflictError,
        IntegrityError,
        KeyUnavailableError,
        NotFoundError,
        SealedKBError,
        ValidationError,
    )
    from sealedkb.kb.knowledge_base import KnowledgeBase
    from sealedkb.model import Entry, EntryPatch, EntryType, NewEntry, new_entry
    from sealedkb.search.engine import SearchHit, SearchMode, SearchResult

_LAZY = {
    "KnowledgeBase": "sealedkb.kb.knowledge_base",
    "Settings": "sealedkb.config",
    "Entry": "sealedkb.model",
    "NewEntry": "sealedkb.model",
    "EntryPatch": "sealedkb.model",
    "EntryType": "sealedkb.model",
    "new_entry": "sealedkb.model",
    "SearchMode": "sealedkb.search.engine",
    "SearchResult": "sealedkb.search.engine",
    "SearchHit": "sealedkb.search.engine",
    "SealedKBError": "sealedkb.errors",
    "ValidationError": "sealedkb.errors",
    "NotFoundError": "sealedkb.errors",
    "ConflictError": "sealedkb.errors",
    "AccessDeniedError": "sealedkb.errors",
    "KeyUnavailableError": "sealedkb.errors",
    "IntegrityError": "sealedkb.errors",
}

__all__ = [
    "AccessDeniedError",
    "ConflictError",
    "Entry",
    "EntryPatch",
    "EntryType",
    "IntegrityError",
    "KeyUnavailableError",
    "KnowledgeBase",
    "NewEntry",
    "NotFoundError",
    "SealedKBError",
    "SearchHit",
    "SearchMode",
    "SearchResult",
    "Settings",
    "ValidationError",
    "__version__",
    "errors",
    "new_entry",
]


def __getattr__(name: str) -> Any:
    if name == "errors":
        return importlib.import_module("sealedkb.errors")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sealedkb' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
