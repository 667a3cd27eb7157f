"""The fork server that forks a pinion's children on Linux (caliber.pinion.platform.ForkServer)."""

from __future__ import annotations

import faulthandler
import os
import signal
import time

import pytest

from caliber.pinion import platform
from caliber.pinion.platform import ForkServer, describe_exit

pytestmark = pytest.mark.skipif(not ForkServer.available(), reason="Linux only")


def report_parent(messages_fd: int, control_fd: int) -> None:
    """A child that writes its parent's pid, then waits until its control pipe closes."""
    os.write(messages_fd, f"{os.getppid()}\n".encode())
    while os.read(control_fd, 1):
        pass


def crash(messages_fd: int, control_fd: int) -> None:
    faulthandler.disable()  # pytest's, inherited: no traceback of this crash on its output
    os.kill(os.getpid(), signal.SIGSEGV)


def ended(pid: int) -> bool:
    """Whether process ``pid`` has ended (gone, or a zombie nobody has waited for yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone (before or while it was read)
        return True


def wait_ended(pid: int, what: str) -> None:
    deadline = time.monotonic() + 10
    while not ended(pid):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not end")
        time.sleep(0.05)


def read_line(fd: int) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 64)
        if not chunk:
            break
        data += chunk
    return data


def test_children_are_the_servers_and_their_lifeline_is_ours_alone() -> None:
    server = ForkServer(report_parent)
    try:
        child = server.start()
        assert int(read_line(child.messages_fd)) == server.pid != os.getpid()
        assert child.poll() is None
        child.close()  # the only write end of its control pipe: the child reads end-of-file
        assert child.wait() == 0
    finally:
        server.close()


def test_a_child_asked_for_early_is_the_one_started() -> None:
    server = ForkServer(report_parent)
    try:
        server.prefork()
        server.prefork()  # asked once only
        first = server.start()
        assert int(read_line(first.messages_fd)) == server.pid
        first.close()
        assert first.wait() == 0
        second = server.start()
        assert int(read_line(second.messages_fd)) == server.pid
        second.close()
        assert second.wait() == 0 and second.pid != first.pid
    finally:
        server.close()


def test_how_a_child_ended_is_reported() -> None:
    server = ForkServer(crash)
    try:
        child = server.start()
        assert describe_exit(child.wait()) == "killed by signal SIGSEGV"
        child.close()
    finally:
        server.close()


def test_the_server_ends_with_its_pinion() -> None:
    server = ForkServer(report_parent)
    child = server.start()
    server.close()  # as when the pinion exits or is killed: its end of the socket closes
    with pytest.raises(ChildProcessError):
        os.waitpid(server.pid, os.WNOHANG)  # already waited for: it has ended
    assert not server.alive
    with pytest.raises(OSError):
        server.start()
    child.close()  # its lifeline: the child ends too
    wait_ended(child.pid, "the child whose lifeline closed")


def test_a_child_asked_for_and_never_taken_ends_with_the_server() -> None:
    server = ForkServer(report_parent)
    server.prefork()
    while not server._ready:  # its pipes have reached this process (as they do in poll())
        server._receive(1.0)
    spare = server._ready[0][0]
    server.close()
    wait_ended(spare, "the child asked for and never taken")


def start_and_sleep(messages_fd: int, control_fd: int) -> None:
    """A child that starts a process of its own, writes both pids, then neither reads its
    control pipe nor ends (a workload busy in a task)."""
    import subprocess

    sleeper = subprocess.Popen(["sleep", "60"])
    os.write(messages_fd, f"{os.getpid()} {sleeper.pid}\n".encode())
    time.sleep(60)


def test_when_the_pinion_goes_the_server_stops_its_childrens_groups() -> None:
    """The server is its children's lifeline: its socket to the pinion reads end-of-file (the
    pinion exited or was killed) and every child it forked is stopped with what it started."""
    server = ForkServer(start_and_sleep)
    child = server.start()
    pids = [int(p) for p in read_line(child.messages_fd).split()]
    server.sock.close()  # what the kernel does when the pinion dies
    for pid in pids:
        wait_ended(pid, "a child (or its own process) of a server whose pinion went")
    server._process.wait()
    child.close()


def test_when_the_server_is_killed_its_children_stop_their_groups() -> None:
    """A server killed on its own cannot stop anything: each child is signalled by the kernel
    (PR_SET_PDEATHSIG) and stops its own process group."""
    server = ForkServer(start_and_sleep)
    try:
        child = server.start()
        pids = [int(p) for p in read_line(child.messages_fd).split()]
        os.kill(server.pid, signal.SIGKILL)
        for pid in pids:
            wait_ended(pid, "a child (or its own process) of a killed server")
        child.close()
    finally:
        server.close()


@pytest.fixture
def quick_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A silent server is given up on after 0.5 s instead of 10."""
    monkeypatch.setattr(platform, "FORK_SERVER_ANSWER", 0.5)


def test_a_stopped_server_asked_for_a_child_is_killed(quick_answer: None) -> None:
    server = ForkServer(report_parent)
    try:
        server.wait_ready()
        os.kill(server.pid, signal.SIGSTOP)
        waits: list[int] = []
        with pytest.raises(TimeoutError, match=r"the fork server ended \(it stopped answering"):
            server.start(idle=lambda: waits.append(1))
        assert waits  # the caller had its turn while it waited (a pinion renews its lease)
        assert not server.alive
        wait_ended(server.pid, "the stopped server")
        with pytest.raises(OSError):
            server.start()
    finally:
        server.close()  # kills it, if it is still stopped


def test_a_stopped_server_waited_for_is_killed_and_its_child_with_it(quick_answer: None) -> None:
    server = ForkServer(start_and_sleep)
    try:
        child = server.start()
        pids = [int(p) for p in read_line(child.messages_fd).split()]
        os.kill(server.pid, signal.SIGSTOP)
        assert child.wait(0.1) is None  # no answer yet: still waiting
        assert child.wait() == -signal.SIGKILL  # no answer in time: killed, and the child
        assert "it stopped answering" in child.server_ended
        for pid in pids:
            wait_ended(pid, "a child (or its own process) of a stopped server")
        child.close()
    finally:
        server.close()


def test_a_killed_servers_child_is_known_to_have_died_with_it() -> None:
    server = ForkServer(start_and_sleep)
    try:
        child = server.start()
        read_line(child.messages_fd)
        os.kill(server.pid, signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
        assert child.server_ended == "killed by signal SIGKILL"
        child.close()
    finally:
        server.close()


def leave_a_session(messages_fd: int, control_fd: int) -> None:
    """A child that starts a process in a new session, writes its pid, then dies of SIGKILL
    (nothing of it can clean up)."""
    import subprocess

    faulthandler.disable()
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    os.write(messages_fd, f"{sleeper.pid}\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)


def test_what_a_killed_child_left_in_another_session_is_killed_by_the_server() -> None:
    """The server is a subreaper: it adopts what its dead child left and kills it."""
    server = ForkServer(leave_a_session)
    try:
        child = server.start()
        sleeper = int(read_line(child.messages_fd))
        assert child.wait() == -signal.SIGKILL and not child.server_ended
        wait_ended(sleeper, "the process the killed child started in a new session")
        child.close()
    finally:
        server.close()
