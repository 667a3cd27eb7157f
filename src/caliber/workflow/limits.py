"""Stopping a task while it runs: its time limit (``Task(timeout=SECONDS)``), and a stop asked
from outside (``caliber queue cancel --now``: SIGTERM in a pinion's child).

A task is a Python function running in this process, so it is stopped by an exception raised
in it: a signal handler runs in the main thread between two steps of Python code and raises
:class:`TaskTimeout` (the SIGALRM of :func:`time_limit`) or :class:`TaskStopped`
(:func:`stop_running_task`). Both derive from ``BaseException``, so a task's own
``except Exception`` does not swallow them. What that reaches and what it does not:

* Python code, ``time.sleep``, and waits that Python retries after a signal (``select``,
  ``subprocess.run`` waiting for its process, which it then kills): stopped at once.
* A call into C code that does not return to Python (a long numpy or solver call, a C
  extension's loop): stopped when it returns. A pinion does not wait for that: it kills the
  workload's process :data:`caliber.settings`' grace after the limit (or after SIGTERM).
* A task running outside the main thread, or where there is no SIGALRM (Windows): its limit
  is checked when it returns (it then fails, its value dropped), and a pinion kills it as
  above.

Nothing here imports threading or pydantic (a pinion's child imports it).
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Iterator

__all__ = ["TaskStopped", "TaskTimeout", "interrupt_running_task", "stop_running_task",
           "time_limit", "timeout_message"]


class TaskInterrupt(BaseException):
    """Raised in a running task to stop it; not an ``Exception``, so that a task's own
    ``except Exception`` lets it through."""


class TaskTimeout(TaskInterrupt):
    """The task ran past its time limit (``Task(timeout=...)``)."""


class TaskStopped(TaskInterrupt):
    """The task was stopped from outside while it ran (``caliber queue cancel --now``)."""


_running: list[bool] = [False]
"""Whether a task is running now (set by :func:`time_limit` around the call)."""


def timeout_message(task: str, timeout: float) -> str:
    """``task 'Solve' ran past its time limit of 3600 s``."""
    return f"task {task!r} ran past its time limit of {timeout:g} s"


def stop_running_task(reason: str) -> None:
    """From a signal handler: stop the task running now (TaskStopped with ``reason``); nothing
    when none is running (the caller also sees that no further task starts)."""
    if _running[0]:
        _running[0] = False
        raise TaskStopped(reason)


def interrupt_running_task() -> bool:
    """From a SIGINT handler: stop the task running now as Ctrl-C does (KeyboardInterrupt);
    False when none is running (a second Ctrl-C while the first is on its way out of the
    task is not raised again)."""
    if _running[0]:
        _running[0] = False
        raise KeyboardInterrupt
    return False


@contextlib.contextmanager
def time_limit(task: str, timeout: float | None) -> Iterator[None]:
    """Run the body as the running task: :func:`stop_running_task` reaches it, and with a
    ``timeout`` a SIGALRM raises TaskTimeout in it once that many seconds have passed (when
    this is the main thread and the system has SIGALRM; otherwise, and when the task swallowed
    the exception, the limit is checked when it returns). The previous SIGALRM handler is
    put back afterwards."""
    message = None if timeout is None else timeout_message(task, timeout)
    previous: object = None
    armed = False
    if message is not None and hasattr(signal, "setitimer"):

        def alarm(_signum: int, _frame: object) -> None:
            if _running[0]:
                _running[0] = False
                raise TaskTimeout(message)

        try:
            previous = signal.signal(signal.SIGALRM, alarm)
            armed = True
        except ValueError:  # not the main thread: checked when the task returns
            pass
    started = time.monotonic()
    _running[0] = True
    try:
        if armed:
            assert timeout is not None
            signal.setitimer(signal.ITIMER_REAL, max(timeout, 1e-6))
        yield
    finally:
        _running[0] = False
        if armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)  # type: ignore[arg-type]
    if message is not None and timeout is not None and time.monotonic() - started > timeout:
        raise TaskTimeout(message)  # it returned (or swallowed the alarm) past its limit


def check_timeout(value: object, what: str) -> float | None:
    """A task's time limit: None, or a number of seconds above 0 (ValueError saying what is
    wrong, naming ``what``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
            value) or value <= 0 or value > MAX_TIMEOUT:
        raise ValueError(f"{what}: timeout must be a number of seconds above 0, up to "
                         f"{MAX_TIMEOUT:g} (365 days), not {value!r}")
    return float(value)


MAX_TIMEOUT = 365 * 24 * 3600.0  # seconds: the longest time limit a task may have
