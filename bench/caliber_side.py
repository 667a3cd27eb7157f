"""Caliber's side, through its public API and command line only.

Drain: ``caliber.Workflow(...).queue(pinion="bench")`` N times, then one
``caliber pinion init bench -a 1 -w 0.05 --quiet`` (one forked child per workload, results
stored with the workload's completion in one transaction) until nothing is queued or running.
Queue operations: the local backend's ``put`` / ``claim`` / ``complete``. Per-task overhead:
``Workflow.run()`` in this process.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import tasks
from bench.common import BIN, Unavailable, worker_env
from bench.systems import DrainSystem

BENCH_DIR = Path(__file__).resolve().parent
PINION = "bench"


def caliber_cmd(*args: str) -> list[str]:
    return [str(BIN / "caliber"), *args]


def check_command(*args: str) -> None:
    """Unavailable unless ``caliber ARGS --help`` works (the command exists)."""
    done = subprocess.run(caliber_cmd(*args, "--help"), capture_output=True, text=True,
                          env=worker_env())
    if done.returncode != 0:
        raise Unavailable(f"'caliber {' '.join(args)}' is not available yet "
                          f"({(done.stderr.strip().splitlines() or ['?'])[-1]})")


def check_queue_api() -> None:
    try:
        from caliber.queue.api import queue_workflow  # noqa: F401
        from caliber.queue.sqlite.backend import SQLiteBackend
    except ImportError as exc:
        raise Unavailable(f"the queue API is not available yet ({exc})") from None
    verbs = ("put", "claim", "complete", "list_workloads")
    missing = [v for v in verbs if not hasattr(SQLiteBackend, v)]
    if missing:
        raise Unavailable(f"the local queue has no {', '.join(missing)} yet")


def use_home(home: Path) -> None:
    """Point this process (and the workers it starts) at ``home`` as CALIBER_HOME."""
    home.mkdir(parents=True, exist_ok=True)
    os.environ["CALIBER_HOME"] = str(home)


def one_task_workflow(i: int) -> Any:
    import caliber

    task = caliber.Task(tasks.noop, args=[i])
    return caliber.Workflow(caliber.Process([task]), name="noop", base_dir=BENCH_DIR)


class Caliber(DrainSystem):
    key = "caliber"
    label = "Caliber (local SQLite queue, caliber pinion init bench -a 1 -w 0.05)"

    def __init__(self) -> None:
        self.home: Path | None = None
        self.backend: Any = None

    @staticmethod
    def check() -> None:
        check_queue_api()
        check_command("pinion", "init")

    def reset(self, workdir: Path) -> None:
        from caliber.queue.registry import open_backend
        from caliber.queue.target import local_target

        self.close()
        self.home = workdir / "caliber-home"
        use_home(self.home)
        self.backend = open_backend(local_target())

    def enqueue(self, n: int) -> None:
        for i in range(n):
            one_task_workflow(i).queue(pinion=PINION)

    def worker(self, workdir: Path) -> tuple[list[str], dict[str, str]]:
        cmd = caliber_cmd("pinion", "init", PINION, "-a", "1", "-w", "0.05", "--quiet")
        return cmd, worker_env(CALIBER_HOME=str(self.home))

    def done(self, n: int) -> bool:
        from caliber.queue.workload import WorkloadStatus

        backend = self.backend
        return not any(backend.list_workloads(pinion=PINION, status=status, limit=1)
                       for status in (WorkloadStatus.QUEUED, WorkloadStatus.RUNNING))

    def verify(self, n: int) -> None:
        from caliber.queue.workload import WorkloadStatus

        backend = self.backend
        completed = backend.list_workloads(pinion=PINION, status=WorkloadStatus.COMPLETED)
        returns = sorted(backend.get_results(w.results_id)["noop"] for w in completed)
        if returns != list(range(1, n + 1)):
            failed = backend.list_workloads(pinion=PINION, status=WorkloadStatus.FAILED, limit=1)
            why = f"; e.g. {failed[0].last_error}" if failed else ""
            raise RuntimeError(f"Caliber: {len(completed)} of {n} workloads completed{why}")

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    # --- queue operations (in-process, the local backend's verbs) ---

    def ops_open(self, workdir: Path) -> None:
        from caliber.queue.api import make_workload

        self.reset(workdir)
        self._template = make_workload(one_task_workflow(0), PINION)
        self._claimed: list[Any] = []

    def ops_fill(self, count: int) -> None:
        """Add ``count`` queued workloads, one put each (set-up, not timed)."""
        from caliber.results.model import new_id

        template, put = self._template, self.backend.put
        for _ in range(count):
            put(template.model_copy(update={"id": new_id()}))

    def ops(self) -> dict[str, Callable[[int], None]]:
        from caliber.queue.api import make_workload
        from caliber.results.model import Results, RunStatus, TaskResult, TaskStatus, utcnow

        backend = self.backend
        workflow = one_task_workflow(0)

        def put(k: int) -> None:
            for _ in range(k):
                backend.put(make_workload(workflow, PINION))

        def claim(k: int) -> None:
            for _ in range(k):
                claimed = backend.claim(PINION, "bench-ops", 600.0, "bench")
                if claimed is None:
                    raise RuntimeError("Caliber: queue empty during the claim benchmark")
                self._claimed.append(claimed)

        def complete(k: int) -> None:
            for _ in range(k):
                claimed = self._claimed.pop()
                now = utcnow()
                results = Results(
                    workload_id=claimed.workload.id, workflow="noop", pinion=PINION,
                    status=RunStatus.COMPLETED, started_at=now, finished_at=now,
                    tasks=[TaskResult(name="noop", status=TaskStatus.COMPLETED, return_=1)],
                )
                backend.complete(claimed, results)

        return {"put": put, "claim": claim, "complete": complete}


def workflow_overhead(n_tasks: int, workdir: Path) -> dict[str, float]:
    """One repetition: seconds to call ``noop`` n times directly, and to run an n-task
    workflow of the same calls in this process, with and without storing its Results."""
    import caliber

    workflow = caliber.Workflow(
        caliber.Process([caliber.Task(tasks.noop, name=f"t{i}", args=[i])
                         for i in range(n_tasks)]),
        name="overhead", base_dir=BENCH_DIR,
    )
    workdir.mkdir(parents=True, exist_ok=True)
    noop = tasks.noop
    t0 = time.perf_counter()
    for i in range(n_tasks):
        noop(i)
    direct = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = workflow.run(work_dir=workdir, store=False)
    in_memory = time.perf_counter() - t0
    t0 = time.perf_counter()
    stored = workflow.run(work_dir=workdir, store=True)
    with_store = time.perf_counter() - t0
    if not (results.ok and stored.ok and stored[f"t{n_tasks - 1}"] == n_tasks):
        raise RuntimeError("the overhead workflow did not complete")
    return {"direct": direct, "run": in_memory, "run_store": with_store}
