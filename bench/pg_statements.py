"""Statements per workload on a pinion's path: a deterministic count, beside the drain's times.

- **PostgreSQL**: a server of its own (``tests/postgres_server.py``) with ``pg_stat_statements``
  loaded; N one-task workloads queued, the counters reset, then one ``caliber pinion init bench
  -a 1 -w 0.05 --quiet`` (``-c K`` with ``--concurrency K``) drains them and stops. Every
  statement the server ran for it, on each of its connections (``BEGIN``/``COMMIT`` included:
  each is a round trip, as psycopg sends one statement per round trip), and the server's own
  execution time. The same for a pinion that finds nothing (N = 0) is subtracted: what is left
  is the path of N workloads; divided by N, per workload.
- **SQLite**: the same drain with the statements traced (``set_trace_callback``) in the pinion
  process (``BEGIN``/``COMMIT`` included).

``python -m bench.pg_statements [N] [--by-statement] [--concurrency K] [--sqlite]``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import BIN, REPO, worker_env

PINION = "bench"
SQLITE_TRACE = """
import collections, json, os, sqlite3, sys
counts = collections.Counter()
_connect = sqlite3.connect
def connect(*args, **kwargs):
    conn = _connect(*args, **kwargs)
    conn.set_trace_callback(lambda sql: counts.update([sql]))
    return conn
sqlite3.connect = connect
try:
    from caliber.cli import main
    main(sys.argv[1:])
finally:
    with open(os.environ["BENCH_TRACE_OUT"], "w") as out:
        json.dump(counts, out)
"""


def pinion_cmd(concurrency: int) -> list[str]:
    return ["pinion", "init", PINION, "-a", "1", "-w", "0.05", "--quiet",
            *(["--concurrency", str(concurrency)] if concurrency > 1 else [])]


def _queue(n: int) -> None:
    from bench.caliber_side import one_task_workflow
    from caliber.queue.api import make_workload
    from caliber.queue.registry import open_backend
    from caliber.queue.target import resolve_target

    with open_backend(resolve_target()) as backend:
        for i in range(n):
            backend.put(make_workload(one_task_workflow(i), PINION))


def postgres_counts(n: int, concurrency: int) -> dict[str, tuple[int, float]]:
    """{statement: (calls, 0)} of a pinion draining ``n`` workloads: each statement a client
    sent (the server's log, ``log_statement = all``: ``BEGIN`` and ``COMMIT`` too, which
    ``pg_stat_statements`` leaves out under the extended protocol); and one entry (0, server
    milliseconds): the execution time of them all (``pg_stat_statements``, top level)."""
    import psycopg
    from tests.postgres_server import PostgresServer

    from bench.caliber_side import use_home

    calls: dict[str, int] = {}
    times: dict[str, float] = {}
    with PostgresServer(settings={"shared_preload_libraries": "pg_stat_statements",
                                  "pg_stat_statements.track": "all",
                                  "log_statement": "all",
                                  "log_line_prefix": "[%d] "}) as pg, \
            tempfile.TemporaryDirectory() as tmp:
        url = pg.create_database("counted")
        use_home(Path(tmp) / "home")
        os.environ["CALIBER_QUEUE_URL"] = url
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
            _queue(n)
            conn.execute("SELECT pg_stat_statements_reset()")
            start = pg.log.stat().st_size
            subprocess.run([str(BIN / "caliber"), *pinion_cmd(concurrency)], check=True,
                           cwd=tmp, env=worker_env(CALIBER_HOME=str(Path(tmp) / "home"),
                                                   CALIBER_QUEUE_URL=url))
            for query, ms in conn.execute(
                    "SELECT query, total_exec_time FROM pg_stat_statements s "
                    "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = 'counted' "
                    "AND toplevel AND query NOT LIKE '%pg_stat_statements%'"):
                key = _key(query)
                times[key] = times.get(key, 0.0) + ms
        with open(pg.log, encoding="utf-8", errors="replace") as log:
            log.seek(start)
            text = log.read()
    for found in re.finditer(r"^\[counted\] LOG:  (?:statement|execute [^:]*): (.*(?:\n\t.*)*)",
                             text, re.M):
        key = _key(re.sub(r"%s|\$\d+", "?", found.group(1)))
        calls[key] = calls.get(key, 0) + 1
    out = {k: (c, 0.0) for k, c in calls.items()}
    out["(server execution time of them all, pg_stat_statements)"] = (0, sum(times.values()))
    return out


def _key(query: str) -> str:
    return " ".join(query.split())[:160]


def sqlite_counts(n: int, concurrency: int) -> dict[str, tuple[int, float]]:
    import json

    from bench.caliber_side import use_home

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.pop("CALIBER_QUEUE_URL", None)
        use_home(Path(tmp) / "home")
        _queue(n)
        out = Path(tmp) / "trace.json"
        subprocess.run([sys.executable, "-c", SQLITE_TRACE, *pinion_cmd(concurrency)],
                       check=True, cwd=tmp, env=worker_env(
                           CALIBER_HOME=str(Path(tmp) / "home"), BENCH_TRACE_OUT=str(out)))
        counts: dict[str, tuple[int, float]] = {}
        for sql, calls in json.loads(out.read_text()).items():  # the values as "?"
            key = _key(re.sub(r"'(?:[^']|'')*'|\b\d+(?:\.\d+)?\b", "?", sql))
            counts[key] = (counts.get(key, (0, 0.0))[0] + calls, 0.0)
        return counts


def per_workload(count: Any, n: int, concurrency: int) -> dict[str, tuple[float, float]]:
    drained, idle = count(n, concurrency), count(0, concurrency)
    return {k: ((c - idle.get(k, (0, 0.0))[0]) / n, (ms - idle.get(k, (0, 0.0))[1]) / n)
            for k, (c, ms) in drained.items() if (c, ms) != idle.get(k, (0, 0.0))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", type=int, nargs="?", default=200)
    parser.add_argument("--by-statement", action="store_true")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--sqlite", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    count = sqlite_counts if args.sqlite else postgres_counts
    found = per_workload(count, args.n, args.concurrency)
    if args.by_statement:
        for key, (calls, ms) in sorted(found.items(), key=lambda kv: -kv[1][0]):
            print(f"{calls:7.2f}  {key}" if calls else f"{ms * 1000:7.0f} us  {key}")
    calls = sum(c for c, _ in found.values())
    ms = sum(m for _, m in found.values())
    print(f"{'sqlite' if args.sqlite else 'postgres'}: {calls:.2f} statements per workload"
          + ("" if args.sqlite else f", server execution {ms * 1000:.0f} us per workload")
          + f" ({args.n} workloads, concurrency {args.concurrency})")


if __name__ == "__main__":
    main()
