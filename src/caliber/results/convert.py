"""Turning task return values into JSON.

Plain JSON values are kept as they are. Values with one obvious JSON form are converted
(numpy arrays and scalars, datetimes, paths, sets, dataclasses, pydantic models, pandas frames
as records, enums, bytes as base64, Speckle objects as their Speckle JSON with
``speckle_type``); anything else is stored as its string representation. Given a
:class:`~caliber.results.arrays.ValueWriter`, big numpy arrays and pandas frames are kept as
binary by it instead, a reference in their place. The caller is told what was done, so the
Results can record it.

Conversion is total and goes part by part: integers too long for JSON become decimal text,
lone surrogates are escaped (the stored JSON is always valid UTF-8), a value nested more than
:data:`MAX_DEPTH` deep or containing itself is cut there, and a part whose conversion raises
(a property, ``__iter__``, ``repr``...) is stored as its string alone, the rest kept.
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
from typing import TYPE_CHECKING, Any

from caliber.results.arrays import REF_KEY
from caliber.text import valid_unicode

if TYPE_CHECKING:
    from caliber.results.arrays import ValueWriter

MAX_DEPTH = 100
"""Levels of lists and dicts kept; a value nested deeper is stored as its string (the stored
Results must stay readable by every JSON reader on the way, some of which stop at 200)."""
BIG_INT_BITS = 10_000
"""Integers longer than this (about 3,000 digits) are stored as decimal text: Python refuses
to turn an integer of more than 4,300 digits into text and back by default."""


def _type_name(value: Any) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


class _Converter:
    def __init__(self, values: ValueWriter | None = None) -> None:
        self.notes: list[str] = []
        self._active: set[int] = set()
        self.values = values

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def as_repr(self, value: Any, why: str = "") -> str:
        self.note(f"{_type_name(value)} stored as its string representation{why}")
        try:
            text = repr(value)
            if not isinstance(text, str):
                raise TypeError(f"__repr__ returned {type(text).__name__}")
        except Exception as exc:  # a broken __repr__ must not lose the run
            return f"<{type(value).__qualname__} object (repr failed: {type(exc).__name__})>"
        return self.text(str.__str__(text))

    def text(self, value: str) -> str:
        """A string as valid Unicode: lone surrogates (bytes that were not UTF-8) escaped."""
        clean = valid_unicode(value)
        if clean is not value:
            self.note("text that was not valid Unicode (bytes that are not UTF-8, or lone "
                      "surrogates) stored with \\x and \\u escapes")
        return clean

    def big_int(self, value: int) -> int | str:
        if value.bit_length() <= BIG_INT_BITS:
            return value
        self.note("integer too long for JSON stored as decimal text")
        return str(decimal.Decimal(value))  # Decimal's text has no digit limit

    def convert(self, value: Any, depth: int = 0) -> Any:
        """``value`` as JSON; never raises: what fails to convert is stored as its string."""
        try:
            return self._convert(value, depth)
        except Exception as exc:  # user objects: properties, __iter__, __eq__ ... may raise
            return self.as_repr(value, f" (converting it raised {type(exc).__name__})")

    def _convert(self, value: Any, depth: int) -> Any:
        kind = type(value)
        if value is None or kind is bool:
            return value
        if kind is int:
            return self.big_int(value)
        if kind is str:
            return self.text(value)
        if kind is float:
            if math.isfinite(value):
                return value
            self.note("non-finite float stored as a string")
            return repr(value)
        if depth > MAX_DEPTH:
            return self.as_repr(value, f" (nested more than {MAX_DEPTH} deep)")
        if id(value) in self._active:
            return self.as_repr(value, " (it contains itself)")
        self._active.add(id(value))
        try:
            if isinstance(value, dict | list | tuple | set | frozenset) and not _is_special(value):
                return self._container(value, depth)
            return self._special(value, depth)
        finally:
            self._active.discard(id(value))

    def _container(self, value: Any, depth: int) -> Any:
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, item in list(value.items()):
                text = self.key(key)
                if text == REF_KEY:  # the mark of a stored array's reference: not a value's
                    self.note(f"dict key {REF_KEY!r} stored as {REF_KEY + ' (2)'!r}")
                    text = REF_KEY + " (2)"
                if text in out:  # 1 and "1": keep both values
                    self.note("dict keys equal as text kept with a suffix")
                    n = 2
                    while f"{text} ({n})" in out:
                        n += 1
                    text = f"{text} ({n})"
                out[text] = self.convert(item, depth + 1)
            return out
        if isinstance(value, set | frozenset):
            self.note("set stored as a list")
            items = [self.convert(v, depth + 1) for v in value]
            try:
                return sorted(items)
            except TypeError:
                return items
        return [self.convert(v, depth + 1) for v in list(value)]

    def key(self, key: Any) -> str:
        if type(key) is str:
            return self.text(key)
        self.note("dict keys converted to strings")
        try:
            text = str(key) if type(key) is not int else str(self.big_int(key))
            if not isinstance(text, str):
                raise TypeError(f"__str__ returned {type(text).__name__}")
            return self.text(str.__str__(text))
        except Exception:
            return self.as_repr(key)

    def _special(self, value: Any, depth: int) -> Any:
        kind = type(value)
        module = kind.__module__.split(".")[0]
        if isinstance(value, enum.Enum):
            self.note("enum stored as its value")
            return self.convert(value.value, depth + 1)
        if isinstance(value, str):  # subclasses of the plain types
            return self.text(str.__str__(value))
        if isinstance(value, int):
            return self.big_int(int.__int__(value))
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
        if self.values is not None and module in ("numpy", "pandas"):
            ref = self.values.store(value)  # a big array or frame: binary, beside the JSON
            if ref is not None:  # no note: it is read back as it was, nothing converted
                return ref
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
            from caliber.queue.speckle.adapter import is_speckle_object, object_to_dict

            if is_speckle_object(value):
                self.note(f"Speckle object {getattr(value, 'speckle_type', kind.__name__)} "
                          "stored as its Speckle JSON")
                try:
                    return self.convert(object_to_dict(value), depth + 1)
                except Exception:
                    return self.as_repr(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            self.note(f"dataclass {kind.__qualname__} stored as a dict")
            out = {}
            for f in dataclasses.fields(value):
                try:
                    item = getattr(value, f.name)
                except Exception as exc:  # field(init=False) never set, a raising property
                    self.note(f"field {kind.__qualname__}.{f.name} left out: reading it raised "
                              f"{type(exc).__name__}")
                    continue
                out[f.name] = self.convert(item, depth + 1)
            return out
        dump = getattr(value, "model_dump", None)
        if callable(dump) and hasattr(kind, "model_fields"):
            self.note(f"pydantic model {kind.__qualname__} stored as a dict")
            try:
                return self.convert(dump(mode="json"), depth + 1)
            except Exception:
                return self.as_repr(value)
        return self.as_repr(value)


def _is_special(value: Any) -> bool:
    """A container subclass with a JSON form of its own (a pandas or Speckle object)."""
    return type(value).__module__.split(".")[0] in ("numpy", "pandas", "specklepy")


def to_json(value: Any, values: ValueWriter | None = None) -> tuple[Any, str | None]:
    """``(json_value, note)``: note says what was converted, None for plain JSON.

    With ``values``, big numpy arrays and pandas frames are kept as binary by it and a
    reference takes their place (:mod:`caliber.results.arrays`); without, they become lists
    and records.

    Never raises, whatever ``value`` is: what cannot be converted is stored as its string, and
    a part that fails is stored that way alone, the rest kept."""
    converter = _Converter(values)
    out = converter.convert(value)
    return out, ("; ".join(converter.notes) or None)
