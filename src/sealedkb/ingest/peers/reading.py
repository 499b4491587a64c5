"""Which reader reads which peer format."""

from __future__ import annotations

from pathlib import Path

from sealedkb.errors import ValidationError
from sealedkb.ingest.peers.base import FORMATS, PeerRead


def read_peer(fmt: str, path: Path) -> PeerRead:
    """Read a peer's storage at ``path`` (a ValidationError when it cannot be read)."""
    if fmt == "mcp-memory-service":
        from sealedkb.ingest.peers.mcp_memory_service import read as read_mcp_memory_service

        return read_mcp_memory_service(path)
    if fmt == "basic-memory":
        from sealedkb.ingest.peers.basic_memory import read as read_basic_memory

        return read_basic_memory(path)
    if fmt == "jsonl":
        from sealedkb.ingest.peers.jsonl import read as read_jsonl

        return read_jsonl(path)
    raise ValidationError(f"unknown format; expected one of: {', '.join(FORMATS)}", field="from")
