"""The verbs of a SQL queue, written once (as huey's ``BaseSqlStorage`` holds its queue's SQL
once): :class:`SqlBackend` is every verb of :class:`caliber.queue.backend.QueueBackend` and
:class:`caliber.results.store.ResultsStore` over the tables ``workloads``,
``workload_history``, ``results`` and ``blob_refs``, which both SQL queues lay out alike.

A dialect (:class:`caliber.queue.sqlite.backend.SQLiteBackend`,
:class:`caliber.queue.postgres.backend.PostgresBackend`) supplies what differs: its
connection and transactions, how a statement written here with ``?`` placeholders runs
(:meth:`SqlBackend.execute`), the claim and expiry statements, row locks, the JSON of a
workload's resume grant, the list of what a workload runs after, the numbers of untold
ends, waking idle pinions, its content store and prune. Chains (``workload_after``) are
:mod:`caliber.queue.sql.chains`.

A workload that ends with no pinion there (cancelled while queued or waiting, down a chain,
failed by :meth:`SqlBackend.expire`) gets a number in its column ``untold``
(:attr:`SqlBackend.UNTOLD`: greater than every number stored), in the statement that ends
it; :meth:`SqlBackend.take_ended` takes those of a pinion in that order (then by id) and
sets it back to NULL, as :meth:`SqlBackend.retry` does. NULL is "nothing to tell": a
workload a pinion ends itself never gets a number (its ``complete`` and ``fail`` write
nothing more), nor does one restored, nor any that had ended before the column was added.

Every write is one short transaction (:meth:`SqlBackend.transaction`); a verb that reads a
row before changing it locks it first (:meth:`SqlBackend.lock_row`: a no-op where the
dialect's write transactions are serialized already, as SQLite's ``BEGIN IMMEDIATE`` are).
The pydantic models are imported only by the verbs that build them:
:meth:`SqlBackend.list_summaries` (``caliber queue list``) reads plain rows.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

from caliber.errors import (
    AmbiguousIdError,
    LeaseLostError,
    NotFoundError,
    QueueError,
    QueueStateError,
)
from caliber.queue.backend import IdleWait
from caliber.queue.lifecycle import (
    ResumeGrant,
    cancel_asked,
    cancelled,
    check_cancel,
    check_retry,
    ending,
    retried,
)
from caliber.queue.sql import chains, refs
from caliber.queue.sql import rows as R
from caliber.queue.status import WorkloadStatus
from caliber.queue.summary import StoredSummary

if TYPE_CHECKING:
    from caliber.queue.backend import Claim
    from caliber.queue.workload import HistoryEntry, Workload
    from caliber.results.model import Results

NO_LEASE = "lease_owner = NULL, lease_token = NULL, lease_expires = NULL"
# Add a key id to the space-separated marks of keys found not to match (see
# caliber.queue.secret.add_mismatch); {has} is the dialect's test that the marks hold it.
_ADD_MARK = ("secret_mismatch = CASE WHEN CAST(? AS TEXT) IS NULL THEN secret_mismatch"
             " WHEN secret_mismatch IS NULL OR secret_mismatch = '' THEN ?"
             " WHEN {has} THEN secret_mismatch ELSE secret_mismatch || ' ' || ? END")


def stored_already(claim: Claim, exc: Exception) -> QueueError:
    """A complete whose Results id is stored already."""
    return QueueError(f"cannot store the results of workload {claim.workload.id}: {exc}")


def claimed(owner: str, attempts: int) -> str:
    """The history line of a claim (the PostgreSQL claim writes it in SQL: CLAIMED_LINE)."""
    return f"claimed by {owner} (attempt {attempts})"


def lease_lost(claim: Claim) -> LeaseLostError:
    return LeaseLostError(f"workload {claim.workload.id} is no longer held by {claim.owner} "
                          "(its lease ran out and another pinion took it, or it was reset)")


class SqlBackend(IdleWait):
    """A SQL queue (see :class:`caliber.queue.backend.QueueBackend` for the verbs); a dialect
    subclasses it and fills in the hooks below."""

    # --- the dialect ----------------------------------------------------------------------

    NO_LIMIT: ClassVar[object] = -1
    """What ``LIMIT ?`` takes for "no limit"."""
    HISTORY_ORDER: ClassVar[str] = "rowid"
    """The column that orders a workload's history rows as they were written."""
    MARKED: ClassVar[str] = ""
    """A condition with one ``?``: whether the space-separated ``secret_mismatch`` holds it."""
    INTEGRITY_ERRORS: tuple[type[Exception], ...] = ()
    """The driver's errors for a broken constraint (a duplicate id)."""
    AFTER_IDS: ClassVar[str] = "NULL"
    """An expression of a workload row (table ``workloads``): the JSON array (text) of the
    ids it runs after, from ``workload_after`` in order (:func:`.rows.reading`)."""
    UNTOLD: ClassVar[str] = "NULL"
    """An expression: the number of an end no pinion was there to tell of (column
    ``untold``), greater than every number stored (ties are taken in id order)."""

    location: str
    conn: Any

    def __init__(self) -> None:
        self._lock = threading.RLock()  # one connection, shared by the pinion's threads
        self._writer = secrets.token_hex(8)  # owner of this process's pending blob references

    def transaction(self) -> AbstractContextManager[Any]:
        """One write transaction (nested ones join it); yields the connection."""
        raise NotImplementedError

    def reading(self) -> AbstractContextManager[Any]:
        """A read of several statements from one snapshot; yields the connection."""
        raise NotImplementedError

    def single_write(self) -> AbstractContextManager[Any]:
        """A write of one statement, a transaction by itself; yields the connection. The
        default is :meth:`transaction` (PostgreSQL sends the statement alone: one round trip
        where ``BEGIN`` and ``COMMIT`` would make three)."""
        return self.transaction()

    def single_read(self) -> AbstractContextManager[Any]:
        """A read of one statement; yields the connection (:meth:`reading` by default)."""
        return self.reading()

    def execute(self, conn: Any, sql: str, params: Any = ()) -> Any:
        """Run one statement written with ``?`` placeholders; a cursor."""
        return conn.execute(sql, params)

    def fetch(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        """The rows of one read on :attr:`conn` (the caller holds the lock)."""
        rows: list[tuple[Any, ...]] = self.execute(self.conn, sql, params).fetchall()
        return rows

    def bind_id(self, wid: str) -> object:
        """A workload id as it is bound to ``CAST(? AS TEXT)``."""
        return wid

    def set_grant(self, conn: Any, wid: str, grant: ResumeGrant | None, *,
                  resuming: str | None = None) -> None:
        """Inside a write transaction: set the resume of workload ``wid`` (in its ``body``:
        resume_from, resume_signature, resume_grant; JSON null when ``grant`` is None); with
        ``resuming``, only while it resumes from those Results."""
        raise NotImplementedError

    def lock_row(self, conn: Any, wid: str) -> None:
        """Inside a write transaction: hold workload ``wid`` until it ends."""

    def lock_rows(self, conn: Any, ids: Sequence[str]) -> None:
        """Inside a write transaction: hold these workloads until it ends (in id order, as
        every verb takes several)."""
        for wid in sorted(ids):
            self.lock_row(conn, wid)

    def lock_chain(self, conn: Any, wid: str, *, up: bool = False, down: bool = False) -> None:
        """Inside a write transaction: hold workload ``wid`` and, with ``up``, those it runs
        after, with ``down``, the waiting ones after it, down the chain: all in id order, in
        one go (:mod:`caliber.queue.sql.chains` says why). By default ``wid`` alone."""
        self.lock_row(conn, wid)

    def lock_after(self, conn: Any, wid: str) -> None:
        """Inside a write transaction: hold the waiting workloads after ``wid``, down the
        chain, in id order, before a cascade changes them. By default nothing (a dialect
        whose write transactions are serialized already)."""

    @property
    def columns(self) -> str:
        """The columns a workload row is read with (:func:`caliber.queue.sql.rows.workload`)."""
        return R.reading(R.COLUMNS, self.AFTER_IDS)

    def notify(self, conn: Any, pinion: str) -> None:
        """Inside a write transaction: a workload of ``pinion`` became claimable (sent when
        the transaction commits)."""

    def claim_row(self, conn: Any, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """Inside a write transaction: take the claimable workload of the highest priority,
        the oldest among equals (the columns of :attr:`columns`), or None. ``params``: owner,
        token, expires, pinion, now (unix seconds), start (``now`` as stored times are:
        queued workloads whose ``not_before`` is later are not claimable), key_id."""
        raise NotImplementedError

    def take(self, params: dict[str, Any]) -> Workload | None:
        """In one transaction: take the claimable workload (:meth:`claim_row`, ``params`` as
        it says) and note the claim in its history (:func:`claimed`); None when there is none.
        A dialect may do it in fewer round trips."""
        with self.transaction() as conn:
            row = self.claim_row(conn, params)
            if row is None:
                return None
            workload = R.workload(row)
            self.add_history(conn, workload.id, (
                WorkloadStatus.RUNNING, claimed(params["owner"], workload.attempts)))
        return workload

    def expiring(self, now: float, max_attempts: int) -> bool:
        """Whether a running workload's lease ran out after ``max_attempts`` (a cheap read)."""
        raise NotImplementedError

    def expire_rows(self, conn: Any, now: float, max_attempts: int) -> list[tuple[str, str]]:
        """Inside a write transaction: fail those workloads; their (id, last_error)."""
        raise NotImplementedError

    def sweep(self, conn: Any, only: Iterable[str]) -> tuple[int, int]:
        """Inside a write transaction: remove those of the blobs ``only`` that nothing refers
        to; (blobs, bytes) removed."""
        raise NotImplementedError

    def take_untold(self, conn: Any, pinion: str, limit: int) -> list[tuple[Any, ...]]:
        """Inside a write transaction: the rows (the columns of :attr:`columns`) of the
        workloads of ``pinion`` with the smallest ``untold`` numbers, at most ``limit``, in
        that order (then by id), their number set back to NULL. This one reads them, then
        marks the same ones: right where write transactions are serialized (SQLite's);
        where they are not, the dialect takes them in one statement that passes over rows
        another caller holds."""
        picked = ("FROM workloads WHERE pinion = ? AND untold IS NOT NULL "
                  "ORDER BY untold, id LIMIT ?")
        found = self.fetch(f"SELECT {self.columns} {picked}", (pinion, limit))
        self.execute(conn, f"UPDATE workloads SET untold = NULL WHERE id IN (SELECT id "
                     f"{picked})", (pinion, limit))
        return found

    # --- shared helpers -------------------------------------------------------------------

    def _run(self, conn: Any) -> refs.Execute:
        return lambda sql, params: self.execute(conn, sql, params)

    def resolve_id(self, table: str, id_or_prefix: str, what: str) -> str:
        """The full id for an id or unique prefix (NotFoundError, AmbiguousIdError)."""
        prefix = id_or_prefix.strip().lower()
        if not prefix:
            raise NotFoundError(f"no {what} id given")
        found = self.fetch(
            f"SELECT id FROM {table} WHERE id >= ? AND id < ? ORDER BY id LIMIT 21",
            (prefix, prefix + "\uffff"))
        ids = [r[0] for r in found]
        if prefix in ids:
            return prefix
        if not ids:
            raise NotFoundError(f"no {what} with id {id_or_prefix!r}")
        if len(ids) > 1:
            raise AmbiguousIdError(id_or_prefix, ids)
        return str(ids[0])

    def refer_blobs(self, conn: Any, kind: str, owner: str, shas: Iterable[str]) -> None:
        """Inside a write transaction: ``owner`` (a ``workload`` or ``results`` id) refers to
        these blobs, which prune keeps while it does (call it where Results that refer to
        blobs are inserted)."""
        refs.refer(self._run(conn), kind, owner, shas, self._writer)

    def _locked(self, conn: Any, id_or_prefix: str, *, up: bool = False,
                down: bool = False) -> Workload:
        """Inside a write transaction: the workload, held until the transaction ends (with
        those it runs after or the waiting ones after it: :meth:`lock_chain`)."""
        full = self.resolve_id("workloads", id_or_prefix, "workload")
        self.lock_chain(conn, full, up=up, down=down)
        return self.get(id_or_prefix)  # as given: a damaged id read back is not bindable text

    # --- workloads ------------------------------------------------------------------------

    def put(self, workload: Workload) -> None:
        """See :meth:`QueueBackend.put`: a workload that runs after others not all completed
        is put waiting (:func:`caliber.queue.sql.chains.start`)."""
        from caliber.queue.workload import HistoryEntry

        def first(conn: Any) -> tuple[WorkloadStatus, list[HistoryEntry]]:
            status, waiting = chains.start(self, conn, workload)
            message = f"queued by {workload.queued_by or '?'}"
            if waiting:
                message += f"; {waiting}"
            return status, workload.history or [
                HistoryEntry(at=workload.created_at, status=status, message=message)]

        self._insert(workload, first)

    def restore(self, workload: Workload) -> None:
        """See :meth:`caliber.queue.backend.QueueBackend.restore`: a workload's status,
        attempts, history, Results id and what it runs after are kept as they are (the
        workloads it runs after need not be in this queue), then the chains go on from there
        in the same transaction (:func:`caliber.queue.sql.chains.restored`)."""
        from caliber.queue.workload import HistoryEntry

        history = workload.history or [
            HistoryEntry(at=workload.created_at, status=workload.status,
                         message=f"queued by {workload.queued_by or '?'}")]
        self._insert(workload, lambda conn: (workload.status, history),
                     then=lambda conn: chains.restored(self, conn, workload))

    def _insert(self, workload: Workload,
                first: Callable[[Any], tuple[WorkloadStatus, list[HistoryEntry]]], *,
                then: Callable[[Any], None] | None = None) -> None:
        """Insert ``workload`` in one transaction, with the status and history ``first(conn)``
        gives (called inside it, before the insert); ``then(conn)`` after it, inside it."""
        lease = workload.lease
        try:
            with self.transaction() as conn:
                status, history = first(conn)
                self.execute(
                    conn,
                    f"INSERT INTO workloads ({R.COLUMNS}) VALUES ({', '.join('?' * 18)})",
                    (
                        workload.id, workload.pinion, workload.workflow_name,
                        status.value, R.iso(workload.created_at), workload.attempts,
                        lease.owner if lease else None, lease.token if lease else None,
                        lease.expires_at.timestamp() if lease else None, workload.secret,
                        workload.secret_mismatch, workload.results_id, workload.last_error,
                        workload.work_dir, R.body(workload),
                        None if workload.not_before is None else R.iso(workload.not_before),
                        workload.priority, workload.notify,
                    ),
                )
                chains.link(self, conn, workload.id, workload.after)
                self.add_history(conn, workload.id, *((h.status, h.message) for h in history),
                                 at=[h.at for h in history])
                self.refer_blobs(conn, "workload", workload.id, R.stored(workload))
                if status == WorkloadStatus.QUEUED:
                    self.notify(conn, workload.pinion)
                if then is not None:
                    then(conn)
        except self.INTEGRITY_ERRORS as exc:
            raise QueueError(f"cannot queue workload {workload.id}: {exc}") from exc

    def get(self, id_or_prefix: str) -> Workload:
        with self.reading():
            full = self.resolve_id("workloads", id_or_prefix, "workload")
            found = self.fetch(f"SELECT {self.columns} FROM workloads WHERE id = "
                               "CAST(? AS TEXT)", (self.bind_id(full),))
            if not found:
                raise NotFoundError(f"no workload with id {id_or_prefix!r}")
            return self._with_history([R.workload(found[0])])[0]

    def list_workloads(
        self,
        *,
        pinion: str | None = None,
        status: WorkloadStatus | None = None,
        limit: int | None = None,
        offset: int = 0,
        workflow: str | None = None,
    ) -> list[Workload]:
        with self.reading():
            found = self._page(self.columns, pinion, status, limit, offset, workflow)
            return self._with_history([R.workload(r) for r in found])

    def list_summaries(
        self,
        *,
        pinion: str | None = None,
        status: WorkloadStatus | None = None,
        limit: int | None = None,
        offset: int = 0,
        workflow: str | None = None,
    ) -> list[StoredSummary]:
        with self.reading():
            found = self._page(R.reading(R.SUMMARY_COLUMNS, self.AFTER_IDS), pinion, status,
                               limit, offset, workflow)
        return [R.summary(row) for row in found]

    def list_ended(self, limit: int) -> list[Workload]:
        """See :meth:`QueueBackend.list_ended`: the last history rows that are ends, newest
        first, ties the later written first (index workload_history_ended: the walk stops
        after ``limit`` of them, passing over only the earlier ends of workloads retried or
        re-signed since)."""
        if limit <= 0:
            return []
        order = self.HISTORY_ORDER
        with self.reading():
            found = self.fetch(
                f"SELECT {self.columns} FROM (SELECT h.workload_id AS ended_id, h.at AS "
                f"ended_at, h.{order} AS ended_seq FROM workload_history h "
                f"WHERE h.status IN {R.ENDED} AND NOT EXISTS (SELECT 1 FROM workload_history "
                f"l WHERE l.workload_id = h.workload_id AND l.{order} > h.{order}) "
                f"ORDER BY h.at DESC, h.{order} DESC LIMIT ?) AS ends "
                f"JOIN workloads ON workloads.id = ends.ended_id "
                f"WHERE workloads.status IN {R.ENDED} "
                f"ORDER BY ends.ended_at DESC, ends.ended_seq DESC", (limit,))
            return self._with_history([R.workload(r) for r in found])

    def _page(self, columns: str, pinion: str | None, status: WorkloadStatus | None,
              limit: int | None, offset: int, workflow: str | None = None
              ) -> list[tuple[Any, ...]]:
        """One page of workload rows, oldest first (inside :meth:`reading`)."""
        where, params = self._filters(
            pinion=pinion, status=WorkloadStatus(status).value if status else None,
            workflow_name=workflow,
        )
        return self.fetch(
            f"SELECT {columns} FROM workloads {where} ORDER BY created_at LIMIT ? OFFSET ?",
            (*params, self.NO_LIMIT if limit is None else limit, offset),
        )

    def claim(self, pinion: str, owner: str, lease_seconds: float, key_id: str) -> Claim | None:
        from caliber.queue.backend import Claim

        token = secrets.token_hex(16)
        now = time.time()
        params = {"owner": owner, "token": token, "expires": now + lease_seconds,
                  "pinion": pinion, "now": now, "start": R.iso(R.from_unix(now)),
                  "key_id": key_id}
        workload = self.take(params)
        if workload is None:
            return None
        return Claim(workload=workload, owner=owner, token=token,
                     expires_at=R.from_unix(now + lease_seconds))

    def renew(self, claim: Claim, lease_seconds: float, *,
              progress: dict[str, Any] | None = None) -> Claim:
        """See :meth:`QueueBackend.renew`; ``progress`` is not kept (the run folder's progress
        file is on the pinion's machine)."""
        expires = time.time() + lease_seconds
        with self.single_write() as conn:
            asked, now = self._asked(conn, claim, "lease_expires = ?", (expires,))
        return replace(claim, expires_at=R.from_unix(expires), cancel_requested=asked,
                       cancel_now=now)

    def peek_cancel(self, claim: Claim) -> Claim:
        """See :meth:`QueueBackend.peek_cancel`: one read of the row by its key, no write."""
        with self.single_read():
            found = self.fetch(
                "SELECT cancel_requested, cancel_now FROM workloads WHERE id = ? AND "
                "lease_token = ? AND status = 'running'", (claim.workload.id, claim.token))
        if not found:
            raise lease_lost(claim)
        row = found[0]
        if row[0] is None:
            return claim
        return replace(claim, cancel_requested=str(row[0]), cancel_now=bool(row[1]))

    def release(self, claim: Claim, *, reason: str, mismatch_key_id: str | None = None) -> None:
        with self.transaction() as conn:
            self.lock_chain(conn, claim.workload.id, down=True)  # cancelled, if it was asked
            asked = self._held(
                conn, claim,
                "status = 'queued', attempts = CASE WHEN attempts > 0 THEN attempts - 1 "
                f"ELSE 0 END, {NO_LEASE}, {_ADD_MARK.format(has=self.MARKED)}",
                (mismatch_key_id,) * 4,
            )
            self.add_history(conn, claim.workload.id, (
                WorkloadStatus.QUEUED, f"released by {claim.owner}: {reason}"))
            if not self._cancel_if_asked(conn, claim.workload.id, asked):
                self.notify(conn, claim.workload.pinion)

    def complete(self, claim: Claim, results: Results) -> None:
        results, end = ending(claim, results)
        try:
            with self.transaction() as conn:
                self._held(
                    conn, claim,
                    f"status = ?, results_id = ?, last_error = ?, work_dir = ?, {NO_LEASE}",
                    (end.status.value, results.id, end.error, results.work_dir),
                )
                self.insert_results(conn, results)
                self.add_history(conn, claim.workload.id, (end.status, end.message))
                self.ended(conn, claim.workload.id, end.status)
        except self.INTEGRITY_ERRORS as exc:
            raise stored_already(claim, exc) from exc

    def ended(self, conn: Any, workload_id: str, status: WorkloadStatus) -> None:
        """Inside the write transaction of :meth:`complete`: a completed workload queues
        those waiting after it whose upstreams have all completed now, a cancelled one
        cancels them (:mod:`caliber.queue.sql.chains`)."""
        if status == WorkloadStatus.COMPLETED:
            chains.promote(self, conn, workload_id)
        elif status == WorkloadStatus.CANCELLED:
            chains.cascade(self, conn, workload_id, "cancelled")

    def fail(self, claim: Claim, reason: str, *, retry: bool) -> None:
        status = WorkloadStatus.QUEUED if retry else WorkloadStatus.FAILED
        with self.transaction() as conn:
            self.lock_chain(conn, claim.workload.id, down=True)  # cancelled, if it was asked
            asked = self._held(conn, claim, f"status = ?, last_error = ?, {NO_LEASE}",
                               (status.value, reason))
            message = f"attempt failed: {reason}" + ("; queued again" if retry else "")
            self.add_history(conn, claim.workload.id, (status, message))
            if not self._cancel_if_asked(conn, claim.workload.id, asked) and retry:
                self.notify(conn, claim.workload.pinion)

    def _cancel_if_asked(self, conn: Any, workload_id: str, asked: str | None) -> bool:
        """A workload cancelled while it ran is not queued again when its run ends without
        Results (put back, a failed attempt with attempts left): it is cancelled (its pinion
        is there: no ``untold`` number; those cancelled down its chain get one). Whether it
        was."""
        if asked is not None and self.execute(
                conn, "UPDATE workloads SET status = 'cancelled', last_error = ? WHERE id = ? "
                "AND status = 'queued' RETURNING id", (cancelled(asked), workload_id)
        ).fetchone():
            self.add_history(conn, workload_id, (WorkloadStatus.CANCELLED, cancelled(asked)))
            chains.cascade(self, conn, workload_id, "cancelled")
            return True
        return False

    def expire(self, max_attempts: int) -> list[str]:
        now = time.time()
        with self._lock:  # a pinion calls this before every claim: nothing to do, no write
            if not self.expiring(now, max_attempts):
                return []
        with self.transaction() as conn:
            found = self.expire_rows(conn, now, max_attempts)
            for wid, error in found:
                self.add_history(conn, wid, (WorkloadStatus.FAILED, error))
        return [r[0] for r in found]

    def reset(self, id_or_prefix: str, *, force: bool = False) -> Workload:
        with self.transaction() as conn:
            workload = self._locked(conn, id_or_prefix, down=True)
            if workload.status == WorkloadStatus.RUNNING and not force:
                holder = workload.lease.owner if workload.lease else "a pinion"
                raise QueueStateError(
                    f"workload {workload.id} is running (held by {holder}); "
                    "stop the pinion first or use --force"
                )
            self.execute(conn, "DELETE FROM workloads WHERE id = CAST(? AS TEXT)",
                         (self.bind_id(workload.id),))
            chains.cascade(self, conn, workload.id, "reset")
        with self.transaction() as conn:  # its blobs nothing else refers to (after: never
            self.sweep(conn, R.stored(workload))  # one it still has)
        return workload

    def resetsecret(self, id_or_prefix: str, secret: str, key_id: str, *,
                    resume: ResumeGrant | None = None) -> Workload:
        with self.transaction() as conn:
            full = self.resolve_id("workloads", id_or_prefix, "workload")
            self.lock_row(conn, full)
            self.execute(
                conn, "UPDATE workloads SET secret = ?, secret_mismatch = NULL WHERE id = ?",
                (secret, full),
            )
            if resume is not None:  # the grant made again, for the Results it resumes now
                self.set_grant(conn, full, resume, resuming=resume.results_id)
            self.add_history(conn, full, (None, f"signed again with key {key_id}"))
            workload = self.get(full)
            if workload.status == WorkloadStatus.QUEUED:
                self.notify(conn, workload.pinion)
            return workload

    def cancel(self, id_or_prefix: str, by: str, *, now: bool = False) -> Workload:
        with self.transaction() as conn:
            workload = self._locked(conn, id_or_prefix, down=True)
            check_cancel(workload)
            lease = workload.lease
            if workload.status in (WorkloadStatus.QUEUED, WorkloadStatus.WAITING) or (
                    lease is not None and lease.expires_at.timestamp() < time.time()):
                self.execute(conn, f"UPDATE workloads SET status = 'cancelled', {NO_LEASE}, "
                             f"untold = {self.UNTOLD}, last_error = ? WHERE id = ?",
                             (cancelled(by), workload.id))
                self.add_history(conn, workload.id, (WorkloadStatus.CANCELLED, cancelled(by)))
                chains.cascade(self, conn, workload.id, "cancelled")
            else:
                self.execute(conn, "UPDATE workloads SET cancel_requested = ?, cancel_now = "
                             "CASE WHEN ? THEN 1 ELSE cancel_now END WHERE id = ?",
                             (by, now, workload.id))
                self.add_history(conn, workload.id, (None, cancel_asked(by, now)))
            return self.get(workload.id)

    def retry(self, id_or_prefix: str, by: str, *,
              resume: ResumeGrant | None = None) -> Workload:
        with self.transaction() as conn:
            workload = self._locked(conn, id_or_prefix, up=True)
            grant = check_retry(workload, resume)
            status, waiting = chains.start(self, conn, workload, retry=True)
            self.execute(
                conn,
                f"UPDATE workloads SET status = ?, attempts = 0, {NO_LEASE}, "
                "last_error = NULL, cancel_requested = NULL, cancel_now = NULL, "
                "secret_mismatch = NULL, untold = NULL WHERE id = ?", (status.value, workload.id))
            self.set_grant(conn, workload.id, grant)
            message = retried(by, grant.results_id if grant else None)
            self.add_history(conn, workload.id, (status, message + (
                f"; {waiting}" if waiting else "")))
            if status == WorkloadStatus.QUEUED:
                self.notify(conn, workload.pinion)
            return self.get(workload.id)

    def count_statuses(self, *, pinion: str | None = None,
                       workflow: str | None = None) -> dict[str, int]:
        where, params = self._filters(pinion=pinion, workflow_name=workflow)
        with self.reading():
            found = self.fetch(
                f"SELECT status, count(*) FROM workloads {where} GROUP BY status", params)
        return {str(status): int(n) for status, n in found}

    def take_ended(self, pinion: str, limit: int = 100) -> list[Workload]:
        """See :meth:`QueueBackend.take_ended`. A pinion asks often: nothing to tell is one
        read of the index workloads_untold and no write; else one write transaction
        (:meth:`take_untold`)."""
        if limit <= 0:
            return []
        with self.single_read():
            if not self.fetch("SELECT 1 FROM workloads WHERE pinion = ? AND untold IS NOT NULL"
                              " LIMIT 1", (pinion,)):
                return []
        with self.transaction() as conn:
            return self._with_history([R.workload(r)
                                       for r in self.take_untold(conn, pinion, limit)])

    def next_start(self, pinion: str) -> dt.datetime | None:
        """See :meth:`QueueBackend.next_start` (index workloads_starts)."""
        with self.single_read():
            found = self.fetch(
                "SELECT min(not_before) FROM workloads WHERE pinion = ? AND status = 'queued' "
                "AND not_before IS NOT NULL AND not_before > ?",
                (pinion, R.iso(dt.datetime.now(dt.UTC))))
        try:
            return R.start_time(found[0][0]) if found else None
        except ValueError:  # edited by hand: it is not claimable either, so it starts never
            return None

    def _held(self, conn: Any, claim: Claim, assignments: str,
              params: tuple[Any, ...]) -> str | None:
        """Update the claimed row only while ``claim`` holds it; LeaseLostError otherwise.
        Returns who asked to cancel it, if anyone."""
        return self._asked(conn, claim, assignments, params)[0]

    def _asked(self, conn: Any, claim: Claim, assignments: str,
               params: tuple[Any, ...]) -> tuple[str | None, bool]:
        """:meth:`_held`, with whether the cancel asked was ``--now``."""
        row = self.execute(
            conn,
            f"UPDATE workloads SET {assignments} WHERE id = ? AND lease_token = ? "
            "AND status = 'running' RETURNING cancel_requested, cancel_now",
            (*params, claim.workload.id, claim.token),
        ).fetchone()
        if row is None:
            raise lease_lost(claim)
        return (None, False) if row[0] is None else (str(row[0]), bool(row[1]))

    def add_history(
        self,
        conn: Any,
        workload_id: str,
        *entries: tuple[WorkloadStatus | None, str],
        at: Sequence[dt.datetime] = (),
    ) -> None:
        """History rows; a None status means "unchanged" (the row's current status)."""
        now = dt.datetime.now(dt.UTC)
        for i, (status, message) in enumerate(entries):
            self.execute(
                conn,
                "INSERT INTO workload_history (workload_id, at, status, message) VALUES "
                "(?, ?, COALESCE(CAST(? AS TEXT), (SELECT status FROM workloads WHERE id = ?)),"
                " ?)",
                (workload_id, R.iso(at[i] if i < len(at) else now),
                 status.value if status else None, workload_id, message),
            )

    def _with_history(self, workloads: list[Workload]) -> list[Workload]:
        from caliber.queue.workload import HistoryEntry
        by_id = {w.id: w for w in workloads if w.damaged is None}
        ids = list(by_id)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            found = self.fetch(
                "SELECT workload_id, at, status, message FROM workload_history WHERE workload_id"
                f" IN ({', '.join('?' * len(chunk))}) ORDER BY {self.HISTORY_ORDER}",
                chunk,
            )
            for wid, at, status, message in found:
                try:
                    entry = HistoryEntry(at=dt.datetime.fromisoformat(at),
                                         status=WorkloadStatus(status), message=message)
                except (TypeError, ValueError):  # a damaged history row: left out
                    continue
                by_id[wid].history.append(entry)
        return workloads

    # --- results --------------------------------------------------------------------------

    def insert_results(self, conn: Any, results: Results) -> None:
        self.execute(
            conn,
            "INSERT INTO results (id, workload_id, workflow, pinion, status, finished_at, body)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            R.results_row(results),
        )
        self.refer_blobs(conn, "results", results.id, results.blobs)  # kept while they are

    def save_results(self, results: Results) -> None:
        try:
            with self.transaction() as conn:
                self.insert_results(conn, results)
        except self.INTEGRITY_ERRORS as exc:  # the one key it can break: the id
            raise QueueError(
                f"cannot store results {results.id}: they are stored already") from exc

    def get_results(self, id_or_prefix: str) -> Results:
        with self.reading():
            full = self.resolve_id("results", id_or_prefix, "results")
            found = self.fetch(f"SELECT {R.RESULTS_COLUMNS} FROM results WHERE id = ?", (full,))
        if not found:
            raise NotFoundError(f"no results with id {id_or_prefix!r}")
        return R.results(found[0])

    def find_results(
        self,
        *,
        workload_id: str | None = None,
        workflow: str | None = None,
        pinion: str | None = None,
    ) -> Results | None:
        where, params = self._filters(workload_id=workload_id, workflow=workflow, pinion=pinion)
        with self.reading():
            found = self.fetch(
                f"SELECT {R.RESULTS_COLUMNS} FROM results {where} "
                "ORDER BY finished_at DESC LIMIT 1", params)
        return R.results(found[0]) if found else None

    def list_results(
        self,
        *,
        workflow: str | None = None,
        pinion: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Results]:
        where, params = self._filters(workflow=workflow, pinion=pinion)
        with self.reading():
            found = self.fetch(
                f"SELECT {R.RESULTS_COLUMNS} FROM results {where} "
                "ORDER BY finished_at DESC LIMIT ? OFFSET ?",
                (*params, self.NO_LIMIT if limit is None else limit, offset),
            )
        return [R.results(r) for r in found]

    @staticmethod
    def _filters(**filters: str | None) -> tuple[str, tuple[str, ...]]:
        given = {k: v for k, v in filters.items() if v is not None}
        if not given:
            return "", ()
        return "WHERE " + " AND ".join(f"{k} = ?" for k in given), tuple(given.values())
