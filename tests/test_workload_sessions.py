"""A workload's processes end with it, those it started in a new session too (``setsid``,
``Popen(start_new_session=True)``, a shell's ``&``): whether it returns, fails, is timed out,
dies of SIGKILL or its pinion is killed. Real pinions; the processes are found by a marker in
their command line."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pinion_helpers import (
    FUNCTIONS,
    make_folder,
    queue,
    start_pinion,
    status_of,
    stop,
    wait_for,
)

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").exists(),
                                reason="needs Linux's /proc (and PR_SET_CHILD_SUBREAPER)")

DETACH = FUNCTIONS + '''
def detach(marker, then, ready=None):
    """Start three processes in new sessions, each with ``marker`` in its command line, then
    end as ``then`` says."""
    import shlex, signal, subprocess, sys
    code = "import time; time.sleep(1000)"
    subprocess.Popen([sys.executable, "-c", code, marker + "-popen"], start_new_session=True)
    subprocess.Popen(["setsid", sys.executable, "-c", code, marker + "-setsid"])
    subprocess.run(["sh", "-c", "setsid " + shlex.join([sys.executable, "-c", code,
                                                        marker + "-daemon"]) + " &"])
    if ready:
        open(ready, "w").close()
    if then == "fail":
        raise ValueError("failed on purpose")
    if then == "sleep":
        time.sleep(1000)
    if then == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    return then
'''


def with_marker(marker: str) -> list[int]:
    """Live processes (not zombies) whose command line holds ``marker``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker.encode() not in (proc / "cmdline").read_bytes():
                continue
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.fixture
def marker() -> Iterator[str]:
    """A marker unique to the test; whatever still holds it at the end is killed."""
    mark = f"caliber-test-{uuid.uuid4().hex}"
    yield mark
    for pid in with_marker(mark):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(("then", "status", "args"), [
    ("return", "completed", ()),
    ("fail", "failed", ()),
    ("sleep", "failed", ("--timeout", "1")),
    ("kill", "failed", ()),
])
def test_processes_in_new_sessions_end_with_their_workload(
        tmp_path: Path, marker: str, then: str, status: str, args: tuple[str, ...]) -> None:
    folder = make_folder(tmp_path / "wf", source=DETACH)
    wid = queue(folder, [("detach", [marker, then])])
    pinion = start_pinion("p", "-a", "1", "-w", "0.1", *args)
    try:
        _out, err = pinion.communicate(timeout=60)
    finally:
        stop(pinion)
    assert pinion.returncode == 0, err
    assert status_of(wid) == status
    wait_for(lambda: not with_marker(marker), timeout=10,
             what="the workload's processes in new sessions to end")


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_processes_in_new_sessions_end_when_the_pinion_is_killed(
        tmp_path: Path, marker: str, start: str) -> None:
    folder = make_folder(tmp_path / "wf", source=DETACH)
    ready = tmp_path / "ready"
    queue(folder, [("detach", [marker, "sleep", str(ready)])])
    pinion = start_pinion("p", "-a", "1", "-w", "0.1", env={"CALIBER_CHILD_START": start})
    try:
        wait_for(ready.exists, what="the workload's processes to start")
        assert len(with_marker(marker)) >= 3
    finally:
        stop(pinion, signal.SIGKILL)
    wait_for(lambda: not with_marker(marker), timeout=10,
             what="the killed pinion's workload's processes to end")
