"""Text that is safe to store (valid Unicode) and safe to show (no control characters).

Names, values and messages come from workflow files, queue rows and user code; any of them may
hold what a terminal obeys (escape sequences, BEL, CR, newlines, bidirectional overrides) or
what UTF-8 cannot encode (lone surrogates: ``os.listdir`` gives them for file names that are
not UTF-8). Everything stored goes through :func:`valid_unicode`, everything shown to a person
through :func:`for_terminal`; ``--json`` output stays exact JSON, with the same characters
written as ``\\u`` escapes (:func:`json_for_terminal`).
"""

from __future__ import annotations

import re

_SURROGATES = re.compile("[\ud800-\udfff]")
_CONTROLS = re.compile(
    "[\x00-\x1f\x7f-\x9f"  # C0, DEL and C1 controls: ESC, BEL, CR, LF, CSI ...
    "\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"  # direction marks, line breaks
    "\ud800-\udfff]"  # lone surrogates: no terminal encoding can write them
)
_CONTROLS_IN_LINES = re.compile(_CONTROLS.pattern.replace("\x00-\x1f", "\x00-\x08\x0b-\x1f"))
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _surrogate(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, kept by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def valid_unicode(text: str) -> str:
    """``text`` with every lone surrogate written as an escape, so it encodes as UTF-8:
    ``'caf\\udce9.txt'`` (a Latin-1 file name from ``os.listdir``) -> ``'caf\\\\xe9.txt'``."""
    return _SURROGATES.sub(_surrogate, text) if _SURROGATES.search(text) else text


def _control(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def for_terminal(text: str, *, multiline: bool = False) -> str:
    """``text`` with control characters written as escapes (``\\x1b``, ``\\r``, ``\\n``), so it
    cannot move the cursor, colour, ring, or forge a line of output. ``multiline`` keeps the
    line breaks (and tabs) of text that is made of lines, such as a traceback."""
    if not _CONTROLS.search(text):
        return text
    if multiline:
        return _CONTROLS_IN_LINES.sub(_control, text)
    return _CONTROLS.sub(_control, text)


_JSON_UNSAFE = re.compile(_CONTROLS.pattern.replace("\x00-\x1f", ""))  # json escapes C0 itself


def json_for_terminal(text: str) -> str:
    """JSON text (from ``json.dumps(..., ensure_ascii=False)``) with DEL, C1 controls,
    direction marks and lone surrogates written as ``\\uXXXX``: the same JSON value, safe to
    print (outside strings JSON has only ASCII, so every such character is inside a string)."""
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
