"""Sizes in bytes as people write them: ``100M``, ``1G``, ``65536``.

A size is a whole number of bytes, optionally followed by ``K``, ``M``, ``G`` or ``T``
(powers of 1024; ``KiB``, ``MiB``... are the same). :func:`parse_size` reads one,
:func:`format_size` writes one back in the same form.
"""

from __future__ import annotations

import re

DEFAULT_LOG_MAX = 1 << 30  # bytes: output.log is cut past this (1 GiB; CALIBER_PINION_LOG_MAX)
MIN_LOG_MAX = 64 << 10  # bytes: the smallest cap (a head, a marker line and a tail fit in it)
MAX_LOG_MAX = 1 << 50  # bytes: the largest (1024T; 0 is no cap)
DEFAULT_OUTPUT_MAX = 2 << 30  # bytes: one result file kept at most (2G; CALIBER_OUTPUT_MAX)
DEFAULT_OUTPUT_TOTAL_MAX = 10 << 30  # bytes: all the result files of one run (10G)
MAX_OUTPUT_MAX = 1 << 50  # bytes: the largest of either (1024T; 0 is no limit)

_UNITS = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}
_SIZE = re.compile(r"\s*(\d+)\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``'100M'`` -> 104857600; ValueError when ``text`` is not a size."""
    match = _SIZE.fullmatch(text)
    if match is None or (match.group(2) == "" and text.strip().upper().endswith("IB")):
        raise ValueError(f"{text!r} is not a size in bytes (such as 65536, 100M or 1G)")
    return int(match.group(1)) << (10 * _UNITS[match.group(2).upper()])


def format_size(size: int) -> str:
    """``104857600`` -> ``'100M'``; a size that is no whole number of a unit in bytes."""
    for unit in ("T", "G", "M", "K"):
        shift = 10 * _UNITS[unit]
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)
