"""``caliber queue wait``: block until workloads have ended, for scripts and CI jobs.

One queue connection for the whole wait, looking again every :data:`POLL_LOCAL` seconds on
the local queue and every :data:`POLL_REMOTE` seconds on another (a look at the remote queue
reads only the versions written since the last one, through its checkpoint)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from caliber.errors import NotFoundError

if TYPE_CHECKING:
    from caliber.queue.api import CheckedWorkload
    from caliber.queue.target import QueueTarget

ENDED = ("completed", "failed", "cancelled")
POLL_LOCAL = 0.25
POLL_REMOTE = 3.0


@dataclass
class Waited:
    """How each workload ended (or stood when the time ran out), in the order asked for."""

    rows: list[CheckedWorkload] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    """Ids reset (deleted) while waited for."""
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return (not self.timed_out and not self.removed
                and all(r.workload.status.value == "completed" for r in self.rows))


def wait(ids: list[str], target: QueueTarget, *, timeout: float | None = None,
         poll: float | None = None,
         ended: Callable[[CheckedWorkload], None] | None = None) -> Waited:
    """Wait until every workload of ``ids`` (unique prefixes too) has completed, failed or
    been cancelled, or ``timeout`` seconds have passed; ``ended`` is told of each as it ends.
    NotFoundError (nothing waited) when an id names no workload."""
    from caliber.queue.api import _checker, opened

    check = _checker()
    poll = poll if poll is not None else (POLL_LOCAL if target.kind == "sqlite" else POLL_REMOTE)
    deadline = None if timeout is None else time.monotonic() + timeout
    with opened(target) as backend:
        full = list(dict.fromkeys(backend.get(i).id for i in ids))  # each found, once
        latest: dict[str, CheckedWorkload] = {}
        pending = list(full)
        removed: list[str] = []
        while True:
            for workload_id in list(pending):
                try:
                    item = check(backend.get(workload_id))
                except NotFoundError:
                    pending.remove(workload_id)
                    removed.append(workload_id)
                    continue
                latest[workload_id] = item
                if item.workload.status.value in ENDED:
                    pending.remove(workload_id)
                    if ended is not None:
                        ended(item)
            if not pending:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            pause = poll if deadline is None else min(poll, max(deadline - time.monotonic(), 0))
            time.sleep(pause)
    return Waited([latest[i] for i in full if i in latest], removed, bool(pending))
