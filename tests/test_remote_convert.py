"""Speckle objects as return values: stored as their Speckle JSON, sent back as themselves."""

from __future__ import annotations

import pytest

pytest.importorskip("specklepy")

from specklepy.objects.base import Base
from specklepy.objects.geometry import Line, Point

from caliber.queue.speckle.adapter import member_name, object_to_dict, to_speckle
from caliber.results.convert import to_json

pytestmark = pytest.mark.speckle


def test_a_speckle_object_is_stored_as_its_speckle_json() -> None:
    point = Point(x=1, y=2, z=3, units="m")
    value, note = to_json({"corner": point, "more": [point]})
    assert value["corner"] == value["more"][0] == object_to_dict(point)
    assert value["corner"]["speckle_type"] == "Objects.Geometry.Point"
    assert (value["corner"]["x"], value["corner"]["units"]) == (1.0, "m")
    assert note == "Speckle object Objects.Geometry.Point stored as its Speckle JSON"


def test_dynamic_members_survive() -> None:
    obj = Base()
    obj["name"] = "beam"
    obj["line"] = Line(start=Point(x=0, y=0, z=0, units="m"),
                       end=Point(x=0, y=0, z=4, units="m"), units="m")
    value, _ = to_json(obj)
    assert value["name"] == "beam"
    assert value["line"]["end"]["z"] == 4.0


def test_back_to_speckle_objects() -> None:
    line = Line(start=Point(x=0, y=0, z=0, units="m"), end=Point(x=1, y=1, z=1, units="m"),
                units="m")
    value, _ = to_json([line, {"id": 1, "a.b": None, "_x": 2, "@y": 3}, 4])
    back = to_speckle(value)
    assert isinstance(back[0], Line) and back[0].end.z == 1.0
    assert isinstance(back[1], Base)
    assert {k: back[1][k] for k in ("id_", "a_b", "x_", "y_")} == {
        "id_": 1, "a_b": None, "x_": 2, "y_": 3}
    assert back[2] == 4


def test_a_dict_that_only_looks_like_a_speckle_object() -> None:
    back = to_speckle({"speckle_type": "Nobody.Knows", "x": 1})
    assert isinstance(back, Base)
    assert back["x"] == 1


@pytest.mark.parametrize(("key", "name"), [
    ("plain", "plain"), ("a/b.c", "a_b_c"), ("", "key_"), ("__", "key_"),
    ("speckle_type", "speckle_type_"), ("@detach", "detach_"),
])
def test_member_names(key: str, name: str) -> None:
    assert member_name(key) == name
