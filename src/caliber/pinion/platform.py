"""Everything platform-specific about running a workload's child process, in one module (the
operating-system facts the queue needs too, disks and file permissions, are in
:mod:`caliber.platform`).

Two ways to start the child, with one protocol between them:

* ``fork`` (POSIX, the default there): on Linux a :class:`ForkServer`, a fresh interpreter
  holding only the child's modules (and those the pinion was asked to preload), forks each
  child; elsewhere the pinion, which never imports user code, forks it itself. Either way the
  child is a fresh copy with only Caliber (and the preloaded modules) loaded, so modules
  never leak between workloads, and it starts in about a millisecond. It gets its own
  process group, so a timeout or a lost lease kills everything it started, and a Ctrl-C in
  the pinion's terminal does not reach it. Nothing this module imports at its top loads
  threading (whose at-fork hooks every child would run) or pydantic.
* ``spawn`` (everywhere, the fallback on Windows; ``CALIBER_CHILD_START=spawn`` forces it): a
  new interpreter runs ``python -m caliber.pinion.child``, reading its job from stdin.

Either way the child writes JSON lines to a message pipe, and has a *lifeline*: when the
pinion dies, the child's process group is stopped at once instead of running on unowned. A
child of a :class:`ForkServer` has the server as its lifeline: the server's socket to the
pinion reads end-of-file, and the server kills the process group of every child it forked;
when the server itself ends, the kernel signals the child (``PR_SET_PDEATHSIG``), which
kills its group. Any other child watches its control pipe (its other end held only by the
pinion) in a thread until it reads end-of-file (a second thread makes every copy-on-write
fault dearer: a server's children do without).

On Linux the child is also a *subreaper* (``PR_SET_CHILD_SUBREAPER``), and so is the fork
server: a process the workload started in a new session (``setsid``), whose parent ends, is
adopted by the child instead of init, so the child finds every process its workload left, and
kills them (:func:`end_descendants`) before it sends its Results; the pinion does the same
before it kills a child; a child that dies on its own leaves its processes to the server,
which kills every process it adopts. Elsewhere only the child's process group is killed.

The pinion waits for nothing from a fork server without a limit (:data:`FORK_SERVER_ANSWER`):
a server that stops answering is killed, which ends its children too.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from caliber.errors import ChildStartError

if TYPE_CHECKING:
    import queue
    import subprocess

CHILD_START_ENV = "CALIBER_CHILD_START"
POSIX = os.name == "posix"
FORK_SERVER_ANSWER = 10.0  # seconds: the longest a started fork server may take to answer (a
# child asked for, a sign of life); it forks in about a millisecond: one that has not answered
# by then has stopped (SIGSTOP) or hung, and is killed
FORK_SERVER_READY = 300.0  # seconds: the longest a fork server may take to start (it imports
# the modules to preload, large libraries too)
KILL_ROUNDS = 8  # end_descendants: the most passes over a workload's processes


def start_method() -> str:
    """``fork`` or ``spawn``: ``CALIBER_CHILD_START`` (ConfigError when it is neither), else
    fork where the system has it."""
    from caliber.settings import child_start

    wanted = child_start()
    if wanted is not None:
        return wanted if (wanted == "spawn" or hasattr(os, "fork")) else "spawn"
    return "fork" if hasattr(os, "fork") else "spawn"


@dataclass
class ChildProcess:
    """A running child: its pid, the fd its messages arrive on, and how to stop it."""

    pid: int
    messages_fd: int
    _popen: subprocess.Popen[bytes] | None = None
    _control_fd: int | None = None
    returncode: int | None = field(default=None)
    _server: ForkServer | None = None
    """The fork server that started it (and waits for it), if one did."""
    server_ended: str = ""
    """Why its fork server ended (or was killed for not answering), when it did before saying
    how the child ended: the child died with it, its lifeline, or is killed (``returncode``
    is then ``-SIGKILL``)."""

    def send_job(self, job: dict[str, Any]) -> None:
        """Give the waiting child its workload (one JSON line on its control pipe, which then
        stays open as its lifeline). OSError when the child is gone."""
        data = json.dumps(job, separators=(",", ":")).encode("utf-8") + b"\n"
        if self._popen is not None:
            assert self._popen.stdin is not None
            self._popen.stdin.write(data)
            self._popen.stdin.flush()
            return
        assert self._control_fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self._control_fd, view):]

    def parent_fds(self) -> list[int]:
        """The pinion's ends of this child's pipes (a later fork must not keep them open)."""
        return [fd for fd in (self.messages_fd, self._control_fd) if fd is not None]

    def poll(self) -> int | None:
        """The exit status once the child has ended (negative: killed by that signal)."""
        if self.returncode is not None:
            return self.returncode
        if self._popen is not None:
            self.returncode = self._popen.poll()
            return self.returncode
        if self._server is not None:
            return self._from_server(0.0)
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return None
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status, waited for up to ``timeout`` seconds (None: until it ends); None
        when it has not ended by then. A fork server's child is waited for through the
        server, which is killed when it stops answering (the child then dies with it, see
        :attr:`server_ended`): that wait ends even without ``timeout``."""
        if self.returncode is not None:
            return self.returncode
        if self._popen is not None:
            import subprocess

            with contextlib.suppress(subprocess.TimeoutExpired):
                self.returncode = self._popen.wait(timeout)
            return self.returncode
        if self._server is not None:
            while self._from_server(FORK_SERVER_ANSWER if timeout is None else timeout) is None:
                if timeout is not None:
                    return None
            return self.returncode
        if timeout is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode
        end = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() >= end:
                return None
            time.sleep(0.01)
        return self.returncode

    def _from_server(self, timeout: float) -> int | None:
        """:meth:`poll` or :meth:`wait` for a fork server's child."""
        assert self._server is not None
        try:
            self.returncode = self._server.exit_status(self.pid, timeout)
        except OSError:  # the server is gone: so is the child (its lifeline), or it goes now
            self.kill()
            self.server_ended = self._server.ended or "it ended"
            self.returncode = -signal.SIGKILL
        return self.returncode

    def kill(self) -> None:
        """Kill the child and everything it started: its processes in other sessions first
        (found while it is stopped, so it starts no more; see :func:`end_descendants`), then
        its process group and itself."""
        if self.returncode is not None:
            return
        if POSIX:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGSTOP)
            end_descendants(self.pid)
        self.kill_group()
        if self._popen is not None:
            with contextlib.suppress(OSError):
                self._popen.kill()
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def terminate(self) -> None:
        """Ask the child and everything it started to stop now (SIGTERM): its process group
        (itself included), then its processes in other sessions (found as
        :func:`end_descendants` finds them). The child stops its running task (``queue
        cancel --now``, see :mod:`caliber.pinion.stops`); :meth:`kill` is the pinion's next
        step."""
        if self.returncode is not None:
            return
        if not POSIX:  # pragma: no cover - Windows
            if self._popen is not None:
                self._popen.terminate()
            return
        descendants = _descendants(self.pid)
        with contextlib.suppress(OSError):  # first, in one step: the child learns it before
            os.killpg(self.pid, signal.SIGTERM)  # it sees a process it waits for end
        for pid in descendants:
            with contextlib.suppress(OSError):
                if os.getpgid(pid) != self.pid:  # those of its group have it already
                    os.kill(pid, signal.SIGTERM)

    def ask_to_stop(self) -> bool:
        """Ask the child to run no further task (SIGUSR1, see
        :func:`caliber.pinion.child.run_job`); False where there is no such signal."""
        if not hasattr(signal, "SIGUSR1") or self.returncode is not None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGUSR1)
        return True

    def kill_group(self) -> None:
        """Kill what is left of the child's process group (processes it started)."""
        if POSIX:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    def close(self) -> None:
        if self._popen is not None:
            for stream in (self._popen.stdin, self._popen.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            return
        for fd in (self.messages_fd, self._control_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._control_fd = None


ChildMain = Callable[[int, int], None]


def start_child(run: ChildMain, *, close_fds: Sequence[int] = (),
                method: str | None = None, server: ForkServer | None = None) -> ChildProcess:
    """Start a child that calls ``run(messages_fd, control_fd)``: it waits for its job (see
    :meth:`ChildProcess.send_job`), runs it and exits. Starting it before the job is known
    lets a pinion prepare the next child while the current one runs; ``close_fds`` are the
    pinion's pipes to children already running, which the new one must not hold open.
    ``method`` is :func:`start_method`'s answer, when the caller has it already (it reads the
    settings, ``.caliber/.env`` included: a pinion asks once, not once per workload)."""
    if (method or start_method()) == "fork":
        if server is not None and server.alive:
            return server.start()
        return _fork(run, close_fds)
    return _spawn()


def start_fork_server(run: ChildMain, preload: Sequence[str] = (),
                      method: str | None = None) -> ForkServer | None:
    """A fork server whose children run ``run``, starting (it imports what a child needs on
    another core while the pinion goes on); None where there is none: the start method
    (``method``, else :func:`start_method`) is not fork, the system is not Linux, or it could
    not be started (the pinion then forks its children itself)."""
    if (method or start_method()) != "fork" or not ForkServer.available():
        return None
    try:
        return ForkServer(run, preload=preload)
    except OSError as exc:
        import logging

        logging.getLogger(__name__).debug(
            "no fork server (%s): the pinion forks its children itself", exc)
        return None


class ForkServer:
    """A process started once per pinion, that forks every workload's child for it.

    A fork costs the forking process the copy of its page tables, and the child a
    copy-on-write fault on every page either of them writes while they share it; both grow
    with what the forking process holds. The pinion holds its queue, pydantic and its models,
    the CLI: forking from it cost ~2 ms of CPU per child (and the pinion ~800 faults per
    workload). The server is a fresh interpreter (:func:`serve`) that imports only what a
    child runs, without pydantic or threading (whose at-fork hooks every child would run):
    0.8 ms per fork, measured. It also imports the modules the pinion was asked to preload
    (``--preload``), so that children of workloads that use them start with them loaded.

    The server sends each child's pipes to the pinion over a Unix socket (and closes its
    copies, so the control pipe is held by the pinion alone: a spare it drops reads
    end-of-file and exits), waits for its children and reports how each ended. When the
    pinion goes, the socket reads end-of-file: the server kills the process group of every
    child it forked that has not ended, and exits; when the server ends any other way, each
    child is signalled (``PR_SET_PDEATHSIG``) and kills its own group. So the server is the
    children's lifeline, and they need no thread to watch one. Linux only
    (``SOCK_SEQPACKET``); elsewhere the pinion forks its children itself.

    Nothing is waited for from the server without a limit: a new child, or a sign of life
    while an exit status is awaited (a ping), within :data:`FORK_SERVER_ANSWER` seconds
    (:data:`FORK_SERVER_READY` while it starts). A server that does not answer is killed
    (its children die with it); :attr:`ended` then says why, as it does when the server
    ended on its own, and every wait on it raises ConnectionResetError.
    """

    def __init__(self, run: ChildMain, *, preload: Sequence[str] = ()) -> None:
        import subprocess

        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        spec = {"run": f"{run.__module__}:{run.__qualname__}", "path": sys.path,
                "argv": sys.argv, "preload": list(preload)}
        flags: Callable[[], list[str]] = getattr(
            subprocess, "_args_from_interpreter_flags", list)  # -O, -X, -W: as the pinion's
        try:
            self.sock.send(json.dumps(spec).encode("ascii"))  # ASCII: JSON escapes the rest
            self._process = subprocess.Popen(
                [sys.executable, *flags(), "-c", _SERVER_MAIN, str(theirs.fileno())],
                stdin=subprocess.DEVNULL, pass_fds=[theirs.fileno()],
                process_group=0)  # a Ctrl-C in the pinion's terminal is the pinion's to handle
        finally:
            theirs.close()
        self.sock.setblocking(False)  # waits go through select (a default timeout set by a
        self.pid = self._process.pid  # library would turn MSG_DONTWAIT into a wait)
        self.alive = True
        self.ready = False  # it said it has imported what a child needs (and preloaded)
        self.ended = ""
        """Why it ended, once it has (``killed by signal SIGKILL``, ``it stopped answering``)."""
        self._started = time.monotonic()
        self._asked = False  # a child was asked for and not yet taken
        self._pinged: float | None = None  # when the unanswered ping was sent
        self._ready: collections.deque[tuple[int, list[int]]] = collections.deque()
        self._ended: dict[int, int] = {}

    def wait_ready(self) -> None:
        """Wait until the server has started (ChildStartError saying why it could not: a
        module to preload that fails to import, say, or no word in FORK_SERVER_READY s)."""
        try:
            self._await(lambda: self.ready)
        except OSError as exc:
            raise ChildStartError(str(exc)) from None

    @staticmethod
    def available() -> bool:
        return sys.platform.startswith("linux") and hasattr(socket, "SOCK_SEQPACKET")

    def prefork(self) -> None:
        """Ask for the next child now, so it is forked (in the server, on another core) while
        the current workload runs; :meth:`start` takes it. OSError when the server is gone."""
        if not self._asked:
            self._send(b"f")
            self._asked = True

    def start(self, idle: Callable[[], object] | None = None) -> ChildProcess:
        """A new child, waiting for its job: the one asked for by :meth:`prefork`, or one asked
        for now. ``idle`` is called every tenth of a second while the server has not answered
        (a pinion renews its lease). OSError when the server is gone, TimeoutError when it
        has not answered in time (it is then killed)."""
        self.prefork()
        self._await(lambda: bool(self._ready), idle)
        self._asked = False
        pid, (messages_fd, control_fd) = self._ready.popleft()
        return ChildProcess(pid=pid, messages_fd=messages_fd, _control_fd=control_fd,
                            _server=self)

    def exit_status(self, pid: int, timeout: float = 0.0) -> int | None:
        """How child ``pid`` ended (as :attr:`ChildProcess.returncode`), waited for up to
        ``timeout`` seconds; None while it runs. A wait (``timeout`` > 0) asks the server for a
        sign of life: one that has given none for FORK_SERVER_ANSWER seconds is killed.
        ConnectionResetError when the server has ended (or was killed)."""
        end = time.monotonic() + timeout
        while pid not in self._ended:
            self._check()
            left = end - time.monotonic()
            if left > 0:
                self._ping()
            if not self._receive(max(left, 0.0)) and left <= 0:
                self._check()
                return None
        return self._ended.pop(pid)

    def kill(self, why: str) -> None:
        """Kill the server (it stopped answering): each of its children dies with it."""
        self.alive = False
        self.ended = self.ended or why
        with contextlib.suppress(OSError):
            self._process.kill()

    def _await(self, done: Callable[[], bool], idle: Callable[[], object] | None = None,
               ) -> None:
        """Receive messages until ``done()``, calling ``idle()`` between them; kill the server
        and raise TimeoutError when it has not answered within FORK_SERVER_ANSWER seconds
        (FORK_SERVER_READY from its start while it is not ready)."""
        now = time.monotonic()
        end = now + FORK_SERVER_ANSWER
        if not self.ready:
            end = max(end, self._started + FORK_SERVER_READY)
        while not done():
            self._check()
            left = end - time.monotonic()
            if left <= 0:
                what = "answering" if self.ready else "starting"
                limit = FORK_SERVER_ANSWER if self.ready else FORK_SERVER_READY
                self.kill(f"it stopped {what} (no word in {limit:g} s): killed")
                raise TimeoutError(f"the fork server ended ({self.ended})")
            self._receive(min(left, 0.1))
            if idle is not None and not done():
                idle()

    def _check(self) -> None:
        """ConnectionResetError when the server has ended; a pending ping that has waited
        longer than FORK_SERVER_ANSWER kills it first."""
        if (self.alive and self._pinged is not None
                and time.monotonic() - self._pinged > FORK_SERVER_ANSWER):
            self.kill(f"it stopped answering (no word in {FORK_SERVER_ANSWER:g} s): killed")
        if not self.alive:
            raise ConnectionResetError(f"the fork server ended ({self.ended or 'closed'})")

    def _ping(self) -> None:
        """Ask the server for a sign of life, unless a ping awaits its answer already."""
        if self._pinged is None:
            self._send(b"p")
            self._pinged = time.monotonic()

    def _send(self, request: bytes) -> None:
        self._check()
        try:
            self.sock.sendall(request)
        except OSError:
            self._lost()
            raise

    def _lost(self) -> None:
        """The server's end of the socket closed: it has ended."""
        import subprocess

        self.alive = False
        if not self.ended:
            try:  # it is ending (its socket closes as it exits): how, said in a moment
                code: int | None = self._process.wait(1.0)
            except subprocess.TimeoutExpired:
                code = None
            self.ended = "it ended" if code is None else describe_exit(code)

    def _receive(self, timeout: float) -> bool:
        """One message, kept: a new child (its pid and pipes), how one ended, or a sign of
        life. False when none came within ``timeout`` seconds."""
        if not select.select([self.sock], [], [], timeout)[0]:
            return False
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, 8192, 2)
        except BlockingIOError:
            return False
        except OSError:
            self._lost()
            raise
        if not data:
            for fd in fds:
                os.close(fd)
            self._lost()
            raise ConnectionResetError(f"the fork server ended ({self.ended})")
        if data.startswith(b"e "):  # it could not start: why, then end-of-file
            self.alive = False
            self.ended = data[2:].decode("utf-8", "backslashreplace")
            raise ConnectionResetError(self.ended)
        if data == b"r":
            self.ready = True
            return True
        if data == b"p":
            self._pinged = None
            return True
        kind, pid, *rest = data.decode("ascii").split()
        if kind == "x":
            self._ended[int(pid)] = os.waitstatus_to_exitcode(int(rest[0]))
        elif len(fds) == 2:
            self._ready.append((int(pid), fds))
        return True

    def close(self) -> None:
        """Stop the server and wait for it (killed if it has not ended within
        FORK_SERVER_ANSWER seconds). Its children that still run are not touched; the child
        asked for and not taken reads end-of-file on its control pipe and exits."""
        import subprocess

        was_alive, self.alive = self.alive, False
        for _pid, fds in self._ready:
            for fd in fds:
                os.close(fd)
        self._ready.clear()
        self.sock.close()
        try:
            self._process.wait(FORK_SERVER_ANSWER)
        except subprocess.TimeoutExpired:
            self.kill(f"it did not end within {FORK_SERVER_ANSWER:g} s of its pinion: killed")
            self._process.wait()
        if not was_alive and not self.ended:
            self.ended = describe_exit(self._process.returncode)


_SERVER_MAIN = ("import json, socket, sys; sock = socket.socket(fileno=int(sys.argv[1])); "
                "spec = json.loads(sock.recv(1 << 22)); "
                "sys.path[:] = spec['path']; from caliber.pinion.platform import serve; "
                "serve(sock, spec)")
"""The fork server's program: its orders come first on the socket (its command line stays
short), then the pinion's ``sys.path`` (the server must find Caliber, and the children the
modules the pinion would find), then :func:`serve`."""


def serve(sock: socket.socket, spec: dict[str, Any]) -> None:
    """The fork server, a fresh interpreter started by :class:`ForkServer`: it imports the
    modules to preload and the children's function (``spec["run"]``, ``module:name``), tells
    the pinion it is ready (or why it could not start) and forks children until the pinion
    goes. Its children see the pinion's ``sys.argv``."""
    import importlib

    sys.argv[:] = spec["argv"]
    try:
        for name in spec["preload"]:
            try:
                importlib.import_module(name)
            except BaseException as exc:
                raise ImportError(f"cannot preload module {name!r}: {type(exc).__name__}: "
                                  f"{exc}") from exc
        module, _, qualname = spec["run"].partition(":")
        run: Any = importlib.import_module(module)
        for part in qualname.split("."):
            run = getattr(run, part)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            sock.send(b"e " + str(exc).encode("utf-8", "backslashreplace")[:4000])
        raise SystemExit(1) from None
    with contextlib.suppress(OSError):  # the pinion has gone (its end of the socket closed)
        sock.send(b"r")
        _serve(sock, run)


def _serve(sock: socket.socket, run: ChildMain) -> None:
    """The fork server's loop: a child per request, the exit status of every child that ends,
    until the pinion's end of the socket closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)  # a child's end wakes the select below
    global _SERVER_PID
    _SERVER_PID = os.getpid()  # its children die with it (see _die_with_server)
    become_subreaper()  # here, once: ctypes is imported, a child only calls prctl
    running: set[int] = set()
    try:
        _serve_loop(sock, run, wake_r, wake_w, running)
    finally:  # the pinion has gone (or this loop failed): so do the children, and all theirs
        for pid in running:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGSTOP)
            end_descendants(pid)
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)


def _serve_loop(sock: socket.socket, run: ChildMain, wake_r: int, wake_w: int,
                running: set[int]) -> None:
    while True:
        ready = select.select([sock, wake_r], [], [])[0]
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_r, 512):
                    pass
            _reap_all(sock, running)
        if sock in ready:
            request = sock.recv(16)
            if not request:
                return  # the pinion has gone
            if request == b"p":  # the pinion asks whether this server still answers
                sock.send(b"p")
                continue
            child = _fork(run, (sock.fileno(), wake_r, wake_w))
            running.add(child.pid)
            assert child._control_fd is not None
            socket.send_fds(sock, [f"c {child.pid}".encode("ascii")],
                            [child.messages_fd, child._control_fd])
            os.close(child.messages_fd)
            os.close(child._control_fd)


def _reap_all(sock: socket.socket, running: set[int]) -> None:
    """In the fork server, woken by SIGCHLD: wait for every process of its own that ended,
    tell the pinion how each child it forked ended, and kill every other process it has: a
    subreaper, it adopts what a child that died on its own (SIGKILL, a crash) left running
    in other sessions (with what those started)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        if pid in running:
            running.discard(pid)
            sock.send(f"x {pid} {status}".encode("ascii"))
    for pid in _children(os.getpid()):
        if pid not in running:
            end_descendants(pid)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


_SERVER_PID: int | None = None
"""Set in a fork server (and so in its children): the server's pid."""
_PRCTL: Callable[..., int] | None = None
"""libc's ``prctl`` (Linux), looked up by the process that forks children before it forks."""
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Linux: make this process a subreaper (``PR_SET_CHILD_SUBREAPER``): a descendant whose
    parent ends is adopted by it instead of init, so it can find (:func:`end_descendants`)
    what its workload started in other sessions. Looks ``prctl`` up once (ctypes), for the
    children forked later too; nothing elsewhere."""
    if _load_prctl():
        assert _PRCTL is not None
        _PRCTL(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _load_prctl() -> bool:
    """Look libc's ``prctl`` up, once (Linux); whether there is one."""
    global _PRCTL
    if _PRCTL is None and sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):  # a libc without it: none
            _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
    return _PRCTL is not None


def _children(pid: int) -> list[int]:
    """The children of process ``pid``, of every thread of it (Linux's
    ``/proc/PID/task/TID/children``); none where there is no such file."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for tid in tasks:
        try:
            fd = os.open(f"/proc/{pid}/task/{tid}/children", os.O_RDONLY)
        except OSError:
            continue
        try:
            data = b""
            while chunk := os.read(fd, 4096):
                data += chunk
        except OSError:
            pass
        finally:
            os.close(fd)
        found.extend(int(child) for child in data.split())
    return found


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in _children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def end_descendants(pid: int | None = None) -> None:
    """Kill every descendant of process ``pid`` (this one by default), whatever its session or
    process group. In rounds: a process killed in one may leave children, which the next
    finds, adopted by ``pid`` when it is a subreaper (a workload's child is one, see
    :func:`become_subreaper`). Linux (``/proc``); elsewhere nothing is found, and only the
    process group is killed (:meth:`ChildProcess.kill_group`)."""
    if pid is None and hasattr(os, "waitid"):
        try:  # the usual case, one system call: no child, so no descendant (a subreaper
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)  # adopts orphans)
        except ChildProcessError:
            return
    root = os.getpid() if pid is None else pid
    killed: set[int] = set()
    for _round in range(KILL_ROUNDS):
        found = [p for p in _descendants(root) if p not in killed]
        if not found:
            return
        for child in found:
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)
        killed.update(found)


def _die_with_server() -> None:
    """In a child of a fork server: when the server ends (the pinion too, or it was killed on
    its own), stop this process group, as a lifeline would: the kernel sends
    ``SIGRTMIN`` (``PR_SET_PDEATHSIG``), whose handler kills the group. A server that has
    ended already: exit. The job is then taken without a lifeline thread (:func:`receive_job`)."""
    if _SERVER_PID is None or _PRCTL is None:
        return
    signal.signal(signal.SIGRTMIN, _lifeline_cut)
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGRTMIN, 0, 0, 0)
    if os.getppid() != _SERVER_PID:  # the server ended before the line above
        os._exit(1)


def _lifeline_cut(*_: object) -> None:
    end_descendants()
    with contextlib.suppress(OSError):
        os.killpg(os.getpgid(0), signal.SIGKILL)
    os._exit(70)


def _fork_frozen() -> int:
    """``os.fork()``, with the output flushed and the forking process's objects moved out of
    the collector's sight first: a collection in the child would otherwise touch every one of
    them and copy nearly all of that process's memory."""
    sys.stdout.flush()
    sys.stderr.flush()
    gc.freeze()
    return os.fork()


def _fork(run: ChildMain, close_fds: Sequence[int]) -> ChildProcess:
    _load_prctl()  # once: each child becomes a subreaper
    msg_r, msg_w = os.pipe()
    try:
        ctl_r, ctl_w = os.pipe()
    except OSError:  # out of file descriptors: the first pipe must not stay open
        os.close(msg_r)
        os.close(msg_w)
        raise
    for fd in (msg_r, ctl_w):
        os.set_inheritable(fd, False)
    pid = _fork_frozen()
    if pid == 0:  # the child
        code = 1
        try:
            os.setpgid(0, 0)
            for fd in (msg_r, ctl_w, *close_fds):
                with contextlib.suppress(OSError):
                    os.close(fd)
            with contextlib.suppress(ValueError):
                signal.set_wakeup_fd(-1)  # a fork server's, if it forked this child
            if _PRCTL is not None:  # see become_subreaper
                _PRCTL(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
            _die_with_server()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            run(msg_w, ctl_r)
            code = 0
        except BaseException:  # never return into the pinion's code
            code = 1
        finally:
            os._exit(code)
    with contextlib.suppress(OSError):  # also in the parent, so killpg works at once
        os.setpgid(pid, pid)
    os.close(msg_w)
    os.close(ctl_r)
    return ChildProcess(pid=pid, messages_fd=msg_r, _control_fd=ctl_w)


def _spawn() -> ChildProcess:
    import subprocess

    kwargs: dict[str, Any] = {}
    if POSIX:
        kwargs["start_new_session"] = True
    else:  # pragma: no cover - Windows
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
    popen = subprocess.Popen(
        [sys.executable, "-m", "caliber.pinion.child"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        **kwargs,
    )
    assert popen.stdin is not None and popen.stdout is not None
    return ChildProcess(pid=popen.pid, messages_fd=popen.stdout.fileno(), _popen=popen)


EOF: Any = object()
"""What :meth:`MessageReader.get` returns once the child's end of the pipe is closed."""


class MessageReader:
    """The child's message lines, with a timeout: ``select`` on a non-blocking pipe on POSIX,
    a reader thread where ``select`` does not take pipes (Windows)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lines: collections.deque[bytes] = collections.deque()
        self.pending: list[bytes] = []
        self.eof = False
        self._queue: queue.Queue[bytes | None] | None = None
        if POSIX:
            os.set_blocking(fd, False)
        else:  # pragma: no cover - Windows
            import queue
            import threading

            self._queue = queue.Queue()
            threading.Thread(target=self._pump, daemon=True).start()

    def get(self, timeout: float) -> bytes | Any | None:
        """The next line, None when none came within ``timeout`` seconds, or EOF."""
        if not self.lines and not self.eof:
            if self._queue is not None:  # pragma: no cover - Windows
                import queue

                try:
                    chunk = self._queue.get(timeout=timeout)
                except queue.Empty:
                    return None
                self._add(chunk)
            elif select.select([self.fd], [], [], timeout)[0]:
                self._read_available()
        if self.lines:
            return self.lines.popleft()
        return EOF if self.eof else None

    @property
    def waiting(self) -> bool:
        """Whether this reader has nothing to give yet: no line, and not at end-of-file."""
        return not self.lines and not self.eof

    def _read_available(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            self._add(chunk or None)
            if not chunk:
                return

    def _add(self, chunk: bytes | None) -> None:
        if chunk is None:
            self.eof = True
            return
        while (cut := chunk.find(b"\n")) >= 0:
            self.pending.append(chunk[:cut])
            self.lines.append(b"".join(self.pending))
            self.pending = []
            chunk = chunk[cut + 1:]
        if chunk:
            self.pending.append(chunk)

    def _take_queued(self) -> None:  # pragma: no cover - Windows
        """What the reader thread has read so far, without waiting."""
        import queue

        assert self._queue is not None
        with contextlib.suppress(queue.Empty):
            while not self.eof:
                self._add(self._queue.get_nowait())

    def _pump(self) -> None:  # pragma: no cover - Windows
        assert self._queue is not None
        try:
            while chunk := os.read(self.fd, 1 << 16):
                self._queue.put(chunk)
        except OSError:
            pass
        self._queue.put(None)


def wait_for_messages(readers: Sequence[MessageReader], timeout: float,
                      also: int | None = None) -> bool:
    """Wait until one of several children's readers (a pinion running several workloads at
    once) has something to give, a line or end-of-file, at most ``timeout`` seconds: one
    ``select`` over their pipes on POSIX. What arrived is read into them, and their
    :meth:`MessageReader.get` gives it without waiting. ``also``: one more file descriptor
    to wait on (the queue's :meth:`~caliber.queue.backend.QueueBackend.work_signal`, POSIX
    only); whether it became readable."""
    waiting = [r for r in readers if r.waiting]
    if len(waiting) < len(readers):
        timeout = 0.0  # one has something already
    if not waiting:
        return False
    if waiting[0]._queue is None:
        fds = [r.fd for r in waiting] + ([] if also is None else [also])
        told = False
        for fd in select.select(fds, [], [], max(timeout, 0.0))[0]:
            if fd == also:
                told = True
            else:
                next(r for r in waiting if r.fd == fd)._read_available()
        return told
    end = time.monotonic() + timeout  # pragma: no cover - Windows: a thread reads each pipe
    while all(r.waiting for r in waiting):  # pragma: no cover
        for reader in waiting:
            reader._take_queued()
        if time.monotonic() >= end:
            return False
        time.sleep(0.01)
    return False  # pragma: no cover


def receive_job(control_fd: int) -> dict[str, Any]:
    """In the child: wait for the job on the control pipe. A fork server's child then has the
    server as its lifeline (see :class:`ForkServer`); any other keeps watching that pipe in a
    thread: when the pinion goes away (before or after sending the job), it reads end-of-file
    and this process group is stopped at once. End-of-file before the job: exit."""
    if _SERVER_PID is not None:
        pending = b""
        while b"\n" not in pending:
            chunk = os.read(control_fd, 1 << 16)
            if not chunk:  # dropped as a spare, or the pinion has gone
                os._exit(0)
            pending += chunk
        job: dict[str, Any] = json.loads(pending.split(b"\n", 1)[0])
        return job
    import threading  # not before: a fork server and its children do without

    arrived = threading.Event()
    box: list[dict[str, Any]] = []

    def watch() -> None:
        pending = b""
        try:
            while chunk := os.read(control_fd, 1 << 16):
                if not box:
                    pending += chunk
                    if b"\n" in pending:
                        box.append(json.loads(pending.split(b"\n", 1)[0]))
                        arrived.set()
        except (OSError, ValueError):
            pass
        end_descendants()
        if POSIX:
            with contextlib.suppress(OSError):
                os.killpg(os.getpgid(0), signal.SIGKILL)
        os._exit(70 if box else 0)

    threading.Thread(target=watch, name="caliber-lifeline", daemon=True).start()
    arrived.wait()
    return box[0]


def redirect_output(path: str) -> None:
    """In the child: send everything the workload prints (fds 1 and 2) to ``path``, appended
    to (the pinion may have made it already), made 0600 if it is new. ``sys.stdout`` and
    ``sys.stderr`` write to those fds (:func:`caliber.pinion.child.ready_for_work`) and hold
    nothing unwritten."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def describe_exit(returncode: int) -> str:
    """``'killed by signal SIGSEGV'`` or ``'exited with status 3'``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"killed by signal {name}"
    return f"exited with status {returncode}"
