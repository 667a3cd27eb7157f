"""The benchmark suite, one command: ``python -m bench.run [--quick]`` (see BENCHMARKS.md).

Runs Caliber and its peers (Huey, RQ) side by side in one run on this machine, on the same
work, and writes BENCHMARKS.md (figures as ratios, the machine, the method, the previous run's
figures beside the new ones) and the data file bench/results.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import (
    concurrency,
    heavy_arrays,
    heavy_attachments,
    heavy_outputs,
    heavy_speckle,
    parallel_branches,
    remote_log,
)
from bench.common import BIN, REPO, Settings, Unavailable, time_command, worker_env
from bench.report import Row, rows_to_json, write
from bench.systems import DrainResult, DrainSystem, drain_once, interleaved

PEERS = {"huey": "Huey", "rq": "RQ"}
SIZE_NAMES = ("small", "large")
OPS = ("put", "claim", "complete")


def expected_row_ids() -> list[str]:
    """Every row a complete report has (quick or full: the sizes differ, the rows do not)."""
    ids = []
    for kind in ("drain", "e2e"):
        ids += [f"{kind}-{size}-{peer}" for size in SIZE_NAMES for peer in PEERS]
    ids += ["task-overhead-store", "task-overhead-nostore"]
    ids += [f"job-overhead-{peer}" for peer in PEERS]
    ids += ["fork-floor", "fork-floor-server"]
    ids += [f"ops-{op}-{i}-{peer}" for op in OPS for i in range(3) for peer in PEERS]
    ids += [f"ops-{op}-flat" for op in OPS]
    ids += [f"list-{i}" for i in range(3)]
    ids += ["startup-help", "startup-list"]
    ids += [f"memory-{peer}" for peer in PEERS]
    ids += remote_log.expected_ids()
    ids += heavy_attachments.expected_ids()
    ids += heavy_arrays.expected_ids()
    ids += heavy_outputs.expected_ids()
    ids += heavy_speckle.expected_ids()
    from bench import postgres

    ids += postgres.expected_ids()
    ids += parallel_branches.expected_ids()
    ids += concurrency.expected_ids()
    return ids


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark Caliber against Huey and RQ and write BENCHMARKS.md.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and 2 repetitions: checks that the suite works "
                             "(writes to a temp folder unless --report/--data are given)")
    parser.add_argument("--reps", type=int, help="repetitions of every figure (default 3; "
                        "quick 2)")
    parser.add_argument("--report", type=Path, help="the report (default BENCHMARKS.md)")
    parser.add_argument("--data", type=Path, help="the data file (default bench/results.json)")
    parser.add_argument("--skip-rq", action="store_true",
                        help="leave RQ out (no redis-server here); its rows say so")
    parser.add_argument("--no-install", action="store_true",
                        help="never install redis-server, even as root")
    args = parser.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be at least 1")
    return args


# --- pieces ---------------------------------------------------------------------------------


def samples(result: DrainResult | None, what: Callable[[Any], float]) -> list[float]:
    return [what(s) for s in result.samples] if result else []


def drain_rows(
    settings: Settings,
    results: dict[int, dict[str, DrainResult]],
    caliber_missing: str | None,
    peer_missing: dict[str, str],
) -> list[Row]:
    rows = []
    small, large = settings.drain_sizes
    # SPEC section 9: the drain of small workloads is a guard against RQ's forking worker,
    # which isolates each job as Caliber does; Huey (jobs inside its worker) is a reference.
    targets = {"huey": ("", ""), "rq": ("<= 0.7 (guard: RQ's forking worker)", "<=")}
    for kind, section, what in (
        ("drain", "Drain: N queued single-task jobs, one worker", lambda s: s.drain),
        ("e2e", "End to end: queue N jobs, then drain them", lambda s: s.end_to_end),
    ):
        for size_name, n in zip(SIZE_NAMES, settings.drain_sizes, strict=True):
            by_system = results.get(n, {})
            for peer, peer_name in PEERS.items():
                target, op = targets[peer] if kind == "drain" else ("", "")
                row = Row(
                    id=f"{kind}-{size_name}-{peer}", section=section,
                    figure=f"{'drain' if kind == 'drain' else 'queue + drain'} {n:,} jobs",
                    unit="s", better="lower", baseline=peer_name, target=target, target_op=op,
                    target_value=0.7,
                )
                rows.append(row.fill(samples(by_system.get("caliber"), what),
                                     samples(by_system.get(peer), what)))
                mark_missing(row, by_system, caliber_missing, peer_missing, peer)
    for peer, peer_name in PEERS.items():
        row = Row(
            id=f"job-overhead-{peer}", section="Overhead", figure="per job, marginal "
            f"(end to end at {large:,} - at {small:,}) / {large - small:,}",
            unit="ms/job", better="lower", baseline=peer_name,
        )
        row.fill(marginal(results, "caliber", small, large),
                 marginal(results, peer, small, large))
        mark_missing(row, results.get(large, {}), caliber_missing, peer_missing, peer)
        rows.append(row)
    return rows


def fork_floor_row(settings: Settings, results: dict[int, dict[str, DrainResult]],
                   floors: Sequence[float], caliber_missing: str | None, *,
                   server: bool = False) -> Row:
    """Caliber's time per workload in the large drain against the physical limit of a fresh
    process per workload: fork + exit + wait from a warm pinion, or (``server``) from a
    process holding what Caliber's fork server holds (median of as many forks)."""
    n = settings.drain_sizes[1]
    if server:
        row = Row(
            id="fork-floor-server", section="Overhead",
            figure=f"per workload, drain of {n:,} / {n:,} (pinion start-up included)",
            unit="ms/job", better="lower",
            baseline="fork + exit + wait from the fork server's modules",
            note=f"the floor of Caliber's own forks: {n:,} forks of a fresh interpreter "
                 "holding only the child's modules, as the fork server does (`python -m "
                 "bench.pinion_profile --floor N --server`)",
        )
    else:
        row = Row(
            id="fork-floor", section="Overhead",
            figure=f"per workload, drain of {n:,} / {n:,} (pinion start-up included)",
            unit="ms/job", better="lower", baseline="fork + exit + wait from a warm pinion",
            target="<= 3 ms per workload", target_op="<=", target_value=3.0,
            target_on="subject",
            note=f"the floor: {n:,} forks of a process with the pinion's modules imported, "
                 "each child exiting at once (`python -m bench.pinion_profile --floor N`); the "
                 "ratio is how far above it the pinion is",
        )
    caliber = results.get(n, {}).get("caliber")
    row.fill(samples(caliber, lambda s: s.drain / n * 1000), floors)
    if caliber_missing or (caliber and caliber.error):
        row.unavailable = (caliber_missing or str(caliber and caliber.error)).splitlines()[0]
    return row


def measure_fork_floor(settings: Settings, *, server: bool = False) -> list[float]:
    """``reps`` medians of ``drain_sizes[1]`` forks each, every one in a fresh interpreter
    (``server``: holding only the child's modules)."""
    out = []
    for _ in range(settings.reps):
        done = subprocess.run(
            [sys.executable, "-m", "bench.pinion_profile", "--floor",
             str(settings.drain_sizes[1]), *(["--server"] if server else [])],
            capture_output=True, text=True, env=worker_env(), cwd=REPO, check=True)
        out.append(float(done.stdout.strip()))
    print(f"  fork floor{' (fork server)' if server else ''}: "
          f"{sorted(out)[len(out) // 2]:.3f} ms", flush=True)
    return out


def marginal(results: dict[int, dict[str, DrainResult]], key: str, small: int,
             large: int) -> list[float]:
    a = results.get(small, {}).get(key)
    b = results.get(large, {}).get(key)
    if not a or not b:
        return []
    return [(y.end_to_end - x.end_to_end) / (large - small) * 1000
            for x, y in zip(a.samples, b.samples, strict=False)]


def mark_missing(row: Row, by_system: dict[str, DrainResult], caliber_missing: str | None,
                 peer_missing: dict[str, str], peer: str) -> None:
    reasons = []
    if caliber_missing:
        reasons.append(caliber_missing)
    elif by_system.get("caliber") and by_system["caliber"].error:
        reasons.append(f"Caliber failed: {by_system['caliber'].error}")
    if peer in peer_missing:
        reasons.append(f"{PEERS[peer]}: {peer_missing[peer]}")
    elif by_system.get(peer) and by_system[peer].error:
        reasons.append(f"{PEERS[peer]} failed: {by_system[peer].error}")
    if reasons:
        row.unavailable = "; ".join(r.splitlines()[0] for r in reasons)


def overhead_rows(settings: Settings, root: Path, caliber_missing: str | None) -> list[Row]:
    from bench.caliber_side import use_home, workflow_overhead

    n = settings.workflow_tasks
    figures: list[dict[str, float]] = []
    error = caliber_missing
    if error is None:
        try:
            use_home(root / "overhead-home")
            workflow_overhead(n, root / "overhead-work")  # warm-up: imports, first store
            for _ in range(settings.reps):
                figures.append(workflow_overhead(n, root / "overhead-work"))
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
    rows = []
    for key, what in (("store", "run_store"), ("nostore", "run")):
        label = "with its Results stored" if key == "store" else "Results not stored"
        row = Row(
            id=f"task-overhead-{key}", section="Overhead",
            figure=f"per task, in a {n:,}-task workflow run in-process ({label})",
            unit="ms/task", better="lower", baseline="calling the function directly",
            target="< 1 ms" if key == "store" else "", target_op="<" if key == "store" else "",
            target_value=1.0, target_on="subject",
            note="the ratio is the overhead over the direct call's own cost "
                 "(a trivial function, so it is large by construction)" if key == "store"
                 else "",
        )
        row.fill([(f[what] - f["direct"]) / n * 1000 for f in figures],
                 [f["direct"] / n * 1000 for f in figures])
        if error:
            row.unavailable = error.splitlines()[0]
        rows.append(row)
    return rows


def ops_rows(settings: Settings, ops: dict[str, Any], list_times: dict[int, list[float]],
             pass_times: dict[int, list[float]], list_notes: dict[int, str],
             caliber_missing: str | None,
             list_missing: str | None, peer_missing: dict[str, str]) -> list[Row]:
    rows = []
    sizes = settings.queue_sizes
    caliber = ops.get("caliber")
    for op in OPS:
        for i, size in enumerate(sizes):
            for peer, peer_name in PEERS.items():
                row = Row(id=f"ops-{op}-{i}-{peer}", section="Queue operations per second",
                          figure=f"{op} at {size:,} queued", unit="ops/s", better="higher",
                          baseline=peer_name)
                theirs = ops.get(peer)
                row.fill(caliber.rates.get((op, size), []) if caliber else [],
                         theirs.rates.get((op, size), []) if theirs else [])
                reasons = [caliber_missing or (caliber.error if caliber else None),
                           peer_missing.get(peer) or (theirs.error if theirs else None)]
                if any(reasons):
                    row.unavailable = "; ".join(str(r).splitlines()[0] for r in reasons if r)
                rows.append(row)
    for op in OPS:
        row = Row(id=f"ops-{op}-flat", section="Queue operations per second",
                  figure=f"{op}: flat from {sizes[0]:,} to {sizes[-1]:,} queued",
                  unit="ops/s", better="higher", baseline=f"Caliber at {sizes[0]:,}",
                  target=">= 0.8 (flat)", target_op=">=", target_value=0.8)
        if caliber:
            row.fill(caliber.rates.get((op, sizes[-1]), []),
                     caliber.rates.get((op, sizes[0]), []))
        if caliber_missing or (caliber and caliber.error):
            row.unavailable = (caliber_missing or str(caliber.error)).splitlines()[0]
        rows.append(row)
    for i, size in enumerate(sizes):
        row = Row(id=f"list-{i}", section="caliber queue list",
                  figure=f"`caliber queue list` with {size:,} queued", unit="s",
                  better="lower", baseline="python -c pass", target="< 10",
                  target_op="<", target_value=10.0)
        row.fill(list_times.get(size, []), pass_times.get(size, []))
        row.note = list_notes.get(size, "")
        row.extra["lower_bound"] = row.note.startswith("stopped after")
        if size in list_notes and size not in list_times:
            row.unavailable = list_notes[size]
        if list_missing:
            row.unavailable = list_missing.splitlines()[0]
        rows.append(row)
    return rows


LIST_SLOW = 5.0  # seconds: a `caliber queue list` this slow is run once per size, not reps times
LIST_TIMEOUT = 60.0  # seconds: a slower one is stopped, and larger sizes are not tried


def time_list_at(home_of: Callable[[], Path | None], reps: int, list_times: dict[int, list[float]],
                 pass_times: dict[int, list[float]], notes: dict[int, str],
                 errors: list[str]) -> Callable[[int], None]:
    """Time `caliber queue list` (and `python -c pass`) against the queue ops' Caliber home."""
    too_slow: list[str] = []

    def at_size(size: int) -> None:
        home = home_of()
        if home is None or errors:
            return
        env = worker_env(CALIBER_HOME=str(home))
        for _ in range(reps):
            pass_times.setdefault(size, []).append(
                time_command([sys.executable, "-c", "pass"], env=env))
        if too_slow:
            notes[size] = f"not run: {too_slow[0]}"
            return
        try:
            for _ in range(reps):
                seconds = time_command([str(BIN / "caliber"), "queue", "list"], env=env,
                                       timeout=LIST_TIMEOUT)
                list_times.setdefault(size, []).append(seconds)
                if seconds > LIST_SLOW:
                    notes[size] = f"run once only: it took over {LIST_SLOW:g} s"
                    break
            print(f"  caliber queue list at {size:,}: "
                  f"{sorted(list_times[size])[len(list_times[size]) // 2]:.3f} s", flush=True)
        except subprocess.TimeoutExpired:
            list_times.setdefault(size, []).append(LIST_TIMEOUT)
            notes[size] = (f"stopped after {LIST_TIMEOUT:g} s: the figure is a lower bound "
                           "(the command did not finish)")
            too_slow.append(f"it did not finish within {LIST_TIMEOUT:g} s at {size:,}")
            print(f"  caliber queue list at {size:,}: over {LIST_TIMEOUT:g} s, stopped", flush=True)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    return at_size


def startup_rows(settings: Settings, root: Path) -> list[Row]:
    home = root / "startup-home"
    home.mkdir(parents=True, exist_ok=True)
    env = worker_env(CALIBER_HOME=str(home))
    commands = {
        "pass": [sys.executable, "-c", "pass"],
        "help": [str(BIN / "caliber"), "--help"],
        "list": [str(BIN / "caliber"), "queue", "list"],
    }
    times: dict[str, list[float]] = {k: [] for k in commands}
    errors: dict[str, str] = {}
    for cmd in commands.values():  # warm the file cache once
        subprocess.run(cmd, env=env, capture_output=True)
    for _ in range(settings.startup_reps):
        for key, cmd in commands.items():
            if key in errors:
                continue
            try:
                times[key].append(time_command(cmd, env=env))
            except Exception as exc:
                errors[key] = str(exc)
    rows = []
    for key, target in (("help", ""), ("list", "< 10")):
        row = Row(id=f"startup-{key}", section="Start-up",
                  figure=f"`{' '.join(['caliber', *commands[key][1:]])}`"
                  + (" (empty queue)" if key == "list" else ""),
                  unit="s", better="lower", baseline="python -c pass", target=target,
                  target_op="<" if target else "", target_value=10.0)
        row.fill(times[key], times["pass"])
        if key in errors or "pass" in errors:
            row.unavailable = (errors.get(key) or errors["pass"]).splitlines()[0]
        rows.append(row)
    print("  start-up: " + ", ".join(
        f"{k} {sorted(v)[len(v) // 2] * 1000:.0f} ms" for k, v in times.items() if v), flush=True)
    return rows


def memory_rows(settings: Settings, systems: Sequence[DrainSystem], root: Path,
                caliber_missing: str | None, peer_missing: dict[str, str]) -> list[Row]:
    n = settings.memory_n
    peaks: dict[str, tuple[float, float]] = {}
    errors: dict[str, str] = {}
    for system in systems:
        try:
            sample = drain_once(system, n, root / f"memory-{system.key}",
                                timeout=settings.drain_timeout, memory=True)
            assert sample.peak_total_mib is not None and sample.peak_single_mib is not None
            peaks[system.key] = (sample.peak_total_mib, sample.peak_single_mib)
            print(f"  peak memory draining {n:,} {system.key}: {sample.peak_total_mib:.0f} MiB",
                  flush=True)
        except Exception as exc:
            errors[system.key] = f"{type(exc).__name__}: {exc}"
    rows = []
    for peer, peer_name in PEERS.items():
        row = Row(id=f"memory-{peer}", section="Peak memory",
                  figure=f"worker draining {n:,} jobs (whole process tree)", unit="MiB",
                  better="lower", baseline=peer_name)
        mine, theirs = peaks.get("caliber"), peaks.get(peer)
        row.fill([mine[0]] if mine else [], [theirs[0]] if theirs else [])
        if mine and theirs:
            row.note = (f"largest single process: Caliber {mine[1]:.0f} MiB, "
                        f"{peer_name} {theirs[1]:.0f} MiB")
        reasons = [caliber_missing or errors.get("caliber"),
                   peer_missing.get(peer) or errors.get(peer)]
        if any(reasons):
            row.unavailable = "; ".join(str(r).splitlines()[0] for r in reasons if r)
        rows.append(row)
    return rows


def machine(redis_version: str, load_at_start: float) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil

        memory = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    except Exception:
        memory = "?"

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "cores": f"{os.cpu_count()} ({cpu})",
        "memory": memory,
        "system": platform.platform(),
        "Python": platform.python_version(),
        "SQLite": sqlite3.sqlite_version,
        "Redis server": redis_version or "not used",
        "load average (1 min) at start / end": f"{load_at_start:.2f} / {os.getloadavg()[0]:.2f} "
        "(other work on the machine during the run shows here)",
        "packages": f"caliber-workflows {version('caliber-workflows')}, huey "
                    f"{version('huey')}, rq {version('rq')}, redis-py {version('redis')}, "
                    f"procrastinate {version('procrastinate')}, psycopg {version('psycopg')}",
    }


def git_commit() -> str:
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
                           capture_output=True, text=True)
    commit = done.stdout.strip() or "unknown"
    return commit + (" + uncommitted changes in src/" if dirty.stdout.strip() else "")


# --- the run --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # As people run them: Python caches its compiled modules. A shell that says not to
    # (PYTHONDONTWRITEBYTECODE) would make every command compile Caliber (and the peers)
    # anew, tens of ms each start-up.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    settings = (Settings.small(args.reps or 2) if args.quick else Settings.full(args.reps or 3))
    if args.quick and (args.report is None or args.data is None):
        out = Path(tempfile.gettempdir()) / "caliber-bench-quick"
        report = args.report or out / "BENCHMARKS.md"
        data = args.data or out / "results.json"
    else:
        report = args.report or REPO / "BENCHMARKS.md"
        data = args.data or REPO / "bench" / "results.json"
    started = time.perf_counter()
    load_at_start = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="caliber-bench-"))
    os.environ["CALIBER_HOME"] = str(root / "home")  # never the user's own queue
    os.environ["NO_COLOR"] = "1"
    peer_missing: dict[str, str] = {}
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, root, True)
        from bench.peers import RQ, Huey

        factories: list[Callable[[], Any]] = []
        caliber_missing: str | None = None
        list_missing: str | None = None
        try:
            from bench.caliber_side import Caliber, check_command

            Caliber.check()
            factories.append(Caliber)
        except Unavailable as exc:
            caliber_missing = f"Caliber: {exc}"
        try:
            check_command("queue", "list")
        except Unavailable as exc:
            list_missing = str(exc)
        factories.append(Huey)
        redis_version = ""
        if args.skip_rq:
            peer_missing["rq"] = "left out (--skip-rq)"
        else:
            from bench.redis_server import RedisServer

            try:
                server = stack.enter_context(RedisServer(install=not args.no_install))
            except Unavailable as exc:
                print(f"bench: {exc}", file=sys.stderr)
                return 2
            redis_version = server.version
            url = server.url
            factories.append(lambda: RQ(url))
        systems: list[DrainSystem] = [make() for make in factories]
        keys = [s.key for s in systems]
        print(f"bench: {'quick' if settings.quick else 'full'} run of {', '.join(keys)} "
              f"({settings.reps} repetitions) in {root}", flush=True)
        if caliber_missing:
            print(f"bench: {caliber_missing}", flush=True)

        rows: list[Row] = []
        results = {
            n: interleaved(systems, n, settings.reps, root, timeout=settings.drain_timeout)
            for n in settings.drain_sizes
        }
        rows += drain_rows(settings, results, caliber_missing, peer_missing)
        for server in (False, True):
            rows.append(fork_floor_row(settings, results,
                                       measure_fork_floor(settings, server=server),
                                       caliber_missing, server=server))
        rows += overhead_rows(settings, root, caliber_missing)

        from bench import queue_ops

        ops_systems: list[Any] = [make() for make in factories]
        caliber_ops = next((s for s in ops_systems if s.key == "caliber"), None)
        list_times: dict[int, list[float]] = {}
        pass_times: dict[int, list[float]] = {}
        list_notes: dict[int, str] = {}
        list_errors: list[str] = []
        at_size = time_list_at(lambda: caliber_ops.home if caliber_ops else None,
                               settings.reps, list_times, pass_times, list_notes, list_errors)
        ops = queue_ops.measure(ops_systems, settings.queue_sizes, settings.ops_per_batch,
                                settings.reps, root, at_size=at_size)
        list_missing = list_missing or caliber_missing or (list_errors[0] if list_errors
                                                           else None)
        rows += ops_rows(settings, ops, list_times, pass_times, list_notes, caliber_missing,
                         list_missing, peer_missing)
        rows += startup_rows(settings, root)
        rows += memory_rows(settings, systems, root, caliber_missing, peer_missing)
        rows += remote_log.rows(settings.quick, settings.reps, root)
        rows += heavy_attachments.rows(settings.quick, settings.reps, root)
        rows += heavy_arrays.rows(settings.quick, settings.reps, root)
        rows += heavy_outputs.rows(settings.quick, settings.reps, root)
        rows += heavy_speckle.rows(settings.quick, settings.reps, root)
        from bench import postgres

        rows += postgres.rows(settings.quick, settings.reps, root)
        rows += parallel_branches.rows(settings.quick, settings.reps, root)
        rows += concurrency.rows(settings.quick, settings.reps, root)
        for system in systems:
            system.close()

        run = {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": git_commit(),
            "quick": settings.quick,
            "settings": {**settings.__dict__, "drain_sizes": list(settings.drain_sizes),
                         "queue_sizes": list(settings.queue_sizes)},
            "machine": machine(redis_version, load_at_start),
            "seconds": round(time.perf_counter() - started, 1),
            "rows": rows_to_json(rows),
        }
        write(report, data, run)
    missing = sorted(set(expected_row_ids()) - {r.id for r in rows})
    print(f"bench: done in {time.perf_counter() - started:.0f} s; wrote {report} and {data}"
          + (f" (rows missing: {missing})" if missing else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
