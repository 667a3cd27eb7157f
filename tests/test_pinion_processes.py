"""Pinions as real processes: racing, killed with SIGKILL, stopped with SIGINT."""

from __future__ import annotations

import collections
import signal
from pathlib import Path

import pytest

import caliber
from caliber.queue.registry import open_backend
from caliber.queue.target import local_target
from tests.pinion_helpers import alive, make_folder, queue, start_pinion, status_of, stop, wait_for


def results_per_workload() -> collections.Counter[str]:
    with open_backend(local_target()) as backend:
        rows = backend.conn.execute("SELECT workload_id FROM results").fetchall()
    return collections.Counter(r[0] for r in rows)


def test_racing_pinions_run_each_workload_exactly_once(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "wf")
    ids = [queue(folder, [("pid", []), ("add", [i])]) for i in range(30)]
    pinions = [start_pinion("p", "-a", "3", "-w", "0.2") for _ in range(3)]
    outputs = [p.communicate(timeout=120) for p in pinions]
    assert all(p.returncode == 0 for p in pinions), outputs
    counts = results_per_workload()
    assert counts == collections.Counter(ids)  # every workload once, none twice
    with open_backend(local_target()) as backend:
        assert {w.status.value for w in backend.list_workloads()} == {"completed"}
        assert all(w.attempts == 1 for w in backend.list_workloads())
    ran = sum(int(out.split("ran ")[1].split()[0]) for out, _ in outputs)
    assert ran == 30


def test_a_killed_pinions_workload_is_finished_by_another(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "wf")
    marker = tmp_path / "child.pid"
    wid = queue(folder, [("slow", [2, str(marker)])])
    first = start_pinion("p", "-a", "1", "-w", "0.1", "--lease", "1")
    child_pid = int(wait_for(lambda: marker.exists() and marker.read_text(), what="child start"))
    stop(first, signal.SIGKILL)  # the pinion alone: its child is in another process group
    wait_for(lambda: not alive(child_pid), timeout=10, what="the orphaned child to stop")
    assert status_of(wid) == "running"  # until its lease runs out
    marker.unlink()
    second = start_pinion("p", "-a", "10", "-w", "0.3", "--lease", "1")
    _out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    results = caliber.get_results(wid)
    assert results.status == "completed"
    with open_backend(local_target()) as backend:
        workload = backend.get(wid)
    assert workload.attempts == 2
    assert any("lease" in h.message for h in workload.history)
    assert results_per_workload()[wid] == 1


def test_after_max_attempts_a_workload_whose_pinions_die_is_failed(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "wf")
    marker = tmp_path / "child.pid"
    wid = queue(folder, [("slow", [30, str(marker)])])
    for _ in range(2):
        pinion = start_pinion("p", "-a", "30", "-w", "0.2", "--lease", "0.5",
                              "--max-attempts", "2")
        wait_for(lambda: marker.exists() and marker.read_text(), what="child start")
        marker.unlink()
        stop(pinion, signal.SIGKILL)
    last = start_pinion("p", "-a", "8", "-w", "0.25", "--max-attempts", "2")
    _out, err = last.communicate(timeout=60)
    assert last.returncode == 0, err
    with open_backend(local_target()) as backend:
        workload = backend.get(wid)
    assert workload.status == "failed"
    assert "lease" in (workload.last_error or "")
    assert workload.attempts == 2


def test_sigint_once_finishes_the_running_workload_then_stops(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "wf")
    marker = tmp_path / "child.pid"
    running = queue(folder, [("slow", [1.5, str(marker)])])
    waiting = queue(folder, [("add", [1])])
    pinion = start_pinion("p", "-a", "5", "-w", "0.1")
    wait_for(marker.exists, what="child start")
    pinion.send_signal(signal.SIGINT)
    out, err = pinion.communicate(timeout=60)
    assert pinion.returncode == 0, err
    assert "ran 1 (1 completed" in out
    assert status_of(running) == "completed"
    assert status_of(waiting) == "queued"  # no new work after the first Ctrl-C


def test_sigint_twice_puts_the_workload_back_without_counting(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "wf")
    marker = tmp_path / "child.pid"
    wid = queue(folder, [("slow", [30, str(marker)])])
    pinion = start_pinion("p", "-a", "5", "-w", "0.1")
    child_pid = int(wait_for(lambda: marker.exists() and marker.read_text(), what="child"))
    pinion.send_signal(signal.SIGINT)
    wait_for(lambda: "again" in (pinion.stderr.readline() if pinion.stderr else ""),  # type: ignore[union-attr]
             what="warm stop message")
    pinion.send_signal(signal.SIGINT)
    _out, err = pinion.communicate(timeout=30)
    assert pinion.returncode == 130, err
    assert not alive(child_pid)
    with open_backend(local_target()) as backend:
        workload = backend.get(wid)
    assert workload.status == "queued"
    assert workload.attempts == 0
    assert workload.lease is None


def test_a_queue_survives_pinions_killed_at_random(tmp_path: Path) -> None:
    import random
    import time

    rng = random.Random(20261127)
    folder = make_folder(tmp_path / "wf")
    ids = [queue(folder, [("slow", [rng.choice([0.1, 0.3, 0.6])])]) for _ in range(24)]
    args = ("--forever", "-w", "0.1", "--lease", "1", "--max-attempts", "10")
    pinions = [start_pinion("p", *args) for _ in range(3)]
    kills = 0
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            with open_backend(local_target()) as backend:
                done = sum(1 for w in backend.list_workloads() if w.status.value == "completed")
            if done == len(ids):
                break
            time.sleep(rng.uniform(0.3, 1.0))
            victim = rng.randrange(len(pinions))
            stop(pinions[victim], signal.SIGKILL)
            kills += 1
            pinions[victim] = start_pinion("p", *args)
    finally:
        for pinion in pinions:
            stop(pinion, signal.SIGKILL)
    assert kills >= 3
    assert results_per_workload() == collections.Counter(ids)
    with open_backend(local_target()) as backend:
        assert {w.status.value for w in backend.list_workloads()} == {"completed"}


def children_of(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_the_spare_child_never_outlives_its_pinion(tmp_path: Path, how: int) -> None:
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc")
    folder = make_folder(tmp_path / "wf")
    wid = queue(folder, [("add", [1])])
    pinion = start_pinion("p", "--forever", "-w", "0.2")
    wait_for(lambda: status_of(wid) == "completed", what="the workload to complete")
    spares = wait_for(lambda: children_of(pinion.pid), what="a spare child")
    stop(pinion, how)
    wait_for(lambda: not any(alive(pid) for pid in spares), timeout=10,
             what="the spare child to go")
