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
    from caliber.queue.registry import Backend
    from caliber.queue.target import QueueTarget
    from caliber.queue.workload import Workload

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
         ended: Callable[[CheckedWorkload], None] | None = None,
         stuck: Callable[[Workload, Workload], None] | None = None) -> Waited:
    """Wait until every workload of ``ids`` (unique prefixes too) has completed, failed or
    been cancelled, or ``timeout`` seconds have passed; ``ended`` is told of each as it ends.
    A waiting workload (``--after``) has not ended: it is waited for until its chain goes on
    and it ends, or is cancelled with an upstream. ``stuck`` is told once (``downstream,
    upstream``) when a workload waited for waits for one that failed (it goes on only when
    that is retried and completes). NotFoundError (nothing waited) when an id names no
    workload."""
    from caliber.queue.api import _checker, opened

    check = _checker()
    poll = poll if poll is not None else (POLL_LOCAL if target.kind == "sqlite" else POLL_REMOTE)
    deadline = None if timeout is None else time.monotonic() + timeout
    with opened(target) as backend:
        full = list(dict.fromkeys(backend.get(i).id for i in ids))  # each found, once
        latest: dict[str, CheckedWorkload] = {}
        pending = list(full)
        removed: list[str] = []
        told: set[tuple[str, str, int]] = set()
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
                elif stuck is not None and item.workload.status.value == "waiting":
                    for upstream in _failed_upstreams(backend, item.workload):
                        seen = (workload_id, upstream.id, upstream.attempts)
                        if seen not in told:
                            told.add(seen)
                            stuck(item.workload, upstream)
            if not pending:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            pause = poll if deadline is None else min(poll, max(deadline - time.monotonic(), 0))
            time.sleep(pause)
    return Waited([latest[i] for i in full if i in latest], removed, bool(pending))


def _failed_upstreams(backend: Backend, workload: Workload) -> list[Workload]:
    """The workloads ``workload`` runs after that have failed (each read afresh)."""
    found = []
    for upstream_id in workload.after:
        try:
            upstream = backend.get(upstream_id)
        except NotFoundError:
            continue  # reset: the backend cancels the workloads after it
        if upstream.status.value == "failed":
            found.append(upstream)
    return found
