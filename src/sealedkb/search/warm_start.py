"""The sealed warm-start image of the memory search index (docs/SEARCH.md, "Warm
start"; format in docs/FORMATS.md, "Memory index warm-start image").

A process that built a namespace's memory index (search/memory.py) writes it to
``<home>/index/memory-<digest>.img`` (0600, atomic), sealed with AES-256-GCM under the
namespace's active content data key through the key ring, so a one-shot CLI
``search`` loads it instead of opening every sealed row, then applies the change feed
from the position the image records. File layout::

    MAGIC (8) | header length (u32 LE) | header (JSON) | sealed payload

The clear header holds what is needed before opening: the format version, the data
key id, the change-feed epoch, horizon and last change number. All are bound into the AAD
(formats/aad.py ``memory_image_aad``) with the namespace, so an edited header, an
image of another namespace or another knowledge base, or one sealed under a retired
key fails to open or is refused before opening. The payload (plaintext only in
memory) is::

    meta length (u32 LE) | meta (JSON) | arrays, each at an 8-byte aligned offset

numbers only: ``numpy.frombuffer`` of whitelisted little-endian dtypes, never
pickle, so a file written by an attacker can at most be refused. Any failure to
read, parse or check an image is a refusal: the caller rebuilds from the sealed rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sealedkb._fs import write_private
from sealedkb.crypto.keyring import KeyRing
from sealedkb.crypto.sealed import KEY_ID_LEN, key_id_of
from sealedkb.errors import IntegrityError
from sealedkb.formats.aad import memory_image_aad
from sealedkb.model import KeyPurpose
from sealedkb.store.changes import FeedPosition

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "ImageMeta",
    "LoadedImage",
    "SpaceImage",
    "WarmStart",
    "decode_payload",
    "encode_payload",
]

log = logging.getLogger("sealedkb.search.warm_start")

MAGIC = b"SKBMIDX\x00"
FORMAT_VERSION = 1
FOLDER = "index"
MAX_HEADER_BYTES = 4096
# An image larger than this is neither written nor read (10k entries take ~25 MB;
# the index itself is bounded by memory_index_max_entries).
MAX_IMAGE_BYTES = 4 << 30
ALIGN = 8
_U32 = struct.Struct("<I")

# name -> (dtype, number of dimensions); everything an image may hold
_ARRAYS: dict[str, tuple[str, int]] = {
    "ids": ("|u1", 2),  # (n, 16) entry ids
    "type_idx": ("<i4", 1),  # (n,) into meta types
    "tag_ptr": ("<i8", 1),  # (n + 1,) CSR over tag_idx
    "tag_idx": ("<i4", 1),  # into meta tags
    "created_ts": ("<f8", 1),  # (n,) creation time, Unix seconds
    "archived": ("|b1", 1),
    "fp": ("|u1", 2),  # (n, 32) SHA-256 of the normalised content (dedup)
    "doclen": ("<f4", 1),
    "vecs": ("<f4", 2),  # (n, dim) exact embeddings
    "has_vec": ("|b1", 1),
    "vocab": ("|u1", 1),  # the terms, UTF-8, NUL-separated
    "post_ptr": ("<i8", 1),  # (V + 1,) CSR over post_slot / post_tf, in vocab order
    "post_slot": ("<i4", 1),
    "post_tf": ("<i4", 1),
}


@dataclass(slots=True)
class SpaceImage:
    """One namespace's memory index as flat arrays (slots compacted to 0..n-1)."""

    ids: NDArray[np.uint8]
    type_idx: NDArray[np.int32]
    types: list[str]
    tag_ptr: NDArray[np.int64]
    tag_idx: NDArray[np.int32]
    tags: list[str]
    created_ts: NDArray[np.float64]
    archived: NDArray[np.bool_]
    fp: NDArray[np.uint8]
    doclen: NDArray[np.float32]
    vecs: NDArray[np.float32]
    has_vec: NDArray[np.bool_]
    vocab: list[str]
    post_ptr: NDArray[np.int64]
    post_slot: NDArray[np.int32]
    post_tf: NDArray[np.int32]
    total_len: int

    def __len__(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True, slots=True)
class ImageMeta:
    """What the image was built for and the change-feed position it covers."""

    model_id: str | None
    dim: int
    tokenizer: int
    written_at: float  # Unix seconds
    horizon: int  # the change-feed horizon (store/changes.py) the image is current to
    applied: tuple[int, ...]  # changes at or above the horizon already applied
    epoch: str  # FeedPosition.epoch when written
    seq: int  # FeedPosition.last_seq when written


@dataclass(frozen=True, slots=True)
class LoadedImage:
    meta: ImageMeta
    space: SpaceImage


def _pad(n: int) -> int:
    return (-n) % ALIGN


def encode_payload(
    image: SpaceImage,
    *,
    model_id: str | None,
    dim: int,
    tokenizer: int,
    written_at: float,
    applied: tuple[int, ...],
) -> bytes:
    """The payload's plaintext (sealed by :meth:`WarmStart.save`)."""
    import numpy as np

    if any("\x00" in t for t in image.vocab):
        raise ValueError("a term holds a NUL character")
    arrays: dict[str, Any] = {
        "ids": image.ids,
        "type_idx": image.type_idx,
        "tag_ptr": image.tag_ptr,
        "tag_idx": image.tag_idx,
        "created_ts": image.created_ts,
        "archived": image.archived,
        "fp": image.fp,
        "doclen": image.doclen,
        "vecs": image.vecs,
        "has_vec": image.has_vec,
        "vocab": np.frombuffer("\x00".join(image.vocab).encode(), dtype=np.uint8),
        "post_ptr": image.post_ptr,
        "post_slot": image.post_slot,
        "post_tf": image.post_tf,
    }
    layout: dict[str, dict[str, Any]] = {}
    blobs: list[bytes] = []
    offset = 0
    for name, (dtype, ndim) in _ARRAYS.items():
        arr = np.ascontiguousarray(arrays[name], dtype=np.dtype(dtype))
        if arr.ndim != ndim:
            raise ValueError(f"image array {name} has {arr.ndim} dimensions, not {ndim}")
        raw = arr.tobytes()
        layout[name] = {"dtype": dtype, "shape": list(arr.shape), "offset": offset}
        blobs.append(raw + bytes(_pad(len(raw))))
        offset += len(raw) + _pad(len(raw))
    meta = {
        "model_id": model_id,
        "dim": dim,
        "tokenizer": tokenizer,
        "written_at": written_at,
        "applied": list(applied),
        "total_len": image.total_len,
        "entries": len(image),
        "types": image.types,
        "tags": image.tags,
        "arrays": layout,
    }
    head = json.dumps(meta, separators=(",", ":")).encode()
    lead = _U32.pack(len(head)) + head
    return lead + bytes(_pad(len(lead))) + b"".join(blobs)


def decode_payload(payload: bytes) -> tuple[dict[str, Any], SpaceImage]:
    """(meta, arrays) of a payload; ValueError when anything is out of shape."""
    import numpy as np

    if len(payload) < _U32.size:
        raise ValueError("payload too short")
    (n_meta,) = _U32.unpack_from(payload)
    lead = _U32.size + n_meta
    if n_meta > len(payload) - _U32.size:
        raise ValueError("payload meta out of bounds")
    meta = json.loads(payload[_U32.size : lead])
    if not isinstance(meta, dict):
        raise ValueError("payload meta is not an object")
    base = lead + _pad(lead)
    view = memoryview(payload)
    layout = meta["arrays"]
    if not isinstance(layout, dict) or set(layout) != set(_ARRAYS):
        raise ValueError("payload arrays do not match the format")
    out: dict[str, Any] = {}
    for name, (dtype, ndim) in _ARRAYS.items():
        spec = layout[name]
        if spec.get("dtype") != dtype:
            raise ValueError(f"image array {name} has an unexpected dtype")
        shape = tuple(int(d) for d in spec["shape"])
        if len(shape) != ndim or any(d < 0 for d in shape):
            raise ValueError(f"image array {name} has an unexpected shape")
        dt = np.dtype(dtype)
        count = 1
        for d in shape:
            count *= d
        start = base + int(spec["offset"])
        end = start + count * dt.itemsize
        if int(spec["offset"]) < 0 or end > len(payload):
            raise ValueError(f"image array {name} out of bounds")
        # a writable copy: the index updates these in place
        out[name] = np.frombuffer(view[start:end], dtype=dt).reshape(shape).copy()
    n = int(meta["entries"])
    vocab_raw = bytes(out["vocab"]).decode()
    vocab = vocab_raw.split("\x00") if vocab_raw else []
    types = [str(t) for t in meta["types"]]
    tags = [str(t) for t in meta["tags"]]
    img = SpaceImage(
        ids=out["ids"],
        type_idx=out["type_idx"],
        types=types,
        tag_ptr=out["tag_ptr"],
        tag_idx=out["tag_idx"],
        tags=tags,
        created_ts=out["created_ts"],
        archived=out["archived"],
        fp=out["fp"],
        doclen=out["doclen"],
        vecs=out["vecs"],
        has_vec=out["has_vec"],
        vocab=vocab,
        post_ptr=out["post_ptr"],
        post_slot=out["post_slot"],
        post_tf=out["post_tf"],
        total_len=int(meta["total_len"]),
    )
    _check_shapes(img, n, int(meta["dim"]))
    return meta, img


def _check_shapes(img: SpaceImage, n: int, dim: int) -> None:
    """Every index an image holds points inside it (an authentic image always does;
    checked so that no bug can turn a bad image into a wrong answer)."""
    per_entry = (img.type_idx, img.created_ts, img.archived, img.doclen, img.has_vec)
    if img.ids.shape != (n, 16) or img.fp.shape != (n, 32) or img.vecs.shape != (n, dim):
        raise ValueError("image arrays do not match its entry count")
    if any(a.shape != (n,) for a in per_entry):
        raise ValueError("image arrays do not match its entry count")
    if img.tag_ptr.shape != (n + 1,) or img.post_ptr.shape != (len(img.vocab) + 1,):
        raise ValueError("image offsets do not match")
    for ptr, data in ((img.tag_ptr, img.tag_idx), (img.post_ptr, img.post_slot)):
        if ptr[0] != 0 or ptr[-1] != len(data) or (len(ptr) > 1 and (ptr[1:] < ptr[:-1]).any()):
            raise ValueError("image offsets are not monotonic")
    if img.post_tf.shape != img.post_slot.shape:
        raise ValueError("image postings do not match")
    if len(img.post_slot) and (img.post_slot.min() < 0 or img.post_slot.max() >= n):
        raise ValueError("image postings point outside it")
    if len(img.tag_idx) and (img.tag_idx.min() < 0 or img.tag_idx.max() >= len(img.tags)):
        raise ValueError("image tags point outside it")
    if n and (img.type_idx.min() < 0 or img.type_idx.max() >= len(img.types)):
        raise ValueError("image types point outside it")
    if len(set(img.vocab)) != len(img.vocab):
        raise ValueError("image vocabulary has duplicates")


class WarmStart:
    """Writes and reads the sealed images of one knowledge base's memory index.

    ``refused`` counts images that were present but not used (damaged, forged,
    moved, stale or of another model); ``loaded`` and ``written`` the others."""

    def __init__(self, folder: Path, keyring: KeyRing, *, max_bytes: int = MAX_IMAGE_BYTES) -> None:
        self.folder = folder
        self.keyring = keyring
        self.max_bytes = max_bytes
        self.loaded = 0
        self.written = 0
        self.refused = 0

    def path(self, namespace: str) -> Path:
        # the file name does not spell the namespace
        digest = hashlib.sha256(b"sealedkb/memory-image|" + namespace.encode()).hexdigest()[:24]
        return self.folder / f"memory-{digest}.img"

    def exists(self, namespace: str) -> bool:
        return self.path(namespace).is_file()

    def save(
        self,
        namespace: str,
        image: SpaceImage,
        *,
        model_id: str | None,
        dim: int,
        tokenizer: int,
        horizon: int,
        applied: tuple[int, ...],
        feed: FeedPosition,
    ) -> bool:
        """Seal and write the image (atomic, 0600); False (logged) if it cannot be."""
        path = self.path(namespace)
        try:
            payload = encode_payload(
                image,
                model_id=model_id,
                dim=dim,
                tokenizer=tokenizer,
                written_at=time.time(),
                applied=applied,
            )
            if len(payload) > self.max_bytes:
                log.info(
                    "memory index image of %s not written: over %d bytes", path.name, self.max_bytes
                )
                return False
            sealer = self.keyring.sealer(namespace, KeyPurpose.CONTENT)
            key_id = uuid.UUID(bytes=sealer.key_id)
            epoch, seq = feed.epoch, feed.last_seq
            aad = memory_image_aad(namespace, key_id, FORMAT_VERSION, epoch, f"{horizon}.{seq}")
            header = json.dumps(
                {
                    "v": FORMAT_VERSION,
                    "key_id": str(key_id),
                    "epoch": epoch,
                    "horizon": horizon,
                    "seq": seq,
                },
                separators=(",", ":"),
            ).encode()
            sealed = sealer.seal(payload, aad)
            del payload
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_private(path, MAGIC + _U32.pack(len(header)) + header + sealed)
        except (OSError, ValueError, IntegrityError) as exc:
            log.warning("memory index image %s not written: %s", path.name, type(exc).__name__)
            return False
        self.written += 1
        return True

    def _refuse(self, path: Path, why: str) -> None:
        self.refused += 1
        log.warning(
            "memory index image %s refused (%s): rebuilding from the sealed rows", path.name, why
        )

    def load(
        self,
        namespace: str,
        *,
        feed: FeedPosition,
        horizon_now: int,
        model_id: str | None,
        dim: int,
        tokenizer: int,
        max_age: float,
        max_entries: int,
    ) -> LoadedImage | None:
        """The namespace's image if there is one that can be trusted for this knowledge
        base as it is now; None (counted in ``refused`` when a file was there) otherwise."""
        path = self.path(namespace)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError:
            self._refuse(path, "unreadable")
            return None
        try:
            with os.fdopen(fd, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > self.max_bytes + MAX_HEADER_BYTES:
                    self._refuse(path, "too large")
                    return None
                data = f.read()
        except OSError:
            self._refuse(path, "unreadable")
            return None
        why = "malformed"
        try:
            if data[: len(MAGIC)] != MAGIC:
                raise ValueError("magic")
            (n_head,) = _U32.unpack_from(data, len(MAGIC))
            if n_head > MAX_HEADER_BYTES:
                raise ValueError("header")
            start = len(MAGIC) + _U32.size
            header = json.loads(data[start : start + n_head])
            sealed = data[start + n_head :]
            del data
            if not isinstance(header, dict) or header.get("v") != FORMAT_VERSION:
                why = "format version"
                raise ValueError(why)
            key_id = uuid.UUID(str(header["key_id"]))
            horizon = int(header["horizon"])
            seq = int(header["seq"])
            epoch = feed.epoch
            if header.get("epoch") != epoch:
                why = "another database or a restore"
                raise ValueError(why)
            if horizon > horizon_now or seq > feed.last_seq:
                why = "change-feed position ahead of the database"
                raise ValueError(why)
            if not feed.covers(seq):
                why = "the change feed was pruned past it"
                raise ValueError(why)
            active = self.keyring.store.get_active_data_key(namespace, KeyPurpose.CONTENT)
            if active is None or active.id != key_id:
                why = "sealed under a key that is no longer the active one"
                raise ValueError(why)
            if len(sealed) <= 1 + KEY_ID_LEN or key_id_of(sealed) != key_id.bytes:
                why = "malformed"
                raise ValueError(why)
            why = "failed to open"
            payload = self.keyring.open(
                sealed,
                memory_image_aad(namespace, key_id, FORMAT_VERSION, epoch, f"{horizon}.{seq}"),
            )
            del sealed
            why = "malformed"
            meta, space = decode_payload(payload)
            del payload
            if (meta.get("model_id"), int(meta["dim"]), int(meta["tokenizer"])) != (
                model_id,
                dim,
                tokenizer,
            ):
                why = "another embedding model or tokenizer"
                raise ValueError(why)
            written_at = float(meta["written_at"])
            if not 0 <= time.time() - written_at <= max_age:
                why = "older than the change feed is trusted to cover"
                raise ValueError(why)
            if len(space) > max_entries:
                why = "more entries than memory_index_max_entries"
                raise ValueError(why)
            applied = tuple(int(s) for s in meta["applied"])
        except (ValueError, KeyError, TypeError, struct.error, IntegrityError, UnicodeError):
            self._refuse(path, why)
            return None
        self.loaded += 1
        return LoadedImage(
            ImageMeta(model_id, dim, tokenizer, written_at, horizon, applied, epoch, seq), space
        )
