"""The plaintext inside a sealed entry document (before sealing, after opening).

An entry's title, content, source, metadata and tags are sealed together as one
value, so PostgreSQL learns one padded length per entry instead of five, and a
read costs one AES-GCM open. Layout, version 2 (written since search columns are
authenticated)::

    0x02 | 6 x u32 big-endian lengths | title | content | source | metadata | tags | index

and version 1 (read only: documents written before), the same without ``index``::

    0x01 | 5 x u32 big-endian lengths | title | content | source | metadata | tags

(each text field UTF-8; the lengths first, so decoding is one unpack and a few
slices). ``index`` is the index digest: 64 bytes, the SHA-256 of the row's keyword
tokens and the SHA-256 of its encrypted search vector (search/digest.py), so the
search columns PostgreSQL holds beside the document are authenticated by it.

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
DOC_V2 = 0x02
_HEAD = struct.Struct(">B5I")
_HEAD_V2 = struct.Struct(">B6I")
INDEX_DIGEST_LEN = 64
_TAG_SEP = "\x1f"


class EntryDoc(NamedTuple):  # a NamedTuple: built on every read, and cheap to build
    title: str
    content: str
    source: str | None
    metadata: dict[str, Any]
    tags: tuple[str, ...]
    index_digest: bytes | None = None  # None: a plaintext row or a version 1 document


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
    if doc.index_digest is None:
        return b"".join((_HEAD.pack(DOC_V1, *map(len, parts)), *parts))
    if len(doc.index_digest) != INDEX_DIGEST_LEN:
        raise ValueError("index digest must be 64 bytes")
    return b"".join(
        (_HEAD_V2.pack(DOC_V2, *map(len, parts), INDEX_DIGEST_LEN), *parts, doc.index_digest)
    )


def decode_doc(data: bytes) -> EntryDoc:
    try:
        if data[:1] == b"\x02":
            _, n_title, n_content, n_source, n_meta, n_tags, n_index = _HEAD_V2.unpack_from(data)
            a = _HEAD_V2.size
            if n_index != INDEX_DIGEST_LEN:
                raise IntegrityError("entry document is malformed")
        else:
            version, n_title, n_content, n_source, n_meta, n_tags = _HEAD.unpack_from(data)
            if version != DOC_V1:
                raise IntegrityError("entry document has an unknown format")
            a, n_index = _HEAD.size, 0
    except struct.error:
        raise IntegrityError("entry document is malformed") from None
    b = a + n_title
    c = b + n_content
    d = c + n_source
    e = d + n_meta
    f = e + n_tags
    if f + n_index != len(data):
        raise IntegrityError("entry document is malformed")
    try:
        meta = data[d:e]
        tags = data[e:f].decode()
        return EntryDoc(
            data[a:b].decode(),
            data[b:c].decode(),
            data[c:d].decode() or None,
            json.loads(meta) if meta else {},
            tuple(tags.split(_TAG_SEP)) if tags else (),
            data[f:] if n_index else None,
        )
    except ValueError:  # UnicodeDecodeError and JSONDecodeError included
        raise IntegrityError("entry document is malformed") from None
