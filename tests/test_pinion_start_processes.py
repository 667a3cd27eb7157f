"""Start times and a workload's own notify address with real pinion processes on the local
queue (``caliber pinion init`` as a subprocess; the same decisions in-process on the
in-memory queue: tests/test_pinion_start.py, tests/test_notify.py).

Ordering only: a workload starts no earlier than its start time, and before the look that
``-w 60`` would have made after the pinion's first (empty) one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from caliber.queue.api import make_workload
from caliber.queue.registry import open_backend
from caliber.queue.secret import load_key, sign
from caliber.queue.target import local_target
from caliber.queue.workload import WorkloadStatus
from caliber.results.model import utcnow
from tests.pinion_helpers import BLOCKING, make_folder, start_pinion, stop, wait_for, workflow
from tests.test_notify import Hook

WAIT = "60"  # seconds between a pinion's looks: the look -w would make is far off

@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "wf", source=BLOCKING)


def put(folder: Path, tasks: list[tuple[str, list[Any]]], *, signed: bool = True,
        **plan: Any) -> str:
    """A workload for pinion 'night' on the local queue with its plan fields (``not_before``,
    ``after``, ``notify``), signed with them (``signed=False``: signed without them, as if
    changed in the queue afterwards)."""
    with open_backend(local_target()) as backend:
        workload = make_workload(workflow(folder, tasks, name="analysis"), "night", backend)
        unsigned = workload.secret
        for name, value in plan.items():
            setattr(workload, name, value)
        workload.secret = sign(workload, load_key()) if signed else unsigned
        backend.put(workload)
    return workload.id


def get(workload_id: str) -> Any:
    with open_backend(local_target()) as backend:
        return backend.get(workload_id)


def started_at(workload_id: str) -> dt.datetime:
    return next(h.at for h in get(workload_id).history if h.status == WorkloadStatus.RUNNING)


def completed(workload_id: str) -> bool:
    return bool(get(workload_id).status == WorkloadStatus.COMPLETED)


def warm_stop(pinion: subprocess.Popen[str]) -> str:
    """Ctrl-C once: the pinion stops after its running workloads; its stdout."""
    pinion.send_signal(signal.SIGINT)
    out, err = pinion.communicate(timeout=60)
    assert pinion.returncode == 0, err
    return out


def test_an_idle_pinion_starts_a_workload_at_its_start_time(folder: Path) -> None:
    start = utcnow() + dt.timedelta(seconds=3)
    wid = put(folder, [("add", [1])], not_before=start)
    before = utcnow()
    pinion = start_pinion("night", "--forever", "-w", WAIT)
    try:
        wait_for(lambda: completed(wid), what="the workload to complete")
        warm_stop(pinion)
    finally:
        stop(pinion)
    assert start <= started_at(wid) < before + dt.timedelta(seconds=float(WAIT))


def test_a_pinion_with_a_free_slot_starts_a_workload_at_its_start_time(
        folder: Path, tmp_path: Path) -> None:
    release = tmp_path / "release"
    busy = put(folder, [("until", [str(release)])])
    start = utcnow() + dt.timedelta(seconds=3)
    later = put(folder, [("add", [1])], not_before=start)
    before = utcnow()
    pinion = start_pinion("night", "--forever", "-w", WAIT, "--concurrency", "2")
    try:
        wait_for(lambda: completed(later), what="the later workload to complete")
        assert get(busy).status == WorkloadStatus.RUNNING  # the other slot still busy
        release.touch()
        wait_for(lambda: completed(busy), what="the first workload to complete")
        warm_stop(pinion)
    finally:
        release.touch()
        stop(pinion)
    assert start <= started_at(later) < before + dt.timedelta(seconds=float(WAIT))


def test_a_draining_pinion_stops_and_says_what_starts_later(folder: Path) -> None:
    start = (utcnow() + dt.timedelta(hours=2)).replace(second=0, microsecond=0)
    put(folder, [("add", [1])])
    first = put(folder, [("add", [2])], not_before=start)
    put(folder, [("add", [3])], not_before=start + dt.timedelta(hours=1))
    put(folder, [("add", [4])], after=[first])
    done = subprocess.run([sys.executable, "-m", "caliber", "pinion", "init", "night", "-a",
                           "1", "-w", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    local = start.astimezone()
    clock = local.strftime("%H:%M")
    if local.date() != dt.datetime.now().astimezone().date():
        clock = f"{local.date().isoformat()} {clock}"
    assert done.stdout.splitlines()[-2:] == [
        "pinion night: ran 1 (1 completed, 0 failed)",
        f"2 workloads start later (next at {clock}); 1 workload waits for others to complete"]
    as_json = subprocess.run([sys.executable, "-m", "caliber", "pinion", "init", "night", "-a",
                              "1", "-w", "0", "--json"], capture_output=True, text=True,
                             timeout=120)
    summary = json.loads(as_json.stdout)
    assert (summary["ran"], summary["later"], summary["chained"]) == (0, 2, 1)
    assert dt.datetime.fromisoformat(summary["next_start"]) == start


def test_a_workload_is_told_to_its_own_signed_address_only(folder: Path) -> None:
    settings, own, theirs = Hook(), Hook(), Hook()
    try:
        mine = put(folder, [("add", [1])], notify=own.url)
        changed = put(folder, [("add", [2])], notify=theirs.url, signed=False)
        done = subprocess.run(
            [sys.executable, "-m", "caliber", "pinion", "init", "night", "-a", "1", "-w", "0"],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "CALIBER_NOTIFY_URL": settings.url})
        assert done.returncode == 0, done.stderr
        assert [b["caliber"]["id"] for b in own.bodies] == [mine]
        assert own.bodies[0]["caliber"]["status"] == "completed"
        assert [b["caliber"]["id"] for b in settings.bodies] == [mine]
        assert theirs.bodies == []
        assert f"skipped {changed}: run-secret does not match" in done.stdout
    finally:
        for hook in (settings, own, theirs):
            hook.close()
