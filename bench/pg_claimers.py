"""One process of the team simulation (bench/postgres.py): THREADS light claimers, each with a
connection of its own, doing CYCLES of claim, renew, complete with no user code.

``python -m bench.pg_claimers KIND URL THREADS CYCLES``; KIND ``caliber`` (the PostgreSQL
queue's own verbs: ``claim``, ``renew``, ``complete`` with a one-task Results) or ``sql`` (the
floor: one ``UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED)`` per claim and one
``UPDATE`` per renew and per complete, on the table ``floor_jobs``). It connects every claimer,
prints ``ready``, waits for a line on stdin, runs, and prints one JSON line: each claim's latency
(seconds), the wall-clock start and end of its work, and its own CPU time.
"""

from __future__ import annotations

import json
import resource
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

PINION = "team"
LEASE = 60.0

CLAIM_SQL = """
UPDATE floor_jobs SET status = 'running', token = %s, attempts = attempts + 1,
       expires_at = now() + interval '60 seconds'
 WHERE id = (SELECT id FROM floor_jobs WHERE pinion = %s AND status = 'queued'
              ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id, payload
"""
RENEW_SQL = ("UPDATE floor_jobs SET expires_at = now() + interval '60 seconds' "
             "WHERE id = %s AND token = %s")
COMPLETE_SQL = ("UPDATE floor_jobs SET status = 'completed', result = %s, expires_at = NULL "
                "WHERE id = %s AND token = %s")
FLOOR_SCHEMA = """
CREATE TABLE floor_jobs (
    id bigserial PRIMARY KEY, pinion text NOT NULL, status text NOT NULL,
    token text, attempts int NOT NULL DEFAULT 0, expires_at timestamptz,
    payload jsonb NOT NULL, result jsonb
);
CREATE INDEX floor_jobs_claim ON floor_jobs (pinion, status, id);
"""


def sql_cycle(url: str) -> Callable[[], float | None]:
    import psycopg

    conn = psycopg.connect(url, autocommit=True)

    def cycle() -> float | None:
        token = uuid.uuid4().hex
        t0 = time.perf_counter()
        row = conn.execute(CLAIM_SQL, (token, PINION)).fetchone()
        took = time.perf_counter() - t0
        if row is None:
            return None
        conn.execute(RENEW_SQL, (row[0], token))
        conn.execute(COMPLETE_SQL, ('{"noop": 1}', row[0], token))
        return took

    return cycle


def caliber_cycle(url: str) -> Callable[[], float | None]:
    from caliber.queue.registry import open_backend
    from caliber.queue.target import resolve_target
    from caliber.results.model import Results, RunStatus, TaskResult, TaskStatus, utcnow

    backend: Any = open_backend(resolve_target())
    owner = f"team-{uuid.uuid4().hex[:8]}"

    def cycle() -> float | None:
        t0 = time.perf_counter()
        claim = backend.claim(PINION, owner, LEASE, "bench")
        took = time.perf_counter() - t0
        if claim is None:
            return None
        claim = backend.renew(claim, LEASE)
        now = utcnow()
        backend.complete(claim, Results(
            workload_id=claim.workload.id, workflow="noop", pinion=PINION,
            status=RunStatus.COMPLETED, started_at=now, finished_at=now,
            tasks=[TaskResult(name="noop", status=TaskStatus.COMPLETED, return_=1)],
        ))
        return took

    return cycle


def main(argv: list[str]) -> int:
    kind, url, threads, cycles = argv[0], argv[1], int(argv[2]), int(argv[3])
    make = caliber_cycle if kind == "caliber" else sql_cycle
    cycles_of = [make(url) for _ in range(threads)]  # every claimer connected before "go"
    latencies: list[list[float]] = [[] for _ in range(threads)]
    spans: list[tuple[float, float]] = [(0.0, 0.0)] * threads
    errors: list[str] = []
    go = threading.Event()

    def claimer(i: int) -> None:
        go.wait()
        start = time.time()
        try:
            for _ in range(cycles):
                took = cycles_of[i]()
                if took is None:
                    break
                latencies[i].append(took)
        except Exception as exc:  # reported to the driver, which fails the figure
            errors.append(f"{type(exc).__name__}: {exc}")
        spans[i] = (start, time.time())

    workers = [threading.Thread(target=claimer, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    print("ready", flush=True)
    sys.stdin.readline()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    go.set()
    for w in workers:
        w.join()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "latencies": [x for xs in latencies for x in xs],
        "start": min(s for s, _ in spans), "end": max(e for _, e in spans),
        "cpu": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
        "errors": errors[:3],
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
