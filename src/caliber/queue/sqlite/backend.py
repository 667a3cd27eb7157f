"""The embedded local queue and results store: one SQLite file.

WAL mode and a busy timeout let any number of pinions and CLI commands share the file; every
write is one short ``BEGIN IMMEDIATE`` transaction, and claiming is one atomic
``UPDATE ... RETURNING``. ``synchronous=NORMAL`` in WAL mode survives a crashed process (a
power cut may lose the last transactions, never corrupt the file).

The pydantic models (Workload, Results) are imported only by the verbs that build them:
:meth:`SQLiteBackend.list_summaries` (``caliber queue list``) reads plain rows and stays fast.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from caliber.errors import (
    AmbiguousIdError,
    LeaseLostError,
    NotFoundError,
    QueueError,
    QueueStateError,
)
from caliber.queue.blobs import BlobRef, FolderBlobStore
from caliber.queue.lifecycle import (
    ResumeGrant,
    cancel_asked,
    cancelled,
    check_cancel,
    check_retry,
    retried,
)
from caliber.queue.sqlite import blobs as sqlite_blobs
from caliber.queue.sqlite.schema import blob_folder, connect, queue_error
from caliber.queue.sqlite.schema import iso as _iso
from caliber.queue.status import WorkloadStatus
from caliber.queue.summary import StoredSummary

if TYPE_CHECKING:
    from caliber.queue.backend import Claim
    from caliber.queue.target import QueueTarget
    from caliber.queue.workload import Workload
    from caliber.results.model import Results
    from caliber.results.pruned import Pruned

_COLUMNS = (
    "id, pinion, workflow_name, status, created_at, attempts, lease_owner, lease_token, "
    "lease_expires, secret, secret_mismatch, results_id, last_error, work_dir, body"
)
_SUMMARY_COLUMNS = (
    "id, pinion, workflow_name, status, created_at, attempts, results_id, secret, "
    "secret_mismatch, last_error, body"
)
# A row whose id is not text (damaged by hand) can be neither claimed nor released by id:
# passing over it keeps it from holding up the workloads queued after it.
# secret_mismatch holds every key id found not to match, separated by spaces (see
# caliber.queue.secret.add_mismatch): a key that found a mismatch never claims the row again.
_KEY_OK = ("instr(' ' || COALESCE(secret_mismatch, '') || ' ', ' ' || :key_id || ' ') = 0 "
           "AND typeof(id) = 'text'")
_NO_LEASE = "lease_owner = NULL, lease_token = NULL, lease_expires = NULL"
# A workload's resume and its grant (retry --resume, resetsecret) live in its body: null when
# it resumes nothing (see _grant_params).
_GRANT_SET = ("json_set(body, '$.resume_from', ?, '$.resume_signature', ?, "
              "'$.resume_grant', ?)")


def _grant_params(grant: ResumeGrant | None) -> tuple[str | None, str | None, str | None]:
    if grant is None:
        return None, None, None
    return grant.results_id, grant.results_signature, grant.grant


# A running row whose lease ran out, or that has none a pinion could renew (its expiry NULL
# or not a number, edited by hand: numbers sort before text and blobs), is taken back as from
# a dead pinion: three ranges of the index workloads_leases, each sought on its own (SQLite
# scans the whole index for their OR).
_LEASE_GONE = ("lease_expires < {now}", "lease_expires IS NULL", "lease_expires >= ''")


def _lease_gone(columns: str, now: str, where: str, then: str) -> str:
    """``SELECT columns ... then`` of the running rows taken back, one per range, UNION ALL."""
    return " UNION ALL ".join(
        f"SELECT * FROM (SELECT {columns} FROM workloads INDEXED BY workloads_leases WHERE "
        f"status = 'running' AND {gone.format(now=now)} AND {where} {then})"
        for gone in _LEASE_GONE)


# The one atomic claim: the subquery picks the oldest claimable row, queued (index
# workloads_queued) or with a lease that ran out (index workloads_leases, named: without
# statistics the planner would walk every running row by workloads_status); the UPDATE takes
# it; the trigger workloads_lease_lost notes a lost lease in the history.
CLAIM_SQL = f"""
    UPDATE workloads SET status = 'running', attempts = attempts + 1,
        lease_owner = :owner, lease_token = :token, lease_expires = :expires
    WHERE id = (SELECT id FROM (
        SELECT * FROM (SELECT id, created_at FROM workloads
            WHERE pinion = :pinion AND status = 'queued' AND {_KEY_OK}
            ORDER BY created_at LIMIT 1)
        UNION ALL
        {_lease_gone("id, created_at", ":now", f"pinion = :pinion AND {_KEY_OK}",
                     "ORDER BY created_at LIMIT 1")}
    ) ORDER BY created_at LIMIT 1)
    RETURNING {_COLUMNS}"""


def _lost(claim: Claim) -> LeaseLostError:
    return LeaseLostError(f"workload {claim.workload.id} is no longer held by {claim.owner} "
                          "(its lease ran out and another pinion took it, or it was reset)")


def _from_unix(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


# What Python's sqlite3 raises for a TEXT column holding bytes that are not UTF-8 (written by
# another program). Only then is a read done again with _lenient: the fast read stays as it is.
_NOT_UTF8 = "Could not decode to UTF-8"


def _lenient(data: bytes) -> str:
    """Text that is not UTF-8 with its bad bytes as lone surrogates: it cannot be encoded as it
    was signed, so the run-secret check (caliber.queue.secret) finds the row damaged."""
    return data.decode("utf-8", "surrogateescape")


def _raw(text: str) -> str | bytes:
    """``text`` to bind as ``CAST(? AS TEXT)``: an id read leniently (see :func:`_lenient`) as
    the bytes it is stored as, so that such a row can still be viewed and reset."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")
    return text


def _fetch(conn: sqlite3.Connection, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    """The rows of one read; when a column is not UTF-8, read again decoding it leniently
    (callers hold the backend's lock, so the connection's text_factory is theirs)."""
    cursor = conn.execute(sql, params)
    try:
        return cursor.fetchall()
    except sqlite3.OperationalError as exc:
        cursor.close()
        if _NOT_UTF8 not in str(exc):
            raise
    conn.text_factory = _lenient
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.text_factory = str


def _body(workload: Workload) -> str:
    return workload.model_dump_json(
        include={"workflow", "attachments", "queued_by", "resume_from", "resume_signature",
                 "resume_grant"}, exclude_none=True)


def _workload(row: tuple[Any, ...]) -> Workload:
    """The row as a Workload; a row that cannot be read (edited by hand, damaged) becomes a
    placeholder that says why, has no run-secret (so it never runs) and can still be reset."""
    try:
        return _parse_workload(row)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        return _damaged_workload(row, exc)


def _parse_workload(row: tuple[Any, ...]) -> Workload:
    from caliber.queue.secret import DamagedEntry, problem, stored_time
    from caliber.queue.workload import Attachment, Lease, Workload
    (wid, pinion, _name, status, created_at, attempts, owner, token, expires, secret,
     mismatch, results_id, last_error, work_dir, body) = row
    data = json.loads(body)
    lease = None
    if owner is not None and token is not None and expires is not None:
        lease = Lease(owner=owner, token=token, expires_at=_from_unix(expires))
    workload = Workload(
        id=wid, pinion=pinion, status=WorkloadStatus(status),
        created_at=stored_time(created_at), attempts=attempts, lease=lease,
        secret=secret, secret_mismatch=mismatch, results_id=results_id, last_error=last_error,
        work_dir=work_dir, workflow=data["workflow"],
        attachments=[Attachment.model_validate(a) for a in data.get("attachments", [])],
        queued_by=data.get("queued_by", ""), resume_from=data.get("resume_from"),
        resume_signature=data.get("resume_signature"), resume_grant=data.get("resume_grant"),
    )
    why = problem(workload)  # what verify_raw finds damaged when queue list shows it
    if why is not None:
        raise DamagedEntry(why)
    return workload


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _damaged(row: tuple[Any, ...], exc: BaseException) -> dict[str, Any]:
    """What is left of a row that cannot be read (its first five columns are
    id, pinion, workflow_name, status, created_at), and why it never runs."""
    wid, pinion, name, status, created_at = row[:5]
    reason = f"this queue entry is damaged and never runs ({_why(exc)}); reset it"
    try:
        state = WorkloadStatus(status)
    except ValueError:
        state = WorkloadStatus.FAILED
    try:
        created = dt.datetime.fromisoformat(created_at).astimezone(dt.UTC)
    except (TypeError, ValueError):
        created = dt.datetime.fromtimestamp(0, dt.UTC)
    return {"id": str(wid), "pinion": str(pinion), "status": state, "created_at": created,
            "workflow": name if isinstance(name, str) else "?", "reason": reason}


def _damaged_workload(row: tuple[Any, ...], exc: BaseException) -> Workload:
    from caliber.queue.workload import Workload

    d = _damaged(row, exc)
    return Workload(
        id=d["id"], pinion=d["pinion"], status=d["status"], created_at=d["created_at"],
        workflow={"name": d["workflow"]}, secret="", last_error=d["reason"],
        damaged=d["reason"],
    )


def _summary(row: tuple[Any, ...]) -> StoredSummary:
    """A workload row (``_SUMMARY_COLUMNS``) as stored, for the queue API to check; a row
    whose body cannot be read as a damaged one (as :func:`_workload` shows it)."""
    (wid, pinion, name, state, created_at, attempts, results_id, secret, mismatch,
     last_error, body) = row
    stored = StoredSummary(
        id=wid, name=name, pinion=pinion, status=state, created_at=created_at,
        attempts=attempts, results_id=results_id, secret=secret, secret_mismatch=mismatch,
        last_error=last_error)
    try:
        data = json.loads(body)
        return replace(stored, workflow=data["workflow"],
                       attachments=data.get("attachments", []),
                       queued_by=data.get("queued_by", ""), resume_from=data.get("resume_from"),
                       resume_signature=data.get("resume_signature"),
                       resume_grant=data.get("resume_grant"))
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        return stored.as_damaged(_damaged(row, exc)["reason"])


def _results(row: tuple[Any, ...]) -> Results:
    """A results row as Results; a damaged one as failed Results that say so."""
    from caliber.results.model import ErrorInfo, Results, RunStatus
    rid, workload_id, workflow, pinion, finished_at, body = row
    try:
        return Results.model_validate_json(body)
    except (ValueError, TypeError, RecursionError) as exc:
        try:
            finished = dt.datetime.fromisoformat(finished_at)
        except (TypeError, ValueError):
            finished = dt.datetime.fromtimestamp(0, dt.UTC)
        return Results(
            id=str(rid), workload_id=_text(workload_id), workflow=_text(workflow) or "?",
            pinion=_text(pinion), status=RunStatus.FAILED, started_at=finished,
            finished_at=finished,
            error=ErrorInfo(type="DamagedResults",
                            message=f"these stored results are damaged ({_why(exc)})"),
        )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


_RESULTS_COLUMNS = "id, workload_id, workflow, pinion, finished_at, body"


def _stored(workload: Workload) -> list[str]:
    """The blobs a workload's attachments are (not those by reference, nor inline ones)."""
    return [a.sha256 for a in workload.attachments if a.kind == "stored"]


def open_target(target: QueueTarget) -> SQLiteBackend:
    """The backend of a ``sqlite`` :class:`~caliber.queue.target.QueueTarget`."""
    return SQLiteBackend(target.settings)


class SQLiteBackend:
    """The local queue (see :class:`caliber.queue.backend.QueueBackend` for the verbs)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)
        self.conn = connect(path)
        self._lock = threading.RLock()  # one connection, shared by the pinion's threads
        self.blobs = FolderBlobStore(blob_folder(path))
        self._writer = secrets.token_hex(8)  # owner of this process's pending blob references

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> SQLiteBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (no lock upgrade deadlocks)."""
        with self._lock:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise queue_error(exc, "cannot write", self.path) from exc
            try:
                yield self.conn
            except sqlite3.IntegrityError:
                self._rollback()
                raise
            except sqlite3.Error as exc:
                self._rollback()
                raise queue_error(exc, "cannot use", self.path) from exc
            except BaseException:
                self._rollback()
                raise
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise queue_error(exc, "cannot write", self.path) from exc

    def _rollback(self) -> None:
        """Roll back what is left (a full disk may have rolled the transaction back already)."""
        if self.conn.in_transaction:
            with suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A read of several statements from one snapshot (never a workload row from before
        a change and its history from after it); sqlite errors become QueueError."""
        with self._lock:
            outer = not self.conn.in_transaction  # inside transaction(): already one snapshot
            try:
                if outer:
                    self.conn.execute("BEGIN")
                yield self.conn
            except sqlite3.Error as exc:
                if outer:
                    self._rollback()
                raise queue_error(exc, "cannot read", self.path) from exc
            except BaseException:
                if outer:
                    self._rollback()
                raise
            if outer:
                self.conn.execute("COMMIT")

    def resolve_id(self, table: str, id_or_prefix: str, what: str) -> str:
        """The full id for an id or unique prefix (NotFoundError, AmbiguousIdError)."""
        prefix = id_or_prefix.strip().lower()
        if not prefix:
            raise NotFoundError(f"no {what} id given")
        rows = _fetch(self.conn,
                      f"SELECT id FROM {table} WHERE id >= ? AND id < ? ORDER BY id LIMIT 21",
                      (prefix, prefix + "\uffff"))
        ids = [r[0] for r in rows]
        if prefix in ids:
            return prefix
        if not ids:
            raise NotFoundError(f"no {what} with id {id_or_prefix!r}")
        if len(ids) > 1:
            raise AmbiguousIdError(id_or_prefix, ids)
        return str(ids[0])

    # --- blobs (caliber.queue.blobs.BlobStore) ----------------------------------------------

    def put_blob(self, source: Path) -> BlobRef:
        """Store ``source`` (see :mod:`caliber.queue.sqlite.blobs`: the blob is referred to
        as pending until :meth:`refer_blobs` records what refers to it)."""
        return self.blobs.put_blob(source, sqlite_blobs.pending_hold(self.transaction,
                                                                     self._writer))

    def take_blob(self, source: Path, ref: BlobRef) -> BlobRef:
        """Move a finished file in as blob ``ref`` (:meth:`FolderBlobStore.take_blob`),
        pending as :meth:`put_blob`'s are."""
        return self.blobs.take_blob(source, ref, sqlite_blobs.pending_hold(self.transaction,
                                                                           self._writer))

    def has_blob(self, sha256: str) -> bool:
        return self.blobs.has_blob(sha256)

    def open_blob(self, sha256: str) -> BinaryIO:
        return self.blobs.open_blob(sha256)

    def fetch_blob(self, sha256: str, dest: Path, *, mode: int = 0o600) -> None:
        self.blobs.fetch_blob(sha256, dest, mode=mode)

    def refer_blobs(self, conn: sqlite3.Connection, kind: str, owner: str,
                    shas: Iterable[str]) -> None:
        """Inside a write transaction: ``owner`` (a ``workload`` or ``results`` id) refers to
        these blobs, which prune keeps while it does (:func:`caliber.queue.sqlite.blobs.refer`;
        call it where Results that refer to blobs are inserted)."""
        sqlite_blobs.refer(conn, kind, owner, shas, self._writer)

    # --- workloads ------------------------------------------------------------------------

    def put(self, workload: Workload) -> None:
        from caliber.queue.workload import HistoryEntry
        history = workload.history or [
            HistoryEntry(at=workload.created_at, status=WorkloadStatus.QUEUED,
                         message=f"queued by {workload.queued_by or '?'}")
        ]
        lease = workload.lease
        try:
            with self.transaction() as conn:
                conn.execute(
                    f"INSERT INTO workloads ({_COLUMNS}) VALUES ({', '.join('?' * 15)})",
                    (
                        workload.id, workload.pinion, workload.workflow_name,
                        workload.status.value, _iso(workload.created_at), workload.attempts,
                        lease.owner if lease else None, lease.token if lease else None,
                        lease.expires_at.timestamp() if lease else None, workload.secret,
                        workload.secret_mismatch, workload.results_id, workload.last_error,
                        workload.work_dir, _body(workload),
                    ),
                )
                self._add_history(conn, workload.id, *((h.status, h.message) for h in history),
                                  at=[h.at for h in history])
                self.refer_blobs(conn, "workload", workload.id, _stored(workload))
        except sqlite3.IntegrityError as exc:
            raise QueueError(f"cannot queue workload {workload.id}: {exc}") from exc

    def get(self, id_or_prefix: str) -> Workload:
        with self.reading():
            full = self.resolve_id("workloads", id_or_prefix, "workload")
            rows = _fetch(self.conn, f"SELECT {_COLUMNS} FROM workloads WHERE id = "
                          "CAST(? AS TEXT)", (_raw(full),))
            if not rows:
                raise NotFoundError(f"no workload with id {id_or_prefix!r}")
            return self._with_history([_workload(rows[0])])[0]

    def list_workloads(
        self,
        *,
        pinion: str | None = None,
        status: WorkloadStatus | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Workload]:
        with self.reading():
            rows = self._page(_COLUMNS, pinion, status, limit, offset)
            return self._with_history([_workload(r) for r in rows])

    def list_summaries(
        self,
        *,
        pinion: str | None = None,
        status: WorkloadStatus | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[StoredSummary]:
        with self.reading():
            rows = self._page(_SUMMARY_COLUMNS, pinion, status, limit, offset)
        return [_summary(row) for row in rows]

    def _page(self, columns: str, pinion: str | None, status: WorkloadStatus | None,
              limit: int | None, offset: int) -> list[tuple[Any, ...]]:
        """One page of workload rows, oldest first (inside :meth:`reading`)."""
        where, params = self._filters(
            pinion=pinion, status=WorkloadStatus(status).value if status else None
        )
        return _fetch(
            self.conn,
            f"SELECT {columns} FROM workloads {where} ORDER BY created_at LIMIT ? OFFSET ?",
            (*params, -1 if limit is None else limit, offset),
        )

    def claim(self, pinion: str, owner: str, lease_seconds: float, key_id: str) -> Claim | None:
        from caliber.queue.backend import Claim

        token = secrets.token_hex(16)
        now = time.time()
        params = {"owner": owner, "token": token, "expires": now + lease_seconds,
                  "pinion": pinion, "now": now, "key_id": key_id}
        with self.transaction() as conn:
            while True:
                cursor = conn.execute(CLAIM_SQL, params)
                try:
                    row = cursor.fetchone()
                except sqlite3.OperationalError as exc:  # a column is not UTF-8
                    cursor.close()
                    if _NOT_UTF8 not in str(exc):
                        raise
                    [row] = _fetch(conn, f"SELECT {_COLUMNS} FROM workloads WHERE "
                                   "lease_token = ?", (token,))
                    try:
                        _workload(row).id.encode()
                    except UnicodeEncodeError:  # its id cannot be bound: given back by token
                        self._pass_over(conn, token, owner, key_id, now)
                        continue
                break
            if row is None:
                return None
            workload = _workload(row)
            self._add_history(conn, workload.id, (
                WorkloadStatus.RUNNING, f"claimed by {owner} (attempt {workload.attempts})"))
        return Claim(workload=workload, owner=owner, token=token,
                     expires_at=_from_unix(now + lease_seconds))

    def _pass_over(self, conn: sqlite3.Connection, token: str, owner: str, key_id: str,
                   now: float) -> None:
        """Give back the row just claimed with ``token``, damaged by text that is not UTF-8,
        as a pinion releases a damaged workload (marked for this key, so not claimed again);
        by its token, as its id may be such text."""
        conn.execute(
            "INSERT INTO workload_history (workload_id, at, status, message) SELECT id, ?, "
            "'queued', ? FROM workloads WHERE lease_token = ?",
            (_iso(_from_unix(now)), f"released by {owner}: this queue entry is damaged and "
             "never runs (a column holds text that is not UTF-8); reset it", token))
        conn.execute(
            f"UPDATE workloads SET status = 'queued', attempts = MAX(attempts - 1, 0), "
            f"{_NO_LEASE}, secret_mismatch = ltrim(COALESCE(secret_mismatch, '') || ' ' || ?)"
            " WHERE lease_token = ?", (key_id, token))

    def renew(self, claim: Claim, lease_seconds: float, *,
              progress: dict[str, Any] | None = None) -> Claim:
        """See :meth:`QueueBackend.renew`; ``progress`` is not kept (the run folder's progress
        file is on this machine)."""
        expires = time.time() + lease_seconds
        with self.transaction() as conn:
            asked, now = self._asked(conn, claim, "lease_expires = ?", (expires,))
        return replace(claim, expires_at=_from_unix(expires), cancel_requested=asked,
                       cancel_now=now)

    def peek_cancel(self, claim: Claim) -> Claim:
        """See :meth:`QueueBackend.peek_cancel`: one read of the row by its key (tens of
        microseconds), no write."""
        with self.reading() as conn:
            row = conn.execute(
                "SELECT cancel_requested, cancel_now FROM workloads WHERE id = ? AND "
                "lease_token = ? AND status = 'running'", (claim.workload.id, claim.token),
            ).fetchone()
        if row is None:
            raise _lost(claim)
        if row[0] is None:
            return claim
        return replace(claim, cancel_requested=str(row[0]), cancel_now=bool(row[1]))

    def release(self, claim: Claim, *, reason: str, mismatch_key_id: str | None = None) -> None:
        with self.transaction() as conn:
            asked = self._held(
                conn, claim,
                "status = 'queued', attempts = MAX(attempts - 1, 0), " + _NO_LEASE
                + ", secret_mismatch = CASE WHEN ?1 IS NULL THEN secret_mismatch"
                " WHEN secret_mismatch IS NULL OR secret_mismatch = '' THEN ?1"
                " WHEN instr(' ' || secret_mismatch || ' ', ' ' || ?1 || ' ') > 0"
                " THEN secret_mismatch ELSE secret_mismatch || ' ' || ?1 END",
                (mismatch_key_id,),
            )
            self._add_history(conn, claim.workload.id, (
                WorkloadStatus.QUEUED, f"released by {claim.owner}: {reason}"))
            self._cancel_if_asked(conn, claim.workload.id, asked)

    def complete(self, claim: Claim, results: Results) -> None:
        from caliber.results.model import RunStatus
        if results.workload_id != claim.workload.id:
            results = results.model_copy(update={"workload_id": claim.workload.id})
        status = {RunStatus.COMPLETED: WorkloadStatus.COMPLETED,
                  RunStatus.CANCELLED: WorkloadStatus.CANCELLED}.get(results.status,
                                                                     WorkloadStatus.FAILED)
        error = results.error.summary() if results.error is not None else None
        if status == WorkloadStatus.FAILED and error is None:
            error = "the workflow failed"
        try:
            with self.transaction() as conn:
                self._held(
                    conn, claim,
                    f"status = ?, results_id = ?, last_error = ?, work_dir = ?, {_NO_LEASE}",
                    (status.value, results.id, error, results.work_dir),
                )
                self.insert_results(conn, results)
                message = f"results {results.id}" + (f": {error}" if error else "")
                self._add_history(conn, claim.workload.id, (status, message))
        except sqlite3.IntegrityError as exc:
            raise QueueError(
                f"cannot store the results of workload {claim.workload.id}: {exc}"
            ) from exc

    def fail(self, claim: Claim, reason: str, *, retry: bool) -> None:
        status = WorkloadStatus.QUEUED if retry else WorkloadStatus.FAILED
        with self.transaction() as conn:
            asked = self._held(conn, claim, f"status = ?, last_error = ?, {_NO_LEASE}",
                               (status.value, reason))
            message = f"attempt failed: {reason}" + ("; queued again" if retry else "")
            self._add_history(conn, claim.workload.id, (status, message))
            self._cancel_if_asked(conn, claim.workload.id, asked)

    def _cancel_if_asked(self, conn: sqlite3.Connection, workload_id: str,
                         asked: str | None) -> None:
        """A workload cancelled while it ran is not queued again when its run ends without
        Results (put back, a failed attempt with attempts left): it is cancelled."""
        if asked is not None and conn.execute(
                "UPDATE workloads SET status = 'cancelled', last_error = ? WHERE id = ? AND "
                "status = 'queued' RETURNING id", (cancelled(asked), workload_id)).fetchone():
            self._add_history(conn, workload_id, (WorkloadStatus.CANCELLED, cancelled(asked)))

    def expire(self, max_attempts: int) -> list[str]:
        now = time.time()
        with self._lock:  # a pinion calls this before every claim: nothing to do, no write
            try:
                found = self.conn.execute(
                    f"{_lease_gone('1', '?1', 'attempts >= ?2', 'LIMIT 1')} LIMIT 1",
                    (now, max_attempts),
                ).fetchone()
            except sqlite3.Error as exc:
                raise queue_error(exc, "cannot read", self.path) from exc
        if found is None:
            return []
        with self.transaction() as conn:
            rows = conn.execute(
                f"""UPDATE workloads INDEXED BY workloads_leases
                   SET status = 'failed', {_NO_LEASE},
                       last_error = 'lease ran out ' || attempts || ' times (pinion died?)'
                   WHERE status = 'running' AND attempts >= ?2 AND ({" OR ".join(
                       gone.format(now="?1") for gone in _LEASE_GONE)})
                   RETURNING id, last_error""",
                (now, max_attempts),
            ).fetchall()
            for wid, error in rows:
                self._add_history(conn, wid, (WorkloadStatus.FAILED, error))
        return [r[0] for r in rows]

    def reset(self, id_or_prefix: str, *, force: bool = False) -> Workload:
        with self.transaction() as conn:
            workload = self.get(id_or_prefix)
            if workload.status == WorkloadStatus.RUNNING and not force:
                holder = workload.lease.owner if workload.lease else "a pinion"
                raise QueueStateError(
                    f"workload {workload.id} is running (held by {holder}); "
                    "stop the pinion first or use --force"
                )
            conn.execute("DELETE FROM workloads WHERE id = CAST(? AS TEXT)", (_raw(workload.id),))
        with self.transaction() as conn:  # its blobs nothing else refers to (after: never
            sqlite_blobs.sweep(conn, self.blobs, only=_stored(workload))  # one it still has)
        return workload

    def resetsecret(self, id_or_prefix: str, secret: str, key_id: str, *,
                    resume: ResumeGrant | None = None) -> Workload:
        with self.transaction() as conn:
            full = self.resolve_id("workloads", id_or_prefix, "workload")
            conn.execute(
                "UPDATE workloads SET secret = ?, secret_mismatch = NULL WHERE id = ?",
                (secret, full),
            )
            if resume is not None:  # the grant made again, for the Results it resumes now
                conn.execute(f"UPDATE workloads SET body = {_GRANT_SET} WHERE id = ? AND "
                             "json_extract(body, '$.resume_from') = ?",
                             (*_grant_params(resume), full, resume.results_id))
            self._add_history(conn, full, (None, f"signed again with key {key_id}"))
            return self.get(full)

    def cancel(self, id_or_prefix: str, by: str, *, now: bool = False) -> Workload:
        with self.transaction() as conn:
            workload = self.get(id_or_prefix)
            check_cancel(workload)
            lease = workload.lease
            if workload.status == WorkloadStatus.QUEUED or (
                    lease is not None and lease.expires_at.timestamp() < time.time()):
                conn.execute(f"UPDATE workloads SET status = 'cancelled', {_NO_LEASE}, "
                             "last_error = ? WHERE id = ?", (cancelled(by), workload.id))
                self._add_history(conn, workload.id, (WorkloadStatus.CANCELLED, cancelled(by)))
            else:
                conn.execute("UPDATE workloads SET cancel_requested = ?, cancel_now = "
                             "CASE WHEN ? THEN 1 ELSE cancel_now END WHERE id = ?",
                             (by, now, workload.id))
                self._add_history(conn, workload.id, (None, cancel_asked(by, now)))
            return self.get(workload.id)

    def retry(self, id_or_prefix: str, by: str, *,
              resume: ResumeGrant | None = None) -> Workload:
        with self.transaction() as conn:
            workload = self.get(id_or_prefix)
            grant = check_retry(workload, resume)
            conn.execute(
                f"UPDATE workloads SET status = 'queued', attempts = 0, {_NO_LEASE}, "
                "last_error = NULL, cancel_requested = NULL, cancel_now = NULL, "
                "secret_mismatch = NULL, "
                f"body = {_GRANT_SET} WHERE id = ?",
                (*_grant_params(grant), workload.id))
            self._add_history(conn, workload.id, (
                WorkloadStatus.QUEUED, retried(by, grant.results_id if grant else None)))
            return self.get(workload.id)

    def count_statuses(self, *, pinion: str | None = None) -> dict[str, int]:
        where, params = self._filters(pinion=pinion)
        with self.reading() as conn:
            rows = conn.execute(
                f"SELECT status, count(*) FROM workloads {where} GROUP BY status", params
            ).fetchall()
        return {str(status): int(n) for status, n in rows}

    def prune(self, before: dt.datetime, *, workflow: str | None = None,
              pinion: str | None = None, dry_run: bool = False) -> Pruned:
        """See :meth:`caliber.queue.backend.QueueBackend.prune` and
        :mod:`caliber.queue.sqlite.prune` (compacts the file after a big prune)."""
        from caliber.queue.sqlite import prune as sqlite_prune

        size = sqlite_prune.file_size(self.path)
        with self.reading() if dry_run else self.transaction() as conn:
            found = sqlite_prune.select(conn, before, workflow=workflow, pinion=pinion,
                                        dry_run=dry_run)
            if not dry_run:
                sqlite_prune.delete(conn, found)
        if dry_run:  # the blobs only the pruned rows refer to
            with self.reading() as conn:
                blobs, blob_bytes = sqlite_prune.blobs_freed(conn, self.blobs, found)
        else:
            with self.transaction() as conn:  # a separate step: files cannot be rolled back
                blobs, blob_bytes = sqlite_blobs.sweep(conn, self.blobs)
        if not dry_run and (found.workloads or found.results):
            with self._lock:
                sqlite_prune.compact(self.conn)
        return replace(found, file_before=size, blobs=blobs, blob_bytes=blob_bytes,
                       file_after=size if dry_run else sqlite_prune.file_size(self.path))

    def _held(
        self, conn: sqlite3.Connection, claim: Claim, assignments: str, params: tuple[Any, ...]
    ) -> str | None:
        """Update the claimed row only while ``claim`` holds it; LeaseLostError otherwise.
        Returns who asked to cancel it, if anyone."""
        return self._asked(conn, claim, assignments, params)[0]

    def _asked(
        self, conn: sqlite3.Connection, claim: Claim, assignments: str, params: tuple[Any, ...]
    ) -> tuple[str | None, bool]:
        """:meth:`_held`, with whether the cancel asked was ``--now``."""
        row = conn.execute(
            f"UPDATE workloads SET {assignments} WHERE id = ? AND lease_token = ? "
            "AND status = 'running' RETURNING cancel_requested, cancel_now",
            (*params, claim.workload.id, claim.token),
        ).fetchone()
        if row is None:
            raise _lost(claim)
        return (None, False) if row[0] is None else (str(row[0]), bool(row[1]))

    @staticmethod
    def _add_history(
        conn: sqlite3.Connection,
        workload_id: str,
        *entries: tuple[WorkloadStatus | None, str],
        at: Sequence[dt.datetime] = (),
    ) -> None:
        """History rows; a None status means "unchanged" (the row's current status)."""
        now = dt.datetime.now(dt.UTC)
        for i, (status, message) in enumerate(entries):
            conn.execute(
                "INSERT INTO workload_history (workload_id, at, status, message) VALUES "
                "(?, ?, COALESCE(?, (SELECT status FROM workloads WHERE id = ?)), ?)",
                (workload_id, _iso(at[i] if i < len(at) else now),
                 status.value if status else None, workload_id, message),
            )

    def _with_history(self, workloads: list[Workload]) -> list[Workload]:
        from caliber.queue.workload import HistoryEntry
        by_id = {w.id: w for w in workloads if w.damaged is None}
        ids = list(by_id)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows = self.conn.execute(
                "SELECT workload_id, at, status, message FROM workload_history WHERE workload_id"
                f" IN ({', '.join('?' * len(chunk))}) ORDER BY rowid",
                chunk,
            ).fetchall()
            for wid, at, status, message in rows:
                try:
                    entry = HistoryEntry(at=dt.datetime.fromisoformat(at),
                                         status=WorkloadStatus(status), message=message)
                except (TypeError, ValueError):  # a damaged history row: left out
                    continue
                by_id[wid].history.append(entry)
        return workloads

    # --- results --------------------------------------------------------------------------

    @staticmethod
    def _results_row(results: Results) -> tuple[Any, ...]:
        return (
            results.id, results.workload_id, results.workflow, results.pinion,
            results.status.value, results.finished_at.isoformat(),
            results.model_dump_json(by_alias=True),
        )

    def insert_results(self, conn: sqlite3.Connection, results: Results) -> None:
        conn.execute(
            "INSERT INTO results (id, workload_id, workflow, pinion, status, finished_at, body)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            self._results_row(results),
        )
        self.refer_blobs(conn, "results", results.id, results.blobs)  # kept while they are

    def save_results(self, results: Results) -> None:
        with self.transaction() as conn:
            self.insert_results(conn, results)

    def get_results(self, id_or_prefix: str) -> Results:
        with self.reading() as conn:
            full = self.resolve_id("results", id_or_prefix, "results")
            row = conn.execute(
                f"SELECT {_RESULTS_COLUMNS} FROM results WHERE id = ?", (full,)
            ).fetchone()
        if row is None:
            raise NotFoundError(f"no results with id {id_or_prefix!r}")
        return _results(row)

    def find_results(
        self,
        *,
        workload_id: str | None = None,
        workflow: str | None = None,
        pinion: str | None = None,
    ) -> Results | None:
        where, params = self._filters(workload_id=workload_id, workflow=workflow, pinion=pinion)
        with self.reading() as conn:
            row = conn.execute(
                f"SELECT {_RESULTS_COLUMNS} FROM results {where} "
                "ORDER BY finished_at DESC LIMIT 1", params
            ).fetchone()
        return _results(row) if row else None

    def list_results(
        self,
        *,
        workflow: str | None = None,
        pinion: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Results]:
        where, params = self._filters(workflow=workflow, pinion=pinion)
        with self.reading() as conn:
            rows = conn.execute(
                f"SELECT {_RESULTS_COLUMNS} FROM results {where} "
                "ORDER BY finished_at DESC LIMIT ? OFFSET ?",
                (*params, -1 if limit is None else limit, offset),
            ).fetchall()
        return [_results(r) for r in rows]

    @staticmethod
    def _filters(**filters: str | None) -> tuple[str, tuple[str, ...]]:
        given = {k: v for k, v in filters.items() if v is not None}
        if not given:
            return "", ()
        return "WHERE " + " AND ".join(f"{k} = ?" for k in given), tuple(given.values())
