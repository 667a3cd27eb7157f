"""The peers: Huey (SQLite storage, process worker) and RQ (Redis, default forking worker).

Both are used the way their documentation shows: Huey's ``huey_consumer -k process -w 1``
with ``SqliteHuey`` at its defaults, RQ's ``rq worker --burst`` (the forking ``rq.Worker``,
one work horse per job) against a Redis server the suite starts itself.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import tasks
from bench.common import BIN, worker_env
from bench.systems import DrainSystem

# --- Huey -----------------------------------------------------------------------------------


class Huey(DrainSystem):
    key = "huey"
    label = "Huey (SqliteHuey, huey_consumer -k process -w 1)"
    stop_signal = signal.SIGTERM

    def __init__(self) -> None:
        self.huey: Any = None
        self.task: Any = None
        self.handles: list[Any] = []
        self.db: Path | None = None

    def reset(self, workdir: Path) -> None:
        from huey import SqliteHuey

        self.close()
        self.db = workdir / "huey.db"
        self.huey = SqliteHuey(name="bench", filename=str(self.db))
        self.task = self.huey.task(name="noop")(tasks.noop)
        self.handles = []

    def enqueue(self, n: int) -> None:
        task = self.task
        self.handles = [task(i) for i in range(n)]

    def worker(self, workdir: Path) -> tuple[list[str], dict[str, str]]:
        assert self.db is not None
        cmd = [str(BIN / "huey_consumer"), "bench.huey_app.huey", "-k", "process", "-w", "1",
               "-q"]
        return cmd, worker_env(BENCH_HUEY_DB=str(self.db))

    def done(self, n: int) -> bool:
        return int(self.huey.storage.result_store_size()) >= n

    def verify(self, n: int) -> None:
        bad = [i for i, h in enumerate(self.handles) if h.get(preserve=True) != i + 1]
        if len(self.handles) != n or bad:
            raise RuntimeError(f"Huey: {len(bad)} wrong or missing results (e.g. job {bad[:3]})")

    def close(self) -> None:
        if self.huey is not None:
            self.huey.storage.close()
            self.huey = None

    # --- queue operations (in-process, against the storage) ---

    def ops_open(self, workdir: Path) -> None:
        self.reset(workdir)
        self._claimed: list[Any] = []

    def ops_fill(self, count: int) -> None:
        """Add ``count`` queued tasks in one transaction (set-up, not timed)."""
        huey = self.huey
        rows = [(huey.storage.name, huey.serialize_task(self.task.s(i)), 0) for i in range(count)]
        with huey.storage.db(commit=True) as curs:
            curs.executemany("insert into task (queue, data, priority) values (?, ?, ?)", rows)

    def ops(self) -> dict[str, Callable[[int], None]]:
        huey, task = self.huey, self.task

        def put(k: int) -> None:
            for i in range(k):
                task(i)

        def claim(k: int) -> None:
            for _ in range(k):
                claimed = huey.dequeue()
                if claimed is None:
                    raise RuntimeError("Huey: queue empty during the claim benchmark")
                self._claimed.append(claimed)

        def complete(k: int) -> None:
            for _ in range(k):
                claimed = self._claimed.pop()
                huey.put_result(claimed.id, claimed.args[0] + 1)

        return {"put": put, "claim": claim, "complete": complete}


# --- RQ -------------------------------------------------------------------------------------


@contextmanager
def own_signal_handlers() -> Iterator[None]:
    """Undo the SIGINT/SIGTERM handlers rq.Worker installs, so Ctrl-C still stops the suite."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


class RQ(DrainSystem):
    key = "rq"
    label = "RQ (Redis, rq worker --burst: forking Worker)"
    stop_signal = signal.SIGTERM

    def __init__(self, url: str) -> None:
        import redis

        self.url = url
        self.conn = redis.Redis.from_url(url)
        self.queue: Any = None
        self.ids: list[str] = []

    def reset(self, workdir: Path) -> None:
        from rq import Queue

        self.conn.flushall()
        self.queue = Queue("bench", connection=self.conn)
        self.ids = []

    def enqueue(self, n: int) -> None:
        queue = self.queue
        self.ids = [queue.enqueue(tasks.noop, i).id for i in range(n)]

    def worker(self, workdir: Path) -> tuple[list[str], dict[str, str]]:
        cmd = [str(BIN / "rq"), "worker", "--burst", "--url", self.url, "-q", "bench"]
        return cmd, worker_env()

    def done(self, n: int) -> bool:
        return int(self.queue.finished_job_registry.count) >= n

    def verify(self, n: int) -> None:
        from rq.job import Job

        jobs = Job.fetch_many(self.ids, connection=self.conn)
        bad = [i for i, job in enumerate(jobs) if job is None or job.return_value() != i + 1]
        if len(jobs) != n or bad:
            raise RuntimeError(f"RQ: {len(bad)} wrong or missing results (e.g. job {bad[:3]})")

    def close(self) -> None:
        self.conn.close()

    # --- queue operations (in-process, through the worker's own code path, no fork) ---

    def ops_open(self, workdir: Path) -> None:
        from rq import Worker

        self.reset(workdir)
        with own_signal_handlers():
            self._worker = Worker([self.queue], connection=self.conn)
        self._claimed: list[Any] = []

    def ops_fill(self, count: int) -> None:
        from rq import Queue

        queue = self.queue
        for start in range(0, count, 1000):
            batch = [Queue.prepare_data(tasks.noop, (i,))
                     for i in range(start, min(count, start + 1000))]
            with self.conn.pipeline() as pipe:
                queue.enqueue_many(batch, pipeline=pipe)
                pipe.execute()

    def ops(self) -> dict[str, Callable[[int], None]]:
        from rq.utils import now

        queue, worker = self.queue, self._worker

        def put(k: int) -> None:
            for i in range(k):
                queue.enqueue(tasks.noop, i)

        def claim(k: int) -> None:
            # What rq.Worker does before it forks: dequeue, record the execution, mark started.
            with own_signal_handlers():
                claim_all(k)

        def claim_all(k: int) -> None:
            for _ in range(k):
                got = worker.dequeue_job_and_maintain_ttl(None)
                if got is None:
                    raise RuntimeError("RQ: queue empty during the claim benchmark")
                job, _ = got
                execution = worker.prepare_execution(job)
                worker.prepare_job_execution(job, remove_from_intermediate_queue=True)
                job.started_at = now()
                self._claimed.append((job, execution))

        def complete(k: int) -> None:
            # What the work horse does after the function returned: store result, finish.
            with own_signal_handlers():
                for _ in range(k):
                    job, execution = self._claimed.pop()
                    worker._finalize_success(job, queue, execution, job.args[0] + 1)

        return {"put": put, "claim": claim, "complete": complete}


def settle() -> None:
    """A short pause between systems so one's background work does not bleed into the next."""
    time.sleep(0.2)
