"""What every measured system does for the drain figures, and the harness that times it.

A system fills its store with N single-task jobs (``enqueue``), then one worker process drains
them; a job counts as done only when its result is stored where a client can read it
(``done``), and every result is read back and checked after the clock stops (``verify``).
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import MemorySampler, start, stop, wait_until


class DrainSystem:
    """One system under test (subclasses: Huey, RQ, Caliber)."""

    key = ""
    label = ""
    stop_signal = signal.SIGTERM

    def reset(self, workdir: Path) -> None:
        """Begin a repetition with an empty store, files under ``workdir``."""
        raise NotImplementedError

    def enqueue(self, n: int) -> None:
        """Queue jobs 0..n-1 (each: ``bench.tasks.noop(i)``) through the system's client API."""
        raise NotImplementedError

    def worker(self, workdir: Path) -> tuple[list[str], dict[str, str]]:
        """Command line and environment of one worker that drains the queue."""
        raise NotImplementedError

    def done(self, n: int) -> bool:
        """Whether all n results are stored (cheap: polled every few milliseconds)."""
        raise NotImplementedError

    def verify(self, n: int) -> None:
        """Read every result back; raise RuntimeError unless job i returned i + 1."""
        raise NotImplementedError

    def close(self) -> None:
        """Release clients."""


@dataclass
class DrainSample:
    enqueue: float
    drain: float
    peak_total_mib: float | None = None
    peak_single_mib: float | None = None

    @property
    def end_to_end(self) -> float:
        return self.enqueue + self.drain


@dataclass
class DrainResult:
    samples: list[DrainSample] = field(default_factory=list)
    error: str | None = None


def drain_once(system: DrainSystem, n: int, workdir: Path, *, timeout: float,
               memory: bool = False) -> DrainSample:
    """Queue n jobs (timed), then start one worker and time it until all n results are stored.

    The drain time includes the worker's start-up, the same for every system. With ``memory``
    the worker's process tree is sampled for peak resident memory while it drains.
    """
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    system.reset(workdir)
    t0 = time.perf_counter()
    system.enqueue(n)
    enqueue = time.perf_counter() - t0
    cmd, env = system.worker(workdir)
    log = workdir / "worker.log"
    t1 = time.perf_counter()
    proc = start(cmd, env=env, cwd=workdir, log=log)
    sampler = MemorySampler(proc.pid) if memory else None
    try:
        wait_until(lambda: system.done(n), proc, timeout=timeout, log=log,
                   what=f"{system.label} draining {n}",
                   on_poll=sampler.sample if sampler else None)
        drain = time.perf_counter() - t1
    finally:
        stop(proc, system.stop_signal)
    system.verify(n)
    sample = DrainSample(enqueue, drain)
    if sampler is not None:
        sample.peak_total_mib = sampler.peak_total
        sample.peak_single_mib = sampler.peak_single
    return sample


def interleaved(systems: Sequence[DrainSystem], n: int, reps: int, root: Path, *,
                timeout: float) -> dict[str, DrainResult]:
    """``reps`` rounds; in each round every system drains n once (so drift hits all alike)."""
    out = {s.key: DrainResult() for s in systems}
    for rep in range(reps):
        for system in systems:
            result = out[system.key]
            if result.error is not None:
                continue
            try:
                result.samples.append(
                    drain_once(system, n, root / f"{system.key}-{n}-{rep}", timeout=timeout)
                )
            except Exception as exc:
                result.error = f"{type(exc).__name__}: {exc}"
            print(f"  drain n={n} rep {rep + 1}/{reps} {system.key}: "
                  + (f"{result.samples[-1].drain:.3f} s" if result.error is None
                     else f"failed ({result.error.splitlines()[0]})"), flush=True)
    return out
