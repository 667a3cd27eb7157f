"""Queue operations per second (put, claim, complete) at growing queue sizes, in-process.

Every system keeps its own store open; at each size every system is filled to that many
queued entries (untimed set-up) and then times ``reps`` batches of ``k`` puts, ``k`` claims
and ``k`` completes of what it claimed (so the number of queued entries stays at the size),
the systems taking turns batch by batch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OPS = ("put", "claim", "complete")


@dataclass
class OpsResult:
    rates: dict[tuple[str, int], list[float]] = field(default_factory=dict)  # ops/s per batch
    fill_seconds: dict[int, float] = field(default_factory=dict)
    error: str | None = None


def measure(
    systems: Sequence[Any],
    sizes: Sequence[int],
    k: int,
    reps: int,
    root: Path,
    *,
    at_size: Callable[[int], None] | None = None,
) -> dict[str, OpsResult]:
    """ops/s of every system at every size; ``at_size(size)`` runs after each size is done."""
    out = {s.key: OpsResult() for s in systems}
    filled = dict.fromkeys(out, 0)
    for system in systems:
        try:
            workdir = root / f"ops-{system.key}"
            workdir.mkdir(parents=True, exist_ok=True)
            system.ops_open(workdir)
        except Exception as exc:
            out[system.key].error = f"{type(exc).__name__}: {exc}"
    for size in sizes:
        ready: dict[str, dict[str, Callable[[int], None]]] = {}
        for system in systems:
            result = out[system.key]
            if result.error is not None:
                continue
            try:
                t0 = time.perf_counter()
                system.ops_fill(size - filled[system.key])
                result.fill_seconds[size] = time.perf_counter() - t0
                filled[system.key] = size
                ready[system.key] = system.ops()
            except Exception as exc:
                result.error = f"{type(exc).__name__}: {exc}"
        # Batches interleaved: every system's i-th batch of an op runs within the same seconds.
        for _ in range(reps):
            for system in systems:
                ops = ready.get(system.key)
                result = out[system.key]
                if ops is None or result.error is not None:
                    continue
                try:
                    for op in OPS:
                        t0 = time.perf_counter()
                        ops[op](k)
                        result.rates.setdefault((op, size), []).append(
                            k / (time.perf_counter() - t0)
                        )
                except Exception as exc:
                    result.error = f"{type(exc).__name__}: {exc}"
        for system in systems:
            result = out[system.key]
            if result.error is not None:
                print(f"  queue ops at {size:,} {system.key}: failed ({result.error})", flush=True)
                continue
            rates = ", ".join(
                f"{op} {sorted(result.rates[op, size])[reps // 2]:,.0f}/s" for op in OPS
            )
            print(f"  queue ops at {size:,} {system.key}: {rates} "
                  f"(filled in {result.fill_seconds[size]:.1f} s)", flush=True)
        if at_size is not None:
            at_size(size)
    for system in systems:
        with contextlib.suppress(Exception):
            system.close()
    return out
