"""The PostgreSQL queue (issue 22) beside procrastinate, on one PostgreSQL server the bench starts
(Debian's package, ``tests/postgres_server.py``: a temp folder, 127.0.0.1, ``fsync=off``).

- **Drain**: N single-task jobs queued, then K workers started at once, timed until all N are
  finished: Caliber's ``caliber pinion init bench -a 1 -w 0.05 --quiet`` (K = 1, 2, 4) on
  ``CALIBER_QUEUE_URL``, against K ``procrastinate worker --one-shot`` processes (its
  LISTEN/NOTIFY worker, jobs run inside it: no per-job process) on the same server, each system
  in a fresh database, in the same rounds.
- **Wake-up**: an idle worker (Caliber: ``-w 10``, procrastinate: ``worker`` waiting), a job
  queued: the time from just before the put to the task's first line (``bench.tasks.stamp``
  writes ``time.time()``).
- **Team**: 50, 100, 200 light claimers (threads in processes of 25, each with its own
  connection: claim, renew, complete, no user code; ``bench/pg_claimers.py``) against the one
  server, a fixed number of claims in all; claims per second, the p99 of one claim's latency,
  and the server's CPU (all its processes, from /proc, the postmaster's reaped children
  included) per claim and as a share of the machine. Against the floor: the same cycle as one
  plain SQL statement each (``FOR UPDATE SKIP LOCKED``) on a one-table queue.

``python -m bench.postgres [--quick]`` prints the figures alone.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import BIN, REPO, Unavailable, log_tail, start, stop, worker_env
from bench.report import Row

SECTION = "PostgreSQL queue (beside procrastinate, same server)"
TEAM_SECTION = "PostgreSQL: a team of claimers against one server"
PINIONS = (1, 2, 4)
TEAM = (50, 100, 200)
QUICK_TEAM = (2, 4, 8)
PER_PROCESS = 25  # claimer threads per process
PINION = "bench"
MAX_CONNECTIONS = "500"  # 200 claimers, each with a connection or two


def expected_ids() -> list[str]:
    ids = [f"pg-drain-{k}" for k in PINIONS] + ["pg-wake"]
    for what in ("rate", "p99", "server"):
        ids += [f"pg-team-{what}-{i}" for i in range(len(TEAM))]
    return ids


# --- the server and its databases -------------------------------------------------------------


@contextmanager
def server() -> Iterator[Any]:
    sys.path.insert(0, str(REPO))
    from tests.postgres_server import PostgresServer, PostgresUnavailable

    try:
        with PostgresServer(settings={"max_connections": MAX_CONNECTIONS,
                                      "shared_buffers": "64MB"}) as pg:
            yield pg
    except PostgresUnavailable as exc:
        raise Unavailable(str(exc)) from None


_databases = iter(range(1, 1 << 30))


def fresh_database(pg: Any) -> str:
    return str(pg.create_database(f"bench_{next(_databases)}"))


def caliber_missing() -> str | None:
    """Why Caliber's side cannot run here, or None."""
    try:
        import caliber.queue.postgres.backend  # noqa: F401
    except ImportError:
        return "Caliber's PostgreSQL queue is not there yet (caliber.queue.postgres.backend)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    return None


def procrastinate_missing() -> str | None:
    try:
        import procrastinate  # noqa: F401
    except ImportError:
        return "procrastinate is not installed (pip install -e '.[bench]')"
    return None


@contextmanager
def queue_url(url: str) -> Iterator[None]:
    """CALIBER_QUEUE_URL set in this process (the claimers' and pinions' env get it too)."""
    old = os.environ.get("CALIBER_QUEUE_URL")
    os.environ["CALIBER_QUEUE_URL"] = url
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CALIBER_QUEUE_URL", None)
        else:
            os.environ["CALIBER_QUEUE_URL"] = old


def caliber_backend() -> Any:
    from caliber.queue.registry import open_backend
    from caliber.queue.target import resolve_target

    target = resolve_target()
    if target.kind != "postgres":
        raise Unavailable(f"CALIBER_QUEUE_URL does not select the PostgreSQL queue yet "
                          f"(it gave {target.kind!r})")
    return open_backend(target)


# --- the two systems ------------------------------------------------------------------------


class CaliberPG:
    key = "caliber"

    def __init__(self, url: str, root: Path) -> None:
        from bench.caliber_side import use_home

        self.url = url
        self.home = root / "caliber-home"
        use_home(self.home)
        self.backend = caliber_backend()

    def put(self, workflow: Any) -> None:
        from caliber.queue.api import make_workload

        self.backend.put(make_workload(workflow, PINION))

    def enqueue(self, n: int) -> None:
        from bench.caliber_side import one_task_workflow

        for i in range(n):
            self.put(one_task_workflow(i))

    def worker(self, *, wait: float = 0.05, forever: bool = False) -> list[str]:
        return [str(BIN / "caliber"), "pinion", "init", PINION, "-a", "0" if forever else "1",
                "-w", f"{wait:g}", "--quiet"]

    def env(self) -> dict[str, str]:
        return worker_env(CALIBER_HOME=str(self.home), CALIBER_QUEUE_URL=self.url)

    def done(self, n: int) -> bool:
        from caliber.queue.workload import WorkloadStatus

        return not any(self.backend.list_workloads(pinion=PINION, status=s, limit=1)
                       for s in (WorkloadStatus.QUEUED, WorkloadStatus.RUNNING))

    def verify(self, n: int) -> None:
        from caliber.queue.workload import WorkloadStatus

        done = self.backend.list_workloads(pinion=PINION, status=WorkloadStatus.COMPLETED)
        returns = sorted(self.backend.get_results(w.results_id)["noop"] for w in done)
        if returns != list(range(1, n + 1)):
            raise RuntimeError(f"Caliber: {len(done)} of {n} workloads completed")

    def close(self) -> None:
        self.backend.close()


class Procrastinate:
    key = "procrastinate"

    def __init__(self, url: str, root: Path) -> None:
        import psycopg

        from bench.procrastinate_app import make_app

        self.url = url
        self.app, self.noop, self.stamp = make_app(url)
        with self.app.open():
            self.app.schema_manager.apply_schema()
        self.conn = psycopg.connect(url, autocommit=True)

    def enqueue(self, n: int) -> None:
        with self.app.open():
            for i in range(n):
                self.noop.defer(x=i)

    def put_stamp(self, path: str) -> None:
        with self.app.open():
            self.stamp.defer(path=path)

    def worker(self, *, wait: float = 0.05, forever: bool = False) -> list[str]:
        return [str(BIN / "procrastinate"), "--app=bench.procrastinate_app.app",
                "--log-level=warning", "worker", "-q", "bench",
                *([] if forever else ["--one-shot"])]

    def env(self) -> dict[str, str]:
        return worker_env(BENCH_PG_URL=self.url)

    def count(self, status: str) -> int:
        row = self.conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE status = %s",
                                (status,)).fetchone()
        return int(row[0]) if row else 0

    def done(self, n: int) -> bool:
        return self.count("succeeded") + self.count("failed") >= n

    def verify(self, n: int) -> None:
        # procrastinate keeps no return values: every job succeeded is what can be checked
        if self.count("succeeded") != n:
            raise RuntimeError(f"procrastinate: {self.count('succeeded')} of {n} succeeded")

    def close(self) -> None:
        self.conn.close()


# --- drain and wake-up ------------------------------------------------------------------------


def drain(system: Any, n: int, k: int, workdir: Path, timeout: float) -> float:
    """Queue n (untimed), start k workers at once, seconds until all n are finished."""
    workdir.mkdir(parents=True, exist_ok=True)
    system.enqueue(n)
    procs = []
    t0 = time.perf_counter()
    try:
        for i in range(k):
            procs.append(start(system.worker(), env=system.env(), cwd=workdir,
                               log=workdir / f"worker-{i}.log"))
        while not system.done(n):
            if all(p.poll() is not None for p in procs) and not system.done(n):
                raise RuntimeError(f"{system.key}: the workers exited before the drain was "
                                   f"done: {log_tail(workdir / 'worker-0.log', 5)}")
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"{system.key}: not done after {timeout:.0f} s")
            time.sleep(0.005)
        seconds = time.perf_counter() - t0
    finally:
        for p in procs:
            stop(p)
    system.verify(n)
    return seconds


def wake_ups(system: Any, count: int, workdir: Path) -> list[float]:
    """Seconds from just before the put to the task's start, ``count`` times, the worker idle
    (its last look done) before each put."""
    import random

    import caliber
    from bench import tasks
    from bench.caliber_side import BENCH_DIR

    workdir.mkdir(parents=True, exist_ok=True)
    proc = start(system.worker(wait=10, forever=True), env=system.env(), cwd=workdir,
                 log=workdir / "idle.log")
    out = []
    try:
        time.sleep(1.0 if count == 1 else 2.0)  # started, looked once, found nothing: idle
        for i in range(count):
            stamp = workdir / f"stamp-{i}"
            t0 = time.time()
            if system.key == "caliber":
                system.put(caliber.Workflow(caliber.Process([caliber.Task(
                    tasks.stamp, args=[str(stamp)])]), name="stamp", base_dir=BENCH_DIR))
            else:
                system.put_stamp(str(stamp))
            deadline = time.perf_counter() + 30
            while not stamp.exists() or not stamp.read_text():
                if proc.poll() is not None or time.perf_counter() > deadline:
                    raise RuntimeError(f"{system.key}: the idle worker did not run the job: "
                                       f"{log_tail(workdir / 'idle.log', 5)}")
                time.sleep(0.002)
            out.append(float(stamp.read_text()) - t0)
            time.sleep(random.uniform(0.5, 1.0))  # idle again, at no fixed phase
    finally:
        stop(proc)
    return out


# --- the team ---------------------------------------------------------------------------------


def server_cpu(pid: int) -> float:
    """CPU seconds of the server: the postmaster, its live children, and its reaped ones."""
    tick = os.sysconf("SC_CLK_TCK")

    def fields(p: int | str) -> list[str] | None:
        try:
            text = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            return None
        return text[text.rindex(")") + 2:].split()

    total = 0.0
    main = fields(pid)
    if main is not None:  # utime stime cutime cstime: fields 14-17, here 11-14
        total += sum(int(x) for x in main[11:15]) / tick
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            f = fields(entry.name)
            if f is not None and f[1] == str(pid):  # ppid
                total += (int(f[11]) + int(f[12])) / tick
    return total


def fill_team(kind: str, url: str, count: int) -> None:
    if kind == "sql":
        import psycopg

        from bench.pg_claimers import FLOOR_SCHEMA
        from bench.pg_claimers import PINION as TEAM_PINION

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(FLOOR_SCHEMA)
            conn.execute("INSERT INTO floor_jobs (pinion, status, payload) SELECT %s, 'queued', "
                         "'{\"noop\": 1}' FROM generate_series(1, %s)", (TEAM_PINION, count))
        return
    from bench.caliber_side import one_task_workflow
    from bench.pg_claimers import PINION as TEAM_PINION
    from caliber.queue.api import make_workload
    from caliber.results.model import new_id

    backend = caliber_backend()
    try:
        template = make_workload(one_task_workflow(0), TEAM_PINION)
        for _ in range(count):
            backend.put(template.model_copy(update={"id": new_id()}))
    finally:
        backend.close()


def team_round(kind: str, url: str, claimers: int, total: int, pg_pid: int,
               root: Path) -> dict[str, float]:
    """One level of the team: ``claimers`` claimers, ``total`` claims in all."""
    cycles = max(1, total // claimers)
    fill_team(kind, url, cycles * claimers)
    procs = []
    env = worker_env(CALIBER_QUEUE_URL=url, CALIBER_HOME=str(root / "team-home"))
    left = claimers
    while left:
        threads = min(PER_PROCESS, left)
        left -= threads
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "bench.pg_claimers", kind, url, str(threads), str(cycles)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env, cwd=REPO))
    try:
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{kind} claimers did not start: "
                                   f"{(p.stderr.read() if p.stderr else '')[-500:]}")
        cpu0 = server_cpu(pg_pid)
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        reports = []
        for p in procs:
            out, err = p.communicate(timeout=600)
            if p.returncode != 0:
                raise RuntimeError(f"{kind} claimers failed: {err[-500:]}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
        time.sleep(0.3)  # the server's backends end and are reaped
        cpu1 = server_cpu(pg_pid)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    errors = [e for r in reports for e in r["errors"]]
    if errors:
        raise RuntimeError(f"{kind} claimers: {errors[0]}")
    latencies = sorted(x for r in reports for x in r["latencies"])
    wall = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    claims = len(latencies)
    if claims < cycles * claimers:
        raise RuntimeError(f"{kind}: {claims} of {cycles * claimers} claims")
    cores = os.cpu_count() or 1
    return {
        "rate": claims / wall,
        "p99": latencies[min(claims - 1, math.ceil(0.99 * claims) - 1)],
        "server_ms": (cpu1 - cpu0) / claims * 1000,
        "server_share": (cpu1 - cpu0) / (wall * cores),
        "client_share": sum(r["cpu"] for r in reports) / (wall * cores),
    }


# --- rows -------------------------------------------------------------------------------------


def measure(quick: bool, reps: int, root: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Samples by key, and why a side is missing (key -> reason)."""
    got: dict[str, Any] = {}
    missing: dict[str, str] = {}
    cal_missing, pro_missing = caliber_missing(), procrastinate_missing()
    if cal_missing:
        missing["caliber"] = cal_missing
    if pro_missing:
        missing["procrastinate"] = pro_missing
    n = 10 if quick else 1000
    wakes = 1 if quick else 5
    reps = 1 if quick else reps  # quick: does it work, in as few seconds as it can
    team = QUICK_TEAM if quick else TEAM
    total = 16 if quick else 4000
    timeout = 120.0 if quick else 600.0
    makers: dict[str, Callable[[str, Path], Any]] = {}
    if not pro_missing:
        makers["procrastinate"] = Procrastinate
    if not cal_missing:
        makers["caliber"] = CaliberPG

    def attempt(key: str, what: str, fn: Callable[[], Any]) -> None:
        if f"{key}:{what}" in missing:
            return
        try:
            value = fn()
        except Exception as exc:
            missing[f"{key}:{what}"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            print(f"  postgres {what} {key}: failed ({missing[f'{key}:{what}']})", flush=True)
            return
        got.setdefault(f"{key}:{what}", []).append(value)

    with server() as pg:
        got["version"] = pg.version
        for rep in range(reps):
            for k in PINIONS:
                for key, make in makers.items():
                    def one(key: str = key, make: Callable[[str, Path], Any] = make,
                            k: int = k, rep: int = rep) -> float:
                        work = root / f"pg-{key}-{k}-{rep}"
                        with queue_url(url := fresh_database(pg)):
                            system = make(url, work)
                            try:
                                return drain(system, n, k, work, timeout)
                            finally:
                                system.close()
                    attempt(key, f"drain-{k}", one)
                    if f"{key}:drain-{k}" in got:
                        print(f"  postgres drain {n:,} x{k} {key}: "
                              f"{got[f'{key}:drain-{k}'][-1]:.3f} s", flush=True)
            for key, make in makers.items():
                def wake(key: str = key, make: Callable[[str, Path], Any] = make,
                         rep: int = rep) -> float:
                    work = root / f"pg-wake-{key}-{rep}"
                    with queue_url(url := fresh_database(pg)):
                        system = make(url, work)
                        try:
                            values = wake_ups(system, wakes, work)
                        finally:
                            system.close()
                    return sorted(values)[len(values) // 2]
                attempt(key, "wake", wake)
                if f"{key}:wake" in got:
                    print(f"  postgres wake-up {key}: {got[f'{key}:wake'][-1] * 1000:.0f} ms",
                          flush=True)
        for i, claimers in enumerate(team):
            for _ in range(reps):
                for kind in ("sql", *(["caliber"] if not cal_missing else [])):
                    def level(kind: str = kind, claimers: int = claimers) -> dict[str, float]:
                        with queue_url(url := fresh_database(pg)):
                            return team_round(kind, url, claimers, total, pg.pid, root)
                    attempt(kind, f"team-{i}", level)
                    if f"{kind}:team-{i}" in got:
                        f = got[f"{kind}:team-{i}"][-1]
                        print(f"  postgres team {claimers} {kind}: {f['rate']:,.0f} claims/s, "
                              f"p99 {f['p99'] * 1000:.1f} ms, server "
                              f"{f['server_ms']:.2f} ms/claim ({f['server_share']:.0%} of the "
                              f"machine), claimers {f['client_share']:.0%}", flush=True)
    return got, missing


def rows(quick: bool, reps: int, root: Path) -> list[Row]:
    n = 10 if quick else 1000
    team = QUICK_TEAM if quick else TEAM
    try:
        got, missing = measure(quick, reps, root)
        error = None
    except Exception as exc:  # a figure that cannot be measured here says why
        got, missing, error = {}, {}, f"{type(exc).__name__}: {exc}".splitlines()[0]

    def why(*keys: str) -> str | None:
        reasons = [error] if error else [missing[k] for k in keys if k in missing]
        return "; ".join(dict.fromkeys(r for r in reasons if r)) or None

    out = []
    for k in PINIONS:
        row = Row(id=f"pg-drain-{k}", section=SECTION,
                  figure=f"drain {n:,} jobs, {k} worker{'s' if k > 1 else ''}", unit="s",
                  better="lower",
                  baseline=f"procrastinate, {k} worker process{'es' if k > 1 else ''}")
        row.fill(got.get(f"caliber:drain-{k}", []), got.get(f"procrastinate:drain-{k}", []))
        row.unavailable = why("caliber", f"caliber:drain-{k}", "procrastinate",
                              f"procrastinate:drain-{k}")
        out.append(row)
    row = Row(id="pg-wake", section=SECTION,
              figure="wake-up of an idle worker: put to the task's start (`-w 10`)", unit="s",
              better="lower", baseline="procrastinate's worker (LISTEN/NOTIFY)",
              target="< 1 s", target_op="<", target_value=1.0, target_on="subject")
    row.fill(got.get("caliber:wake", []), got.get("procrastinate:wake", []))
    row.unavailable = why("caliber", "caliber:wake", "procrastinate", "procrastinate:wake")
    out.append(row)
    specs = [("rate", "claims per second", "ops/s", "higher", 1.0),
             ("p99", "p99 of one claim", "s", "lower", 1.0),
             ("server", "server CPU per claim cycle", "ms", "lower", 1.0)]
    for what, label, unit, better, scale in specs:
        for i, claimers in enumerate(team):
            key = "server_ms" if what == "server" else what
            row = Row(id=f"pg-team-{what}-{i}", section=TEAM_SECTION,
                      figure=f"{label}, {claimers} claimers", unit=unit, better=better,
                      baseline="one SQL statement a step (the floor)")
            mine = [f[key] * scale for f in got.get(f"caliber:team-{i}", [])]
            floor = [f[key] * scale for f in got.get(f"sql:team-{i}", [])]
            row.fill(mine, floor)
            if what == "server":
                shares = [f"{name} {sorted(f['server_share'] for f in fs)[len(fs) // 2]:.0%} "
                          f"(claimers {sorted(f['client_share'] for f in fs)[len(fs) // 2]:.0%})"
                          for name, fs in (("Caliber", got.get(f"caliber:team-{i}", [])),
                                           ("floor", got.get(f"sql:team-{i}", []))) if fs]
                if shares:
                    row.note = "the server's share of the machine's CPU: " + ", ".join(shares)
            row.unavailable = why("caliber", f"caliber:team-{i}", f"sql:team-{i}")
            out.append(row)
    if got.get("version"):
        out[0].note = f"PostgreSQL {got['version']}"
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    import datetime as dt
    import tempfile

    from bench.report import replace_rows
    from bench.run import git_commit

    parser = argparse.ArgumentParser(
        prog="python -m bench.postgres",
        description="Measure the PostgreSQL queue beside procrastinate and a team of claimers, "
                    "and put the rows into BENCHMARKS.md and bench/results.json.")
    parser.add_argument("--quick", action="store_true", help="small sizes, figures printed only")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--report", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--data", type=Path, default=REPO / "bench" / "results.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="caliber-bench-pg-") as tmp:
        os.environ["CALIBER_HOME"] = str(Path(tmp) / "home")  # never the user's own
        os.environ["NO_COLOR"] = "1"
        found = rows(args.quick, args.reps, Path(tmp))
    for row in found:
        s, b, r = row.subject_stats, row.baseline_stats, row.ratio_stats
        print(f"{row.id}: Caliber {s and s['median']} / {row.baseline} "
              f"{b and b['median']} = {r and r['median']}"
              + (f" (unavailable: {row.unavailable})" if row.unavailable else ""))
    print(f"({time.perf_counter() - started:.0f} s in all)")
    if args.quick:
        return 0
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    found[0].note = (f"these sections measured {when} at commit `{git_commit()}` by `python -m "
                     f"bench.postgres`, {args.reps} rounds; {found[0].note}")
    replace_rows(args.report, args.data, found)
    print(f"bench: wrote {args.report} and {args.data}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
