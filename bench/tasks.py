"""The work every system runs: one trivial module-level function, importable by all workers."""

from __future__ import annotations


def noop(x: int) -> int:
    """The benchmark task: as close to no work as a function with an argument and a result."""
    return x + 1
