"""``caliber pinion init --concurrency 2`` against 1, on this machine: ``python -m bench.run``
includes these rows; ``python -m bench.concurrency [--quick] [--reps R]`` prints them.

- sleep: a drain of workloads that each sleep (CPU-light, as a task waiting on a solver or a
  licence server): two slots should take about half the time of one;
- tiny: a drain of one-task workloads that do nothing (``bench.tasks.noop``), where the
  pinion's own CPU sets the pace: what a second slot gains on a 2-core machine, where the
  pinion, its fork server and the children share the cores.

Each drain is one ``caliber pinion init bench -a 1 -w 0.05 --quiet --concurrency N`` process,
timed from its start to its exit, on a fresh local queue filled beforehand; the two
concurrencies alternate, round by round, so a drift of the machine's speed touches both.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

from bench.report import Row

SECTION = "Concurrency (pinion init --concurrency)"
SLEEP = {False: (20, 0.5), True: (6, 0.3)}  # quick: (workloads, seconds each)
TINY = {False: 300, True: 30}  # workloads
SLEEP_TARGET = 0.6  # --concurrency 2 takes at most this much of the time of 1 (ideal 0.5)


def expected_ids() -> list[str]:
    return ["concurrency-sleep", "concurrency-tiny"]


def _fill(home: Path, n: int, nap: float | None) -> None:
    """Queue ``n`` workloads in the local queue of ``home``: naps, or no-ops."""
    import caliber
    from bench import tasks
    from bench.caliber_side import BENCH_DIR, PINION, one_task_workflow, use_home

    use_home(home)
    for i in range(n):
        if nap is None:
            one_task_workflow(i).queue(pinion=PINION)
        else:
            task = caliber.Task(tasks.nap, args=[nap])
            caliber.Workflow(caliber.Process([task]), name="nap",
                             base_dir=BENCH_DIR).queue(pinion=PINION)


def _drain(home: Path, n: int, concurrency: int) -> float:
    """Seconds one pinion with ``concurrency`` slots takes to drain ``home``'s queue."""
    from bench.caliber_side import PINION, caliber_cmd
    from bench.common import worker_env

    cmd = caliber_cmd("pinion", "init", PINION, "-a", "1", "-w", "0.05", "--quiet", "--json",
                      "--concurrency", str(concurrency))
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=worker_env(CALIBER_HOME=str(home)), capture_output=True,
                          text=True, timeout=600)
    elapsed = time.perf_counter() - t0
    try:
        completed = json.loads(done.stdout)["completed"] if done.returncode == 0 else None
    except (ValueError, KeyError, TypeError):
        completed = None
    if completed != n:
        raise RuntimeError(f"the drain with --concurrency {concurrency} did not complete its "
                           f"{n} workloads: {(done.stderr or done.stdout).strip()[-300:]}")
    return elapsed


def measure(n: int, nap: float | None, reps: int, root: Path) -> dict[int, list[float]]:
    """Drain seconds by concurrency (1 and 2), ``reps`` rounds, alternating."""
    import os

    out: dict[int, list[float]] = {1: [], 2: []}
    old_home = os.environ.get("CALIBER_HOME")
    try:
        for rep in range(reps):
            for concurrency in ((1, 2) if rep % 2 == 0 else (2, 1)):
                home = root / f"home-{rep}-{concurrency}"
                _fill(home, n, nap)
                out[concurrency].append(_drain(home, n, concurrency))
                shutil.rmtree(home, ignore_errors=True)
    finally:
        if old_home is not None:
            os.environ["CALIBER_HOME"] = old_home
    return out


def rows(quick: bool, reps: int, root: Path) -> list[Row]:
    """The concurrency rows of the report (see :func:`expected_ids`)."""
    n_sleep, nap = SLEEP[quick]
    n_tiny = TINY[quick]
    out = []
    for key, n, each, figure, target in (
            ("sleep", n_sleep, nap, f"drain of {n_sleep} workloads sleeping {nap:g} s each, "
             "--concurrency 2", f"<= {SLEEP_TARGET:g}x"),
            ("tiny", n_tiny, None, f"drain of {n_tiny} one-task no-op workloads, "
             "--concurrency 2", "")):
        folder = root / f"concurrency-{key}"
        error = None
        try:
            figures = measure(n, each, reps, folder)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            figures, error = {1: [], 2: []}, f"{type(exc).__name__}: {exc}"
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        row = Row(id=f"concurrency-{key}", section=SECTION, figure=figure, unit="s",
                  better="lower", baseline="the same drain, --concurrency 1", target=target,
                  target_op="<=" if target else "", target_value=SLEEP_TARGET)
        row.fill(figures[2], figures[1])
        if error:
            row.unavailable = error
        out.append(row)
    return out



def main(argv: list[str] | None = None) -> int:
    from bench.report import module_main

    return module_main("python -m bench.concurrency", rows, argv)


if __name__ == "__main__":
    raise SystemExit(main())
