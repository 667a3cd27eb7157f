"""Chains on a SQL queue (``workflow queue --after``): which state a workload starts in, and
what finishing, cancelling or removing a workload does to those waiting after it. The rules
are :mod:`caliber.queue.backend`'s (their decisions and history lines shared with the other
backends: :mod:`caliber.queue.lifecycle`); here they are statements on the ``workload_after`` table
(one row per (workload, position): the upstream it runs after), run inside the verb's write
transaction, so a promotion or a cascade happens with the change that causes it or not at
all.

Locks (PostgreSQL; SQLite serializes its writers): ``put`` and ``retry`` lock the upstreams
they read, and a promotion locks the waiting dependents before it reads their upstreams
again, so that two upstreams completing at once, or a workload put after one completing,
never both see the other not completed and leave a dependent waiting for ever. A verb that
holds several workloads takes them in one order, by id, so that two meeting in one workload
never deadlock (a cancel and a reset cascading into one dependent, a completion and a put
after what it queues): ``cancel`` and ``reset`` take the workload with the waiting ones down
its chain in one go, ``retry`` the workload with its upstreams
(:meth:`~caliber.queue.sql.core.SqlBackend.lock_chain`), a cascade the rest of its chain
before it changes any (:meth:`~caliber.queue.sql.core.SqlBackend.lock_after`); a completion,
``fail`` and ``release`` (which cancel a workload whose cancel was asked as it ran) hold the
ones that sort before the workload before they change it. Only a workload put after one of
them in the moment between misses the order (it is held when it is met).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from caliber.queue.lifecycle import (
    restored_waiting,
    start_status,
    upstream_completed,
    upstream_ended,
    waits_for,
)
from caliber.queue.status import WorkloadStatus

if TYPE_CHECKING:
    from caliber.queue.sql.core import SqlBackend
    from caliber.queue.workload import Workload

_WAITING_AFTER = ("SELECT w.id FROM workload_after a JOIN workloads w ON w.id = a.workload "
                  "WHERE a.upstream = ? AND w.status = 'waiting'")
"""The waiting workloads that run after one upstream (index workloads_after_upstream)."""


def start(backend: SqlBackend, conn: Any, workload: Workload, *,
          retry: bool = False) -> tuple[WorkloadStatus, str | None]:
    """The status a workload starts in as it is put (or retried), by the workloads it runs
    after (:func:`caliber.queue.lifecycle.start_status`: NotFoundError or QueueStateError
    when it cannot), and the history line that says what it waits for (None: queued). Locks
    those workloads first."""
    ids = sorted(set(workload.after))
    if not ids:
        return WorkloadStatus.QUEUED, None
    found = _upstream(backend, conn, ids)
    status = start_status(workload, found, retry=retry)
    return status, (waits_for(workload, found) if status == WorkloadStatus.WAITING else None)


def _upstream(backend: SqlBackend, conn: Any, ids: list[str]) -> dict[str, WorkloadStatus]:
    """The statuses of the workloads ``ids`` (sorted) that are in the queue, locked first."""
    if not ids:
        return {}
    backend.lock_rows(conn, ids)
    return {str(wid): _status(status) for wid, status in backend.execute(
        conn, f"SELECT id, status FROM workloads WHERE id IN ({', '.join('?' * len(ids))})",
        ids)}


def _status(stored: object) -> WorkloadStatus:
    """A stored status; one damaged by hand as failed (as a damaged row reads)."""
    try:
        return WorkloadStatus(str(stored))
    except ValueError:
        return WorkloadStatus.FAILED


def link(backend: SqlBackend, conn: Any, wid: str, after: Sequence[str]) -> None:
    """Record that workload ``wid`` runs after ``after``, in that order."""
    for position, upstream in enumerate(after):
        backend.execute(conn, "INSERT INTO workload_after (workload, upstream, position) "
                        "VALUES (?, ?, ?)", (wid, upstream, position))


def promote(backend: SqlBackend, conn: Any, upstream: str) -> None:
    """Workload ``upstream`` completed: those waiting after it whose upstreams have all
    completed now are queued (their pinions told)."""
    waiting = [str(r[0]) for r in backend.execute(conn, _WAITING_AFTER, (upstream,))]
    if not waiting:
        return
    backend.lock_rows(conn, waiting)
    marks = ", ".join("?" * len(waiting))
    promoted = backend.execute(
        conn,
        f"UPDATE workloads SET status = 'queued' WHERE id IN ({marks}) AND status = 'waiting' "
        "AND NOT EXISTS (SELECT 1 FROM workload_after a LEFT JOIN workloads u "
        "ON u.id = a.upstream WHERE a.workload = workloads.id "
        "AND (u.status IS NULL OR u.status <> 'completed')) RETURNING id, pinion",
        waiting).fetchall()
    for wid, _ in promoted:
        backend.add_history(conn, wid, (WorkloadStatus.QUEUED, upstream_completed(upstream)))
    for pinion in dict.fromkeys(p for _, p in promoted):
        backend.notify(conn, pinion)


def restored(backend: SqlBackend, conn: Any, workload: Workload) -> None:
    """Workload ``workload`` was restored just now (``queue import``): it goes on with the
    chains as this queue stands, as if it had ended, or been put, here. Completed: those
    waiting after it whose upstreams have all completed are queued; cancelled: those waiting
    after it are cancelled, down the chain; waiting: it is queued when every workload it runs
    after has completed here, cancelled when one is cancelled
    (:func:`caliber.queue.lifecycle.restored_waiting`)."""
    if workload.status == WorkloadStatus.COMPLETED:
        promote(backend, conn, workload.id)
    elif workload.status == WorkloadStatus.CANCELLED:
        cascade(backend, conn, workload.id, "cancelled")
    elif workload.status == WorkloadStatus.WAITING:
        change = restored_waiting(workload, _upstream(backend, conn, sorted(set(workload.after))))
        if change is None:
            return
        status, line = change
        if status == WorkloadStatus.CANCELLED:
            backend.execute(conn, "UPDATE workloads SET status = 'cancelled', last_error = ?, "
                            f"untold = {backend.UNTOLD} WHERE id = ?", (line, workload.id))
        else:
            backend.execute(conn, "UPDATE workloads SET status = 'queued' WHERE id = ?",
                            (workload.id,))
        backend.add_history(conn, workload.id, (status, line))
        if status == WorkloadStatus.CANCELLED:
            cascade(backend, conn, workload.id, "cancelled")
        else:
            backend.notify(conn, workload.pinion)


def cascade(backend: SqlBackend, conn: Any, upstream: str, how: str) -> list[str]:
    """Workload ``upstream`` was cancelled (``how``: "cancelled") or reset ("reset"): those
    waiting after it are cancelled ("upstream X was cancelled"), and so on down the chain,
    each naming the one it ran after, each an end no pinion was there to tell of (its
    ``untold`` number). The ids cancelled."""
    try:
        upstream.encode()
    except UnicodeEncodeError:  # an id damaged by hand (not UTF-8): nothing can run after it
        return []
    backend.lock_after(conn, upstream)
    gone: list[str] = []
    frontier = [(upstream, how)]
    while frontier:
        following = []
        for above, what in frontier:
            reason = upstream_ended(above, what)
            cancelled = backend.execute(
                conn,
                f"UPDATE workloads SET status = 'cancelled', last_error = ?, untold = "
                f"{backend.UNTOLD} WHERE status = 'waiting' AND id IN (SELECT workload FROM "
                "workload_after WHERE upstream = ?) RETURNING id", (reason, above)).fetchall()
            for (wid,) in cancelled:
                backend.add_history(conn, wid, (WorkloadStatus.CANCELLED, reason))
                following.append((str(wid), "cancelled"))
                gone.append(str(wid))
        frontier = following
    return gone
