"""Return values that are hard to store: every way of converting them fails somewhere.
Shared by tests/test_convert.py and the property tests in tests/test_fuzz.py."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar


class Raises:
    """Every way of looking at it raises (hashable, so it can be a key or in a set too)."""

    def __repr__(self) -> str:
        raise RuntimeError("repr")

    def __str__(self) -> str:
        raise RuntimeError("str")

    def __iter__(self) -> Any:
        raise RuntimeError("iter")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq")

    __hash__ = object.__hash__


class ReprNotText:
    def __repr__(self) -> Any:
        return b"bytes"


class ReprSurrogate:
    def __repr__(self) -> str:
        return "<\ud800 \udce9>"


class FakeModel:
    """Looks like a pydantic model whose model_dump raises."""

    model_fields: ClassVar[dict[str, Any]] = {}

    def model_dump(self, **_: Any) -> Any:
        raise RuntimeError("model_dump")


class ItemsRaise(dict[Any, Any]):
    def items(self) -> Any:
        raise RuntimeError("items")


@dataclasses.dataclass
class Unset:
    x: int = 1
    later: Any = dataclasses.field(init=False)


@dataclasses.dataclass
class PropertyRaises:
    x: int = 1

    @property
    def y(self) -> int:
        raise RuntimeError("property")
