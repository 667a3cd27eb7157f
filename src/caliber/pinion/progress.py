"""What a pinion tells the person watching it, through the standard :mod:`logging` module.

The pinion logs to the ``caliber.pinion`` logger: its :class:`Reporter` turns events (a
workload started, a task ended, no work found) into log records, and a
:class:`ProgressHandler` shows them. On a terminal, one live line (workload, task k of n,
elapsed) that is replaced as work goes on, and a permanent line per finished workload;
otherwise plain log lines, one per event. Every line but an error's starts with the local
date and time (the live line with the time of day; its elapsed time counts from the
workload's start). ``quiet`` shows nothing but errors.
The live line's elapsed time counts on during a task (:meth:`Reporter.tick`), and the
running workload's progress is also kept in its run folder for ``caliber queue view``
(:func:`caliber.pinion.follow.write_progress`).
A pinion that runs several workloads at once (``--concurrency``) has a Reporter for each of
its slots (:meth:`Reporter.for_slot`): they share the pinion's logger and handler, each line
about a workload starts with its slot (``[slot 2]``), and the live line shows every slot's.
Everything goes to stderr. With ``caliber --verbose`` debug lines (claims, renewals, child
processes) show too, and an error's causes (its exception chain) under its line. Other
handlers added to ``caliber.pinion`` (a file, a log service) receive the same records.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

from caliber.pinion.follow import write_progress
from caliber.results.model import utcnow
from caliber.text import for_terminal

LOGGER = "caliber.pinion"
LIVE = "caliber_live"
"""Record attribute: a status line, replaced by the next one on a terminal."""
REPORTER = "caliber_reporter"
"""Record attribute: which Reporter logged it (``caliber --verbose`` leaves these records to
the pinion's own handler)."""
LIVE_WIDTH = 120  # characters of the live line shown
LIVE_REFRESH = 1.0  # seconds: how often the live line's elapsed time moves on during a task
MAX_NAME = 200  # characters of a task's name kept in the progress a renewal carries
STAMP = "%Y-%m-%d %H:%M:%S"


def verbose() -> bool:
    """Whether debug lines and causes are shown (``caliber --verbose``)."""
    return logging.getLogger("caliber").isEnabledFor(logging.DEBUG)


class ProgressHandler(logging.Handler):
    """Shows one pinion's records on a stream (see the module's documentation)."""

    def __init__(self, name: str, stream: TextIO | None, *, live: bool,
                 level: int = logging.INFO) -> None:
        super().__init__(level)
        self.pinion = name
        self._stream = stream
        self.live = live
        self._live_shown = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # Names and reasons come from the queue and user code: no control characters.
            text = for_terminal(record.getMessage())
            if record.levelno >= logging.WARNING:
                self._clear_live()
                self.stream.write(f"pinion {self.pinion}: {text}\n")
                if record.exc_info and record.exc_info[1] is not None and (
                        self.level <= logging.DEBUG):
                    self.stream.write("".join(traceback.format_exception(record.exc_info[1])))
            elif getattr(record, LIVE, False) and self.live:
                clock = time.strftime("%H:%M:%S", time.localtime(record.created))
                self.stream.write("\r\x1b[K" + f"{clock} {text}"[:LIVE_WIDTH])
                self._live_shown = True
            elif self.live:
                self._clear_live()
                stamp = time.strftime(STAMP, time.localtime(record.created))
                self.stream.write(f"{stamp} {text}\n")
            else:
                stamp = time.strftime(STAMP, time.localtime(record.created))
                self.stream.write(f"{stamp} pinion {self.pinion}: {text}\n")
            self.stream.flush()
        except Exception:
            self.handleError(record)

    @property
    def stream(self) -> TextIO:
        """The stream given, or stderr as it is now (a test may have replaced it)."""
        return self._stream or sys.stderr

    def _clear_live(self) -> None:
        if self._live_shown:
            self.stream.write("\r\x1b[K")
            self._live_shown = False

    def close(self) -> None:
        if self._live_shown:
            self._clear_live()
            self.stream.flush()
        super().close()


class Reporter:
    """The pinion's events as log records, shown by its ProgressHandler until :meth:`close`.

    Each Reporter logs through a logger of its own (so pinions in threads of one process do
    not show each other's lines, and nothing is left behind) whose parent is
    ``caliber.pinion``: handlers added there, or higher, receive every record too."""

    def __init__(self, name: str, *, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.name = name
        self.quiet = quiet
        self.live = bool(getattr(stream or sys.stderr, "isatty", lambda: False)()) and not quiet
        self._workload = ""
        self._started = 0.0
        self.running = False
        """Whether a workload is running now (between its start and its verdict)."""
        self._task = ""  # the running task, as the live line names it
        self._shown_at = 0.0  # when the live line was last written
        self._folder: Path | None = None
        self._progress: dict[str, Any] = {}
        self._progress_due = False  # a task started since the progress file was written
        self.slot: int | None = None
        """Which of its pinion's slots this Reporter speaks for (None: the pinion's own)."""
        self._prefix = ""  # what starts its lines: its slot
        self._slots: list[Reporter] = []  # the pinion's: its slots' Reporters
        self._root = self
        level = logging.DEBUG if verbose() else logging.WARNING if quiet else logging.INFO
        self.logger = logging.Logger(LOGGER, level)
        self.logger.parent = logging.getLogger(LOGGER)
        self.handler = ProgressHandler(name, stream, live=self.live, level=level)
        self.logger.addHandler(self.handler)

    def for_slot(self, slot: int) -> Reporter:
        """The Reporter of slot ``slot`` of this pinion (``--concurrency``): the same logger
        and handler, its own running workload, its lines starting with ``[slot k]``."""
        other = Reporter.__new__(Reporter)
        other.__dict__.update(self.__dict__)  # the name, logger, handler, live and quiet
        other.running, other._workload, other._task = False, "", ""
        other._folder, other._progress, other._progress_due = None, {}, False
        other.slot, other._prefix, other._slots, other._root = slot, f"[slot {slot}] ", [], self
        self._slots.append(other)
        return other

    @property
    def busy(self) -> bool:
        """Whether a workload of this pinion runs now (in any of its slots)."""
        return self.running or any(s.running for s in self._slots)

    # --- output primitives --------------------------------------------------------------

    def _log(self, level: int, text: str, *, live: bool = False,
             exc_info: BaseException | None = None) -> None:
        self.logger.log(level, "%s", self._prefix + text, exc_info=exc_info,
                        extra={LIVE: live, REPORTER: id(self._root)})

    def _line(self, text: str) -> None:
        self._log(logging.INFO, text)

    def _status(self, text: str) -> None:
        """The live line on a terminal; a log line otherwise."""
        self._log(logging.INFO, text, live=True)

    def error(self, text: str, exc_info: BaseException | None = None) -> None:
        """An error line, always shown; ``exc_info``'s causes too with ``--verbose``."""
        self._log(logging.ERROR, text, exc_info=exc_info)

    # --- events -------------------------------------------------------------------------

    def started(self, location: str, attempts: int, wait: float, concurrency: int = 1) -> None:
        looks = "until stopped" if attempts == 0 else f"{attempts} empty looks"
        slots = f", {concurrency} workloads at once" if concurrency > 1 else ""
        self._line(f"listening on {location} ({looks}, {wait:g} s apart{slots})")

    def idle(self, empty: int, attempts: int, wait: float) -> None:
        of = "" if attempts == 0 else f"/{attempts}"
        if self.live:
            self._status(f"pinion {self.name}: no work (look {empty}{of}), "
                         f"next in {round(wait, 1):g} s")
        elif empty == 1 or attempts == 0 or empty == attempts:
            self._line(f"no work found (look {empty}{of})")

    def workload_started(self, workload_id: str, workflow: str, attempt: int) -> None:
        self._workload = f"{workload_id} ({workflow})"
        self._started = time.monotonic()
        self.running = True
        self._task = ""
        self._folder = None
        self._progress_due = False
        self._progress = {"workload": workload_id, "attempt": attempt,
                          "started_at": utcnow().isoformat(), "task": None}
        again = f", attempt {attempt}" if attempt > 1 else ""
        if not self.live:
            self._line(f"running workload {self._workload}{again}")

    def running_in(self, work_dir: Path) -> None:
        """The running workload's folder: its progress file is kept there (``queue view``),
        written by :meth:`tick` once a task has run for a moment: a task that ends at once
        costs no file (writing one takes longer than running a small workload)."""
        self._folder = work_dir

    def task_event(self, event: dict[str, Any]) -> None:
        branch = f" [branch {event['branch']}]" if event.get("branch") is not None else ""
        k, n, name = event["index"], event["total"], event["name"]
        if event["kind"] == "start":
            self._task = f"task {k}/{n} {name}{branch}"
            if self._folder is not None:
                self._progress["task"] = {
                    "index": k, "total": n, "name": name, "branch": event.get("branch"),
                    "started_at": utcnow().isoformat()}
                self._progress_due = True
            self._show(force=True)
        elif not self.live:
            took = event.get("duration") or 0.0
            if event.get("reused_from") is not None:  # a resumed run's: not run again
                self._line(f"{self._workload}: task {k}/{n} {name}{branch} reused from "
                           f"results {event['reused_from']}")
                return
            why = f" (ran again: {event['reuse']})" if event.get("reuse") else ""
            self._line(f"{self._workload}: task {k}/{n} {name}{branch} {event['status']} "
                       f"in {took:.3f} s{why}")

    def tick(self) -> None:
        """The pinion waited a moment for its child without news (it calls this after each
        :data:`caliber.pinion.loop.POLL_SLICE` without a message): the progress file is
        written if a task started since it last was, and the live line is shown again with
        the time counted on (at most every LIVE_REFRESH seconds)."""
        if self._progress_due and self._folder is not None:
            self._progress_due = False
            write_progress(self._folder, self._progress)
        self._show()

    def _show(self, *, force: bool = False) -> None:
        if self._root is not self:  # one of several slots: the live line shows them all
            self._root._show_slots(force=force)
            return
        now = time.monotonic()
        if not (self.live and self.running and self._task) or (
                not force and now - self._shown_at < LIVE_REFRESH):
            return
        self._shown_at = now
        self._status(f"{self._workload}: {self._task} ... {now - self._started:.1f} s")

    def _show_slots(self, *, force: bool) -> None:
        """The live line of a pinion with several slots: each running task's, slot by slot
        (``[slot 1] k3v9q2mxa7 (solve): task 2/3 Solve ... 12.0 s | [slot 2] ...``)."""
        now = time.monotonic()
        if not self.live or (not force and now - self._shown_at < LIVE_REFRESH):
            return
        shown = [f"[slot {s.slot}] {s._workload}: {s._task} ... {now - s._started:.1f} s"
                 for s in self._slots if s.running and s._task]
        if shown:
            self._shown_at = now
            self._status(" | ".join(shown))

    def workload_finished(self, status: str, detail: str = "") -> None:
        self.running = False
        elapsed = time.monotonic() - self._started
        more = f": {detail}" if detail else ""
        self._line(f"workload {self._workload} {status} in {elapsed:.2f} s{more}")

    def files_kept(self, count: int, size: int, skipped: list[str]) -> None:
        """The result files of the workload that ended (``outputs=``): how many were kept,
        and a line for each that was not, with why."""
        self._line(f"{self._workload}: kept {count} result file{'s' if count != 1 else ''} "
                   f"({size} bytes)")
        for line in skipped:
            self._log(logging.WARNING, f"{self._workload}: result file {line}")

    def gave_back(self, workload_id: str, what: str, reason: str, exc: BaseException) -> None:
        """An error stopped a claimed workload before its verdict: an error line with its id,
        what became of it and why (the exception's causes with ``--verbose``)."""
        self.running = False
        self.error(f"workload {workload_id} {what}: {reason}", exc_info=exc)

    def cancelling(self, by: str, *, grace: float | None = None) -> None:
        """The running workload was cancelled: it stops after its current task, or now
        (``grace``: ``queue cancel --now``, SIGKILL that many seconds after SIGTERM)."""
        if grace is None:
            self._line(f"{self._workload}: cancelled by {by}; stopping after the current task")
        else:
            self._line(f"{self._workload}: cancelled by {by}; stopping the running task now "
                       f"(SIGTERM, SIGKILL after {grace:g} s)")

    def progress(self) -> dict[str, Any] | None:
        """Where the running workload is, as its progress file says it (``started_at`` of
        the run, and ``task``: index, total, name, branch, started_at), for the queue to
        keep with a lease renewal (``queue view`` of a remote workload); None before its
        first task started."""
        if not self.running or self._progress.get("task") is None:
            return None
        task = dict(self._progress["task"])
        task["name"] = str(task["name"])[:MAX_NAME]
        return {"started_at": self._progress["started_at"], "task": task}

    def skipped(self, workload_id: str, reason: str) -> None:
        self._line(f"skipped workload {workload_id}: {reason}")

    def stopping(self, cold: bool) -> None:
        workload = "workloads" if self._slots else "workload"
        if not self.busy:
            self.error("stopping (no workload is running)")
        elif cold:
            goes = "go" if self._slots else "goes"
            self.error(f"stopping now: the running {workload} {goes} back to the queue")
        else:
            self.error(f"stopping after the running {workload} (press Ctrl-C again to stop "
                       "now)")

    def close(self) -> None:
        if self._root is not self:
            return  # the pinion's Reporter closes the handler they share
        self.logger.removeHandler(self.handler)
        self.handler.close()
