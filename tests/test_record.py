"""Records: declared like dataclasses, frozen, compared by value."""

from __future__ import annotations

from typing import Optional, Tuple

import pytest

from dashcam_helpers.record import FrozenError, Record, asdict_deep, fields


class Point(Record):
    x: int
    y: int
    label: Optional[str] = None


class Tagged(Point):
    tags: Tuple[str, ...] = ()


def test_fields_come_from_annotations_in_order_and_subclasses_append():
    assert fields(Point) == ("x", "y", "label")
    assert fields(Tagged) == ("x", "y", "label", "tags")


def test_values_by_position_or_name_with_defaults():
    assert Point(1, 2) == Point(x=1, y=2, label=None)
    assert Tagged(1, 2, tags=("a",)).tags == ("a",)


def test_missing_unknown_and_doubled_fields_are_refused():
    with pytest.raises(TypeError, match="missing field y"):
        Point(1)
    with pytest.raises(TypeError, match="unknown field"):
        Point(1, 2, z=3)
    with pytest.raises(TypeError, match="got x twice"):
        Point(1, 2, x=3)
    with pytest.raises(TypeError, match="takes 3 values"):
        Point(1, 2, "a", "b")


def test_records_are_frozen():
    p = Point(1, 2)
    with pytest.raises(FrozenError):
        p.x = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del p.y


def test_equality_hash_repr_replace():
    p = Point(1, 2)
    assert p == Point(1, 2) and p != Point(1, 3) and p != Tagged(1, 2)
    assert len({p, Point(1, 2)}) == 1
    assert repr(p) == "Point(x=1, y=2, label=None)"
    assert p.replace(label="a") == Point(1, 2, "a") and p.label is None


def test_asdict_deep_turns_nested_records_into_plain_data():
    assert asdict_deep({"p": Tagged(1, 2, tags=("a",))}) == {"p": {"x": 1, "y": 2, "label": None, "tags": ["a"]}}
