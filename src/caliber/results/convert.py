"""Turning task return values into JSON.

Plain JSON values are kept as they are. Values with one obvious JSON form are converted
(numpy arrays and scalars, datetimes, paths, sets, dataclasses, pydantic models, pandas frames
as records, enums, bytes as base64, Speckle objects as their Speckle JSON with
``speckle_type``); anything else is stored as its string representation. The
caller is told what was done, so the Results can record it.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import math
import uuid
from pathlib import PurePath
from typing import Any

MAX_DEPTH = 200


class _Converter:
    def __init__(self) -> None:
        self.notes: list[str] = []
        self._active: set[int] = set()

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def as_repr(self, value: Any, why: str = "") -> str:
        self.note(f"{type(value).__module__}.{type(value).__qualname__} stored as its string "
                  f"representation{why}")
        try:
            return repr(value)
        except Exception as exc:  # a broken __repr__ must not lose the run
            return f"<{type(value).__qualname__} object (repr failed: {exc!r})>"

    def convert(self, value: Any, depth: int = 0) -> Any:
        kind = type(value)
        if value is None or kind in (bool, int, str):
            return value
        if kind is float:
            if math.isfinite(value):
                return value
            self.note("non-finite float stored as a string")
            return repr(value)
        if depth > MAX_DEPTH:
            return self.as_repr(value, " (nested too deeply)")
        if kind in (list, tuple, dict, set, frozenset):
            if id(value) in self._active:
                return self.as_repr(value, " (it contains itself)")
            self._active.add(id(value))
            try:
                return self._container(value, depth)
            finally:
                self._active.discard(id(value))
        return self._special(value, depth)

    def _container(self, value: Any, depth: int) -> Any:
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    self.note("dict keys converted to strings")
                    key = str(key)
                out[key] = self.convert(item, depth + 1)
            return out
        if isinstance(value, set | frozenset):
            self.note("set stored as a list")
            items = [self.convert(v, depth + 1) for v in value]
            try:
                return sorted(items)
            except TypeError:
                return items
        return [self.convert(v, depth + 1) for v in value]

    def _special(self, value: Any, depth: int) -> Any:
        kind = type(value)
        module = kind.__module__.split(".")[0]
        if isinstance(value, enum.Enum):
            self.note("enum stored as its value")
            return self.convert(value.value, depth + 1)
        if isinstance(value, str):  # subclasses of the plain types
            return str.__str__(value)
        if isinstance(value, int):
            return int.__int__(value)
        if isinstance(value, float):
            return self.convert(float(value), depth)
        if isinstance(value, dt.datetime | dt.date | dt.time):
            self.note("date/time stored as ISO 8601 text")
            return value.isoformat()
        if isinstance(value, dt.timedelta):
            self.note("timedelta stored as seconds")
            return value.total_seconds()
        if isinstance(value, PurePath):
            self.note("path stored as text")
            return str(value)
        if isinstance(value, uuid.UUID | decimal.Decimal):
            self.note(f"{kind.__name__} stored as text")
            return str(value)
        if isinstance(value, bytes | bytearray | memoryview):
            self.note("bytes stored as base64 text")
            return base64.b64encode(bytes(value)).decode("ascii")
        if module == "numpy" and hasattr(value, "tolist"):
            self.note(f"numpy.{kind.__name__} stored as {'a list' if value.ndim else 'a number'}")
            return self.convert(value.tolist(), depth + 1)
        if module == "pandas" and hasattr(value, "to_dict"):
            if kind.__name__ == "DataFrame":
                self.note("pandas.DataFrame stored as records")
                return self.convert(value.to_dict(orient="records"), depth + 1)
            self.note(f"pandas.{kind.__name__} stored as a dict")
            return self.convert(value.to_dict(), depth + 1)
        if module == "specklepy":
            from caliber.queue.speckle_adapter import is_speckle_object, object_to_dict

            if is_speckle_object(value):
                self.note(f"Speckle object {getattr(value, 'speckle_type', kind.__name__)} "
                          "stored as its Speckle JSON")
                try:
                    return self.convert(object_to_dict(value), depth + 1)
                except Exception:
                    return self.as_repr(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            self.note(f"dataclass {kind.__qualname__} stored as a dict")
            return {
                f.name: self.convert(getattr(value, f.name), depth + 1)
                for f in dataclasses.fields(value)
            }
        dump = getattr(value, "model_dump", None)
        if callable(dump) and hasattr(kind, "model_fields"):
            self.note(f"pydantic model {kind.__qualname__} stored as a dict")
            try:
                return self.convert(dump(mode="json"), depth + 1)
            except Exception:
                return self.as_repr(value)
        return self.as_repr(value)


def to_json(value: Any) -> tuple[Any, str | None]:
    """``(json_value, note)``: note says what was converted, None for plain JSON."""
    converter = _Converter()
    out = converter.convert(value)
    return out, ("; ".join(converter.notes) or None)
