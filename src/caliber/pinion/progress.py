"""What a pinion tells the person watching it.

On a terminal, one live line (workload, task k of n, elapsed) that is replaced as work goes
on, and a permanent line per finished workload; otherwise plain timestamped log lines, one per
event. ``quiet`` shows nothing but errors. Everything goes to stderr.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from caliber.text import for_terminal


class Reporter:
    def __init__(self, name: str, *, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.name = name
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)()) and not quiet
        self._live_shown = False
        self._workload = ""
        self._started = 0.0

    # --- output primitives --------------------------------------------------------------

    def _line(self, text: str) -> None:
        if self.quiet:
            return
        text = for_terminal(text)  # names and reasons come from the queue and user code
        if self.live:
            self._clear_live()
            self.stream.write(text + "\n")
        else:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            self.stream.write(f"{stamp} pinion {self.name}: {text}\n")
        self.stream.flush()

    def _status(self, text: str) -> None:
        """The live line on a terminal; a log line otherwise."""
        if self.quiet:
            return
        if not self.live:
            self._line(text)
            return
        width = 120
        self.stream.write("\r\x1b[K" + for_terminal(text)[:width])
        self.stream.flush()
        self._live_shown = True

    def _clear_live(self) -> None:
        if self._live_shown:
            self.stream.write("\r\x1b[K")
            self._live_shown = False

    def error(self, text: str) -> None:
        self._clear_live()
        self.stream.write(f"pinion {self.name}: {for_terminal(text)}\n")
        self.stream.flush()

    # --- events -------------------------------------------------------------------------

    def started(self, location: str, attempts: int, wait: float) -> None:
        looks = "until stopped" if attempts == 0 else f"{attempts} empty looks"
        self._line(f"listening on {location} ({looks}, {wait:g} s apart)")

    def idle(self, empty: int, attempts: int, wait: float) -> None:
        of = "" if attempts == 0 else f"/{attempts}"
        if self.live:
            self._status(f"pinion {self.name}: no work (look {empty}{of}), next in {wait:g} s")
        elif not self.quiet and (empty == 1 or attempts == 0 or empty == attempts):
            self._line(f"no work found (look {empty}{of})")

    def workload_started(self, workload_id: str, workflow: str, attempt: int) -> None:
        self._workload = f"{workload_id} ({workflow})"
        self._started = time.monotonic()
        again = f", attempt {attempt}" if attempt > 1 else ""
        if not self.live:
            self._line(f"running workload {self._workload}{again}")

    def task_event(self, event: dict[str, Any]) -> None:
        elapsed = time.monotonic() - self._started
        branch = f" [branch {event['branch']}]" if event.get("branch") is not None else ""
        k, n, name = event["index"], event["total"], event["name"]
        if event["kind"] == "start":
            if self.live:
                self._status(f"{self._workload}: task {k}/{n} {name}{branch} ... {elapsed:.1f} s")
        elif not self.live:
            took = event.get("duration") or 0.0
            self._line(f"{self._workload}: task {k}/{n} {name}{branch} {event['status']} "
                       f"in {took:.3f} s")

    def workload_finished(self, status: str, detail: str = "") -> None:
        elapsed = time.monotonic() - self._started
        more = f": {detail}" if detail else ""
        self._line(f"workload {self._workload} {status} in {elapsed:.2f} s{more}")

    def skipped(self, workload_id: str, reason: str) -> None:
        self._line(f"skipped workload {workload_id}: {reason}")

    def stopping(self, cold: bool) -> None:
        if cold:
            self.error("stopping now: the running workload goes back to the queue")
        else:
            self.error("stopping after the running workload (press Ctrl-C again to stop now)")

    def close(self) -> None:
        if self.live:
            self._clear_live()
            self.stream.flush()
