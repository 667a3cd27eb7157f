"""The global data object ``g``, shared by the tasks of one workflow run.

>>> from caliber import context
>>> context.g.mesh_size = 0.2
>>> context.g.get("mesh_size")
0.2

It is emptied at the start of every run, and what it holds at the end is kept in the Results.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

_MISSING: Any = object()


class GlobalData:
    """A namespace with attribute access and the dict verbs ``get``, ``pop``, ``setdefault``,
    ``clear``, ``in`` and ``dict(g)``."""

    __slots__ = ("_data",)

    def __init__(self) -> None:
        object.__setattr__(self, "_data", {})

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(f"g has no attribute {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self._data[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self._data[name]
        except KeyError:
            raise AttributeError(f"g has no attribute {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def keys(self) -> Any:
        return self._data.keys()

    def __getitem__(self, name: str) -> Any:
        return self._data[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self._data.get(name, default)

    def pop(self, name: str, default: Any = _MISSING) -> Any:
        if default is _MISSING:
            return self._data.pop(name)
        return self._data.pop(name, default)

    def setdefault(self, name: str, default: Any = None) -> Any:
        return self._data.setdefault(name, default)

    def clear(self) -> None:
        self._data.clear()

    def __repr__(self) -> str:
        return f"g({self._data!r})"


g = GlobalData()
