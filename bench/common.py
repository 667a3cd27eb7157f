"""Shared pieces of the benchmark: settings, timing, worker processes, memory sampling."""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
POLL_SECONDS = 0.005  # how often the driver checks whether a drain is done (same for all)


class Unavailable(Exception):
    """A system (or one figure of it) cannot be measured here; the message says why."""


@dataclass(frozen=True)
class Settings:
    """Sizes and repetitions of one run."""

    quick: bool
    reps: int  # repetitions of every timed figure
    drain_sizes: tuple[int, int]  # (small, large) N of the drain / end-to-end figures
    workflow_tasks: int  # tasks of the in-process workflow (per-task overhead)
    queue_sizes: tuple[int, int, int]  # entries in the queue for the queue-op figures
    ops_per_batch: int  # queue operations timed per repetition, at every size
    memory_n: int  # workloads drained while peak memory is sampled
    drain_timeout: float  # seconds before a drain counts as stuck
    startup_reps: int  # runs of every start-up command

    @classmethod
    def full(cls, reps: int = 3) -> Settings:
        return cls(False, reps, (100, 1000), 1000, (1_000, 10_000, 100_000), 200, 1000, 600.0,
                   max(reps, 10))

    @classmethod
    def small(cls, reps: int = 2) -> Settings:
        return cls(True, reps, (4, 8), 20, (20, 40, 80), 5, 8, 120.0, reps)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def worker_env(**extra: str) -> dict[str, str]:
    """The environment of every worker process: the repo on the path (for ``bench.tasks``)."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + path if path else "")
    env["NO_COLOR"] = "1"
    env.update(extra)
    return env


def start(
    cmd: Sequence[str], *, env: dict[str, str], cwd: Path, log: Path
) -> subprocess.Popen[bytes]:
    """Start a worker in its own process group, output to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(cmd), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 15.0) -> None:
    """Stop a worker we started (and its process group): ``sig``, then SIGKILL after ``grace``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # children left behind in the group, if any
    proc.wait()


def log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class MemorySampler:
    """Peak resident memory (MiB) of a process and all its descendants, summed, sampled."""

    EVERY = 0.02  # seconds between samples

    def __init__(self, pid: int) -> None:
        import psutil

        self._psutil = psutil
        self.root = psutil.Process(pid)
        self.peak_total = 0.0
        self.peak_single = 0.0
        self._last = 0.0

    def sample(self) -> None:
        now = time.perf_counter()
        if now - self._last < self.EVERY:
            return
        self._last = now
        psutil = self._psutil
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        total = 0.0
        for proc in procs:
            try:
                rss = proc.memory_info().rss / 2**20
            except psutil.Error:
                continue
            total += rss
            self.peak_single = max(self.peak_single, rss)
        self.peak_total = max(self.peak_total, total)


def wait_until(
    done: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    *,
    timeout: float,
    log: Path,
    what: str,
    on_poll: Callable[[], None] | None = None,
) -> None:
    """Poll ``done`` every POLL_SECONDS until true; fail when the worker dies or time runs out.

    A worker that exits on its own (RQ's burst mode) is fine as long as ``done`` then holds.
    """
    deadline = time.perf_counter() + timeout
    while True:
        if done():
            return
        if on_poll is not None:
            on_poll()
        if proc.poll() is not None and not done():
            raise RuntimeError(
                f"{what}: the worker exited (code {proc.returncode}) before the work was done; "
                f"its log ends with:\n{log_tail(log)}"
            )
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{what}: not done after {timeout:.0f} s; log:\n{log_tail(log)}")
        time.sleep(POLL_SECONDS)


def time_command(cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
                 check: bool = True, timeout: float | None = None) -> float:
    """Wall time of one run of a command (output discarded); TimeoutExpired after ``timeout``."""
    t0 = time.perf_counter()
    proc = subprocess.run(list(cmd), env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=timeout)
    elapsed = time.perf_counter() - t0
    if check and proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace")[-500:]
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}: {stderr}")
    return elapsed
