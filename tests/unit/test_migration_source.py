"""migration_source.foreign_entry: a source row validated like any add, errors naming
the row's key and the field, never a value."""

from __future__ import annotations

import pytest

from sealedkb.errors import ValidationError
from sealedkb.migrate.source import ForeignMapping, foreign_entry
from sealedkb.model import EntryType

MAPPING = ForeignMapping(
    schema="public",
    table="notes",
    columns={
        "id": "id",
        "content": "body",
        "title": "heading",
        "entry_type": "kind",
        "tags": "labels",
        "metadata": "extra",
    },
    key_type="integer",
    vector_dim=None,
)


def test_a_good_row_is_validated_and_normalised() -> None:
    e = foreign_entry(
        MAPPING,
        (7, "Pool in session mode.", None, None, ["DB", "db"], '{"a": 1}'),
        default_namespace="team",
        default_type=EntryType.DOC,
    )
    assert (e.key, e.namespace, e.entry_type) == (7, "team", "doc")
    assert e.title == "Pool in session mode." and e.tags == ("db",)
    assert e.metadata == {"a": 1}


@pytest.mark.parametrize(
    ("row", "field", "says"),
    [
        ((8, "   ", None, None, None, None), "content", "content must not be empty"),
        ((9, "SECRET text", None, "memo", None, None), "entry_type", "unknown entry type"),
        ((10, "SECRET text", None, None, None, "SECRET json"), "metadata", "not a JSON object"),
        ((11, "SECRET text", None, None, None, "[1, 2]"), "metadata", "metadata"),
    ],
)
def test_a_bad_row_names_its_key_and_field_never_a_value(
    row: tuple[object, ...], field: str, says: str
) -> None:
    with pytest.raises(ValidationError) as info:
        foreign_entry(MAPPING, row)
    assert info.value.field == field
    assert info.value.message.startswith(f"source row {row[0]}: ") and says in info.value.message
    assert "SECRET" not in info.value.message and "memo" not in info.value.message
