"""The pinion: looks for queued workloads meant for it, runs each in a child, keeps results.

``run_once()`` is one look: claim, verify the run-secret, run, store. ``run()`` repeats it:
work found means look again at once; an empty look counts, then waits; after ``attempts``
empty looks in a row the pinion stops (``attempts=0``: never).

While a child runs, the pinion renews its lease every third of the lease time, enforces the
timeout and watches for a warm or cold stop. The child's verdict is stored with the claim
token, so a pinion that lost its lease can never complete a workload another pinion holds.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from caliber.errors import (
    AttachmentError,
    LeaseLostError,
    QueueDamagedError,
    QueueError,
    WorkspaceError,
)
from caliber.paths import runs_dir
from caliber.pinion.child import ForeignMessageError, child_main, read_message
from caliber.pinion.platform import (
    EOF,
    ChildProcess,
    MessageReader,
    describe_exit,
    start_child,
)
from caliber.pinion.progress import Reporter
from caliber.pinion.signals import StopFlags, stop_on_signals
from caliber.platform import create_new_file
from caliber.queue.backend import Claim, QueueBackend
from caliber.queue.secret import key_id, load_key, verify
from caliber.queue.workload import Workload
from caliber.results.model import ErrorInfo, Results, RunStatus, TaskResult, utcnow
from caliber.settings import DEFAULT_ATTEMPTS, DEFAULT_LEASE, DEFAULT_MAX_ATTEMPTS, DEFAULT_WAIT
from caliber.workflow.attachments import resolve_inside

# Errors writing the runs folder that are this machine's, not the workload's.
_MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                   errno.EIO, errno.EFBIG}
POLL_SLICE = 0.1  # seconds: how often a waiting pinion looks at its stop flags
QUEUE_RETRY_MIN = 0.5  # seconds: the first back-off after the queue could not be reached
QUEUE_RETRY_CAP = 30.0  # seconds: the longest back-off after the queue could not be reached
CHILD_EXIT_GRACE = 0.5  # seconds: wait for the last messages of a child that has ended


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


class Outcome(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    LOST = "lost"
    RELEASED = "released"


@dataclass
class Summary:
    """What a pinion did, printed when it stops."""

    ran: int = 0
    completed: int = 0
    failed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    lost: int = 0
    stopped_by: str = ""
    cold: bool = False
    """Stopped by a second signal, with the running workload put back."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "ran": self.ran, "completed": self.completed, "failed": self.failed,
            "skipped": [{"id": i, "reason": r} for i, r in self.skipped], "lost": self.lost,
            "stopped_by": self.stopped_by or None, "cold": self.cold,
        }


class Pinion:
    def __init__(
        self,
        config: PinionConfig,
        backend: QueueBackend,
        *,
        reporter: Reporter | None = None,
        key: bytes | None = None,
    ) -> None:
        self.config = config
        self.backend = backend
        self.reporter = reporter or Reporter(config.name, quiet=True)
        self.key = key if key is not None else load_key()
        self.key_id = key_id(self.key)
        self.owner = f"{config.name}@{socket.gethostname()}:{os.getpid()}"
        self.flags = StopFlags()
        self.summary = Summary()
        self.runs = (config.runs_dir or runs_dir()) / _safe_name(config.name)
        self._unreaped: list[ChildProcess] = []
        self._spare: ChildProcess | None = None

    # --- the loop -----------------------------------------------------------------------

    def run(self) -> Summary:
        """Look for work until ``attempts`` empty looks in a row, or a stop signal."""
        cfg = self.config
        self.reporter.started(self.backend.location, cfg.attempts, cfg.wait)
        empty = 0
        backoff = max(cfg.wait, QUEUE_RETRY_MIN)  # never a busy loop, even with -w 0
        try:
            with stop_on_signals(self.flags, lambda f: self.reporter.stopping(f.cold)):
                while not self.flags.warm:
                    try:
                        found = self.run_once()
                    except QueueDamagedError:
                        raise  # trying again cannot help
                    except (QueueError, WorkspaceError) as exc:
                        self.reporter.error(f"{exc}; trying again in {backoff:g} s")
                        self._sleep(backoff)
                        backoff = min(backoff * 2, QUEUE_RETRY_CAP)
                        continue
                    backoff = max(cfg.wait, QUEUE_RETRY_MIN)
                    if found:
                        empty = 0
                        continue
                    empty += 1
                    if cfg.attempts and empty >= cfg.attempts:
                        break
                    self.reporter.idle(empty, cfg.attempts, cfg.wait)
                    self._sleep(cfg.wait)
        finally:
            self._drop_spare()
            self._reap(block=True)
        self.summary.stopped_by = self.flags.signal_name
        self.summary.cold = self.flags.cold
        self.reporter.close()
        return self.summary

    def _start(self, job: dict[str, Any]) -> ChildProcess:
        """Hand the job to the spare child (forked while the previous workload ran) or to a new
        one, then fork the next spare while this one runs. Each child runs one workload only."""
        child, self._spare = self._spare, None
        if child is not None:
            try:
                child.send_job(job)
            except OSError:  # the spare died meanwhile: start afresh
                child.kill()
                child.close()
                self._unreaped.append(child)
                child = None
        if child is None:
            child = start_child(child_main)
            child.send_job(job)
        try:
            self._spare = start_child(child_main, close_fds=child.parent_fds())
        except OSError as exc:  # no spare (out of processes?): the next one is started on demand
            self.reporter.error(f"could not start a spare child process: {exc}")
        return child

    def _drop_spare(self) -> None:
        if self._spare is not None:
            self._spare.close()  # it reads end-of-file on its control pipe and exits
            self._unreaped.append(self._spare)
            self._spare = None

    def _reap(self, *, block: bool = False) -> None:
        """Collect children that have ended (they exit on their own after their results)."""
        self._unreaped = [c for c in self._unreaped
                          if (c.wait() if block else c.poll()) is None]

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.flags.warm:
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(POLL_SLICE, left))

    def run_once(self) -> bool:
        """One look: True when a workload was claimed (run or skipped), False when none."""
        cfg = self.config
        for workload_id in self.backend.expire(cfg.max_attempts):
            self.reporter.skipped(workload_id, f"failed: its lease ran out {cfg.max_attempts} "
                                  "times (pinions died)")
        claim = self.backend.claim(cfg.name, self.owner, cfg.lease, self.key_id)
        if claim is None:
            return False
        outcome = self.handle(claim)
        if outcome in (Outcome.COMPLETED, Outcome.FAILED):
            self.summary.ran += 1
            if outcome == Outcome.COMPLETED:
                self.summary.completed += 1
            else:
                self.summary.failed += 1
        elif outcome == Outcome.LOST:
            self.summary.lost += 1
        return True

    # --- one workload -------------------------------------------------------------------

    def handle(self, claim: Claim) -> Outcome:
        workload = claim.workload
        if workload.damaged or not verify(workload, self.key):
            reason = workload.damaged or (
                "run-secret does not match this pinion's key (tampered, or another key)")
            self.backend.release(claim, reason=reason, mismatch_key_id=self.key_id)
            self.summary.skipped.append((workload.id, reason))
            self.reporter.skipped(workload.id, reason)
            return Outcome.SKIPPED
        self.reporter.workload_started(workload.id, workload.workflow_name, workload.attempts)
        try:
            work_dir = self.prepare(workload)
        except OSError as exc:
            if exc.errno not in _MACHINE_ERRNOS:  # the workload's: a name this disk refuses
                return self._unprepared(claim, exc)
            # This machine's: not the workload's fault, so it goes back, attempt uncounted.
            self.backend.release(claim, reason=f"the runs folder cannot be written: {exc}")
            raise WorkspaceError(
                f"cannot write the runs folder {self.runs}: {exc.strerror or exc}"
            ) from None
        except AttachmentError as exc:
            return self._unprepared(claim, exc)
        return self.supervise(claim, work_dir)

    def _unprepared(self, claim: Claim, exc: Exception) -> Outcome:
        reason = f"cannot prepare the working folder: {exc}"
        self.backend.fail(claim, reason, retry=False)
        self.reporter.workload_finished("failed", reason)
        return Outcome.FAILED

    def prepare(self, workload: Workload) -> Path:
        """A fresh working folder with the attached files written in it (paths re-checked)."""
        work_dir = self.runs / f"{workload.id}-{workload.attempts}"
        if work_dir.exists():
            shutil.rmtree(work_dir)
        work_dir.mkdir(parents=True)
        for attachment in workload.attachments:
            target = resolve_inside(work_dir, attachment.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            with os.fdopen(create_new_file(target), "wb") as f:
                f.write(attachment.data())
        return work_dir

    def supervise(self, claim: Claim, work_dir: Path) -> Outcome:
        cfg = self.config
        workload = claim.workload
        job = {"workload_id": workload.id, "pinion": cfg.name, "work_dir": str(work_dir),
               "workflow": workload.workflow}
        started = utcnow()
        self._reap()
        child = self._start(job)
        messages = MessageReader(child.messages_fd)
        records: list[TaskResult] = []
        final: Results | None = None
        t0 = time.monotonic()
        renew_every = max(cfg.lease / 3, 0.05)
        next_renew = t0 + renew_every
        stop_type, stop_reason = "ChildProcessDied", ""
        exited_at: float | None = None
        try:
            while True:
                now = time.monotonic()
                wait = min(next_renew - now, POLL_SLICE)
                line = messages.get(max(wait, 0.0))
                if line is EOF:
                    break
                if line is not None:
                    try:
                        message = read_message(line)
                    except ForeignMessageError as exc:  # the workload's doing, not ours
                        child.kill()
                        stop_type, stop_reason = "ForeignMessage", str(exc)
                        break
                    if message.event is not None:
                        self.reporter.task_event(message.event)
                    if message.record is not None:
                        records.append(message.record)
                    if message.results is not None:
                        final = message.results
                        break  # the last message: no need to wait for the process to end
                    continue
                if self.flags.cold:
                    child.kill()
                    child.wait()
                    self.backend.release(claim, reason="pinion stopped before the run ended")
                    self.reporter.workload_finished("put back in the queue", "pinion stopped")
                    return Outcome.RELEASED
                now = time.monotonic()
                if child.poll() is not None:
                    # Ended, but something it started still holds the pipe: stop waiting soon.
                    exited_at = exited_at or now
                    if now - exited_at > CHILD_EXIT_GRACE:
                        break
                if cfg.timeout is not None and now - t0 > cfg.timeout:
                    child.kill()
                    stop_type, stop_reason = "Timeout", f"timed out after {cfg.timeout:g} s"
                    break
                if now >= next_renew:
                    try:
                        claim = self.backend.renew(claim, cfg.lease)
                    except LeaseLostError:
                        child.kill()
                        child.wait()
                        self.reporter.workload_finished("abandoned", "lease lost to another pinion")
                        return Outcome.LOST
                    except QueueError as exc:  # keep running; the lease may still hold
                        self.reporter.error(f"could not renew the lease: {exc}")
                    next_renew = now + renew_every
            returncode = child.wait() if final is None else 0
        finally:
            child.kill_group()  # whatever the workload started and left behind
            child.close()
            self._unreaped.append(child)
        if final is not None:
            results = final
        else:
            why = stop_reason or f"the workload's process {describe_exit(returncode)}"
            results = Results(
                workload_id=workload.id, workflow=workload.workflow_name, pinion=cfg.name,
                status=RunStatus.FAILED, started_at=started, finished_at=utcnow(),
                tasks=records, work_dir=str(work_dir),
                error=ErrorInfo(type=stop_type, message=why),
            )
            from caliber.workflow.runner import write_traceback_file

            write_traceback_file(work_dir, results)
        try:
            self.backend.complete(claim, results)
        except LeaseLostError:
            self.reporter.workload_finished("abandoned", "lease lost before the results were kept")
            return Outcome.LOST
        detail = results.error.summary() if results.error else f"results {results.id}"
        self.reporter.workload_finished(results.status.value, detail)
        return Outcome.COMPLETED if results.ok else Outcome.FAILED


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "pinion"
