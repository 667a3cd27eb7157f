"""How a pinion stops a workload's running task before the task ends on its own.

* ``caliber queue cancel ID --now`` (learnt at a lease renewal): the child's processes get
  SIGTERM (:meth:`~caliber.pinion.platform.ChildProcess.terminate`). The child stops its
  running task (:func:`caliber.workflow.limits.stop_running_task`), runs no further one and
  sends cancelled Results, with what the finished tasks returned and put in ``g``. One that
  has not ended ``grace`` seconds later (a task in C code, one that ignores SIGTERM) is
  killed, and the pinion makes those Results itself from the tasks that ended.
* A task's time limit (``Task(timeout=...)``): the child enforces it (SIGALRM, see
  :mod:`caliber.workflow.limits`); a task that does not return to Python by ``grace``
  seconds after its limit is killed with its process, and the workload fails with the
  timeout error naming it (the rest of the workflow, other branches too, does not run).

:class:`TaskWatch` follows the child's task events and says when either is due.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from caliber.workflow.limits import timeout_message

if TYPE_CHECKING:
    from caliber.pinion.platform import ChildProcess
    from caliber.results.model import TaskResult

CANCELLED = "Cancelled"
"""The error type of a run stopped by ``queue cancel`` (as the child's runner names it)."""
TIMEOUT = "TaskTimeout"
"""The error type of a task that ran past its time limit (as the child's runner names it)."""


@dataclass
class TaskWatch:
    """The running task as the child's events tell it, and the stops under way."""

    grace: float
    """Seconds between SIGTERM (or a task's time limit) and SIGKILL."""
    task: str | None = None
    branch: int | None = None
    timeout: float | None = None
    deadline: float | None = None
    """``time.monotonic()`` past which the running task is killed (its limit, plus grace)."""
    terminated: bool = False
    """SIGTERM was sent (``cancel --now``)."""
    kill_at: float | None = None
    """``time.monotonic()`` past which a child sent SIGTERM is killed."""

    running: dict[tuple[str, int | None], tuple[float | None, float | None]] = field(
        default_factory=dict)
    """Every task running now (several in parallel branches): its timeout and deadline."""

    def event(self, event: dict[str, Any], now: float) -> None:
        """A task event from the child (``kind`` start or end, ``name``, ``branch``,
        ``timeout``). With parallel branches several tasks run at once: the one watched is
        the one whose deadline comes first (else the one started last)."""
        key = (str(event.get("name")), event.get("branch"))
        if event.get("kind") == "start":
            limit = event.get("timeout")
            timeout = float(limit) if isinstance(limit, int | float) else None
            self.running[key] = (timeout, None if timeout is None else now + timeout + self.grace)
        else:
            self.running.pop(key, None)
        self.task = self.branch = self.timeout = self.deadline = None
        for (task, branch), (timeout, deadline) in self.running.items():
            if self.deadline is None or (deadline is not None and deadline < self.deadline):
                self.task, self.branch, self.timeout, self.deadline = (
                    task, branch, timeout, deadline)

    def terminate(self, child: ChildProcess, now: float) -> None:
        """Send SIGTERM to the child's processes (once); SIGKILL is due ``grace`` later."""
        if not self.terminated:
            self.terminated = True
            child.terminate()
            self.kill_at = now + self.grace

    def due(self, now: float, cancelled_by: str | None) -> tuple[str, str] | None:
        """``(error type, why)`` when the child must be killed now, else None."""
        task = f"task {self.task!r}" if self.task is not None else "the workload"
        if self.kill_at is not None and now >= self.kill_at:
            return CANCELLED, (f"cancelled by {cancelled_by}: {task} did not stop within "
                               f"{self.grace:g} s of SIGTERM, and was killed")
        if self.deadline is not None and now >= self.deadline and self.task is not None:
            assert self.timeout is not None
            return TIMEOUT, (f"{timeout_message(self.task, self.timeout)}; it did not stop, "
                             f"and was killed {self.grace:g} s later")
        return None


def g_of(records: Iterable[TaskResult]) -> dict[str, Any]:
    """``g`` after the tasks of ``records`` (in the order they ended), from what each one set
    and deleted: the Results a pinion makes when the child was killed keep it."""
    g: dict[str, Any] = {}
    for record in records:
        for name in record.g_deleted:
            g.pop(name, None)
        g.update(record.g_set)
    return g
