"""The team queue and results store: one PostgreSQL database, the PostgreSQL dialect of the
SQL core (:mod:`caliber.queue.sql.core` holds the verbs; this module only what differs).

- Claiming is one ``UPDATE`` of the row a ``SELECT ... FOR UPDATE SKIP LOCKED`` picked: any
  number of pinions claim at once, each passing over the rows the others are taking, and
  never do two hold one workload.
- Round trips: the pinion's verbs send their statements together where they can (psycopg's
  pipeline mode, :meth:`PostgresBackend._begun`): a claim and its history line are one
  round trip (one implicit transaction), a completion two, a renewal or a look for a cancel
  one statement without ``BEGIN``/``COMMIT``, and so is a look for ended workloads to tell
  of when there are none (:meth:`SqlBackend.take_ended`).
- Pinions of one name share out the ended workloads no pinion was there to tell of
  (:data:`TAKE_UNTOLD_SQL`, ``FOR UPDATE SKIP LOCKED`` as a claim).
- A write that reads a row before changing it (cancel, retry, reset, resetsecret) locks the
  row first (``FOR UPDATE``); a verb that holds several (a cascade down a chain, a promotion,
  a put after several, an expiry) takes them in id order, so that two never deadlock
  (:mod:`caliber.queue.sql.chains`; a completion at no extra round trip: :data:`FINISH_SQL`);
  a read of several statements is one ``REPEATABLE READ READ ONLY`` transaction (one
  snapshot, as SQLite's reads); ``prune`` locks the tables it
  decides on against writers, as SQLite's one writer at a time does.
- Waking idle pinions: whatever makes a workload claimable (put, release, a retried
  attempt, retry, the last upstream of a waiting one completing) sends
  ``NOTIFY caliber_work, '<pinion>'`` when it commits, and
  :meth:`PostgresBackend.wait_for_work` waits on ``LISTEN caliber_work`` on a connection of
  its own; polling stays the fallback (a lease that runs out notifies nobody; a start time
  that comes neither: an idle pinion waits no longer than :meth:`next_start`).
- A restarted server: the pinion's verbs reconnect and try again
  (:func:`caliber.queue.postgres.connection.retrying`); every other verb reconnects when it
  is next called.
- Blobs live in the database (:mod:`caliber.queue.postgres.blobs`), on a second connection.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from caliber.errors import LeaseLostError, QueueError
from caliber.queue.blobs import BlobRef, copy_verified
from caliber.queue.lifecycle import ending
from caliber.queue.postgres import blobs as pg_blobs
from caliber.queue.postgres import connection as pc
from caliber.queue.postgres.schema import migrate
from caliber.queue.sql import rows as R
from caliber.queue.sql.core import NO_LEASE, SqlBackend, claimed, lease_lost, stored_already
from caliber.queue.status import WorkloadStatus

if TYPE_CHECKING:
    import psycopg

    from caliber.queue.backend import Claim
    from caliber.queue.lifecycle import ResumeGrant
    from caliber.queue.target import QueueTarget
    from caliber.queue.workload import Workload
    from caliber.results.model import Results
    from caliber.results.pruned import Pruned

T = TypeVar("T")
CHAINED = (WorkloadStatus.COMPLETED, WorkloadStatus.CANCELLED)  # endings that change the next

CHANNEL = "caliber_work"  # LISTEN/NOTIFY channel; a notification's payload is the pinion
RENEW_PATIENCE = 5.0  # seconds a renewal keeps reconnecting before it gives up (till the next)
LISTENER = "caliber-listen"  # application_name of an idle pinion's listening connection

CLAIMED = "caliber.claimed"  # a setting local to a claim's transaction: the workload it took
_KEY_OK = ("strpos(' ' || COALESCE(secret_mismatch, '') || ' ', ' ' || %(key_id)s || ' ') = 0")

# The ids a workload runs after, in order, as a JSON array (primary key of workload_after).
AFTER_IDS = ("(SELECT COALESCE(json_agg(upstream ORDER BY position), '[]')::text "
             "FROM workload_after WHERE workload = workloads.id)")

# The claimable workload of a pinion of the highest priority, the oldest among equals: the
# first queued one that is due (index workloads_queued, in that order) and the first whose
# lease ran out (or has no expiry a pinion could renew), each locked as it is found, passing
# over rows other claimers hold (index workloads_queued, workloads_running); the first of
# the two is taken. The trigger workloads_lease_lost notes a lost lease in the history.
CLAIM_SQL = f"""
    WITH queued AS (
        SELECT id, priority, created_at FROM workloads
        WHERE pinion = %(pinion)s AND status = 'queued'
          AND (not_before IS NULL OR not_before <= %(start)s) AND {_KEY_OK}
        ORDER BY priority DESC, created_at LIMIT 1 FOR UPDATE SKIP LOCKED
    ), gone AS (
        SELECT id, priority, created_at FROM workloads
        WHERE pinion = %(pinion)s AND status = 'running'
          AND (lease_expires < %(now)s OR lease_expires IS NULL) AND {_KEY_OK}
        ORDER BY priority DESC, created_at LIMIT 1 FOR UPDATE SKIP LOCKED
    ), pick AS (
        SELECT id FROM (SELECT * FROM queued UNION ALL SELECT * FROM gone) c
        ORDER BY priority DESC, created_at LIMIT 1
    )
    UPDATE workloads SET status = 'running', attempts = attempts + 1,
        lease_owner = %(owner)s, lease_token = %(token)s, lease_expires = %(expires)s
    WHERE id = (SELECT id FROM pick)
    RETURNING {R.reading(R.COLUMNS, AFTER_IDS)}, set_config('{CLAIMED}', id, true)"""

# The claim's history line, the statement after CLAIM_SQL in its transaction (not a part of
# it: the trigger's line about a lost lease is written at the end of the claim, and comes
# first); the workload is the one CLAIM_SQL noted in the setting CLAIMED, local to the
# transaction. Its line is caliber.queue.sql.core.claimed's: %(line)s is its beginning.
CLAIMED_SQL = f"""
    INSERT INTO workload_history (workload_id, at, status, message)
    SELECT id, %(at)s, 'running', %(line)s || attempts || ')' FROM workloads
    WHERE id = current_setting('{CLAIMED}', true) AND lease_token = %(token)s"""


def _down(root: str) -> str:
    """A recursive CTE ``down``: the waiting workloads after workload ``%(root)s``, with
    ``%(next)s``; with ``%(all)s`` too, those waiting after them, down the chain (UNION: a
    cycle, which only an import could make, ends)."""
    return f"""down(id) AS (
        SELECT a.workload FROM workload_after a JOIN workloads w ON w.id = a.workload
        WHERE a.upstream = %({root})s AND w.status = 'waiting' AND %(next)s
        UNION
        SELECT a.workload FROM down d JOIN workload_after a ON a.upstream = d.id
        JOIN workloads w ON w.id = a.workload WHERE w.status = 'waiting' AND %(all)s)"""


# Hold a workload and the ones a verb changes with it, in id order (caliber.queue.sql.chains):
# with %(up)s those it runs after, and those of ``_down``.
LOCK_CHAIN_SQL = f"""
    WITH RECURSIVE {_down("root")}
    SELECT 1 FROM workloads WHERE id = %(root)s
        OR (%(up)s AND id IN (SELECT upstream FROM workload_after WHERE workload = %(root)s))
        OR id IN (SELECT id FROM down)
    ORDER BY id FOR UPDATE"""

# Completing a claimed workload: its row (only while the claim holds it: no row returned
# otherwise, and nothing written), its Results and its history line, in one statement. The
# waiting workloads it queues (%(next)s) or cancels (%(all)s) whose ids sort before it are held
# first, in id order (``before``, read whole by the count), then it (caliber.queue.sql.chains).
FINISH_SQL = f"""
    WITH RECURSIVE {_down("wid")}, before AS (
        SELECT 1 FROM workloads WHERE id IN (SELECT id FROM down) AND id < %(wid)s
        ORDER BY id FOR UPDATE
    ), held AS (
        UPDATE workloads SET status = %(status)s, results_id = %(rid)s, last_error = %(error)s,
            work_dir = %(work_dir)s, {NO_LEASE}
        WHERE id = %(wid)s AND lease_token = %(token)s AND status = 'running'
            AND (SELECT count(*) FROM before) >= 0
        RETURNING id
    ), stored AS (
        INSERT INTO results (id, workload_id, workflow, pinion, status, finished_at, body)
        SELECT %(rid)s, %(results_wid)s, %(workflow)s, %(pinion)s, %(rstatus)s, %(finished)s,
            %(body)s FROM held
    ), noted AS (
        INSERT INTO workload_history (workload_id, at, status, message)
        SELECT id, %(at)s, %(status)s, %(message)s FROM held
    )
    SELECT 1 FROM held"""

_EXPIRED = ("status = 'running' AND attempts >= %(max)s "
            "AND (lease_expires < %(now)s OR lease_expires IS NULL)")

# The number of an end no pinion was there to tell of (column untold).
UNTOLD = "nextval('workloads_untold_seq')"

# Taking the untold ends of a pinion, oldest first (index workloads_untold, in that order):
# each row locked as it is found, passing over rows another caller is taking (so two pinions
# of one name share them out, never both getting one; a row another took and committed in the
# meantime is read again, found told, and left), told, and returned with its number.
TAKE_UNTOLD_SQL = f"""
    WITH picked AS (
        SELECT id AS picked, untold AS n FROM workloads
        WHERE pinion = %(pinion)s AND untold IS NOT NULL
        ORDER BY untold, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
    ), told AS (
        UPDATE workloads SET untold = NULL FROM picked
        WHERE workloads.id = picked.picked AND workloads.untold IS NOT NULL
        RETURNING {R.reading(R.COLUMNS, AFTER_IDS)}, picked.n
    )
    SELECT * FROM told ORDER BY n, id"""


@lru_cache(maxsize=512)
def _pg(sql: str) -> str:
    """A statement of the SQL core (``?`` placeholders) in psycopg's form (``%s``)."""
    return sql.replace("%", "%%").replace("?", "%s")


def open_target(target: QueueTarget) -> PostgresBackend:
    """The backend of a ``postgres`` :class:`~caliber.queue.target.QueueTarget` (its
    ``settings``: the ``postgresql://`` URL, password included when it has one)."""
    return PostgresBackend(str(target.settings))


def _again(verb: Callable[..., T], patience: float = pc.RECONNECT_FOR) -> Callable[..., T]:
    """A verb that reconnects and tries again after a lost connection, for up to
    ``patience`` seconds (see :func:`caliber.queue.postgres.connection.retrying`)."""

    def again(self: PostgresBackend, *args: Any, **kwargs: Any) -> T:
        return pc.retrying(lambda: verb(self, *args, **kwargs), self.outage, patience=patience)

    again.__name__ = verb.__name__
    again.__doc__ = verb.__doc__
    return again


class PostgresBackend(SqlBackend):
    """The PostgreSQL queue (see :class:`caliber.queue.backend.QueueBackend` for the verbs)."""

    NO_LIMIT = None
    HISTORY_ORDER = "seq"
    MARKED = "strpos(' ' || secret_mismatch || ' ', ' ' || ? || ' ') > 0"
    AFTER_IDS = AFTER_IDS
    UNTOLD = UNTOLD

    def __init__(self, url: str) -> None:
        super().__init__()
        self.INTEGRITY_ERRORS = (pc.driver().IntegrityError,)
        self.url = url
        self.location = pc.display(url)
        self.conn: psycopg.Connection[Any] | None = None
        self._blob_conn: psycopg.Connection[Any] | None = None
        self._blob_lock = threading.RLock()
        self._listener: psycopg.Connection[Any] | None = None
        self._depth = 0  # transactions entered on the main connection (nested ones join)
        self.outage = pc.Outage()
        conn = self._usable()  # once: a command says at once that the server is not there
        try:
            migrate(conn, self.location)
        except pc.driver().Error as exc:
            self.close()
            raise pc.error(exc, conn, "cannot set up", self.location) from exc
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for conn in (self.conn, self._blob_conn, self._listener):
            if conn is not None:
                conn.close()
        self.conn = self._blob_conn = self._listener = None

    def __enter__(self) -> PostgresBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- connections and transactions -----------------------------------------------------

    def _usable(self) -> psycopg.Connection[Any]:
        """The main connection, made again when it was lost."""
        with self._lock:
            if self.conn is None or self.conn.closed or self.conn.broken:
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                self.conn = pc.connect(self.url, self.location)
                self.outage.since = None
            return self.conn

    @contextmanager
    def _begun(self, begin: str | None, doing: str, *,
               pipelined: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """A transaction on the main connection, begun with ``begin`` and committed at the
        end; with ``begin`` None, no ``BEGIN`` and no ``COMMIT``: one statement, a transaction
        by itself. ``pipelined``: in pipeline mode (psycopg's), the statements are sent
        together, not each waiting for its answer: a round trip when an answer is read (a
        fetch) and one at the end. Without ``begin``, the statements up to the end are one
        (implicit) transaction too: the server commits them at the pipeline's Sync, or
        none of them when one fails."""
        psycopg = pc.driver()
        with self._lock:
            if self._depth:
                assert self.conn is not None
                yield self.conn  # inside a transaction already: one snapshot, one commit
                return
            conn = self._usable()
            try:
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.execute("ROLLBACK")  # what an interrupted one left
            except psycopg.Error as exc:
                raise pc.error(exc, conn, doing, self.location) from exc
            self._depth += 1
            try:
                with conn.pipeline() if pipelined else nullcontext():
                    if begin is not None:
                        conn.execute(begin)
                    yield conn
                    if begin is not None:
                        conn.execute("COMMIT")
            except psycopg.IntegrityError:
                self._rollback(conn)
                raise
            except psycopg.Error as exc:
                self._rollback(conn)
                raise pc.error(exc, conn, doing, self.location) from exc
            except BaseException:
                self._rollback(conn)
                raise
            finally:
                self._depth -= 1

    @staticmethod
    def _rollback(conn: psycopg.Connection[Any]) -> None:
        if not conn.closed and not conn.broken:
            try:
                conn.execute("ROLLBACK")
            except pc.driver().Error:
                pass

    def transaction(self) -> Any:
        """One write transaction (READ COMMITTED: rows read before a change are locked)."""
        return self._begun("BEGIN", "cannot write")

    def reading(self) -> Any:
        """A read of several statements from one snapshot."""
        return self._begun("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", "cannot read")

    def single_write(self) -> Any:
        return self._begun(None, "cannot write")

    def single_read(self) -> Any:
        return self._begun(None, "cannot read")

    # --- the dialect ----------------------------------------------------------------------

    def execute(self, conn: Any, sql: str, params: Any = ()) -> Any:
        return conn.execute(_pg(sql), params)

    def lock_row(self, conn: Any, wid: str) -> None:
        conn.execute("SELECT 1 FROM workloads WHERE id = %s FOR UPDATE", (wid,))

    def lock_rows(self, conn: Any, ids: Sequence[str]) -> None:
        conn.execute("SELECT 1 FROM workloads WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                     (sorted(ids),))

    def lock_chain(self, conn: Any, wid: str, *, up: bool = False, down: bool = False) -> None:
        if not (up or down):
            return self.lock_row(conn, wid)
        conn.execute(LOCK_CHAIN_SQL, {"root": wid, "up": up, "next": down, "all": down})

    def lock_after(self, conn: Any, wid: str) -> None:
        conn.execute(f"WITH RECURSIVE {_down('root')} SELECT 1 FROM workloads WHERE id IN "
                     "(SELECT id FROM down) ORDER BY id FOR UPDATE",
                     {"root": wid, "next": True, "all": True})

    def notify(self, conn: Any, pinion: str) -> None:
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, pinion))

    def set_grant(self, conn: Any, wid: str, grant: ResumeGrant | None, *,
                  resuming: str | None = None) -> None:
        """Set in Python, as the run-secret check reads it (a round trip through ``jsonb``
        would turn a float such as 1e300 into an integer, and the signature with it)."""
        row = conn.execute("SELECT body FROM workloads WHERE id = %s FOR UPDATE",
                           (wid,)).fetchone()
        if row is None:
            return
        try:
            data = json.loads(row[0])
            if resuming is not None and data.get("resume_from") != resuming:
                return
            data.update(zip(("resume_from", "resume_signature", "resume_grant"),
                            R.grant_params(grant), strict=True))
        except (ValueError, TypeError, AttributeError, RecursionError) as exc:
            raise QueueError(f"workload {wid} is damaged ({R.why(exc)}); reset it") from exc
        conn.execute("UPDATE workloads SET body = %s WHERE id = %s",
                     (json.dumps(data, ensure_ascii=False, separators=(",", ":")), wid))

    def take(self, params: dict[str, Any]) -> Workload | None:
        """See :meth:`SqlBackend.take`: the claim and its history line in one round trip."""
        with self._begun(None, "cannot write", pipelined=True) as conn:
            taken = conn.execute(CLAIM_SQL, params)
            conn.execute(CLAIMED_SQL, {**params, "at": R.iso(R.from_unix(params["now"])),
                                       "line": claimed(params["owner"], 0).removesuffix("0)")})
        row = taken.fetchone()
        return None if row is None else R.workload(row[:-1])

    def expiring(self, now: float, max_attempts: int) -> bool:
        """One statement, outside a transaction (a pinion asks before every claim)."""
        psycopg = pc.driver()
        with self._lock:
            conn = self._usable()  # (not inside a transaction: the core calls it first)
            try:
                return conn.execute(f"SELECT 1 FROM workloads WHERE {_EXPIRED} LIMIT 1",
                                    {"now": now, "max": max_attempts}).fetchone() is not None
            except psycopg.Error as exc:
                raise pc.error(exc, conn, "cannot read", self.location) from exc

    def expire_rows(self, conn: Any, now: float, max_attempts: int) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = conn.execute(
            f"UPDATE workloads SET status = 'failed', {NO_LEASE}, untold = {UNTOLD}, "
            "last_error = 'lease ran out '"
            f" || attempts || ' times (pinion died?)' WHERE {_EXPIRED} AND id IN (SELECT id "
            f"FROM workloads WHERE {_EXPIRED} ORDER BY id FOR UPDATE) RETURNING id, last_error",
            {"now": now, "max": max_attempts}).fetchall()
        return found

    def sweep(self, conn: Any, only: Iterable[str]) -> tuple[int, int]:
        return pg_blobs.sweep(conn, only)

    def take_untold(self, conn: Any, pinion: str, limit: int) -> list[tuple[Any, ...]]:
        """One statement, passing over the rows another caller holds (:data:`TAKE_UNTOLD_SQL`)."""
        found = conn.execute(TAKE_UNTOLD_SQL, {"pinion": pinion, "limit": limit}).fetchall()
        return [row[:-1] for row in found]

    # --- the pinion's verbs: they reconnect after a lost connection -----------------------

    claim = _again(SqlBackend.claim)
    # A renewal that cannot be made is made at the next one (the pinion goes on watching its
    # run meanwhile; its lease may still hold): a short patience. A look for a cancel (a
    # read, about every second) is not tried again: the next look reconnects.
    renew = _again(SqlBackend.renew, RENEW_PATIENCE)
    release = _again(SqlBackend.release)
    fail = _again(SqlBackend.fail)
    expire = _again(SqlBackend.expire)
    take_ended = _again(SqlBackend.take_ended)
    get_results = _again(SqlBackend.get_results)

    def complete(self, claim: Claim, results: Results) -> None:
        """See :meth:`QueueBackend.complete`; after a lost connection, a commit that went
        through before it was lost counts (the workload holds these Results)."""
        tried = False

        def once() -> None:
            nonlocal tried
            try:
                self._complete(claim, results)
            except LeaseLostError:
                if tried and self._completed(claim.workload.id, results.id):
                    return
                raise
            finally:
                tried = True

        pc.retrying(once, self.outage)

    def _complete(self, claim: Claim, results: Results) -> None:
        """:meth:`SqlBackend.complete` in two round trips: ``BEGIN``, the workload's row, its
        Results and history line (:data:`FINISH_SQL`), the references to their blobs, and
        what the chain does (a completed workload's waiting ones read), sent together; then
        ``COMMIT`` (after a promotion's statements, when there is one)."""
        results, end = ending(claim, results)
        row = R.results_row(results)
        try:
            with self._begun("BEGIN", "cannot write", pipelined=True) as conn:
                held = conn.execute(FINISH_SQL, {
                    "status": end.status.value, "rid": results.id, "error": end.error,
                    "work_dir": results.work_dir, "wid": claim.workload.id,
                    "token": claim.token, "results_wid": row[1], "workflow": row[2],
                    "pinion": row[3], "rstatus": row[4], "finished": row[5], "body": row[6],
                    "at": R.iso(dt.datetime.now(dt.UTC)), "message": end.message,
                    "next": end.status in CHAINED, "all": end.status == WorkloadStatus.CANCELLED})
                self.refer_blobs(conn, "results", results.id, results.blobs)
                self.ended(conn, claim.workload.id, end.status)
                if held.fetchone() is None:
                    raise lease_lost(claim)
        except self.INTEGRITY_ERRORS as exc:
            raise stored_already(claim, exc) from exc

    def _completed(self, wid: str, results_id: str) -> bool:
        with self.reading() as conn:
            return conn.execute("SELECT 1 FROM workloads WHERE id = %s AND results_id = %s",
                                (wid, results_id)).fetchone() is not None

    def wait_for_work(self, pinion: str, timeout: float) -> bool:
        """See :meth:`QueueBackend.wait_for_work`: LISTEN on a connection of its own. When
        the LISTEN begins (the first wait, and the first after a lost connection) a workload
        queued before it was told to nobody: it is looked for once then."""
        psycopg = pc.driver()
        deadline = time.monotonic() + timeout
        try:
            if self._listener is None or self._listener.closed or self._listener.broken:
                self._listener = pc.connect(self.url, self.location, LISTENER)
                self._listener.execute(f"LISTEN {CHANNEL}")
                if self._listener.execute(
                        "SELECT 1 FROM workloads WHERE pinion = %s AND status = 'queued' "
                        "AND (not_before IS NULL OR not_before <= %s) LIMIT 1",
                        (pinion, R.iso(dt.datetime.now(dt.UTC)))).fetchone():
                    return True
            while True:  # at least one look (timeout 0: what was told already, no wait)
                left = max(deadline - time.monotonic(), 0.0)
                for note in self._listener.notifies(timeout=left,
                                                    stop_after=1 if left else None):
                    if note.payload == pinion:
                        return True
                if time.monotonic() >= deadline:
                    break
        except (psycopg.Error, pc.ConnectionLost):
            if self._listener is not None:
                self._listener.close()
            self._listener = None
            time.sleep(max(deadline - time.monotonic(), 0.0))  # the claim reconnects
        return False

    def work_signal(self) -> int | None:
        """See :meth:`QueueBackend.work_signal`: the socket of the listening connection."""
        listener = self._listener
        if listener is None or listener.closed or listener.broken:
            return None
        return int(listener.fileno())

    # --- blobs (caliber.queue.blobs.BlobStore) --------------------------------------------

    @contextmanager
    def _blobs(self, doing: str) -> Iterator[psycopg.Connection[Any]]:
        """The blob connection in one transaction of its own."""
        psycopg = pc.driver()
        with self._blob_lock:
            conn = self._blob_conn
            if conn is None or conn.closed or conn.broken:
                self._blob_conn = conn = pc.connect(self.url, self.location)
            try:
                with conn.transaction():
                    yield conn
            except psycopg.Error as exc:
                raise pc.error(exc, conn, doing, self.location) from exc

    def put_blob(self, source: Path) -> BlobRef:
        """See :meth:`caliber.queue.blobs.BlobStore.put_blob` (OSError, its ``filename`` the
        source, when ``source`` cannot be read)."""
        with open(source, "rb") as stream, self._blobs("cannot store a blob in") as conn:
            return pg_blobs.put_stream(conn, stream, self._writer)

    def has_blob(self, sha256: str) -> bool:
        with self._blobs("cannot read") as conn:
            return pg_blobs.has_blob(conn, sha256)

    def open_blob(self, sha256: str) -> BinaryIO:
        import io

        with self._blobs("cannot read") as conn:
            _, chunks = pg_blobs.stat(conn, sha256)

        def chunk(n: int) -> bytes:
            with self._blobs("cannot read") as conn:
                return pg_blobs.read_chunk(conn, sha256, n)

        return io.BufferedReader(pg_blobs.ChunkReader(chunk, chunks))

    def fetch_blob(self, sha256: str, dest: Path, *, mode: int = 0o600) -> None:
        with self._blobs("cannot read") as conn:
            size, _ = pg_blobs.stat(conn, sha256)
        with self.open_blob(sha256) as source:
            copy_verified(source, sha256, dest, mode=mode, size=size)

    # --- prune ----------------------------------------------------------------------------

    def prune(self, before: dt.datetime, *, workflow: str | None = None,
              pinion: str | None = None, dry_run: bool = False) -> Pruned:
        """See :meth:`caliber.queue.backend.QueueBackend.prune` and
        :mod:`caliber.queue.postgres.prune`."""
        from caliber.queue.postgres import prune as pg_prune

        return pg_prune.prune(self, before, workflow=workflow, pinion=pinion, dry_run=dry_run)
