"""A fork server that dies or stops answering never fails a workload nor freezes its pinion:
real pinions, their real fork server killed (SIGKILL) or stopped (SIGSTOP)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from caliber.pinion.platform import ForkServer
from caliber.queue.registry import open_backend
from caliber.queue.target import local_target
from caliber.queue.workload import Workload
from tests.pinion_helpers import alive, make_folder, queue, stop, wait_for

pytestmark = pytest.mark.skipif(not ForkServer.available() or not Path("/proc/self").exists(),
                                reason="Linux only (the fork server, /proc)")

ANSWER = 2.0  # seconds: the pinions here give up on a silent fork server sooner than 10 s


def start_pinion(*args: str) -> subprocess.Popen[str]:
    """``caliber pinion init p ARGS`` in a new process, waiting only ``ANSWER`` seconds for a
    fork server that does not answer."""
    program = (f"import caliber.pinion.platform as p; p.FORK_SERVER_ANSWER = {ANSWER}; "
               "from caliber.cli import main; main()")
    return subprocess.Popen(
        [sys.executable, "-c", program, "pinion", "init", "p", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def state_of(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.fixture
def stopped() -> Iterator[list[int]]:
    """Processes a test stops or kills: each is let go on (SIGCONT) and killed at the end."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break


def workload(wid: str) -> Workload:
    with open_backend(local_target()) as backend:
        return backend.get(wid)


def server_running(marker: Path, stopped: list[int]) -> tuple[int, int]:
    """The pids of the child that wrote ``marker`` and of the fork server that forked it."""
    child = int(wait_for(lambda: marker.exists() and marker.read_text(), what="child start"))
    server = parent_of(child)
    stopped.append(server)
    return child, server


def test_a_killed_fork_server_puts_its_workload_back_uncounted(
        tmp_path: Path, stopped: list[int]) -> None:
    folder = make_folder(tmp_path / "wf")
    marker = tmp_path / "child.pid"
    wid = queue(folder, [("slow", [2, str(marker)])])
    pinion = start_pinion("-a", "3", "-w", "0.2", "--lease", "2")
    try:
        child, server = server_running(marker, stopped)
        assert server != pinion.pid
        marker.unlink()
        os.kill(server, signal.SIGKILL)
        out, err = pinion.communicate(timeout=60)
    finally:
        stop(pinion)
    assert pinion.returncode == 0, err
    assert not alive(child)
    got = workload(wid)
    assert got.status == "completed", (got.last_error, err)
    assert got.attempts == 1  # the run the server took down is not counted
    assert any("the fork server ended" in h.message and h.status == "queued"
               for h in got.history), [h.message for h in got.history]
    assert "the fork server ended" in err
    assert "ran 1 (1 completed" in out
    assert int(marker.read_text()) != child  # run again, in a new child


def test_a_stopped_fork_server_freezes_nothing(tmp_path: Path, stopped: list[int]) -> None:
    """The server stops (SIGSTOP) while a workload runs: that one completes, and so does the
    next (its child was forked ahead, before the server stopped); the pinion keeps the third
    one's lease while it waits for the server, gives up on it, kills it and runs the third
    workload all the same."""
    folder = make_folder(tmp_path / "wf")
    marker = tmp_path / "child.pid"
    ids = [queue(folder, [("slow", [1, str(marker)])]), queue(folder, [("add", [1])]),
           queue(folder, [("add", [2])])]
    pinion = start_pinion("-a", "2", "-w", "0.2", "--lease", "0.6")
    try:
        _child, server = server_running(marker, stopped)
        os.kill(server, signal.SIGSTOP)
        wait_for(lambda: workload(ids[2]).status == "running", what="the third claimed")
        lease = workload(ids[2]).lease
        assert lease is not None and state_of(server) == "T"
        wait_for(lambda: (now := workload(ids[2]).lease) is None
                 or now.expires_at > lease.expires_at, what="a renewal while the server waits")
        out, err = pinion.communicate(timeout=60)
    finally:
        stop(pinion)
    assert pinion.returncode == 0, err
    for wid in ids:
        got = workload(wid)
        assert (got.status, got.attempts) == ("completed", 1), got.last_error
    assert "ran 3 (3 completed" in out
    assert "the fork server ended (it stopped answering" in err
    assert not alive(server)


def test_a_timeout_works_while_the_fork_server_is_stopped(
        tmp_path: Path, stopped: list[int]) -> None:
    folder = make_folder(tmp_path / "wf")
    marker = tmp_path / "child.pid"
    wid = queue(folder, [("slow", [1000, str(marker)])])
    pinion = start_pinion("-a", "1", "-w", "0.1", "--lease", "0.6", "--timeout", "1.5")
    try:
        child, server = server_running(marker, stopped)
        os.kill(server, signal.SIGSTOP)
        _out, err = pinion.communicate(timeout=60)
    finally:
        stop(pinion)
    assert pinion.returncode == 0, err
    got = workload(wid)
    assert got.status == "failed"
    assert "timed out after 1.5 s" in (got.last_error or "")
    assert got.attempts == 1
    wait_for(lambda: not alive(child) and not alive(server), timeout=10,
             what="the child and its stopped server to be killed")


def test_a_child_that_ends_while_its_server_is_stopped_goes_back_uncounted(
        tmp_path: Path, stopped: list[int]) -> None:
    """How the child ended is the server's to say: a server that does not say in time is
    killed, and the workload goes back to the queue, its attempt uncounted."""
    folder = make_folder(tmp_path / "wf")
    marker = tmp_path / "child.pid"
    source = (tmp_path / "wf" / "pinfuncs.py").read_text() + (
        "\ndef end_when(path, marker):\n"
        "    with open(marker, 'w') as f:\n"
        "        f.write(str(os.getpid()))\n"
        "    while not os.path.exists(path):\n"
        "        time.sleep(0.02)\n"
        "    if os.path.exists(marker + '.again'):\n"
        "        return 'second run'\n"
        "    open(marker + '.again', 'w').close()\n"
        "    os._exit(3)\n")
    (tmp_path / "wf" / "pinfuncs.py").write_text(source)
    go = tmp_path / "go"
    wid = queue(folder, [("end_when", [str(go), str(marker)])])
    pinion = start_pinion("-a", "3", "-w", "0.2", "--lease", "0.6")
    try:
        _child, server = server_running(marker, stopped)
        os.kill(server, signal.SIGSTOP)
        go.touch()
        _out, err = pinion.communicate(timeout=60)
    finally:
        stop(pinion)
    assert pinion.returncode == 0, err
    got = workload(wid)
    assert got.status == "completed", got.last_error
    assert got.attempts == 1
    assert any("the fork server ended" in h.message for h in got.history)
    assert not alive(server)


def test_a_fork_server_killed_between_workloads_is_replaced_quietly(
        tmp_path: Path, stopped: list[int]) -> None:
    """Killed while the pinion waits for work: the next workload runs at once (no error, no
    back-off, nothing put back), in a new server's child."""
    folder = make_folder(tmp_path / "wf")
    marker = tmp_path / "child.pid"
    first = queue(folder, [("slow", [1, str(marker)])])
    pinion = start_pinion("--forever", "-w", "0.1")
    try:
        _child, server = server_running(marker, stopped)
        wait_for(lambda: workload(first).status == "completed", what="the first workload")
        os.kill(server, signal.SIGKILL)
        marker.unlink()
        second = queue(folder, [("slow", [0, str(marker)])])
        wait_for(lambda: workload(second).status == "completed", what="the second workload")
    finally:
        stop(pinion, signal.SIGINT)
    _out, err = pinion.communicate()
    got = workload(second)
    assert got.attempts == 1
    assert [h.status for h in got.history] == ["queued", "running", "completed"], got.history
    assert "the fork server ended (killed by signal SIGKILL); a new one forks" in err
    assert "could not" not in err and "cannot" not in err
