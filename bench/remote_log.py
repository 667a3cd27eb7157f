"""The remote queue against the length of its log: `caliber queue list` and a pinion's first
claim with few and with many finished workloads on the model.

The Speckle test server of the test suite (``tests/speckle_server``) runs in this process on
127.0.0.1. Its store is filled directly (untimed) with the versions a real queue would hold
for N finished workloads: per workload a *queued* version referencing its workload object, a
*claimed* and a *completed* version, one second apart, as format-2 messages of
:mod:`caliber.queue.speckle.events`. Then one workload is queued through Caliber itself: that
write reads the whole log once and writes a checkpoint, as the pinions writing the log would
have done every 100 events. Each figure is timed with N = ``small`` and N = ``large``, and
the requests the server answered are counted.

- ``caliber queue list``: the command as a user types it (a new process: start-up,
  connecting, reading the log, the first page of 100 workloads).
- a pinion's claim: a new connection (``SpeckleBackend.open``) and its first ``claim``, with
  a settle time of 0 (the settle wait is the same fixed sleep at every size); the claim is
  released again (untimed) for the next round.

``python -m bench.run`` includes these rows; ``python -m bench.remote_log [--quick]``
measures only them and puts them into the last run of bench/results.json and BENCHMARKS.md
(each row then says when and at which commit it was measured).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import BIN, REPO, time_command, worker_env
from bench.report import Row

FULL_SIZES = (100, 10_000)
QUICK_SIZES = (10, 100)
TARGET = 1.5  # the largest acceptable ratio of a figure at the large size to the small one
MODEL = "caliber-bench"


@dataclass
class Figures:
    """Samples per figure and size: wall seconds, Caliber's own CPU seconds, requests."""

    seconds: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    cpu: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    requests: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    error: str | None = None


def _id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def fill(server: Any, token: str, count: int) -> str:
    """A new project whose model ``MODEL`` holds ``count`` finished workloads; its id."""
    from tests.speckle_server.store import Model, Version

    from caliber.queue.speckle.events import Claim, Done, Put, message

    store = server.store
    with store.lock:
        user = store.user_for_token(token)
        project = store.create_project(user, f"bench {count}", None, None)
        model = Model(_id(project.id), project.id, MODEL, None, user.id, store.stamp(),
                      store.stamp())
        store.models[model.id] = model
        marker = {"id": _id("marker"), "speckle_type": "Base", "caliber": "queue event",
                  "totalChildrenCount": 0}
        objects = [marker]
        start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=3 * count + 3600)
        for n in range(count):
            wid = f"w{n:09d}"
            queued = start + dt.timedelta(seconds=3 * n)
            doc = {"id": wid, "pinion": "bench", "created_at": queued.isoformat(),
                   "queued_by": "bench@host", "secret": "0" * 64,
                   "workflow": {"caliber": 1, "name": "noop",
                                "process": {"type": "process", "tasks": []}}}
            workload = {"id": _id(wid), "speckle_type": "Base", "caliber": "workload",
                        "workload_id": wid, "workload_json": json.dumps(doc),
                        "@attachments": [], "totalChildrenCount": 0}
            results = {"id": _id("r" + wid), "speckle_type": "Base", "caliber": "results",
                       "totalChildrenCount": 0}
            objects += [workload, results]
            token_ = f"t{n:023d}"
            events = [
                (workload["id"], Put(workload=wid, pinion="bench", workflow="noop",
                                     created_at=queued.isoformat(), queued_by="bench@host")),
                (marker["id"], Claim(workload=wid, token=token_, owner="bench@host:1",
                                     lease=120, key="k")),
                (results["id"], Done(workload=wid, token=token_, results=f"r{n:09d}",
                                     workflow="noop", pinion="bench", status="completed",
                                     finished_at=queued.isoformat())),
            ]
            for i, (object_id, body) in enumerate(events):
                at = queued + dt.timedelta(seconds=i)
                version = Version(_id(f"{wid}-{i}"), project.id, model.id, object_id,
                                  message(f"{body.kind} {wid}", body), "caliber", user.id,
                                  at.isoformat(timespec="milliseconds").replace("+00:00", "Z"))
                store.add_version(version)
        store.save_objects(project.id, objects)
    return str(project.id)


def measure(sizes: tuple[int, int], reps: int, root: Path) -> Figures:
    """Time the list command and a claim at both sizes, rounds interleaved."""
    figures = Figures()
    try:
        import specklepy  # noqa: F401

        sys.path.insert(0, str(REPO))
        from tests.speckle_server import SpeckleTestServer
    except ImportError as exc:
        figures.error = f"needs the speckle extra and the test server ({exc})"
        return figures
    server = SpeckleTestServer()
    server.start()
    try:
        token = server.add_user("Bench")
        projects = {}
        for size in sizes:
            t0 = time.perf_counter()
            projects[size] = fill(server, token, size)
            _queue_one(server, token, projects[size])
            print(f"  remote log: {size:,} finished workloads filled in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
        for _ in range(reps):
            for size in sizes:
                for name, run in (("list", _list_command), ("claim", _claim)):
                    before = len(server.log)
                    seconds, cpu = run(server, token, projects[size], root)
                    figures.seconds.setdefault(name, {}).setdefault(size, []).append(seconds)
                    figures.cpu.setdefault(name, {}).setdefault(size, []).append(cpu)
                    figures.requests.setdefault(name, {}).setdefault(size, []).append(
                        float(len(server.log) - before))
    except Exception as exc:
        figures.error = f"{type(exc).__name__}: {exc}"
    finally:
        server.stop()
    for name, by_size in figures.seconds.items():
        print(f"  remote {name}: " + ", ".join(
            f"{size:,}: {sorted(v)[len(v) // 2] * 1000:.0f} ms, "
            f"{figures.requests[name][size][0]:.0f} requests" for size, v in by_size.items()),
            flush=True)
    return figures


def _settings(server: Any, token: str, project: str) -> Any:
    from caliber.settings import RemoteSettings

    return RemoteSettings(host=server.url, project=project, model=MODEL, token=token,
                          settle=0.0, min_lease=0.0)


def _queue_one(server: Any, token: str, project: str) -> None:
    """Queue a workload through Caliber (its write also writes the checkpoint)."""
    from caliber.queue.speckle.backend import SpeckleBackend
    from caliber.queue.workload import Workload

    with SpeckleBackend.open(_settings(server, token, project)) as backend:
        backend.put(Workload(pinion="claimer", queued_by="bench@host", secret="0" * 64,
                             workflow={"caliber": 1, "name": "noop",
                                       "process": {"type": "process", "tasks": []}}))


def _list_command(server: Any, token: str, project: str, root: Path) -> tuple[float, float]:
    """Wall time, and the CPU time of the command's process."""
    home = root / "remote-home"
    home.mkdir(parents=True, exist_ok=True)
    env = worker_env(CALIBER_HOME=str(home), CALIBER_SPECKLE_HOST=server.url,
                     CALIBER_SPECKLE_TOKEN=token, CALIBER_SPECKLE_PROJECT=project,
                     CALIBER_SPECKLE_MODEL=MODEL)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = time_command([str(BIN / "caliber"), "queue", "list"], env=env, cwd=home,
                           timeout=300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def _claim(server: Any, token: str, project: str, root: Path) -> tuple[float, float]:
    """Wall time, and the CPU time of this thread (the test server's threads left out)."""
    from caliber.queue.speckle.backend import SpeckleBackend

    t0, cpu0 = time.perf_counter(), time.thread_time()
    backend = SpeckleBackend.open(_settings(server, token, project))
    try:
        claim = backend.claim("claimer", "bench@host:2", 120, "k")
        seconds, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
        if claim is None:
            raise RuntimeError("the bench workload could not be claimed")
        backend.release(claim, reason="bench round done")
    finally:
        backend.close()
    return seconds, cpu


def rows(quick: bool, reps: int, root: Path) -> list[Row]:
    """The remote-log rows of the report (see :func:`expected_ids`)."""
    sizes = QUICK_SIZES if quick else FULL_SIZES
    small, large = sizes
    figures = measure(sizes, reps, root)
    out = []
    for name, what in (("list", "`caliber queue list`"),
                       ("claim", "a pinion's first claim (connect, read, claim)")):
        for kind, unit, samples in (("time", "s", figures.seconds),
                                    ("cpu", "s", figures.cpu),
                                    ("requests", "requests", figures.requests)):
            row = Row(id=f"remote-{name}-{kind}",
                      section="Remote queue: cost against the length of the log",
                      figure=f"{what} with {large:,} finished workloads on the model"
                      + {"time": "", "cpu": " (Caliber's CPU time)",
                         "requests": " (requests)"}[kind],
                      unit=unit, better="lower",
                      baseline=f"the same with {small:,}", target=f"<= {TARGET:g}",
                      target_op="<=", target_value=TARGET)
            by_size = samples.get(name, {})
            row.fill(by_size.get(large, []), by_size.get(small, []))
            if figures.error:
                row.unavailable = figures.error.splitlines()[0]
            if kind == "time":
                row.note = ("includes the test server's own time (it keeps each model's "
                            "versions in createdAt order and finds a page by bisection)")
            out.append(row)
    return out


def expected_ids() -> list[str]:
    return [f"remote-{name}-{kind}" for name in ("list", "claim")
            for kind in ("time", "cpu", "requests")]


def main(argv: list[str] | None = None) -> int:
    import argparse
    import datetime as dt
    import tempfile

    from bench.report import replace_rows
    from bench.run import git_commit

    parser = argparse.ArgumentParser(
        prog="python -m bench.remote_log",
        description="Measure the remote queue against the length of its log and put the "
                    "rows into BENCHMARKS.md and bench/results.json.")
    parser.add_argument("--quick", action="store_true", help="10 and 100 workloads")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--report", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--data", type=Path, default=REPO / "bench" / "results.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="caliber-bench-remote-") as tmp:
        root = Path(tmp)
        os.environ["CALIBER_HOME"] = str(root / "home")  # never the user's own
        os.environ["NO_COLOR"] = "1"
        found = rows(args.quick, args.reps, root)
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    found[0].note = (f"this section measured {when} at commit `{git_commit()}` by `python -m "
                     f"bench.remote_log`, {args.reps} rounds; {found[0].note}")
    replace_rows(args.report, args.data, found)
    print(f"bench: wrote {args.report} and {args.data}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
