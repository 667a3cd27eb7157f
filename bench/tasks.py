"""The work every system runs: one trivial module-level function, importable by all workers."""

from __future__ import annotations


def noop(x: int) -> int:
    """The benchmark task: as close to no work as a function with an argument and a result."""
    return x + 1


def stamp(path: str) -> float:
    """The wake-up benchmark's task: write the time it started (``time.time()``) to ``path``."""
    import time

    now = time.time()
    with open(path, "w") as f:
        f.write(repr(now))
    return now


def nap(seconds: float) -> float:
    """The concurrency benchmark's task: CPU-light, it only sleeps (as a wait on a solver)."""
    import time

    time.sleep(seconds)
    return seconds
