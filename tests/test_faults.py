"""Faults with real processes, random but seeded and bounded in time.

A batch of workloads is run by several pinions while the test kills them with SIGKILL at
random moments, three ways: the pinion alone (``kill -9 PID``), the pinion's process group
(``kill -9 -PGID``, what a user does to a pinion started from a shell: its workload runs in a
group of its own, so this too kills the pinion alone) and everything at once (the pinion's
group and its workload's group: a machine or container going down). Killed pinions are
restarted until the batch is done. Then every workload must be completed exactly once, with
exactly one Results record, and nothing a workload started may still run.

While pinions run, other processes hammer the same queue with the CLI (list, view, queue,
reset, resetsecret, results): no "database is locked", no torn reads.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from caliber.queue.registry import open_backend
from caliber.queue.target import local_target
from tests.pinion_helpers import alive, make_folder, wait_for
from tests.pinion_helpers import queue as queue_workflow
from tests.reliability_figures import record

SEED = 20261127
BATCH_DEADLINE = 60.0  # seconds: the longest a batch may take after the last kill

FAULT_FUNCTIONS = '''
import os, subprocess, time

def step(seconds, log, spawn=False):
    """Sleep, noting in ``log`` which run (ID-ATTEMPT, the working folder) got to the end."""
    if spawn:  # something of its own, that must not outlive the workload
        child = subprocess.Popen(["sleep", "60"])
        with open(log + ".spawned", "a") as f:
            f.write(f"{child.pid}\\n")
    time.sleep(seconds)
    with open(log, "a") as f:
        f.write(os.path.basename(os.getcwd()) + "\\n")
    return seconds
'''


class Pinions:
    """Pinion processes of one name, each in a session of its own, output to log files."""

    def __init__(self, folder: Path, name: str, args: list[str]) -> None:
        self.folder, self.name, self.args = folder, name, args
        self.procs: list[subprocess.Popen[bytes]] = []
        self.started = 0

    def start(self) -> subprocess.Popen[bytes]:
        self.started += 1
        log = open(self.folder / f"pinion-{self.started}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "caliber", "pinion", "init", self.name, *self.args],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (its workload's child), from /proc."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children")
                          .read_text().split()]
    return found


def kill(proc: subprocess.Popen[bytes], how: str) -> bool:
    """SIGKILL ``proc`` the way ``how`` says; True when it was running a workload."""
    workload_children = children(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        if how == "pinion":
            os.kill(proc.pid, signal.SIGKILL)
        elif how == "group":
            os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
        else:  # everything at once: the workload's group first, so nothing reacts
            for child in workload_children:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child, signal.SIGKILL)
            os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
    proc.wait(timeout=30)
    return bool(workload_children)


def statuses(pinion: str = "p") -> collections.Counter[str]:
    with open_backend(local_target()) as backend:
        rows = backend.conn.execute("SELECT status FROM workloads WHERE pinion = ?",
                                    (pinion,)).fetchall()
    return collections.Counter(r[0] for r in rows)


def results_per_workload() -> collections.Counter[str]:
    with open_backend(local_target()) as backend:
        rows = backend.conn.execute("SELECT workload_id FROM results").fetchall()
    return collections.Counter(r[0] for r in rows)


def assert_exactly_once(ids: list[str]) -> dict[str, int]:
    """Every workload completed, once, with one Results record; returns attempt figures."""
    counts = results_per_workload()
    assert set(counts) == set(ids), "a workload was lost, or results appeared for no workload"
    assert [i for i, n in counts.items() if n != 1] == [], "a workload has two Results"
    with open_backend(local_target()) as backend:
        workloads = {w.id: w for w in backend.list_workloads()}
        for wid in ids:
            w = workloads[wid]
            assert w.status == "completed", (wid, w.status, w.last_error)
            results = backend.get_results(w.results_id or "?")
            assert results.workload_id == wid and results.status == "completed"
    attempts = [workloads[i].attempts for i in ids]
    return {"attempts_total": sum(attempts), "attempts_max": max(attempts),
            "workloads_retaken": sum(1 for a in attempts if a > 1)}


@pytest.mark.slow
def test_a_batch_survives_pinions_killed_at_random(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    folder = make_folder(tmp_path / "wf", "faultfuncs", FAULT_FUNCTIONS)
    log = str(tmp_path / "ran.log")
    ids = [
        queue_workflow(folder, [("step", [rng.choice([0.05, 0.2, 0.4]), log, i % 4 == 0]),
                                ("step", [rng.choice([0.05, 0.2]), log])],
                       module="faultfuncs", name=f"batch-{i}")
        for i in range(48)
    ]
    pinions = Pinions(tmp_path, "p", ["--forever", "-w", "0.1", "--lease", "1",
                                      "--max-attempts", "25", "-q"])
    slots = [pinions.start() for _ in range(3)]
    kills: collections.Counter[str] = collections.Counter()
    mid_workload = 0
    started = time.monotonic()
    try:
        for _ in range(15):  # the kills: a seeded choice of moment, victim and way
            time.sleep(rng.uniform(0.3, 1.0))
            victim = rng.randrange(len(slots))
            how = rng.choice(["pinion", "group", "everything"])
            mid_workload += kill(slots[victim], how)
            kills[how] += 1
            slots[victim] = pinions.start()
        wait_for(lambda: statuses().get("completed", 0) == len(ids), timeout=BATCH_DEADLINE,
                 what="the batch to complete")
        seconds = time.monotonic() - started
    finally:
        pinions.stop_all()
    figures = assert_exactly_once(ids)
    spawned = [int(p) for p in Path(log + ".spawned").read_text().split()]
    wait_for(lambda: not any(alive(p) for p in spawned), timeout=10,
             what="processes started by killed workloads to be gone")
    finished_runs = collections.Counter(line.rsplit("-", 1)[0]
                                        for line in Path(log).read_text().split())
    assert kills.total() == 15 and mid_workload >= 3
    record("faults.kills", workloads=len(ids), pinions=len(slots), kills=dict(kills),
           kills_total=kills.total(), kills_mid_workload=mid_workload,
           pinions_started=pinions.started, processes_left_running=0,
           runs_reaching_the_last_task=sum(finished_runs.values()) // 2,
           duplicates=0, losses=0, seconds=round(seconds, 1), **figures)


HAMMER = r'''
import contextlib, io, json, random, sys, time
from pathlib import Path
from typing import Any
from caliber.cli import main

role, seed, stop_file, workflow_file, out_file, held = sys.argv[1:7]
rng = random.Random(int(seed))
done = {"commands": {}, "errors": [], "torn": [], "queued": [], "refused_running": 0}

def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(argv))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0
    name = " ".join(a for a in argv[:2])
    done["commands"][name] = done["commands"].get(name, 0) + 1
    return code, out.getvalue(), err.getvalue()

def check(argv, code, err, ok=(0,)):
    if code not in ok or "locked" in err or "Traceback" in err:
        done["errors"].append([argv, code, err.strip()[-300:]])

while not Path(stop_file).exists():
    if role == "reader":
        code, out, err = run("queue", "list", "--json", "--all")
        check("list", code, err)
        items = json.loads(out) if code == 0 else []
        for item in items:
            if item["completed"] != (item["status"] == "completed"):
                done["torn"].append(item)
        if items:
            wid = rng.choice(items)["id"]
            code, out, err = run("queue", "view", wid, "--json")
            check("view", code, err, ok=(0, 2) if "no workload with id" in err else (0,))
            if code == 0:
                w = json.loads(out)
                if w["history"] and w["history"][-1]["status"] != w["status"]:
                    done["torn"].append({"id": wid, "status": w["status"],
                                         "last": w["history"][-1]})
                if (w["status"] == "running") != (w["lease"] is not None):
                    done["torn"].append({"id": wid, "status": w["status"], "lease": w["lease"]})
                if w["status"] == "completed" and not w["results_id"]:
                    done["torn"].append({"id": wid, "completed without results": True})
        code, out, err = run("queue", "list")
        check("list table", code, err)
        code, out, err = run("results", "list", "--json")
        check("results", code, err)
    else:
        code, out, err = run("workflow", "queue", workflow_file, "-p", "p")
        check("queue p", code, err)
        if code == 0:
            done["queued"].append(out.split()[-1])
        code, out, err = run("workflow", "queue", workflow_file, "-p", "nobody")
        check("queue nobody", code, err)
        if code == 0:
            wid = out.split()[-1]
            code, _, err = run("queue", "resetsecret", wid)
            check("resetsecret", code, err)
            code, _, err = run("queue", "reset", wid)
            check("reset", code, err)
        code, _, err = run("queue", "reset", held)  # running: refused without --force
        check("reset running", code, err, ok=(2,))
        done["refused_running"] += "running" in err
    time.sleep(rng.uniform(0, 0.05))
Path(out_file).write_text(json.dumps(done))
'''


@pytest.mark.slow
def test_cli_commands_hammering_the_queue_while_pinions_run(tmp_path: Path) -> None:
    rng = random.Random(SEED + 1)
    folder = make_folder(tmp_path / "wf", "faultfuncs", FAULT_FUNCTIONS)
    log = str(tmp_path / "ran.log")
    ids = [queue_workflow(folder, [("step", [rng.choice([0.05, 0.15, 0.3]), log])],
                          module="faultfuncs", name=f"hammered-{i}") for i in range(30)]
    workflow_file = folder / "small.json"
    workflow_file.write_text(json.dumps({
        "caliber": 1, "name": "small", "attachments": ["faultfuncs.py"],
        "process": {"type": "process", "tasks": [
            {"type": "task", "name": "s", "function": "faultfuncs:step", "args": [0.01, log]}]},
    }))
    script = tmp_path / "hammer.py"
    script.write_text(textwrap.dedent(HAMMER))
    stop_file = tmp_path / "stop"
    held = queue_workflow(folder, [("step", [120, log])], pinion="holder", module="faultfuncs")
    holder = Pinions(tmp_path, "holder", ["-a", "1", "-w", "0", "-q"])
    pinions = Pinions(tmp_path, "p", ["--forever", "-w", "0.05", "--lease", "5", "-q"])
    hammers = []
    try:
        holder.start()
        for _ in range(2):
            pinions.start()
        wait_for(lambda: statuses("holder")["running"], what="the held workload to run")
        for i, role in enumerate(["reader", "reader", "writer"]):
            out = tmp_path / f"hammer-{i}.json"
            hammers.append((out, subprocess.Popen(
                [sys.executable, str(script), role, str(SEED + i), str(stop_file),
                 str(workflow_file), str(out), held], stderr=subprocess.PIPE, text=True)))
        wait_for(lambda: all(results_per_workload()[i] for i in ids), timeout=BATCH_DEADLINE,
                 what="the batch to complete")
        stop_file.touch()
        reports = []
        for out, proc in hammers:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            reports.append(json.loads(out.read_text()))
        queued = [w for r in reports for w in r["queued"]]
        wait_for(lambda: statuses() == collections.Counter({"completed": len(ids) + len(queued)}),
                 timeout=BATCH_DEADLINE, what="the workloads queued meanwhile to complete")
    finally:
        stop_file.touch()
        for _, proc in hammers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        pinions.stop_all()
        holder.stop_all()
    errors = [e for r in reports for e in r["errors"]]
    torn = [t for r in reports for t in r["torn"]]
    assert errors == [] and torn == []
    assert_exactly_once(ids + queued)
    commands: collections.Counter[str] = collections.Counter()
    for r in reports:
        commands.update(r["commands"])
    record("faults.cli", workloads=len(ids) + len(queued), queued_meanwhile=len(queued),
           pinions=2, cli_processes=len(hammers), commands=dict(commands),
           commands_total=commands.total(),
           running_reset_refused=sum(r["refused_running"] for r in reports),
           database_locked=0, torn_reads=0, duplicates=0, losses=0)


def test_a_read_sees_one_moment_even_when_a_pinion_writes_in_between(tmp_path: Path) -> None:
    """``queue view`` reads a workload's row and then its history: a claim landing between
    the two must not show a queued workload whose history says it is running."""
    from caliber.queue.sqlite.backend import SQLiteBackend

    folder = make_folder(tmp_path / "wf")
    wid = queue_workflow(folder, [("add", [1])])
    with open_backend(local_target()) as reader, open_backend(local_target()) as pinion:
        original = SQLiteBackend._with_history

        def claim_in_between(self: SQLiteBackend, workloads: list[Any]) -> list[Any]:
            if self is reader:
                assert pinion.claim("p", "other", 60, "k") is not None
            return original(self, workloads)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(SQLiteBackend, "_with_history", claim_in_between)
            seen = reader.get(wid)
        assert seen.status == "queued"
        assert [h.status for h in seen.history] == ["queued"]
        assert reader.get(wid).history[-1].status == "running"
