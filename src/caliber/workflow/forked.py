"""The processes of parallel branches (:mod:`caliber.workflow.branches` says the rules).

The workflow's process forks one process per branch, at most ``parallel`` at a time, each
with two pipes: its messages come back on one (pickled, each after its length: the task
events as they happen, ``stopped`` when its branch stops, then its :class:`Outcome`), and on
the other the workflow's process tells it to start no further task (:data:`FAILED`: another
branch failed; :data:`CANCEL`: the run is stopped; end-of-file: the workflow's process is
gone). A branch's process that ends without its outcome (killed, crashed) fails the task it
was running (:data:`DIED`), the records of the tasks that ended kept.

POSIX only (``os.fork``); no pydantic, no threading: a pinion's child runs this.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import io
import os
import pickle
import select
import signal
import struct
import sys
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from caliber.results.arrays import FolderValues, KeptValues, restore
from caliber.results.values import TaskStatus
from caliber.workflow.branches import Outcome, run_branch
from caliber.workflow.limits import interrupt_running_task

if TYPE_CHECKING:
    from caliber.results.arrays import ValueWriter
    from caliber.workflow.model import BranchProcess
    from caliber.workflow.runner import TaskEvent, TaskRecord, _Run

DIED = "BranchProcessDied"
"""The error type of a task whose branch's process ended while it ran (killed, crashed)."""
FAILED = b"f"  # to a branch: another branch failed, start no further task
CANCEL = b"c"  # to a branch: the run is stopped (cancel, Ctrl-C), start no further task
POLL = 0.1  # seconds: how often the workflow's process looks for a stop asked from outside
_HEADER = struct.Struct("!Q")  # a message's length, before it, on a branch's pipe


@dataclass
class _Branch:
    """A branch's process, as the workflow's process follows it."""

    branch: int
    pid: int
    messages: int  # the fd its messages come from
    control: int  # the fd FAILED and CANCEL go to
    buffer: bytearray = field(default_factory=bytearray)
    indexes: dict[str, int] = field(default_factory=dict)  # task -> its number in the run
    running: str | None = None
    ended: dict[str, TaskRecord] = field(default_factory=dict)
    outcome: Outcome | None = None

    def tell(self, what: bytes) -> None:
        with contextlib.suppress(OSError):  # it has ended: it needs telling nothing
            os.write(self.control, what)

    def messages_in(self, data: bytes) -> list[Any]:
        self.buffer += data
        found = []
        while len(self.buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self.buffer)
            if len(self.buffer) < _HEADER.size + size:
                break
            found.append(pickle.loads(self.buffer[_HEADER.size:_HEADER.size + size]))
            del self.buffer[:_HEADER.size + size]
        return found


class Forked:
    """The branches of one branch process in processes of their own, at most ``parallel``
    at a time."""

    def __init__(self, run: _Run, node: BranchProcess) -> None:
        self.run_ = run
        self.node = node
        self.limit = node.parallel or 1
        self.running: dict[int, _Branch] = {}  # by messages fd
        self.outcomes: list[Outcome] = []
        self.failed = False
        self.cancelled = False
        self.interrupts: list[int] = []  # Ctrl-C while the branches run

    def run(self) -> list[Outcome]:
        pending = list(range(self.node.branches))
        previous = self._catch_sigint()
        try:
            while pending or self.running:
                if not self.cancelled and (self.interrupts or self.run_.should_stop()):
                    self.stop(CANCEL)
                if self.failed or self.cancelled:
                    self.not_started(pending)
                    pending.clear()
                while pending and len(self.running) < self.limit:
                    self.start(pending.pop(0))
                if self.running:
                    self.follow()
        finally:
            self.end_all()
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        return self.outcomes

    def not_started(self, pending: list[int]) -> None:
        """A stop leaves ``pending`` branches unstarted: a stopped run says before which task."""
        if self.cancelled and pending:
            self.run_.interrupted = True
            self.run_.stopped_before = self.run_.stopped_before or self.node.items[0].name

    def stop(self, why: bytes) -> None:
        """No branch starts a further task (FAILED: one failed; CANCEL: the run stops)."""
        self.cancelled = self.cancelled or why == CANCEL
        self.failed = self.failed or why == FAILED
        for branch in self.running.values():
            branch.tell(why)

    def _catch_sigint(self) -> Any:
        """Ctrl-C while the branches run: passed on to them (each stops its running task),
        and no further one starts. None when this is not the main thread."""

        def on_sigint(_signum: int, _frame: object) -> None:
            self.interrupts.append(1)
            for branch in list(self.running.values()):
                with contextlib.suppress(OSError):
                    os.kill(branch.pid, signal.SIGINT)

        try:
            return signal.signal(signal.SIGINT, on_sigint)
        except ValueError:  # not the main thread: Ctrl-C reaches the branches on its own
            return None

    def start(self, branch: int) -> None:
        run = self.run_
        messages_r, messages_w = os.pipe()
        control_r, control_w = os.pipe()
        inherited = [fd for b in self.running.values() for fd in (b.messages, b.control)]
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        gc.freeze()  # the collector in the branch's process does not touch (copy) them all
        # Ctrl-C held back until the branch's process has its own handler (this one's would
        # run there first): delivered then, in either process
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
            gc.unfreeze()
            for fd in (messages_r, messages_w, control_r, control_w):
                os.close(fd)
            self.outcomes.append(self.cannot_start(branch, exc))
            self.stop(FAILED)
            return
        if pid == 0:  # the branch's process: never returns
            code = 70
            try:
                for fd in (messages_r, control_w, *inherited):
                    os.close(fd)
                _branch_main(run, self.node, branch, messages_w, control_r)
                code = 0
            except BaseException:  # Caliber's own failure: its traceback on stderr
                with contextlib.suppress(BaseException):
                    traceback.print_exc()
            finally:
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(BaseException):
                        stream.flush()
                os._exit(code)
        self.running[messages_r] = _Branch(branch, pid, messages_r, control_w)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        gc.unfreeze()
        os.close(messages_w)
        os.close(control_r)

    def follow(self) -> None:
        """Wait (at most :data:`POLL`) for messages of the running branches; take them."""
        ready, _, _ = select.select(list(self.running), [], [], POLL)
        for fd in ready:
            branch = self.running[fd]
            data = os.read(fd, 1 << 20)
            if not data:
                self.ended(branch)
                continue
            for message in branch.messages_in(data):
                self.take(branch, message)

    def take(self, branch: _Branch, message: tuple[Any, ...]) -> None:
        run = self.run_
        kind = message[0]
        if kind == "event":
            event: TaskEvent = message[1]
            if event.kind == "start":
                run.index += 1
                branch.indexes[event.name] = run.index
                branch.running = event.name
            else:
                branch.running = None
                if event.result is not None:
                    branch.ended[event.name] = event.result
            index = branch.indexes.get(event.name, run.index)
            run.emit(dataclasses.replace(event, index=index, total=run.total))
        elif kind == "stopped":
            self.stop(CANCEL if message[1] == "interrupted" else FAILED)
        elif kind == "outcome":
            branch.outcome = _unpacked(message[1], run.writer)

    def ended(self, branch: _Branch) -> None:
        del self.running[branch.messages]
        os.close(branch.messages)
        os.close(branch.control)
        status = _reap(branch.pid)
        if branch.outcome is None:
            branch.outcome = self.died(branch, status)
            self.stop(FAILED)
        self.outcomes.append(branch.outcome)

    def died(self, branch: _Branch, status: int) -> Outcome:
        """The outcome of a branch whose process ended without sending it (killed, crashed):
        the records of the tasks that ended, the running one failed."""
        from caliber.workflow.runner import ErrorRecord

        run = self.run_
        records = {t.name: run.records[t.name, branch.branch] for t in self.node.items}
        records.update(branch.ended)
        outcome = Outcome(branch.branch, records)
        if branch.running is not None:
            how = (f"was killed by signal {-status}" if status < 0
                   else f"exited with code {status}")
            message = (f"the process of branch {branch.branch} {how} while task "
                       f"{branch.running!r} ran")
            error = ErrorRecord(DIED, message, f"{DIED}: {message}\n", branch.running,
                                branch.branch)
            record = records[branch.running]
            record.status, record.error = TaskStatus.FAILED, error
        g_json = dict(run.g_json)
        for name, record in records.items():
            if record.error is not None:
                outcome.errors.append(record.error)
            if record.status == TaskStatus.COMPLETED:
                outcome.values[name] = _stored(record.return_, run.writer)
            for gone in record.g_deleted:
                g_json.pop(gone, None)
            g_json.update(record.g_set)
        outcome.g_set = {k: v for k, v in g_json.items()
                         if k not in run.g_json or run.g_json[k] != v}
        outcome.g_deleted = [k for k in run.g_json if k not in g_json]
        outcome.g_live = {k: _stored(v, run.writer) for k, v in outcome.g_set.items()}
        return outcome

    def cannot_start(self, branch: int, exc: OSError) -> Outcome:
        from caliber.workflow.runner import ErrorRecord

        run = self.run_
        records = {t.name: run.records[t.name, branch] for t in self.node.items}
        task = self.node.items[0].name
        message = f"cannot start a process for branch {branch}: {exc}"
        error = ErrorRecord(type(exc).__name__, message, f"{type(exc).__name__}: {message}\n",
                            task, branch)
        records[task].status, records[task].error = TaskStatus.FAILED, error
        return Outcome(branch, records, errors=[error])

    def end_all(self) -> None:
        """Leaving early (an error of Caliber's own): no branch's process is left running."""
        for branch in list(self.running.values()):
            with contextlib.suppress(OSError):
                os.kill(branch.pid, signal.SIGKILL)
            del self.running[branch.messages]
            for fd in (branch.messages, branch.control):
                with contextlib.suppress(OSError):
                    os.close(fd)
            _reap(branch.pid)


def _reap(pid: int) -> int:
    """Wait for the branch's process to end: its exit code, or minus the signal that ended
    it."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:  # reaped already (a SIGCHLD handler of the user's)
            return 0
        except InterruptedError:  # pragma: no cover - retried by Python itself
            continue
        return os.waitstatus_to_exitcode(status)


# --- the branch's process -----------------------------------------------------------------

def _branch_main(run: _Run, node: BranchProcess, branch: int, messages: int,
                 control: int) -> None:
    """Run one branch and send its events, then its outcome, to the workflow's process."""
    if "threading" in sys.modules:  # a thread may have held a stream's lock as we forked
        _fresh_streams()
    asked: list[bytes] = []

    def listen() -> None:
        """What the workflow's process asked (end-of-file: it is gone, stop too)."""
        while CANCEL not in asked and select.select([control], [], [], 0)[0]:
            data = os.read(control, 64)
            asked.extend([bytes([b]) for b in data] if data else [CANCEL])

    def on_sigint(_signum: int, _frame: object) -> None:
        asked.append(CANCEL)
        interrupt_running_task()

    signal.signal(signal.SIGINT, on_sigint)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked as it was forked

    def send(message: tuple[Any, ...]) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(_HEADER.pack(len(data)) + data)
        while view:
            view = view[os.write(messages, view):]

    outer = run.should_stop

    def should_stop() -> bool:
        listen()
        return outer() or CANCEL in asked

    def quit_() -> bool:
        listen()
        return FAILED in asked

    run.should_stop = should_stop
    run.on_event = lambda event: send(("event", event))
    written = set(run.writer.written) if run.writer is not None else set()
    kept = set(run.writer.kept) if run.writer is not None else set()
    outcome = run_branch(run, node, branch, quit_, lambda kind: send(("stopped", kind)))
    packed = _packed(outcome, run.writer)  # may write arrays too
    if run.writer is not None:
        packed.written = {k: v for k, v in run.writer.written.items() if k not in written}
        packed.kept = {k: v for k, v in run.writer.kept.items()
                       if k not in kept and _pickled(v, None) is not None}
    send(("outcome", packed))


def _fresh_streams() -> None:
    """``sys.stdout`` and ``sys.stderr`` as new files on fds 1 and 2 (same encoding): a
    thread of the workflow's process (a progress display's) may have held one's lock when
    it forked, which no thread of this process would ever release."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        stream = getattr(sys, name)
        if not isinstance(stream, io.TextIOWrapper):
            continue
        with contextlib.suppress(OSError, ValueError):
            if stream.fileno() == fd:
                setattr(sys, name, open(fd, "w", encoding=stream.encoding,  # noqa: SIM115
                                        errors=stream.errors, closefd=False,
                                        buffering=1 if stream.line_buffering else -1))


# --- values on their way back -------------------------------------------------------------

_PLAIN = (str, int, float, bool, type(None), list, dict, tuple, bytes)


class _Pickler(pickle.Pickler):
    """Pickles a value, a big array or frame as the reference to its file in the run's
    values folder (written there once, as the Results keep it)."""

    def __init__(self, file: io.BytesIO, writer: ValueWriter | None) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.writer = writer if writer is not None and writer.folder is not None else None

    def persistent_id(self, obj: Any) -> Any:
        if self.writer is None or type(obj) in _PLAIN:
            return None
        try:
            return self.writer.store(obj)
        except OSError:  # not written: pickled whole
            return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, writer: ValueWriter | None) -> None:
        super().__init__(file)
        self.writer = writer

    def persistent_load(self, pid: Any) -> Any:
        assert self.writer is not None and self.writer.folder is not None
        return FolderValues(self.writer.folder).load(pid, "a value of a parallel branch")


def _pickled(value: Any, writer: ValueWriter | None) -> bytes | None:
    """``value`` pickled, or None when pickle cannot carry it."""
    buffer = io.BytesIO()
    try:
        _Pickler(buffer, writer).dump(value)
    except Exception:
        return None
    return buffer.getvalue()


def _packed(outcome: Outcome, writer: ValueWriter | None) -> Outcome:
    """The outcome to send: its values pickled one by one (None: as stored)."""
    return dataclasses.replace(
        outcome,
        values={k: _pickled(v, writer) for k, v in outcome.values.items()},
        g_live={k: _pickled(v, writer) for k, v in outcome.g_live.items()})


def _unpacked(outcome: Outcome, writer: ValueWriter | None) -> Outcome:
    """The outcome a branch sent, with its values as they were returned (when pickle could
    not carry one, or cannot bring it back here, as the Results store it)."""
    if writer is not None:
        writer.written.update(outcome.written)
        writer.kept.update(outcome.kept)

    def value(data: bytes | None, stored: Any) -> Any:
        if data is not None:
            with contextlib.suppress(Exception):
                return _Unpickler(io.BytesIO(data), writer).load()
        return _stored(stored, writer)

    return dataclasses.replace(
        outcome,
        values={k: value(v, outcome.records[k].return_) for k, v in outcome.values.items()},
        g_live={k: value(v, outcome.g_set.get(k)) for k, v in outcome.g_live.items()})


def _stored(value: Any, writer: ValueWriter | None) -> Any:
    """A value as the Results store it, its arrays read back from the run's values."""
    if writer is None:
        return value
    source = (FolderValues(writer.folder) if writer.folder is not None
              else KeptValues(writer.kept))
    return restore(value, lambda ref: source.load(ref, "a value of a parallel branch"))
