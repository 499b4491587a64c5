"""Moving in from other knowledge-base servers: one reader module per peer format
(``mcp_memory_service``, ``basic_memory``, ``jsonl``), each turning the peer's own
storage into :class:`PeerItem` values, and :func:`import_items`, which adds them
through the knowledge base's ``add_many`` in batches.

Every item carries a stable source key (``<format>:<the peer's own identity>``)
kept in the entry's metadata under ``imported``, with the item's original
timestamps and type; a re-run skips every key already in the namespace, so it
adds nothing. Identical content is skipped by the knowledge base's dedup. A bad
item (malformed frontmatter, metadata that is not JSON, content too large, ...)
is reported with its file and item and a stable code, never with its content,
and nothing of it is written; a source that cannot be read at all (not an SQLite
file, a wrong schema) is a ValidationError naming the file.
"""

from sealedkb.ingest.peers.base import (
    FORMATS,
    IMPORTED_KEY,
    EntrySink,
    ItemProblem,
    PeerImportSummary,
    PeerItem,
    PeerRead,
    import_items,
)
from sealedkb.ingest.peers.reading import read_peer

__all__ = [
    "FORMATS",
    "IMPORTED_KEY",
    "EntrySink",
    "ItemProblem",
    "PeerImportSummary",
    "PeerItem",
    "PeerRead",
    "import_items",
    "read_peer",
]
