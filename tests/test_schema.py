"""The schema rejects rows that break its rules, naming the rule and the row."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from fercurate.schema import ROW_DEFAULTS, ROW_SCHEMA, SchemaError, canonical_label, image_relpath, validate_table

SHA1 = "0123456789abcdef0123456789abcdef01234567"


def row(**changes: Any) -> dict[str, Any]:
    base = {**ROW_DEFAULTS, "id": "fer2013/Training/00000", "source": "fer2013", "origin": "fer2013.csv:2",
            "filepath": image_relpath(SHA1), "width": 48, "height": 48, "channels": 1, "sha1": SHA1,
            "label": "anger", "native_label": "0"}
    return {**base, **changes}


def table(*rows: dict[str, Any]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=ROW_SCHEMA)


def test_a_good_row_passes() -> None:
    validate_table(table(row(), row(id="b", gender="female", gender_source="dataset-metadata")))


@pytest.mark.parametrize(("changes", "rule"), [
    ({"label": "happy"}, "label is one of"),
    ({"source": "kaggle"}, "source is"),
    ({"sha1": "XYZ"}, "sha1 is 40"),
    ({"filepath": "images/zz/other.png"}, "filepath is"),
    ({"channels": 4}, "channels is 1"),
    ({"width": 0}, "width and height"),
    ({"gender": "female"}, "gender is 'unknown' exactly when"),
    ({"ethnicity_source": "guess"}, "ethnicity_source is"),
    ({"is_synthetic": True}, "names its generator"),
    ({"is_synthetic": True, "generator": "gan", "split": "test"}, "never in a test split"),
    ({"frame_index": 5, "frame_count": 3}, "frame_index is at most"),
])
def test_broken_rules_are_named(changes: dict[str, Any], rule: str) -> None:
    with pytest.raises(SchemaError, match=rule):
        validate_table(table(row(), row(id="broken", **changes)))


def test_required_and_unique() -> None:
    with pytest.raises(SchemaError, match="ids must be unique"):
        validate_table(table(row(), row()))
    with pytest.raises(SchemaError, match="native_label is required"):
        validate_table(table(row(native_label=None)))


def test_canonical_label() -> None:
    assert canonical_label("Happy ") == "happiness"
    assert canonical_label("3", {"3": "happiness"}) == "happiness"
    assert canonical_label("bored") is None
