"""The plaintext inside a sealed entry document (before sealing, after opening).

An entry's title, content, source, metadata and tags are sealed together as one
value, so PostgreSQL learns one padded length per entry instead of five, and a
read costs one AES-GCM open. Layout, version 1::

    0x01 | 5 x u32 big-endian lengths | title | content | source | metadata | tags

(each field UTF-8; the lengths first, so decoding is one unpack and five slices).

metadata is compact JSON, or empty for ``{}``; tags are joined with 0x1F (unit
separator), which validated tags cannot contain. Decoding is on the read path of
every entry, so it avoids JSON where it can.
"""

from __future__ import annotations

import json
import struct
from typing import Any, NamedTuple

from sealedkb.errors import IntegrityError

DOC_V1 = 0x01
_HEAD = struct.Struct(">B5I")
_TAG_SEP = "\x1f"


class EntryDoc(NamedTuple):  # a NamedTuple: built on every read, and cheap to build
    title: str
    content: str
    source: str | None
    metadata: dict[str, Any]
    tags: tuple[str, ...]


def encode_doc(doc: EntryDoc) -> bytes:
    metadata = (
        json.dumps(doc.metadata, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        if doc.metadata
        else ""
    )
    parts = (
        doc.title.encode(),
        doc.content.encode(),
        (doc.source or "").encode(),
        metadata.encode(),
        _TAG_SEP.join(doc.tags).encode(),
    )
    return b"".join((_HEAD.pack(DOC_V1, *map(len, parts)), *parts))


def decode_doc(data: bytes) -> EntryDoc:
    try:
        version, n_title, n_content, n_source, n_meta, n_tags = _HEAD.unpack_from(data)
    except struct.error:
        raise IntegrityError("entry document is malformed") from None
    if version != DOC_V1:
        raise IntegrityError("entry document has an unknown format")
    a = _HEAD.size
    b = a + n_title
    c = b + n_content
    d = c + n_source
    e = d + n_meta
    if e + n_tags != len(data):
        raise IntegrityError("entry document is malformed")
    try:
        meta = data[d:e]
        tags = data[e:].decode()
        return EntryDoc(
            data[a:b].decode(),
            data[b:c].decode(),
            data[c:d].decode() or None,
            json.loads(meta) if meta else {},
            tuple(tags.split(_TAG_SEP)) if tags else (),
        )
    except ValueError:  # UnicodeDecodeError and JSONDecodeError included
        raise IntegrityError("entry document is malformed") from None
