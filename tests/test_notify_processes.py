"""Every end of a workload is told once, end to end (issue 24's "one POST per ended
workload"): real pinion processes on the local queue and a local HTTP server as the hook, for
the ends no pinion was there for: cancelled while queued, cancelled down a chain by a reset,
failed because its pinion died (``expire``), and with two pinions of one name listening."""

from __future__ import annotations

import collections
import datetime as dt
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pinion_helpers import (
    alive,
    make_folder,
    start_pinion,
    status_of,
    stop,
    wait_for,
    workflow,
)
from tests.test_notify import Hook

LATER = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)  # a start time no test reaches


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook()
    yield server
    server.close()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "wf")


def put(folder: Path, tasks: list[tuple[str, list[object]]], name: str = "analysis", *,
        after: list[str] | None = None, later: bool = False) -> str:
    """A workload for pinion 'night' (``later``: with a start time a day ahead)."""
    return workflow(folder, tasks, name=name).queue(
        "night", after=after or [], not_before=LATER if later else None)


def cli(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "caliber", *args], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def night(hook: Hook, *args: str) -> subprocess.Popen[str]:
    return start_pinion("night", *args, env={"CALIBER_NOTIFY_URL": hook.url})


def drain(hook: Hook) -> None:
    """One pinion 'night' that looks once and stops (telling what it has first)."""
    pinion = night(hook, "-a", "1", "-w", "0")
    _, err = pinion.communicate(timeout=120)
    assert pinion.returncode == 0, err


def stopped(pinion: subprocess.Popen[str]) -> None:
    """A warm stop (SIGTERM), waited for: the pinion tells what it still has first."""
    pinion.send_signal(signal.SIGTERM)
    _, err = pinion.communicate(timeout=60)
    assert pinion.returncode == 0, err


def told(hook: Hook) -> list[tuple[str, str]]:
    return [(b["caliber"]["id"], b["caliber"]["status"]) for b in hook.bodies]


def test_a_workload_cancelled_while_queued_gets_exactly_one_post(
        folder: Path, hook: Hook) -> None:
    """Told by the pinion listening for its name, at its next look; never again by it at its
    stop, nor by the next pinion of that name."""
    listening = night(hook, "-a", "0", "-w", "0.2")
    try:
        wid = put(folder, [("add", [1])], later=True)
        cli("queue", "cancel", wid)
        wait_for(lambda: hook.bodies, what="the POST of the cancelled workload")
    finally:
        stopped(listening)
    drain(hook)
    assert told(hook) == [(wid, "cancelled")]
    assert hook.bodies[0]["text"].startswith(
        f"Caliber: analysis ({wid}) cancelled before it ran (queued for pinion night): "
        "cancelled by ")


def test_a_reset_upstream_gets_its_cancelled_downstream_one_post(
        folder: Path, hook: Hook) -> None:
    up = put(folder, [("add", [1])], later=True)
    down = put(folder, [("add", [2])], "post", after=[up])
    cli("queue", "reset", up)
    assert status_of(down) == "cancelled"
    drain(hook)
    drain(hook)
    assert told(hook) == [(down, "cancelled")]  # the reset one is gone: nothing to tell
    assert hook.bodies[0]["text"] == (f"Caliber: post ({down}) cancelled before it ran "
                                      f"(queued for pinion night): upstream {up} was reset")


def test_a_workload_whose_pinion_died_gets_one_post_when_it_is_failed(
        folder: Path, hook: Hook, tmp_path: Path) -> None:
    """Its pinion killed (SIGKILL) while it ran, its lease runs out its one attempt: the
    next pinion of its name fails it (``expire``) and tells of it, once."""
    marker = tmp_path / "child.pid"
    wid = put(folder, [("slow", [60, str(marker)])])
    dying = night(hook, "-a", "0", "-w", "0.2", "--lease", "1", "--max-attempts", "1")
    child = int(wait_for(lambda: marker.exists() and marker.read_text(), what="child start"))
    stop(dying, signal.SIGKILL)  # the pinion alone: its child is in another process group
    wait_for(lambda: not alive(child), timeout=10, what="the orphaned child to stop")
    assert status_of(wid) == "running"  # until its lease runs out
    listening = night(hook, "-a", "0", "-w", "0.2", "--max-attempts", "1")
    try:
        wait_for(lambda: hook.bodies, what="the POST of the failed workload")
    finally:
        stopped(listening)
    drain(hook)
    assert status_of(wid) == "failed"
    assert told(hook) == [(wid, "failed")]
    assert hook.bodies[0]["text"] == (
        f"Caliber: analysis ({wid}) failed on pinion night, which stopped answering while it "
        "ran: lease ran out 1 times (pinion died?)")


def test_two_pinions_of_one_name_tell_each_end_once(folder: Path, hook: Hook) -> None:
    """Two pinions 'night' listening at once share the ends out: cancelled one by one, and
    a dozen at once down a chain, each is told by one of them, exactly once."""
    pinions = [night(hook, "-a", "0", "-w", "0.05") for _ in range(2)]
    try:
        alone = [put(folder, [("add", [i])], later=True) for i in range(4)]
        up = put(folder, [("add", [0])], later=True)
        chained = [put(folder, [("add", [i])], "post", after=[up]) for i in range(12)]
        for wid in alone:
            cli("queue", "cancel", wid)
        cli("queue", "cancel", up)
        ended = [*alone, up, *chained]
        wait_for(lambda: len(hook.bodies) >= len(ended), timeout=60, what="every POST")
    finally:
        for pinion in pinions:
            stopped(pinion)
    counts = collections.Counter(told(hook))
    assert counts == collections.Counter((wid, "cancelled") for wid in ended)


def test_a_run_cancelled_then_put_back_by_a_cold_stop_gets_one_post(
        folder: Path, hook: Hook, tmp_path: Path) -> None:
    """Asked to be cancelled while it runs, its pinion stopped cold (Ctrl-C twice) before the
    task ended: put back, the queue cancels it; that pinion was there, and tells of it."""
    marker = tmp_path / "child.pid"
    wid = put(folder, [("slow", [60, str(marker)])])
    pinion = night(hook, "-a", "0", "-w", "0.2")
    wait_for(lambda: marker.exists() and marker.read_text(), what="child start")
    cli("queue", "cancel", wid)
    pinion.send_signal(signal.SIGINT)
    assert pinion.stderr is not None
    wait_for(lambda: "again" in pinion.stderr.readline(), what="the warm stop's line")
    pinion.send_signal(signal.SIGINT)
    _, err = pinion.communicate(timeout=60)
    assert pinion.returncode == 130, err
    drain(hook)
    assert status_of(wid) == "cancelled"
    assert told(hook) == [(wid, "cancelled")]
