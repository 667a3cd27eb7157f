"""Issue 22's "done when": four pinions on two machines drain one PostgreSQL queue while one of
them is SIGKILLed and the server is restarted; every workload completes exactly once.

The two machines are two CALIBER_HOMEs (runs, key file) and two working folders sharing one
secret key (as two machines of one team do, docs/team.md) and one CALIBER_QUEUE_URL. A
workload's side effect is a line in a shared file, written as its last step: a run cut short
by the kill never writes it, and a workload whose lease ran out meanwhile may be run again
(at-least-once, docs/pinion.md#leases), but never completed twice.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.pinion_helpers import make_folder, wait_for
from tests.pinion_helpers import queue as queue_workflow
from tests.postgres_server import PostgresServer

pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[postgres]')")
pytest.importorskip("caliber.queue.postgres.backend", reason="no PostgreSQL queue here")

KEY = "team-key-" + "0" * 40
WORKLOADS = 60
STEP = '''
import os, time

def step(seconds, log):
    time.sleep(seconds)
    with open(log, "a") as f:
        f.write(os.path.basename(os.getcwd()) + "\\n")
    return seconds
'''


def machine(root: Path, name: str, url: str) -> dict[str, str]:
    home = root / name / "home"
    work = root / name / "work"
    work.mkdir(parents=True)
    return {**os.environ, "CALIBER_HOME": str(home), "CALIBER_QUEUE_URL": url,
            "CALIBER_SECRET_KEY": KEY, "NO_COLOR": "1", "PWD": str(work)}


def start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "caliber", "pinion", "init", "team", "--forever",
             "-w", "10", "--lease", "3", "--max-attempts", "25", "-q"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=env["PWD"],
            start_new_session=True)


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children")
                          .read_text().split()]
    return found


def queue_state() -> dict[str, Any]:
    from caliber.queue.registry import open_backend
    from caliber.queue.target import resolve_target

    with open_backend(resolve_target()) as backend:
        workloads = {w.id: w for w in backend.list_workloads(pinion="team")}
        results = backend.list_results(pinion="team")
    return {"workloads": workloads, "results": results}


def completed() -> int:
    from caliber.queue.registry import open_backend
    from caliber.queue.target import resolve_target

    with open_backend(resolve_target()) as backend:
        return backend.count_statuses(pinion="team").get("completed", 0)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_four_pinions_two_machines_a_kill_and_a_server_restart_lose_nothing(
        tmp_path: Path, postgres_server: PostgresServer, postgres_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALIBER_QUEUE_URL", postgres_url)
    monkeypatch.setenv("CALIBER_SECRET_KEY", KEY)
    folder = make_folder(tmp_path / "wf", "stepfuncs", STEP)
    ran = tmp_path / "ran.log"
    ids = [queue_workflow(folder, [("step", [0.05 + 0.05 * (i % 4), str(ran)])], pinion="team",
                          module="stepfuncs", name=f"w{i}") for i in range(WORKLOADS)]
    machines = [machine(tmp_path, "a", postgres_url), machine(tmp_path, "b", postgres_url)]
    logs = [tmp_path / f"pinion-{i}.log" for i in range(4)]
    pinions = [start(machines[i % 2], logs[i]) for i in range(4)]
    try:
        wait_for(lambda: completed() >= 10, timeout=60, what="10 workloads done")
        victim = pinions[1]  # machine b's first pinion, killed in the middle of a workload
        wait_for(lambda: children(victim.pid), timeout=30, what="the victim to run one")
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
        wait_for(lambda: completed() >= 25, timeout=60, what="25 workloads done")
        postgres_server.stop()  # the server goes away for a moment, every connection cut
        time.sleep(1.5)
        postgres_server.start()
        wait_for(lambda: completed() == WORKLOADS, timeout=180, what="the whole queue done")
    finally:
        for proc in pinions:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)  # once: finish the running one and stop
        for proc in pinions:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    survivors = [p for i, p in enumerate(pinions) if i != 1]
    texts = [log.read_text(errors="replace") for log in logs]
    assert [p.returncode for p in survivors] == [0, 0, 0], texts
    assert not any("Traceback" in text for text in texts), texts

    state = queue_state()
    workloads, results = state["workloads"], state["results"]
    assert sorted(workloads) == sorted(ids)  # nothing lost, nothing added
    assert [(wid, w.status, w.last_error) for wid, w in workloads.items()
            if w.status != "completed"] == []
    per_workload = collections.Counter(r.workload_id for r in results)
    assert sorted(per_workload) == sorted(ids)
    assert [wid for wid, n in per_workload.items() if n != 1] == []  # never completed twice
    for wid, w in workloads.items():
        assert w.results_id is not None
        assert next(r for r in results if r.workload_id == wid).id == w.results_id
    # The side effect: every workload's run reached its end at least once, and more than once
    # only when a lease ran out (the killed pinion's, or one cut off by the restart): never
    # more runs reached the end than attempts were made.
    finished = collections.Counter(line.rsplit("-", 1)[0] for line in ran.read_text().split())
    assert sorted(finished) == sorted(ids)
    assert {wid: n for wid, n in finished.items() if n > workloads[wid].attempts} == {}
    # The two machines shared the work: each one's runs folder holds some of it.
    for env in machines:
        runs = Path(env["CALIBER_HOME"]) / "runs" / "team"
        assert any(p.name[:10] in workloads for p in runs.iterdir())
