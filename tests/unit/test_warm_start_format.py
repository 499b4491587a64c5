"""The payload of the memory index's warm-start image (search/warm_start.py): a space
survives the round trip with the same answers and keeps working after changes, and a
payload out of shape is refused with ValueError (never unpickled, never trusted)."""

from __future__ import annotations

import json
import struct
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from sealedkb.formats.aad import memory_image_aad
from sealedkb.formats.entry_doc import EntryDoc
from sealedkb.search import warm_start
from sealedkb.search.memory import _Space
from sealedkb.store.changes import FeedPosition, IndexRow

DIM = 8
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def row(i: int, eid: uuid.UUID | None = None) -> IndexRow:
    return IndexRow(
        id=eid or uuid.UUID(int=i + 1),
        namespace="default",
        entry_type="runbook" if i % 2 else "note",
        created_at=T0 + timedelta(hours=i),
        archived=i == 3,
        deleted=False,
        doc_sealed=b"",
        embedding_sealed=b"",
        embed_model="m",
    )


def vec(i: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    v = np.random.default_rng(i).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def space_of(n: int) -> _Space:
    s = _Space(DIM)
    for i in range(n):
        doc = EntryDoc(
            f"title {i} vacuum",
            f"body {i}: rotating keys {'often' if i % 3 else 'rarely'} and checkpoints",
            None,
            {},
            (f"t{i % 3}", "all"),
        )
        s.put(row(i), doc, vec(i) if i != 5 else None, 2)
    return s


def roundtrip(s: _Space) -> _Space:
    payload = warm_start.encode_payload(
        s.to_image(), model_id="m", dim=DIM, tokenizer=2, written_at=1.0, applied=(7, 9)
    )
    meta, img = warm_start.decode_payload(payload)
    assert meta["applied"] == [7, 9] and meta["model_id"] == "m"
    return _Space.from_image(img, DIM)


def answers(s: _Space) -> tuple[Any, ...]:
    m = s.mask(None, [], None)
    return (
        len(s),
        s.keyword(["rotat", "often"], m, 20),
        s.keyword(["vacuum"], s.mask("note", ["t1"], None), 20),
        s.vector(vec(2), m, 5),
        s.vector(vec(4), s.mask(None, [], T0 + timedelta(hours=6)), 5),
        sorted((str(k), sorted(map(str, v))) for k, v in s.by_fp.items()),
        sorted((str(e), sorted(s.tags[slot]), s.archived[slot]) for e, slot in s.slot_of.items()),
        s.total_len,
    )


def test_round_trip_gives_the_same_answers() -> None:
    s = space_of(12)
    s.remove(uuid.UUID(int=3))  # a free slot: compacted away in the image
    loaded = roundtrip(s)
    assert answers(loaded) == answers(s)
    assert len(loaded.postings) + len(loaded._base) == len(s.postings)


@pytest.mark.parametrize("change", ["remove", "update", "add"])
def test_a_loaded_space_changes_as_a_built_one(change: str) -> None:
    built = space_of(10)
    loaded = roundtrip(space_of(10))
    for s in (built, loaded):
        if change == "remove":
            s.remove(uuid.UUID(int=5))
        elif change == "update":
            s.put(row(4), EntryDoc("new", "zebra rotating", None, {}, ("z",)), vec(40), 2)
        else:
            s.put(row(20), EntryDoc("added", "often zebra", None, {}, ()), vec(20), 2)
    assert answers(loaded) == answers(built)
    # and again through an image
    assert answers(roundtrip(loaded)) == answers(built)


def test_empty_space_round_trips() -> None:
    assert len(roundtrip(_Space(DIM))) == 0


def _split(payload: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack_from("<I", payload)
    return json.loads(payload[4 : 4 + n]), payload[4 + n :]


def _join(meta: dict[str, Any], rest: bytes, width: int) -> bytes:
    head = json.dumps(meta, separators=(",", ":")).encode()
    # the arrays stay where they were: the edited meta padded to the old length
    head += b" " * max(width - len(head), 0)
    return struct.pack("<I", len(head)) + head + rest


def payload() -> bytes:
    return warm_start.encode_payload(
        space_of(6).to_image(), model_id="m", dim=DIM, tokenizer=2, written_at=1.0, applied=()
    )


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["arrays"]["vecs"].update(dtype="|O"),  # objects: never
        lambda m: m["arrays"]["vecs"].update(shape=[6, DIM + 1]),
        lambda m: m["arrays"]["post_slot"].update(offset=1 << 40),
        lambda m: m["arrays"]["ids"].update(shape=[5, 16]),
        lambda m: m["arrays"].pop("fp"),
        lambda m: m.update(entries=7),
        lambda m: m.update(types=[]),
        lambda m: m.update(tags=[]),
    ],
)
def test_payload_out_of_shape_is_refused(edit: Any) -> None:
    data = payload()
    meta, rest = _split(data)
    assert warm_start.decode_payload(_join(meta, rest, struct.unpack_from("<I", data)[0]))
    edit(meta)
    with pytest.raises((ValueError, KeyError, TypeError)):
        warm_start.decode_payload(_join(meta, rest, struct.unpack_from("<I", data)[0]))


def test_postings_pointing_outside_are_refused() -> None:
    good = payload()
    meta, _ = _split(good)
    _, img = warm_start.decode_payload(good)
    img.post_slot[0] = 99
    bad = warm_start.encode_payload(
        img, model_id="m", dim=DIM, tokenizer=2, written_at=1.0, applied=()
    )
    with pytest.raises(ValueError, match="outside"):
        warm_start.decode_payload(bad)
    assert meta["entries"] == 6


@pytest.mark.parametrize("cut", [0, 3, 50, -1])
def test_truncated_payload_is_refused(cut: int) -> None:
    data = payload()
    with pytest.raises((ValueError, KeyError)):
        warm_start.decode_payload(data[:cut])


def test_aad_binds_every_field() -> None:
    kid = uuid.UUID(int=1)
    base = memory_image_aad("ns", kid, 1, "1.2.3", "10.4")
    others = {
        memory_image_aad("nt", kid, 1, "1.2.3", "10.4"),
        memory_image_aad("ns", uuid.UUID(int=2), 1, "1.2.3", "10.4"),
        memory_image_aad("ns", kid, 2, "1.2.3", "10.4"),
        memory_image_aad("ns", kid, 1, "1.2.4", "10.4"),
        memory_image_aad("ns", kid, 1, "1.2.3", "10.5"),
    }
    assert base not in others and len(others) == 5
    with pytest.raises(ValueError):
        memory_image_aad("a|b", kid, 1, "1.2.3", "10.4")


@pytest.mark.parametrize(
    ("first", "last", "seq", "covered"),
    [
        (None, 0, 0, True),  # no change ever
        (None, 5, 5, True),  # all pruned, none since
        (None, 6, 5, False),  # pruned, one since: lost
        (6, 9, 5, True),  # the next one is still there
        (7, 9, 5, False),  # pruned past it
        (1, 9, 5, True),
    ],
)
def test_feed_position_covers(first: int | None, last: int, seq: int, covered: bool) -> None:
    assert FeedPosition("e", first, last).covers(seq) is covered
