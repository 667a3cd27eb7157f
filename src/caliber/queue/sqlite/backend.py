"""The embedded local queue and results store: one SQLite file, the SQLite dialect of the SQL
core (:mod:`caliber.queue.sql.core` holds the verbs).

WAL mode and a busy timeout let any number of pinions and CLI commands share the file; every
write is one short ``BEGIN IMMEDIATE`` transaction (so writes are serialized: no row locks
needed), and claiming is one atomic ``UPDATE ... RETURNING``. ``synchronous=NORMAL`` in WAL
mode survives a crashed process (a power cut may lose the last transactions, never corrupt
the file).

The pydantic models (Workload, Results) are imported only by the verbs that build them:
:meth:`SQLiteBackend.list_summaries` (``caliber queue list``) reads plain rows and stays fast.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from caliber.queue.blobs import BlobRef, FolderBlobStore
from caliber.queue.sql import rows as R
from caliber.queue.sql.core import NO_LEASE, SqlBackend
from caliber.queue.sqlite import blobs as sqlite_blobs
from caliber.queue.sqlite.schema import blob_folder, connect, queue_error

if TYPE_CHECKING:
    from caliber.queue.lifecycle import ResumeGrant
    from caliber.queue.target import QueueTarget
    from caliber.results.pruned import Pruned

# A row whose id is not text (damaged by hand) can be neither claimed nor released by id:
# passing over it keeps it from holding up the workloads queued after it.
# secret_mismatch holds every key id found not to match, separated by spaces (see
# caliber.queue.secret.add_mismatch): a key that found a mismatch never claims the row again.
_KEY_OK = ("instr(' ' || COALESCE(secret_mismatch, '') || ' ', ' ' || :key_id || ' ') = 0 "
           "AND typeof(id) = 'text'")

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


# The ids a workload runs after, in order, as a JSON array (primary key of workload_after).
AFTER_IDS = ("(SELECT json_group_array(upstream) FROM (SELECT upstream FROM workload_after "
             "WHERE workload = workloads.id ORDER BY position))")

# The number of an end no pinion was there to tell of (column untold): one more than the
# newest history row's id (a seek to the end of the rowids). The history line of that end is
# written right after it, at that id or a later one, and stays while its workload does: every
# later end gets a greater number. A statement that ends several gives them one number.
UNTOLD = "(SELECT COALESCE(max(rowid), 0) + 1 FROM workload_history)"

# The one atomic claim: the subquery picks the claimable row of the highest priority, the
# oldest among equals: queued and due (index workloads_queued, in that order: its first due
# entry) or with a lease that ran out (index workloads_leases, named: without statistics the
# planner would walk every running row by workloads_status); the UPDATE takes it; the trigger
# workloads_lease_lost notes a lost lease in the history.
CLAIM_SQL = f"""
    UPDATE workloads SET status = 'running', attempts = attempts + 1,
        lease_owner = :owner, lease_token = :token, lease_expires = :expires
    WHERE id = (SELECT id FROM (
        SELECT * FROM (SELECT id, priority, created_at FROM workloads
            WHERE pinion = :pinion AND status = 'queued'
              AND (not_before IS NULL OR not_before <= :start) AND {_KEY_OK}
            ORDER BY priority DESC, created_at LIMIT 1)
        UNION ALL
        {_lease_gone("id, priority, created_at", ":now", f"pinion = :pinion AND {_KEY_OK}",
                     "ORDER BY priority DESC, created_at LIMIT 1")}
    ) ORDER BY priority DESC, created_at LIMIT 1)
    RETURNING {R.reading(R.COLUMNS, AFTER_IDS)}"""


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


def open_target(target: QueueTarget) -> SQLiteBackend:
    """The backend of a ``sqlite`` :class:`~caliber.queue.target.QueueTarget`."""
    return SQLiteBackend(target.settings)


class SQLiteBackend(SqlBackend):
    """The local queue (see :class:`caliber.queue.backend.QueueBackend` for the verbs)."""

    NO_LIMIT = -1
    HISTORY_ORDER = "rowid"
    MARKED = "instr(' ' || secret_mismatch || ' ', ' ' || ? || ' ') > 0"
    INTEGRITY_ERRORS = (sqlite3.IntegrityError,)
    AFTER_IDS = AFTER_IDS
    UNTOLD = UNTOLD

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.location = str(path)
        self.conn = connect(path)
        self.blobs = FolderBlobStore(blob_folder(path))

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> SQLiteBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the dialect ----------------------------------------------------------------------

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

    def fetch(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        return _fetch(self.conn, sql, params)

    def bind_id(self, wid: str) -> object:
        return _raw(wid)

    def set_grant(self, conn: sqlite3.Connection, wid: str, grant: ResumeGrant | None, *,
                  resuming: str | None = None) -> None:
        conn.execute("UPDATE workloads SET body = json_set(body, '$.resume_from', ?, "
                     "'$.resume_signature', ?, '$.resume_grant', ?) WHERE id = ?"
                     + ("" if resuming is None else
                        " AND json_extract(body, '$.resume_from') = ?"),
                     (*R.grant_params(grant), wid,
                      *(() if resuming is None else (resuming,))))

    def claim_row(self, conn: sqlite3.Connection,
                  params: dict[str, Any]) -> tuple[Any, ...] | None:
        while True:
            cursor = conn.execute(CLAIM_SQL, params)
            try:
                row: tuple[Any, ...] | None = cursor.fetchone()
            except sqlite3.OperationalError as exc:  # a column is not UTF-8
                cursor.close()
                if _NOT_UTF8 not in str(exc):
                    raise
                [row] = _fetch(conn, f"SELECT {self.columns} FROM workloads WHERE "
                               "lease_token = ?", (params["token"],))
                try:
                    R.workload(row).id.encode()
                except UnicodeEncodeError:  # its id cannot be bound: given back by token
                    self._pass_over(conn, params["token"], params["owner"], params["key_id"],
                                    params["now"])
                    continue
            return row

    def _pass_over(self, conn: sqlite3.Connection, token: str, owner: str, key_id: str,
                   now: float) -> None:
        """Give back the row just claimed with ``token``, damaged by text that is not UTF-8,
        as a pinion releases a damaged workload (marked for this key, so not claimed again);
        by its token, as its id may be such text."""
        conn.execute(
            "INSERT INTO workload_history (workload_id, at, status, message) SELECT id, ?, "
            "'queued', ? FROM workloads WHERE lease_token = ?",
            (R.iso(R.from_unix(now)), f"released by {owner}: this queue entry is damaged and "
             "never runs (a column holds text that is not UTF-8); reset it", token))
        conn.execute(
            f"UPDATE workloads SET status = 'queued', attempts = MAX(attempts - 1, 0), "
            f"{NO_LEASE}, secret_mismatch = ltrim(COALESCE(secret_mismatch, '') || ' ' || ?)"
            " WHERE lease_token = ?", (key_id, token))

    def expiring(self, now: float, max_attempts: int) -> bool:
        try:
            found = self.conn.execute(
                f"{_lease_gone('1', '?1', 'attempts >= ?2', 'LIMIT 1')} LIMIT 1",
                (now, max_attempts),
            ).fetchone()
        except sqlite3.Error as exc:
            raise queue_error(exc, "cannot read", self.path) from exc
        return found is not None

    def expire_rows(self, conn: sqlite3.Connection, now: float,
                    max_attempts: int) -> list[tuple[str, str]]:
        return conn.execute(
            f"""UPDATE workloads INDEXED BY workloads_leases
               SET status = 'failed', {NO_LEASE}, untold = {UNTOLD},
                   last_error = 'lease ran out ' || attempts || ' times (pinion died?)'
               WHERE status = 'running' AND attempts >= ?2 AND ({" OR ".join(
                   gone.format(now="?1") for gone in _LEASE_GONE)})
               RETURNING id, last_error""",
            (now, max_attempts),
        ).fetchall()

    def sweep(self, conn: sqlite3.Connection, only: Iterable[str]) -> tuple[int, int]:
        return sqlite_blobs.sweep(conn, self.blobs, only=only)

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

    # --- prune ----------------------------------------------------------------------------

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
