"""The pinion: looks for queued workloads meant for it, runs each in a child, keeps results.

``run_once()`` is one look: claim, verify the run-secret, run, store. ``run()`` looks again and
again: work found means look again at once; an empty look counts, then waits ``wait`` seconds,
or less when one of its workloads has a start time that comes sooner
(:meth:`QueueBackend.next_start`: it starts then, not at the look after); after ``attempts``
empty looks in a row the pinion stops (``attempts=0``: never), saying how many of its
workloads start later or wait for others.

A pinion has ``concurrency`` *slots* (one by default): each runs one workload at a time, in a
child of its own with its own lease, run folder and output. One loop in the pinion serves
them all (:meth:`Pinion._drive`): a free slot looks for work when a look is due, and one wait
on every running child's message pipe (:func:`~caliber.pinion.platform.wait_for_messages`),
bounded by the nearest renewal or look, brings each slot's news (:meth:`Pinion._watch`).
While a child runs, the pinion renews its lease every third of the lease time, looks for a
cancel about every second in between (a read, :meth:`QueueBackend.peek_cancel`), enforces the
timeout and watches for a warm or cold stop. While it writes a workload's attachments into
its run folder it renews the lease and looks for a cancel the same way (and renews the other
slots' leases that are due). The child's verdict is stored with the claim token, so a pinion
that lost its lease can never complete a workload another pinion holds.

Every end of one of its workloads is told once (``CALIBER_NOTIFY_URL``, a workload's own
``--notify``): the pinion tells of each workload it ends itself (:meth:`Pinion._done`), and
takes those of its name that ended with no pinion there (cancelled while queued or waiting,
down a chain, failed by ``expire``: :meth:`QueueBackend.take_ended`) when it starts, at each
empty look while idle, every :data:`ANNOUNCE_EVERY` seconds while busy, and when it stops
(:meth:`Pinion._announce`): one read of the queue each time, nothing per workload.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import importlib
import importlib.util
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caliber.errors import (
    AttachmentError,
    BlobMismatchError,
    CaliberError,
    ChildStartError,
    ClaimReturnedError,
    ConfigError,
    LeaseLostError,
    NotFoundError,
    QueueDamagedError,
    QueueError,
    WorkflowFileError,
    WorkspaceError,
)
from caliber.pinion.attachments import write_attachments
from caliber.pinion.child import child_main
from caliber.pinion.follow import OUTPUT_FILE, output_tail, pinion_runs
from caliber.pinion.messages import ForeignMessageError, read_message
from caliber.pinion.outputlog import LogCap
from caliber.pinion.platform import (
    EOF,
    ChildProcess,
    ForkServer,
    MessageReader,
    describe_exit,
    start_child,
    start_fork_server,
    start_method,
    wait_for_messages,
)
from caliber.pinion.progress import Reporter
from caliber.pinion.signals import StopFlags, stop_on_signals
from caliber.pinion.stops import CANCELLED, TaskWatch, g_of
from caliber.pinion.upstream import fetch_upstream, taken
from caliber.pinion.upstream import resolve as resolve_upstream
from caliber.pinion.values import fetch_resumed, inline_max, keep_values
from caliber.platform import (
    PRIVATE_FOLDER,
    create_new_file,
    make_private_folder,
    own_folder,
    process_exists,
)
from caliber.queue.backend import Claim, QueueBackend
from caliber.queue.blobs import BlobStore
from caliber.queue.secret import key_id, load_key, verify
from caliber.queue.status import WorkloadStatus
from caliber.queue.workload import Workload
from caliber.results.files import WrittenBack, output_limits, write_back
from caliber.results.model import ErrorInfo, Results, RunStatus, TaskResult, utcnow
from caliber.settings import (
    BOUNDS,
    DEFAULT_ATTEMPTS,
    DEFAULT_CANCEL_GRACE,
    DEFAULT_CONCURRENCY,
    DEFAULT_LEASE,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_WAIT,
)
from caliber.sizes import DEFAULT_LOG_MAX
from caliber.workflow.fileformat import check_document
from caliber.workflow.runner import TRACEBACK_FILE
from caliber.workflow.upstream import UpstreamError

if TYPE_CHECKING:
    from caliber.pinion.notify import Notifier

log = logging.getLogger(__name__)

# Errors writing the runs folder that are this machine's, not the workload's.
_MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                   errno.EIO, errno.EFBIG, errno.EMFILE, errno.ENFILE}
POLL_SLICE = 0.1  # seconds: how often a waiting pinion looks at its stop flags
START_SLACK = 0.005  # seconds: a look for a workload's start time is made this long after it
START_RETRY = 0.1  # seconds: the next look when a start time passed by the pinion's clock but
# not yet by the queue's (a remote queue's clock behind): soon, and not an empty look
QUEUE_RETRY_MIN = 0.5  # seconds: the first back-off after the queue could not be reached
QUEUE_RETRY_CAP = 30.0  # seconds: the longest back-off after the queue could not be reached
CHILD_EXIT_GRACE = 0.5  # seconds: wait for the last messages of a child that has ended
EXIT_POLL = 0.01  # seconds: how long, with several workloads running, the pinion waits at a
# time for how a child that closed its message pipe ended (the others' news waits meanwhile)
RENEWALS_PER_LEASE = 3  # a running workload's lease is renewed every third of its length
MIN_RENEW_INTERVAL = 0.05  # seconds: the shortest time between two renewals
CANCEL_PEEK_EVERY = 1.0  # seconds: how often a cancel is looked for between renewals (a read;
# on a remote queue none: see QueueBackend.peek_cancel). A workload that ends sooner never
# pays for one.
STAGED_PREFIX = ".next-"  # the next run's folder, made ahead in the runs folder (+ the pid)
MAX_FORK_SERVERS = 3  # fork servers a pinion starts (the first, then one for each that ended)
# before it forks its children itself
CODE_CACHE = 64  # sets of attached files whose code fingerprints a pinion keeps
ANNOUNCE_EVERY = 5.0  # seconds: how often a busy pinion takes the ends of its workloads that
# no pinion was there for (an idle one takes them at each look: Pinion._announce)
ANNOUNCE_BATCH = 100  # workloads taken at a time (QueueBackend.take_ended's limit)


@dataclass(frozen=True)
class PinionConfig:
    """Everything that shapes a pinion's behaviour."""

    name: str
    attempts: int = DEFAULT_ATTEMPTS
    """Empty looks in a row before stopping; 0 listens until stopped."""
    wait: float = DEFAULT_WAIT
    """Seconds between empty looks."""
    lease: float = DEFAULT_LEASE
    """Seconds a claim holds a workload without renewal."""
    timeout: float | None = None
    """Seconds a workload may run before it is stopped and failed."""
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    """Claims of one workload (its pinions dying) before it is failed."""
    runs_dir: Path | None = None
    """Where working folders go (default: the runs folder of CALIBER_HOME)."""
    keep_runs: int | None = None
    """Run folders of finished workloads kept, the newest (``--keep-runs``); None: all."""
    preload: tuple[str, ...] = ()
    """Modules imported once, by the process the children are forked from (``--preload``)."""
    log_max: int = DEFAULT_LOG_MAX
    """Bytes a run's ``output.log`` keeps, its middle cut out past them (0: no cap)."""
    cancel_grace: float = DEFAULT_CANCEL_GRACE
    """Seconds between SIGTERM and SIGKILL of a task stopped by ``queue cancel --now``, and
    after a task's time limit before its process is killed (``--cancel-grace``)."""
    concurrency: int = DEFAULT_CONCURRENCY
    """Workloads run at once, each in its own child (``--concurrency``): the pinion's slots."""

    def __post_init__(self) -> None:
        """Each number within its setting's bounds (ConfigError): a lease of 1e17 s would
        overflow the first claim's date."""
        for name in ("attempts", "wait", "lease", "timeout", "max_attempts", "keep_runs",
                     "cancel_grace", "concurrency"):
            value = getattr(self, name)
            try:
                if value is not None:
                    BOUNDS["pinion_" + name].check(value)
            except ValueError as exc:
                raise ConfigError(f"the pinion's {name} {exc}") from None


class _Held:
    """A claimed workload's claim, held while its run folder is prepared (before its child
    starts): called before every chunk written there (its attachments, a resumed run's
    earlier arrays and files), it renews the lease when due (as while the child runs) and
    looks for a cancel (:data:`CANCEL_PEEK_EVERY`), and renews the other slots' leases that
    are due. LeaseLostError when the lease was lost, _NotRun on a cancel or a cold stop.
    :attr:`claim` is the claim as last renewed."""

    def __init__(self, pinion: Pinion, claim: Claim) -> None:
        self.pinion, self.claim = pinion, claim
        self.renew_at = time.monotonic() + pinion._renew_every
        self.peek_at = time.monotonic() + CANCEL_PEEK_EVERY

    def __call__(self) -> None:
        pinion = self.pinion
        if pinion.flags.cold:
            raise _NotRun(None)
        pinion._tend()  # the other slots' leases, that are due
        now = time.monotonic()
        if now >= self.renew_at:
            self.claim = pinion._renewed(self.claim)
            self.renew_at = time.monotonic() + pinion._renew_every
        elif now >= self.peek_at:
            self.claim = pinion._peeked(self.claim)
        else:
            return
        self.peek_at = time.monotonic() + CANCEL_PEEK_EVERY
        if self.claim.cancel_requested is not None:
            raise _NotRun(self.claim.cancel_requested)


class _NotRun(Exception):
    """The preparation of a workload was stopped: a cancel (``by`` who) learnt while its
    attachments were written, or a cold stop of the pinion (``by`` None). It does not run."""

    def __init__(self, by: str | None) -> None:
        super().__init__(by)
        self.by = by


class Outcome(StrEnum):
    """What became of one claimed workload."""

    COMPLETED = "completed"
    """Ran; its Results say it completed."""
    FAILED = "failed"
    """Ran (or could not be prepared); its Results or its last error say why it failed."""
    SKIPPED = "skipped"
    """Not run: damaged, or its run-secret does not match this pinion's key."""
    LOST = "lost"
    """Its lease was taken by another pinion."""
    RELEASED = "released"
    """Put back in the queue, its attempt not counted: by a cold stop, or because its fork
    server ended and took its child with it."""
    ERROR = "error"
    """An error between the claim and the verdict: given back or failed with the reason."""
    CANCELLED = "cancelled"
    """Ran until someone cancelled it (``caliber queue cancel``): stopped after a task."""


@dataclass
class Summary:
    """What a pinion did, printed when it stops."""

    ran: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    lost: int = 0
    errors: list[tuple[str, str, str]] = field(default_factory=list)
    """Workloads an error stopped between claim and verdict: (id, reason, what became of
    it: put back in the queue, queued again, failed, or left to its lease)."""
    stranded: int = 0
    """Of those, claims the queue would not take back: they stand until their lease ends."""
    stopped_by: str = ""
    cold: bool = False
    """Stopped by a second signal, with the running workload put back."""
    waiting: dict[str, int] = field(default_factory=dict)
    """When it ran nothing: workloads queued for other pinion names (``run_pinion``)."""
    later: int = 0
    """When it stopped after its empty looks: its workloads queued with a start time still
    to come (``--not-before``)."""
    next_start: dt.datetime | None = None
    """The first of those start times."""
    chained: int = 0
    """When it stopped after its empty looks: its workloads waiting for others to complete
    (``--after``)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "ran": self.ran, "completed": self.completed, "failed": self.failed,
            "cancelled": self.cancelled,
            "skipped": [{"id": i, "reason": r} for i, r in self.skipped], "lost": self.lost,
            "errors": [{"id": i, "reason": r, "then": t} for i, r, t in self.errors],
            "stranded": self.stranded,
            "stopped_by": self.stopped_by or None, "cold": self.cold,
            "waiting": self.waiting, "later": self.later,
            "next_start": None if self.next_start is None else self.next_start.isoformat(),
            "chained": self.chained,
        }


class Pinion:
    def __init__(
        self,
        config: PinionConfig,
        backend: QueueBackend,
        *,
        reporter: Reporter | None = None,
        key: bytes | None = None,
        server: ForkServer | None = None,
    ) -> None:
        """``server``: a fork server started already (see :func:`start_fork_server`), this
        pinion's from now on (it stops it when it closes)."""
        self.config = config
        self.backend = backend
        self.reporter = reporter or Reporter(config.name, quiet=True)
        """The Reporter of the slot whose work is being done (:meth:`_working_on`), else the
        pinion's own."""
        self._root_reporter = self.reporter
        self.key = key if key is not None else load_key()
        self.key_id = key_id(self.key)
        self.owner = f"{config.name}@{socket.gethostname()}:{os.getpid()}"
        one = config.concurrency == 1  # one slot: its lines and claims are the pinion's own
        self._slots = [
            _Slot(k, self.owner if one else f"{self.owner} [slot {k}]",
                  self.reporter if one else self.reporter.for_slot(k))
            for k in range(1, config.concurrency + 1)]
        self.flags = StopFlags()
        self.summary = Summary()
        self.runs = pinion_runs(config.name, config.runs_dir).resolve()  # once, not per run
        own_folder(self.runs.parent, "the runs folder")  # run folders head the sys.path
        own_folder(self.runs, f"pinion {config.name}'s runs folder")
        self._unreaped: list[ChildProcess] = []
        self._spare: ChildProcess | None = None
        self._start_method = start_method()  # read once: it looks at the settings files
        self._server = server
        self._servers_left = MAX_FORK_SERVERS - (server is not None)  # to start, at most
        self._staged: Path | None = None  # the next run's folder, made ahead (_stage_next)
        self._code: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}  # see _learn_code
        self._written_back: dict[Path, dict[str, WrittenBack]] = {}  # see launch
        self._inline_max = inline_max(backend)  # bytes: bigger arrays are stored as binary
        self._output_limits = output_limits()  # a bad setting stops the pinion before it runs
        self._notifier = _notifier()  # the notify settings: told of every workload that ends
        self._announce_at = 0.0  # time.monotonic() when a busy pinion next takes ended ones

    # --- the loop -----------------------------------------------------------------------

    def run(self) -> Summary:
        """Look for work until ``attempts`` empty looks in a row, or a stop signal."""
        cfg = self.config
        if cfg.preload:
            try:
                self._preload()
            except BaseException:
                self.close()
                raise
        self.reporter.started(self.backend.location, cfg.attempts, cfg.wait, cfg.concurrency)
        try:
            with stop_on_signals(self.flags, lambda f: self._root_reporter.stopping(f.cold)):
                self._drive()
        finally:
            self.close()
        self.summary.stopped_by = self.flags.signal_name
        self.summary.cold = self.flags.cold
        return self.summary

    def _drive(self) -> None:
        """The loop of :meth:`run`. A free slot looks for work when a look is due: at once
        after work was found or a workload ended, ``wait`` seconds after an empty look (or at
        the next start time of one of its workloads, if sooner: :meth:`_pause`), a
        capped back-off after the queue or the machine failed; the running workloads are
        watched meanwhile. Empty looks count only while nothing runs (with one slot, every
        look is made then): ``attempts`` of them in a row stop the pinion. After a warm stop
        no slot looks again, and the loop ends when the last running workload has. The ends
        no pinion was there for are told at its start, after each empty look while nothing
        runs, every :data:`ANNOUNCE_EVERY` seconds while something does (:meth:`_announce`),
        and at a stop, in a last look that claims nothing (:meth:`_last_look`)."""
        cfg = self.config
        empty = 0
        backoff = max(cfg.wait, QUEUE_RETRY_MIN)  # never a busy loop, even with -w 0
        look_at = 0.0  # time.monotonic() of the next look
        wake: str | None = None  # wait for it as for work (a queue that tells, wait_for_work)
        self._announce()
        while True:
            busy = [slot for slot in self._slots if slot.run is not None]
            if busy and time.monotonic() >= self._announce_at:
                self._announce()
            free = len(busy) < len(self._slots) and not self.flags.warm
            looking = free and time.monotonic() >= look_at
            if not (looking or busy):
                if self.flags.warm:
                    self._last_look()
                    return
                self._sleep(look_at - time.monotonic(), wake=wake)
                look_at = 0.0  # its time has come, or work has (or a stop: the loop ends)
                continue
            try:
                if not looking:
                    if self._watch(busy, look_at if free else None,
                                   wake=cfg.name if free else None):
                        look_at = 0.0  # a slot is free, or work came for it: it looks at once
                    continue
                found = self._look(next(s for s in self._slots if s.run is None))
                start = None if found else self.backend.next_start(cfg.name)
            except QueueDamagedError:
                raise  # trying again cannot help
            except (QueueError, WorkspaceError, ChildStartError) as exc:
                self.reporter.error(f"{exc}; trying again in {backoff:g} s", exc_info=exc)
                look_at, wake = time.monotonic() + backoff, None
                backoff = min(backoff * 2, QUEUE_RETRY_CAP)
                continue
            backoff = max(cfg.wait, QUEUE_RETRY_MIN)
            if found:
                empty = 0
                continue
            pause = self._pause(start)
            if busy:  # a free slot looks again, but a busy pinion never looks in a loop;
                # sooner when the queue tells of work (the first check starts its listening)
                told = pause >= 0 and self._told(cfg.name)
                look_at = 0.0 if told else time.monotonic() + max(pause, POLL_SLICE)
                continue
            if pause < 0:  # due by this machine's clock, not yet by the queue's
                look_at, wake = time.monotonic() + START_RETRY, cfg.name
                continue
            self._announce()  # an empty look, nothing running: before waiting (or stopping)
            empty += 1
            if cfg.attempts and empty >= cfg.attempts:
                self._note_later()
                return
            self.reporter.idle(empty, cfg.attempts, pause)
            look_at, wake = time.monotonic() + pause, cfg.name

    def _pause(self, start: dt.datetime | None) -> float:
        """Seconds from an empty look to the next: ``wait``, or until ``start`` (the next
        start time of one of this pinion's workloads, :meth:`QueueBackend.next_start`) when
        that comes sooner, so that the workload starts then and not at the look after.
        Negative when ``start`` has passed by this machine's clock (the queue's is behind)."""
        if start is None:
            return self.config.wait
        left = (start - utcnow()).total_seconds()
        return -1.0 if left <= 0 else min(self.config.wait, left + START_SLACK)

    def _note_later(self) -> None:
        """Before a pinion stops after its empty looks: how many of its workloads start
        later (and the first time), and how many wait for others (the summary says so).
        Only a hint: a queue out of reach now leaves it out."""
        name = self.config.name
        try:
            start = self.backend.next_start(name)
            if start is not None:
                now = utcnow()
                self.summary.later = sum(
                    1 for s in self.backend.list_summaries(pinion=name,
                                                           status=WorkloadStatus.QUEUED)
                    if s.not_before is not None and dt.datetime.fromisoformat(s.not_before) > now)
                self.summary.next_start = start if self.summary.later else None
            self.summary.chained = self.backend.count_statuses(pinion=name).get(
                WorkloadStatus.WAITING.value, 0)
        except (CaliberError, ValueError) as exc:
            log.debug("could not count the workloads that start later: %s", exc)

    def close(self) -> None:
        """Stop the spare child, wait for the children that ended, stop reporting (``run()``
        does it; a caller of :meth:`run_once` does it when done). A workload still running
        (the queue was found damaged) is stopped, and left to its lease."""
        for slot in self._slots:
            if slot.run is not None:
                slot.run.child.kill()
                self._let_go(slot.run)
                slot.run = None
        self._drop_spare()
        self._drop_staged()
        self._reap(block=True)
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._notifier is not None:
            self._notifier.close()  # what it still has, for a few seconds at most
            self._notifier = None
        self.reporter.close()

    def _start(self, job: dict[str, Any], idle: Callable[[], object]) -> ChildProcess:
        """Hand the job to the spare child (forked while the previous workload ran) or to a new
        one, then fork the next spare while this one runs. Each child runs one workload only.
        ``idle`` is called while the fork server is waited for (it renews the lease)."""
        server = self._fork_server()
        child, self._spare = self._spare, None
        if child is None and server is not None:  # forked while the previous workload ran
            child = _from_server(server, idle)
        if child is not None:
            try:
                child.send_job(job)
            except OSError:  # the spare died meanwhile (with its server, say): start afresh
                child.kill()
                child.close()
                self._unreaped.append(child)
                child = None
        if child is None:
            if server is not None and server.alive:
                child = _from_server(server, idle)
            if child is None:  # no server, or it ended: forked here (a new one for the next)
                child = start_child(child_main, close_fds=self._running_fds(),
                                    method=self._start_method)
            child.send_job(job)
        try:
            server = self._fork_server()  # a new one, if that one ended
            if server is not None:
                server.prefork()
            else:
                self._spare = start_child(
                    child_main, close_fds=[*child.parent_fds(), *self._running_fds()],
                    method=self._start_method)
        except OSError as exc:  # no spare (out of processes?): the next one is started on demand
            self.reporter.error(f"could not start a spare child process: {exc}")
        return child

    def _running_fds(self) -> list[int]:
        """The pinion's ends of the pipes of the children running in its slots: a child it
        forks itself must not hold them open (a child's lifeline is its pipe's closing)."""
        return [fd for slot in self._slots if slot.run is not None
                for fd in slot.run.child.parent_fds()]

    def _preload(self) -> None:
        """Import the modules to preload where the children are forked from: the fork server
        (started now, so that a module that fails stops the pinion before it claims any
        work), or the pinion itself where there is none. A spawned child is a new
        interpreter that imports what it uses: the modules are only looked for. ConfigError
        when one fails to import (or is not found)."""
        try:
            server = self._fork_server() if self._start_method == "fork" else None
            if server is not None:
                server.wait_ready()
                return
            for name in self.config.preload:
                try:
                    if self._start_method == "fork":
                        importlib.import_module(name)
                    elif importlib.util.find_spec(name) is None:
                        raise ModuleNotFoundError(f"No module named {name!r}")
                except (Exception, SystemExit) as exc:
                    raise ChildStartError(f"cannot preload module {name!r}: "
                                          f"{type(exc).__name__}: {exc}") from exc
        except ChildStartError as exc:
            raise ConfigError(f"pinion {self.config.name}: {exc}") from None

    def _fork_server(self) -> ForkServer | None:
        """The process that forks this pinion's children (the one it was given, or one
        started with the first child, or one started in place of one that ended or stopped
        answering, MAX_FORK_SERVERS in all); None where there is none (spawn, not Linux, it
        could not start, or too many ended): the pinion then forks them itself."""
        ended = self._server
        if ended is not None and not ended.alive:
            self._server = None
            ended.close()  # killed already, or ended: waited for
            then = ("a new one forks the children" if self._servers_left else
                    "this pinion forks its children itself from now on")
            self.reporter.error(f"the fork server ended ({ended.ended}); {then}")
        if self._server is None and self._servers_left:
            self._servers_left -= 1
            self._server = start_fork_server(child_main, self.config.preload, self._start_method)
            if self._server is None:  # none here (or it cannot start): never again
                self._servers_left = 0
        return self._server

    def _stage_next(self) -> None:
        """Make the next run's folder, with its empty ``output.log``, while the current
        workload runs (the pinion only waits then): on a disk like this machine's, making a
        folder and a file takes about 0.2 and 0.4 ms, renaming one 0.03 ms, and the next
        :meth:`prepare` renames it. Its name, ``.next-PID``, is not a run folder's. It is made
        0700 in one step, in the pinion's 0700 folder: nobody else can put a module in it."""
        if self._staged is not None:
            return
        folder = self.runs / f"{STAGED_PREFIX}{os.getpid()}"
        try:
            try:
                make_private_folder(folder, exist_ok=False)
            except FileExistsError:  # left by a process of this pid: used again only if empty
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(folder / OUTPUT_FILE)
                os.rmdir(folder)
                os.mkdir(folder, PRIVATE_FOLDER)
            os.close(create_new_file(folder / OUTPUT_FILE))
        except OSError as exc:  # prepare makes the folder itself, as without one
            log.debug("no staged run folder (%s)", exc)
            return
        self._staged = folder

    def _drop_staged(self) -> None:
        """Remove the staged run folder, and those left by pinions that were killed (their
        process is gone); an unused one holds only an empty ``output.log``."""
        for folder in self.runs.glob(f"{STAGED_PREFIX}*"):
            pid = folder.name[len(STAGED_PREFIX):]
            if folder == self._staged or not (pid.isdigit() and process_exists(int(pid))):
                with contextlib.suppress(OSError):
                    os.unlink(folder / OUTPUT_FILE)
                    os.rmdir(folder)
        self._staged = None

    def _drop_spare(self) -> None:
        if self._spare is not None:
            self._spare.close()  # it reads end-of-file on its control pipe and exits
            self._unreaped.append(self._spare)
            self._spare = None

    def _reap(self, *, block: bool = False) -> None:
        """Collect children that have ended (they exit on their own after their results)."""
        self._unreaped = [c for c in self._unreaped
                          if (c.wait() if block else c.poll()) is None]

    def _sleep(self, seconds: float, *, wake: str | None = None) -> None:
        """Wait ``seconds`` (or until a stop); with ``wake``, a pinion's name, until the
        queue tells that work for it arrived (``QueueBackend.wait_for_work``) too."""
        end = time.monotonic() + seconds
        while not self.flags.warm:
            left = end - time.monotonic()
            if left <= 0:
                return
            if wake is None:
                time.sleep(min(POLL_SLICE, left))
            elif self.backend.wait_for_work(wake, min(POLL_SLICE, left)):
                return

    def run_once(self) -> bool:
        """One look: True when a workload was claimed (run to its end, skipped or given back),
        False when none. Any ``Exception`` while handling a claimed workload is recorded on it
        (see :meth:`_recover`) and does not stop the pinion; only a damaged queue, the queue or
        the runs folder being out of reach (after the claim is given back) raise."""
        slot = self._slots[0]
        found = self._look(slot)
        while slot.run is not None:
            self._watch([slot], None)
        return found

    def _look(self, slot: _Slot) -> bool:
        """One look for ``slot``: True when a workload was claimed, and then started in its
        child (``slot.run``) or already done with (skipped, failed before it ran, given back);
        False when none was found. Errors as :meth:`run_once` says."""
        cfg = self.config
        self._expire()
        try:
            claim = self.backend.claim(cfg.name, slot.owner, cfg.lease, self.key_id)
        except ClaimReturnedError as exc:  # given back by the backend: counted, then back off
            self.summary.errors.append((exc.workload_id, str(exc), exc.outcome))
            raise
        if claim is None:
            return False
        log.debug("claimed workload %s (attempt %d), lease %g s", claim.workload.id,
                  claim.workload.attempts, cfg.lease)
        with self._working_on(slot):
            try:
                begun = self.handle(claim)
            except QueueDamagedError:
                raise  # trying again cannot help: the pinion stops
            except Exception as exc:  # anything else is this workload's problem, not the pinion's
                begun = self._recover(claim, exc)
            if isinstance(begun, _Run):
                slot.run = begun
            else:
                self._done(begun, claim)
        return True

    def _expire(self) -> None:
        """Fail the workloads whose pinions kept dying (:meth:`QueueBackend.expire`)."""
        cfg = self.config
        for workload_id in self.backend.expire(cfg.max_attempts):
            self.reporter.skipped(workload_id, f"failed: its lease ran out {cfg.max_attempts} "
                                  "times (pinions died)")

    def _last_look(self) -> None:
        """Before a stopped pinion ends: a look that claims nothing, failing what died and
        telling of what ended with no pinion there since its last look (a remote queue's
        ``take_ended`` reads what that look read: this reads afresh). A queue out of reach
        costs a log line."""
        try:
            self._expire()
        except CaliberError as exc:
            log.warning("could not look at the queue before stopping: %s", exc)
            return
        self._announce()

    def _watch(self, busy: list[_Slot], until: float | None, *,
               wake: str | None = None) -> bool:
        """Wait for news from the children of the ``busy`` slots (one wait on all their
        message pipes), at most until one of them needs the pinion (a lease to renew, its
        output to look at, a slice to look at the stop flags) or ``until``; then take each
        slot's news and act on it (:meth:`_step`), and finish the runs that are over. With
        ``wake``, a pinion's name (a slot is free), the queue's
        :meth:`~caliber.queue.backend.QueueBackend.work_signal` is waited on too. True when a
        slot is free again, or the queue told of work for ``wake``."""
        now = time.monotonic()
        wait = POLL_SLICE if until is None else min(POLL_SLICE, until - now)
        for slot in busy:
            assert slot.run is not None
            wait = min(wait, slot.run.next_renew - now, slot.run.log.tick())
        wait = max(wait, 0.0)
        signal = None if wake is None else self.backend.work_signal()
        freed = wait_for_messages([slot.run.messages for slot in busy if slot.run is not None],
                                  wait, also=signal) and self._told(wake)
        exit_wait = wait if len(busy) == 1 else min(wait, EXIT_POLL)
        for slot in busy:
            run = slot.run
            assert run is not None
            with self._working_on(slot):
                try:
                    if not self._step(run, exit_wait):
                        continue
                    outcome = self._conclude(run)
                except QueueDamagedError:
                    raise  # trying again cannot help: the pinion stops (close() ends the run)
                except Exception as exc:  # this workload's problem, not the pinion's
                    self._let_go(run)
                    self._written_back.pop(run.work_dir, None)
                    slot.run = None
                    outcome = self._recover(run.claim, exc)  # raises when the machine's
                slot.run = None
                self._done(outcome, run.claim)
                freed = True
        return freed

    def _told(self, pinion: str | None) -> bool:
        """Whether the queue told of work for ``pinion`` (what it told already: no wait);
        a queue out of reach tells nothing (the next look says why)."""
        try:
            return pinion is not None and self.backend.wait_for_work(pinion, 0.0)
        except CaliberError as exc:
            log.debug("could not take what the queue told: %s", exc)
            return False

    @contextlib.contextmanager
    def _working_on(self, slot: _Slot) -> Iterator[None]:
        """While the pinion works for ``slot``, ``self.reporter`` is the slot's: with several
        slots, its lines say which slot they are about (``[slot 2]``)."""
        before, self.reporter = self.reporter, slot.reporter
        try:
            yield
        finally:
            self.reporter = before

    def _tend(self) -> None:
        """Renew the leases that are due of the workloads running in the other slots, while
        one slot's work holds the loop (waiting for the fork server, keeping a run's files):
        theirs may run out meanwhile. A lease found lost ends that run (LOST)."""
        now = time.monotonic()
        for slot in self._slots:
            run = slot.run
            if run is None or run.outcome is not None or run.over or now < run.next_renew:
                continue
            with self._working_on(slot):
                if self._renew(run):
                    run.next_renew = now + self._renew_every
                else:
                    run.outcome = Outcome.LOST

    def _done(self, outcome: Outcome, claim: Claim) -> None:
        """A claimed workload is done with: counted, its end told (the notify settings, its
        own address), and old run folders removed. One put back (a cold stop) has ended only
        when it was asked to be cancelled (the queue cancels it then: :meth:`_notify` reads
        it back); one whose lease was lost is another pinion's to tell of."""
        self._count(outcome)
        told = self._notifier is not None or claim.workload.notify is not None
        if told and outcome != Outcome.LOST:
            self._notify(claim.workload.id)
        self._keep_runs()

    def _announce(self) -> None:
        """Tell of the workloads of this pinion's name that ended with no pinion there
        (:meth:`QueueBackend.take_ended`: each is taken by one pinion only, and marked told
        as it is taken), as of those it ends itself (:meth:`_tell`). Taken with or without a
        notifier: a workload's own signed address is told all the same, and an end taken
        while no channel is set is never sent later, when one is. A queue out of reach costs
        a log line, never the pinion (the next look says why)."""
        self._announce_at = time.monotonic() + ANNOUNCE_EVERY
        while True:
            try:
                ended = self.backend.take_ended(self.config.name, ANNOUNCE_BATCH)
            except CaliberError as exc:
                log.warning("could not take the workloads that ended with no pinion there: "
                            "%s", exc)
                return
            for workload in ended:
                log.debug("workload %s ended with no pinion there (%s): told now",
                          workload.id, workload.status.value)
                self._tell(workload)
            if len(ended) < ANNOUNCE_BATCH:
                return

    def _notify(self, workload_id: str) -> None:
        """Tell of a workload this pinion ended (completed, failed or cancelled; one that
        went back to the queue has not ended): read back now (:meth:`_tell`)."""
        try:
            workload = self.backend.get(workload_id)
        except CaliberError as exc:  # the queue's problem: the workload's outcome is stored
            log.warning("no notification for workload %s: %s", workload_id, exc)
            return
        self._tell(workload)

    def _tell(self, workload: Workload) -> None:
        """Hand the notifier the event of a workload as it ended, for the settings'
        channels and the workload's own address. Its own address only as read from the queue
        and signed: the workload is checked with the pinion's key (a notify changed in the
        queue since it was signed is not posted to). The notifier sends it on its own
        thread: a hook that is down never holds up the pinion."""
        from caliber.pinion.notify import Notifier, ended_event, workload_address

        body = ended_event(workload)  # the dashboard shows the same event (dashboard/data.py)
        if body is None:
            return
        own = None
        if workload.notify is not None:
            if verify(workload, self.key):
                own = workload_address(workload.notify)
            else:
                log.warning("workload %s: its notify address is not signed with this "
                            "pinion's key (changed in the queue?): not posted to", workload.id)
        if self._notifier is None:
            if own is None:
                return
            self._notifier = Notifier()  # no channel of the settings: its own address only
        self._notifier.send(body, also=() if own is None else (own,))

    def _keep_runs(self) -> None:
        """``--keep-runs N``: remove this pinion's run folders of finished workloads but the
        newest N (never a folder of a queued or running workload)."""
        from caliber.pinion.runs import keep_newest

        if self.config.keep_runs is None:
            return

        def busy() -> set[str]:
            return {s.id for status in (WorkloadStatus.QUEUED, WorkloadStatus.WAITING,
                                        WorkloadStatus.RUNNING)
                    for s in self.backend.list_summaries(pinion=self.config.name,
                                                         status=status)}

        removed, size = keep_newest(self.runs, self.config.keep_runs, busy)
        if removed:
            log.debug("removed %d old run folders (%d bytes) from %s", removed, size, self.runs)

    def _count(self, outcome: Outcome) -> None:
        if outcome in (Outcome.COMPLETED, Outcome.FAILED, Outcome.CANCELLED):
            self.summary.ran += 1
            if outcome == Outcome.COMPLETED:
                self.summary.completed += 1
            elif outcome == Outcome.CANCELLED:
                self.summary.cancelled += 1
            else:
                self.summary.failed += 1
        elif outcome == Outcome.LOST:
            self.summary.lost += 1

    def _recover(self, claim: Claim, exc: Exception) -> Outcome:
        """After an error between the claim and the verdict: never leave the claim standing.

        The queue, the runs folder or the machine (a child that cannot start) at fault: the
        workload goes back uncounted and the error is raised again, so :meth:`run` backs off.
        Anything else: the workload is failed with the reason, and queued again while it has
        attempts left. Either way the summary counts it under ``errors``."""
        workload = claim.workload
        if isinstance(exc, LeaseLostError):
            self.reporter.gave_back(workload.id, "abandoned", str(exc), exc)
            return Outcome.LOST
        machine = isinstance(exc, QueueError | WorkspaceError | ChildStartError)
        reason = _reason(exc)
        retry = workload.attempts < self.config.max_attempts
        done = "put back in the queue" if machine else "queued again" if retry else "failed"
        try:
            if machine:
                self.backend.release(claim, reason=reason)
            else:
                self.backend.fail(claim, reason, retry=retry)
        except LeaseLostError:
            return Outcome.LOST
        except Exception as again:
            done = f"left to its lease (could not give it back: {_reason(again)})"
            self.summary.errors.append((workload.id, reason, done))
            self.summary.stranded += 1
            self.reporter.gave_back(workload.id, done, reason, exc)
            if isinstance(again, QueueError):
                raise again from exc  # the queue is out of reach: run() backs off
            return Outcome.ERROR
        self.summary.errors.append((workload.id, reason, done))
        self.reporter.gave_back(workload.id, done, reason, exc)
        if machine:
            raise exc  # run() backs off before the next look
        return Outcome.ERROR

    # --- one workload -------------------------------------------------------------------

    def handle(self, claim: Claim) -> Outcome | _Run:
        """Check the claimed workload, prepare its folder and start its child: the run (the
        loop watches it), or what became of a workload that never ran."""
        workload = claim.workload
        reason = workload.damaged or (None if verify(workload, self.key) else
                                      "run-secret does not match this pinion's key (tampered, "
                                      "or another key)")
        resume = None
        if reason is None and workload.resume_from is not None:
            resume, reason = self._checked_resume(workload)
        if reason is not None:
            self.backend.release(claim, reason=reason, mismatch_key_id=self.key_id)
            self.summary.skipped.append((workload.id, reason))
            self.reporter.skipped(workload.id, reason)
            return Outcome.SKIPPED
        try:  # the upstream results its tasks take ($results), checked with this key
            upstream = resolve_upstream(self.backend, workload, self.key)
        except UpstreamError as exc:
            return self._unresolved(claim, exc)
        self.reporter.workload_started(workload.id, workload.workflow_name, workload.attempts)
        try:
            held, work_dir = self._prepare_held(claim)
        except LeaseLostError:
            return self._lost_preparing("its attachments were written")
        except _NotRun as exc:
            return self._not_run(claim, exc.by)
        except OSError as exc:
            if exc.errno not in _MACHINE_ERRNOS:  # the workload's: a name this disk refuses
                return self._unprepared(claim, exc)
            # This machine's: not the workload's fault, so it goes back, attempt uncounted.
            raise WorkspaceError(
                f"cannot write the runs folder {self.runs}: {exc.strerror or exc}"
            ) from exc
        except AttachmentError as exc:
            return self._unprepared(claim, exc)
        except BlobMismatchError as exc:  # a stored attachment changed: as if tampered
            reason = f"an attachment's stored bytes do not match its hash, never run ({exc})"
            self.backend.release(claim, reason=reason, mismatch_key_id=self.key_id)
            self.summary.skipped.append((workload.id, reason))
            self.reporter.workload_finished("not run", reason)
            return Outcome.SKIPPED
        try:
            begun = self.launch(held.claim, work_dir, resume=resume, between=held,
                                upstream=upstream)
        except (LeaseLostError, _NotRun) as exc:  # while a resumed run's files were written
            self._written_back.pop(work_dir, None)
            shutil.rmtree(work_dir, ignore_errors=True)  # nothing ran: nothing to keep
            if isinstance(exc, LeaseLostError):
                return self._lost_preparing("its earlier run's files were written back")
            return self._not_run(held.claim, exc.by, "its earlier run's files were written back")
        except BaseException:
            self._written_back.pop(work_dir, None)
            raise
        if not isinstance(begun, _Run):  # else kept by _collect_outputs, or dropped when the
            self._written_back.pop(work_dir, None)  # run ends without Results (_conclude)
        return begun

    def _checked_resume(self, workload: Workload) -> tuple[dict[str, Any] | None, str | None]:
        """The Results a resumed workload reuses (``retry --resume``), read once and handed
        to its child as read, or why they may not be reused: their signature or the grant
        does not check with this pinion's key (:func:`caliber.queue.resume.resume_problem`).
        Results that cannot be found fail the workload (NotFoundError, as before)."""
        from caliber.queue.resume import resume_problem

        assert workload.resume_from is not None
        results = self.backend.get_results(workload.resume_from)
        why = resume_problem(workload, results, self.key)
        return (None, why) if why is not None else (results.to_json_dict(), None)

    def _prepare_held(self, claim: Claim) -> tuple[_Held, Path]:
        """:meth:`prepare`, holding the claim while the attachments are written (see
        :class:`_Held`). LeaseLostError when the lease was lost, _NotRun on a cancel (with or
        without ``--now``) or a cold stop: either way the run folder is removed. Returns the
        claim held (:meth:`launch` holds it on while it writes a resumed run's earlier
        files), and the run folder."""
        held = _Held(self, claim)
        work_dir = self.prepare(claim.workload, between=held)
        return held, work_dir

    def _lost_preparing(self, doing: str) -> Outcome:
        self.reporter.workload_finished(
            "abandoned", f"lease lost while {doing} (another pinion took it, or it was "
            "reset); not run, its run folder removed")
        return Outcome.LOST

    def _not_run(self, claim: Claim, by: str | None,
                 doing: str = "its attachments were written") -> Outcome:
        """Stopped while its run folder was prepared (``doing``), it never runs: put back
        without counting the attempt. Cancelled (``by``), the queue makes it cancelled (a
        cancel was asked), with no Results, like a queued workload cancelled; after a cold
        stop it is queued again."""
        reason = ("pinion stopped before the run ended" if by is None else
                  f"cancelled by {by} while {doing}; never run")
        try:
            self.backend.release(claim, reason=reason)
        except LeaseLostError:
            self.reporter.workload_finished("abandoned", "lease lost before it was put back")
            return Outcome.LOST
        if by is None:
            self.reporter.workload_finished("put back in the queue", "pinion stopped")
            return Outcome.RELEASED
        self.reporter.workload_finished("cancelled", reason)
        return Outcome.CANCELLED

    def _unresolved(self, claim: Claim, exc: UpstreamError) -> Outcome:
        """An upstream result it takes cannot be given: failed before it ran, with why."""
        workload = claim.workload
        reason = f"not run: {exc}"
        self.backend.fail(claim, reason, retry=False)
        self.reporter.workload_started(workload.id, workload.workflow_name, workload.attempts)
        self.reporter.workload_finished("failed", reason)
        return Outcome.FAILED

    def _unprepared(self, claim: Claim, exc: Exception) -> Outcome:
        reason = f"cannot prepare the working folder: {exc}"
        self.backend.fail(claim, reason, retry=False)
        self.reporter.workload_finished("failed", reason)
        return Outcome.FAILED

    def prepare(self, workload: Workload, *,
                between: Callable[[], object] | None = None) -> Path:
        """A new working folder with the attached files written in it (paths re-checked):
        ``<id>-<attempt>``, or the next free number when that one exists (an attempt put back
        by a cold stop is not counted, and its folder is kept as it was). The folder is the
        one staged while the previous workload ran (:meth:`_stage_next`), renamed. Folders
        and files made here are 0700 and 0600, whatever the umask (what the workload writes
        follows the umask). ``between`` is called before every chunk of an attachment is
        read (:func:`write_attachments`); when it raises LeaseLostError or _NotRun the
        half-written folder is removed."""
        number = workload.attempts
        while True:
            work_dir = self.runs / f"{workload.id}-{number}"
            if self._staged is not None and not os.path.lexists(work_dir):
                staged, self._staged = self._staged, None
                try:
                    os.rename(staged, work_dir)
                    break
                except OSError:  # made meanwhile, or the staged folder is gone: make it here
                    log.debug("the staged run folder %s could not be used", staged)
            try:
                make_private_folder(work_dir, exist_ok=False)
                break
            except FileExistsError:
                number += 1
        store = self.backend if isinstance(self.backend, BlobStore) else None
        try:
            write_attachments(workload.attachments, work_dir, store, between=between)
        except (LeaseLostError, _NotRun):
            shutil.rmtree(work_dir, ignore_errors=True)  # nothing ran: nothing to keep
            raise
        return work_dir

    # --- the child: start it, monitor it, keep its verdict (as rq's work horse) -----------

    def launch(self, claim: Claim, work_dir: Path, *, resume: dict[str, Any] | None = None,
               between: _Held | None = None,
               upstream: list[dict[str, Any]] | None = None) -> Outcome | _Run:
        """Start the workload in a child: check its document, start it, and return the run,
        which the loop monitors (lease, messages, timeout, stops: :meth:`_step`) until it
        stores its verdict (:meth:`_conclude`). ``resume``: the earlier Results (JSON form)
        its child reuses, checked already (:meth:`handle`); their arrays and files are
        written into the run folder first, holding the claim (``between``: LeaseLostError,
        _NotRun as while the attachments are written); so are the stored arrays of
        ``upstream``, the upstream values its tasks take, checked already
        (:func:`caliber.pinion.upstream.resolve`)."""
        workload = claim.workload
        try:
            document = check_document(workload.workflow, source=f"workload {workload.id}")
            fetch_resumed(self.backend, work_dir, resume,  # the arrays the run reuses
                          between=between)
            fetch_upstream(self.backend, work_dir, upstream or [],  # and those it takes
                           between=between)
            if resume is not None and isinstance(self.backend, BlobStore):  # and the files
                self._written_back[work_dir] = write_back(
                    self.backend, resume.get("files") or [], work_dir, between=between)
        except (WorkflowFileError, BlobMismatchError, NotFoundError) as exc:  # never runs:
            # signed but not a workflow this Caliber reads, or reused arrays lost or damaged
            now = utcnow()
            return self._keep(claim, work_dir, Results(
                workload_id=workload.id, workflow=workload.workflow_name,
                pinion=self.config.name, status=RunStatus.FAILED, started_at=now,
                finished_at=now, work_dir=str(work_dir),
                error=ErrorInfo(type=type(exc).__name__, message=str(exc))))
        if between is not None:
            claim = between.claim  # as last renewed
        run = self._start_run(claim, work_dir, document, resume, upstream)
        self._stage_next()  # while the child runs
        return run

    def _conclude(self, run: _Run) -> Outcome:
        """The run is over (:meth:`_step`): its child let go, its verdict stored."""
        try:
            try:
                if run.outcome is not None:
                    return run.outcome
                if run.final is None and run.child.server_ended and not run.stop_reason:
                    return self._server_ended(run)
                returncode = run.child.returncode if run.final is None else 0
            finally:
                self._let_go(run)
            return self._verdict(run, returncode)
        finally:  # kept by _collect_outputs, unless the run ended without Results
            self._written_back.pop(run.work_dir, None)

    def _let_go(self, run: _Run) -> None:
        """Once per run: kill whatever the workload started and left behind, close the pipes;
        the child is waited for later (:meth:`_reap`)."""
        if run.child in self._unreaped:
            return
        run.child.kill_group()
        run.child.close()
        self._unreaped.append(run.child)

    def _start_run(self, claim: Claim, work_dir: Path, document: dict[str, Any],
                   resume: dict[str, Any] | None = None,
                   upstream: list[dict[str, Any]] | None = None) -> _Run:
        workload = claim.workload
        job: dict[str, Any] = {"workload_id": workload.id, "pinion": self.config.name,
               "work_dir": str(work_dir), "workflow": document,
               "array_inline_max": self._inline_max}
        if resume is not None:  # retry --resume: the child reuses its tasks
            job["resume"] = resume
        if upstream:  # the upstream values its tasks take ($results)
            job["upstream"] = upstream
        known = self._code.get(_code_key(workload))
        if known:  # the code fingerprints of an earlier run of the same files
            job["code"] = known
        started = utcnow()
        self._reap()
        next_renew = time.monotonic() + self._renew_every

        def idle() -> None:  # waiting for the fork server: the leases are kept all the same
            nonlocal claim, next_renew
            if time.monotonic() >= next_renew:
                claim = self._renewed(claim)
                next_renew = time.monotonic() + self._renew_every
            self._tend()

        try:
            child = self._start(job, idle)
        except OSError as exc:  # out of processes, memory or file descriptors
            raise ChildStartError(
                f"cannot start the workload's process: {exc.strerror or exc}") from exc
        log.debug("workload %s runs in process %d", workload.id, child.pid)
        self.reporter.running_in(work_dir)
        return _Run(claim=claim, work_dir=work_dir, child=child,
                    messages=MessageReader(child.messages_fd), started=started,
                    t0=time.monotonic(), next_renew=next_renew,
                    next_peek=time.monotonic() + CANCEL_PEEK_EVERY,
                    log=LogCap(work_dir, self.config.log_max),
                    watch=TaskWatch(self.config.cancel_grace), upstream=upstream or [])

    @property
    def _renew_every(self) -> float:
        return max(self.config.lease / RENEWALS_PER_LEASE, MIN_RENEW_INTERVAL)

    def _step(self, run: _Run, exit_wait: float) -> bool:
        """Take the child's news (the messages that have come), then act on what is due: its
        end, a cold stop, its timeout or a task's, a lease renewal. True when the run is over
        (:meth:`_conclude` then finishes it): its verdict is known, or it ended without one
        (``run.outcome``: a cold stop, RELEASED; a lost lease, LOST). ``exit_wait``: seconds
        to wait for how the child ended once its pipe has closed."""
        run.over = self._news(run, exit_wait) or self._due(run)
        return run.over

    def _news(self, run: _Run, exit_wait: float) -> bool:
        """The child's messages that have come (True at its last: the Results, or its end)."""
        if run.outcome is not None:  # its lease was found lost meanwhile (_tend)
            return True
        while not run.messages.waiting:
            line = run.messages.get(0.0)
            if line is EOF:  # its last message: how it ended is waited for (a moment at a time)
                return run.child.wait(exit_wait) is not None
            assert line is not None  # not waiting: it has a line, or end-of-file
            run.news_at = time.monotonic()
            if self._take(run, line):
                return True
        return False

    def _due(self, run: _Run) -> bool:
        """What is due for the run besides its messages (see :meth:`_step`)."""
        if time.monotonic() - max(run.news_at, run.t0) >= POLL_SLICE:
            self.reporter.tick()  # no news for a moment: progress file, live line
        if self.flags.cold:
            run.outcome = self._put_back(run)
            return True
        now = time.monotonic()
        if self._ended(run, now) or self._timed_out(run, now) or self._overdue(run, now):
            return True
        if now >= run.next_renew:
            if not self._renew(run):
                run.outcome = Outcome.LOST
                return True
            run.next_renew = now + self._renew_every
            run.next_peek = now + CANCEL_PEEK_EVERY
        elif now >= run.next_peek:
            if not self._renew(run, peek=True):
                run.outcome = Outcome.LOST
                return True
            run.next_peek = now + CANCEL_PEEK_EVERY
        return False

    def _take(self, run: _Run, line: bytes) -> bool:
        """One message from the child; True when it is the last (the Results, or a line that
        is not a message: the workload wrote to the pipe, and is stopped)."""
        try:
            message = read_message(line)
        except ForeignMessageError as exc:  # the workload's doing, not ours
            run.child.kill()
            run.stop_type, run.stop_reason = "ForeignMessage", str(exc)
            return True
        if message.event is not None:
            run.watch.event(message.event, time.monotonic())
            self.reporter.task_event(message.event)
        if message.record is not None:
            run.records.append(message.record)
            if run.cancelled is not None and not run.asked:  # stop after the current task
                run.child.kill()
                run.stop_type, run.stop_reason = CANCELLED, f"cancelled by {run.cancelled}"
                return True
        if message.results is not None:
            run.final = message.results
            return True  # the last message: no need to wait for the process to end
        return False

    def _put_back(self, run: _Run) -> Outcome:
        run.child.kill()
        run.child.wait(CHILD_EXIT_GRACE)
        self.backend.release(run.claim, reason="pinion stopped before the run ended")
        self.reporter.workload_finished("put back in the queue", "pinion stopped")
        return Outcome.RELEASED

    def _ended(self, run: _Run, now: float) -> bool:
        """The child has ended; something it started may still hold the pipe, so its last
        messages are waited for only ``CHILD_EXIT_GRACE``."""
        if run.child.poll() is None:
            return False
        run.exited_at = run.exited_at or now
        return now - run.exited_at > CHILD_EXIT_GRACE

    def _timed_out(self, run: _Run, now: float) -> bool:
        timeout = self.config.timeout
        if timeout is None or now - run.t0 <= timeout:
            return False
        run.child.kill()
        run.stop_type, run.stop_reason = "Timeout", f"timed out after {timeout:g} s"
        return True

    def _overdue(self, run: _Run, now: float) -> bool:
        """Kill the child when a task it was told to stop has not (``cancel --now``, after
        the grace), or one runs past its time limit plus the grace (see
        :mod:`caliber.pinion.stops`)."""
        due = run.watch.due(now, run.cancelled)
        if due is None:
            return False
        run.child.kill()
        run.stop_type, run.stop_reason = due
        return True

    def _renewed(self, claim: Claim, progress: dict[str, Any] | None = None) -> Claim:
        """The claim with its lease extended (as it was when the queue cannot be reached: the
        lease may still hold), with where the run is (``progress``, for the backend to keep);
        LeaseLostError when it was lost."""
        try:
            claim = self.backend.renew(claim, self.config.lease, progress=progress)
            log.debug("lease of %s renewed", claim.workload.id)
        except LeaseLostError:
            raise
        except QueueError as exc:  # keep running; the lease may still hold
            self.reporter.error(f"could not renew the lease: {exc}", exc_info=exc)
        return claim

    def _peeked(self, claim: Claim) -> Claim:
        """The claim with a cancel asked since the last renewal, if any (a read; as it was
        when the queue cannot be read: the next renewal says); LeaseLostError when it was
        lost."""
        try:
            return self.backend.peek_cancel(claim)
        except LeaseLostError:
            raise
        except QueueError as exc:
            log.debug("could not look for a cancel of %s (%s)", claim.workload.id, exc)
            return claim

    def _renew(self, run: _Run, *, peek: bool = False) -> bool:
        """Extend the lease (with ``peek``, only look for a cancel: :meth:`_peeked`), and act
        on a cancel; False when the lease was lost (the child is stopped)."""
        try:
            if peek:
                run.claim = self._peeked(run.claim)
            else:
                run.claim = self._renewed(run.claim, self.reporter.progress())
            self._cancel_if_asked(run)
        except LeaseLostError:
            run.child.kill()
            run.child.wait(CHILD_EXIT_GRACE)
            self.reporter.workload_finished("abandoned", "lease lost to another pinion")
            return False
        return True

    def _cancel_if_asked(self, run: _Run) -> None:
        """Act on a cancel learnt at a renewal (or a look between): stop after the current
        task (the child is asked not to start another), or with ``--now`` at once (SIGTERM
        to its processes, SIGKILL after the grace: :meth:`_overdue`)."""
        claim = run.claim
        if claim.cancel_requested is None or run.watch.terminated:
            return
        if claim.cancel_now:
            run.cancelled = claim.cancel_requested
            run.asked = True  # the child sends its Results: it is not killed after a task
            run.watch.terminate(run.child, time.monotonic())
            self.reporter.cancelling(run.cancelled, grace=self.config.cancel_grace)
        elif run.cancelled is None:
            run.cancelled = claim.cancel_requested
            run.asked = run.child.ask_to_stop()
            self.reporter.cancelling(run.cancelled)

    def _server_ended(self, run: _Run) -> Outcome:
        """The fork server ended (killed, or stopped answering) before the child's verdict,
        and took the child with it: the machine's fault, not the workload's, so the workload
        goes back to the queue, its attempt not counted (the next start has a new server)."""
        reason = (f"the fork server ended ({run.child.server_ended}) and took the workload's "
                  "process with it")
        self.backend.release(run.claim, reason=reason)
        self.reporter.workload_finished("put back in the queue", reason)
        return Outcome.RELEASED

    def _verdict(self, run: _Run, returncode: int | None) -> Outcome:
        """Store the child's Results, or a failed one saying how the process ended."""
        workload = run.claim.workload
        if run.final is not None:
            results = run.final
            error = results.error
            if run.watch.terminated and error is not None and error.type == CANCELLED:
                results = results.model_copy(update={"error": error.model_copy(update={
                    "message": f"cancelled by {run.cancelled}: {error.message}"})})
        else:
            how = "ended" if returncode is None else describe_exit(returncode)
            why = run.stop_reason or f"the workload's process {how}"
            results = Results(
                workload_id=workload.id, workflow=workload.workflow_name,
                pinion=self.config.name, started_at=run.started,
                status=RunStatus.CANCELLED if run.stop_type == CANCELLED else RunStatus.FAILED,
                finished_at=utcnow(), tasks=run.records, work_dir=str(run.work_dir),
                g=g_of(run.records),
                error=ErrorInfo(type=run.stop_type, message=why, task=run.watch.task,
                                branch=run.watch.branch),
                resumed_from=workload.resume_from,
            )
            if results.status == RunStatus.FAILED:
                from caliber.workflow.runner import write_traceback_file

                write_traceback_file(run.work_dir, results)
        results = results.model_copy(update={"upstream": taken(run.upstream)})  # as given
        return self._keep(run.claim, run.work_dir, results, run.log)

    def _keep(self, claim: Claim, work_dir: Path, results: Results,
              log_cap: LogCap | None = None) -> Outcome:
        """Store the workload's Results (with the end of its output), signed with this
        pinion's key (a later resume reuses only what it signed), and report them."""
        from caliber.queue.resume import signed

        (log_cap or LogCap(work_dir, self.config.log_max)).finish()  # under the cap, for good
        results = keep_values(self.backend, work_dir, results)  # its arrays, in the store
        claim, results = self._collect_outputs(claim, work_dir, results)
        results = signed(results.model_copy(update={
            "output": output_tail(work_dir), "workload_id": claim.workload.id}), self.key)
        self._learn_code(claim.workload, results)
        try:
            self.backend.complete(claim, results)
        except LeaseLostError:
            self.reporter.workload_finished("abandoned", "lease lost before the results were kept")
            return Outcome.LOST
        detail = results.error.summary() if results.error else f"results {results.id}"
        if results.error and (work_dir / TRACEBACK_FILE).is_file():
            detail += f"; traceback in {work_dir / TRACEBACK_FILE}"
        self.reporter.workload_finished(results.status.value, detail)
        return {RunStatus.COMPLETED: Outcome.COMPLETED,
                RunStatus.CANCELLED: Outcome.CANCELLED}.get(results.status, Outcome.FAILED)

    def _collect_outputs(self, claim: Claim, work_dir: Path,
                         results: Results) -> tuple[Claim, Results]:
        """The files the workflow's ``outputs`` match in its run folder, streamed into the
        queue's store and listed in its Results (:mod:`caliber.results.files`), however the
        run ended; the lease is renewed between files when due (LeaseLostError stops it)."""
        written_back = self._written_back.pop(work_dir, None)  # a resumed run's (launch)
        patterns = claim.workload.workflow.get("outputs")
        if not patterns or not isinstance(patterns, list):
            return claim, results
        from caliber.results.files import keep_outputs
        from caliber.results.model import ResultFile, SkippedFile

        if not isinstance(self.backend, BlobStore):
            skipped = [SkippedFile(path=p, reason="this queue keeps no files")
                       for p in patterns]
            return claim, results.model_copy(update={"files_skipped": skipped})
        due = time.monotonic() + self._renew_every

        def renew() -> None:
            nonlocal claim, due
            if time.monotonic() >= due:
                try:
                    claim = self.backend.renew(claim, self.config.lease)
                except LeaseLostError:
                    raise
                except QueueError as exc:  # the lease may still hold: go on
                    self.reporter.error(f"could not renew the lease: {exc}", exc_info=exc)
                due = time.monotonic() + self._renew_every
            self._tend()  # the other slots' leases too

        found = keep_outputs(self.backend, work_dir, patterns, self._output_limits,
                             between=renew, written_back=written_back)
        files = [ResultFile(**f) for f in found["files"]]
        skipped = [SkippedFile(**f) for f in found["files_skipped"]]
        self.reporter.files_kept(len(files), sum(f.size for f in files),
                                 [f"{f.path} not kept: {f.reason}" for f in skipped])
        return claim, results.model_copy(update={
            "files": files, "files_skipped": skipped,
            "files_unmatched": found["files_unmatched"]})


    def _learn_code(self, workload: Workload, results: Results) -> None:
        """Keep the code fingerprints a child took, by task function, for the next workload
        with the same attached files (:func:`_code_key`): a fingerprint is a function of
        those files alone (the modules of the run folder), and a fresh child would spend
        about a millisecond parsing them again."""
        functions = {str(t.get("name")): str(t["function"]) for t in _document_tasks(workload)}
        learnt = {functions[t.name]: t.code_fingerprint for t in results.tasks
                  if t.code_fingerprint is not None and t.name in functions
                  and t.reused_from is None}
        if not learnt:
            return
        key = _code_key(workload)
        self._code[key] = {**self._code.pop(key, {}), **learnt}  # the newest last
        while len(self._code) > CODE_CACHE:
            del self._code[next(iter(self._code))]


def _notifier() -> Notifier | None:
    """The notifier the settings ask for (``CALIBER_NOTIFY_URL``, ``CALIBER_NOTIFY_SMTP``),
    or None (its thread only when one is)."""
    from caliber.pinion.notify import Notifier

    return Notifier.from_settings()


def _code_key(workload: Workload) -> tuple[tuple[str, str], ...]:
    """What a task function's code fingerprint depends on: the attached files."""
    return tuple(sorted((a.path, a.sha256) for a in workload.attachments))


def _document_tasks(workload: Workload) -> list[dict[str, Any]]:
    """Every task of a workload's document (name and function), found in its tree."""
    found: list[dict[str, Any]] = []
    todo: list[Any] = [workload.workflow.get("process")]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            if isinstance(node.get("function"), str):
                found.append(node)
            todo.extend(node.get("tasks") or [])
    return found


@dataclass
class _Run:
    """One workload's child and what the pinion has learned from it so far."""

    claim: Claim
    work_dir: Path
    child: ChildProcess
    messages: MessageReader
    started: dt.datetime
    t0: float
    """``time.monotonic()`` when the child was given the job."""
    next_renew: float
    next_peek: float
    """``time.monotonic()`` when a cancel is next looked for between renewals."""
    log: LogCap
    """Keeps ``output.log`` under the cap while the child runs."""
    news_at: float = 0.0
    """``time.monotonic()`` of the child's last message (or of the job given)."""
    records: list[TaskResult] = field(default_factory=list)
    final: Results | None = None
    stop_type: str = "ChildProcessDied"
    stop_reason: str = ""
    exited_at: float | None = None
    cancelled: str | None = None
    """Who cancelled the workload (learnt at a renewal, or a look between): it stops after
    its current task."""
    asked: bool = False
    """Whether the child was asked to run no further task (else it is killed after this one)."""
    watch: TaskWatch = field(default_factory=lambda: TaskWatch(DEFAULT_CANCEL_GRACE))
    """The running task, its time limit, and a ``cancel --now`` under way."""
    over: bool = False
    """Its verdict is known, or it ended without one: it is being finished."""
    outcome: Outcome | None = None
    """How it ended without a verdict of its child's: put back (a cold stop), or LOST."""
    upstream: list[dict[str, Any]] = field(default_factory=list)
    """The upstream values it was given (:func:`caliber.pinion.upstream.resolve`)."""


@dataclass
class _Slot:
    """One of a pinion's ``concurrency`` places for a running workload."""

    number: int
    """1 to ``concurrency``."""
    owner: str
    """Who holds its claims (the pinion's owner, with ``[slot k]`` when it has several)."""
    reporter: Reporter
    run: _Run | None = None
    """The workload running in it, if one is."""


def _from_server(server: ForkServer, idle: Callable[[], object]) -> ChildProcess | None:
    """A child from the fork server; None when the server ended or stopped answering (it is
    then killed, and :meth:`Pinion._fork_server` starts another)."""
    try:
        return server.start(idle)
    except OSError as exc:
        log.debug("no child from the fork server (%s)", exc)
        return None


def _reason(exc: BaseException) -> str:
    """One line for the workload's last error: the message, with the type when it is not
    one of Caliber's own errors (whose messages say what happened)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, CaliberError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

