"""Return values that JSON cannot carry: converted where obvious, else stored as repr."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pydantic
import pytest

import caliber
from caliber.results.convert import to_json
from caliber.results.model import Results, RunStatus
from caliber.workflow.runner import run_workflow
from tests.odd_values import ItemsRaise, Raises, ReprNotText, Unset


@dataclasses.dataclass
class Point:
    x: float
    y: float
    when: dt.date


class Mesh(pydantic.BaseModel):
    size: float
    path: Path


class Colour(enum.Enum):
    RED = "red"


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque thing>"


class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@pytest.mark.parametrize(
    ("value", "expected", "note"),
    [
        (np.arange(3), [0, 1, 2], "numpy.ndarray stored as a list"),
        (np.array([[1.5], [2.5]]), [[1.5], [2.5]], "numpy.ndarray stored as a list"),
        (np.float64(0.25), 0.25, None),  # a float subclass: plain JSON already
        (np.int32(7), 7, "numpy.int32 stored as a number"),
        (dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC), "2024-05-01T12:30:00+00:00",
         "date/time stored as ISO 8601 text"),
        (dt.date(2024, 5, 1), "2024-05-01", "date/time stored as ISO 8601 text"),
        (dt.timedelta(minutes=2), 120.0, "timedelta stored as seconds"),
        (PurePosixPath("/tmp/x.txt"), "/tmp/x.txt", "path stored as text"),
        ({3, 1, 2}, [1, 2, 3], "set stored as a list"),
        (frozenset({"b", "a"}), ["a", "b"], "set stored as a list"),
        (Point(1.0, 2.0, dt.date(2024, 1, 2)), {"x": 1.0, "y": 2.0, "when": "2024-01-02"},
         "dataclass Point stored as a dict; date/time stored as ISO 8601 text"),
        (Mesh(size=0.5, path=Path("m.msh")), {"size": 0.5, "path": "m.msh"},
         "pydantic model Mesh stored as a dict"),
        (Colour.RED, "red", "enum stored as its value"),
        (b"\x00\x01", "AAE=", "bytes stored as base64 text"),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001", "UUID stored as text"),
        (decimal.Decimal("1.10"), "1.10", "Decimal stored as text"),
        (float("inf"), "inf", "non-finite float stored as a string"),
        ({1: "a"}, {"1": "a"}, "dict keys converted to strings"),
        ((1, "a"), [1, "a"], None),
        ({"plain": [1, 2.5, None, True]}, {"plain": [1, 2.5, None, True]}, None),
    ],
)
def test_conversions(value: Any, expected: Any, note: str | None) -> None:
    out, got_note = to_json(value)
    assert out == expected
    assert got_note == note
    json.dumps(out, allow_nan=False)


def test_objects_are_stored_as_their_repr_and_recorded() -> None:
    out, note = to_json({"thing": Opaque(), "n": 1})
    assert out == {"thing": "<Opaque thing>", "n": 1}
    assert note == "tests.test_convert.Opaque stored as its string representation"


def test_a_broken_repr_never_crashes() -> None:
    out, note = to_json(BrokenRepr())
    assert "repr failed" in out and note is not None


def test_self_containing_values_are_cut() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    out, note = to_json(loop)
    assert out[0] == 1 and isinstance(out[1], str) and note and "contains itself" in note


def returns_odd_things() -> dict[str, Any]:
    return {"array": np.ones(2), "when": dt.date(2024, 1, 1), "obj": Opaque()}


def returns_opaque() -> Opaque:
    caliber.context.g.obj = Opaque()
    caliber.context.g.arr = np.zeros(1)
    return Opaque()


def test_runner_converts_returns_and_g_and_records_it(tmp_path: Path) -> None:
    a = caliber.Task(returns_odd_things, name="Odd")
    b = caliber.Task(returns_opaque, name="Opaque")
    w = caliber.Workflow(caliber.Process([a, b]), "conv", base_dir=tmp_path)
    results = run_workflow(w, work_dir=tmp_path)
    assert results.ok
    assert results["Odd"] == {"array": [1.0, 1.0], "when": "2024-01-01", "obj": "<Opaque thing>"}
    note = results.tasks[0].conversion
    assert note is not None and "numpy.ndarray stored as a list" in note
    assert "tests.test_convert.Opaque stored as its string representation" in note
    assert results["Opaque"] == "<Opaque thing>"
    assert results.g == {"obj": "<Opaque thing>", "arr": [0.0]}
    assert set(results.g_conversions) == {"obj", "arr"}
    # and the whole Results survives JSON
    again = Results.model_validate_json(results.model_dump_json(by_alias=True))
    assert again == results
    assert again.to_json_dict()["tasks"][0]["conversion"] == note


# --- conversion is total: whatever a task returns, it is stored and the rest is kept ----


class Key:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        return "<Key>"


def stored(value: Any) -> tuple[Any, str | None]:
    """``to_json`` plus the check every stored value passes: strict UTF-8 JSON that reads back."""
    out, note = to_json(value)
    text = json.dumps(out, allow_nan=False, ensure_ascii=False)
    assert json.loads(text.encode("utf-8")) == out
    return out, note


def test_huge_integers_are_stored_as_decimal_text() -> None:
    out, note = stored({"big": 10**5000, "small": 10**100, "key": {10**5000: 1}})
    assert out["big"] == "1" + "0" * 5000 and out["small"] == 10**100
    assert list(out["key"]) == ["1" + "0" * 5000]
    assert note and "integer too long for JSON stored as decimal text" in note


def test_lone_surrogates_are_escaped_in_strings_and_keys() -> None:
    out, note = stored({"caf\udce9": ["caf\udce9.txt", "x\ud800y"], "ok": "é"})
    assert out == {"caf\\xe9": ["caf\\xe9.txt", "x\\ud800y"], "ok": "é"}
    assert note and "not valid Unicode" in note


def test_an_unset_dataclass_field_is_left_out_and_said() -> None:
    out, note = stored([Unset(), 2])
    assert out == [{"x": 1}, 2]
    assert note and "field Unset.later left out: reading it raised AttributeError" in note


@pytest.mark.parametrize("odd", [Raises(), ItemsRaise(a=1), ReprNotText(), {Key(): 1}])
def test_objects_whose_conversion_raises_are_stored_as_a_string(odd: Any) -> None:
    out, note = stored({"odd": odd, "kept": [1, "two"]})
    assert out["kept"] == [1, "two"]
    assert isinstance(out["odd"], str) or list(out["odd"].values()) == [1]
    assert note


def test_deep_and_cyclic_values_are_cut_where_needed() -> None:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    cyclic: dict[str, Any] = {"n": 1}
    cyclic["me"] = cyclic
    point = Unset()
    point.later = point
    out, note = stored({"deep": deep, "cyclic": cyclic, "point": point, "nan": float("nan")})
    assert isinstance(out["cyclic"]["me"], str) and out["cyclic"]["n"] == 1
    assert isinstance(out["point"]["later"], str)
    assert out["nan"] == "nan"
    assert note and "contains itself" in note and "nested more than" in note
    # whatever is stored survives the Results' own JSON, and reading it back
    results = Results(workflow="w", status=RunStatus.COMPLETED, started_at=dt.datetime.now(dt.UTC),
                      finished_at=dt.datetime.now(dt.UTC), g={"v": out})
    assert Results.model_validate_json(results.model_dump_json()).g == {"v": out}


def test_equal_keys_keep_both_values() -> None:
    out, note = stored({1: "int", "1": "str"})
    assert sorted(out.values()) == ["int", "str"] and note
