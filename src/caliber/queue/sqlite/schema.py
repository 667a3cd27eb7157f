"""The local database: its schema, its migrations and opening it, in one place (no
pydantic here, so the fast read paths of the command line stay light).

The schema version lives in ``PRAGMA user_version``. ``MIGRATIONS[n]`` takes a database from
version ``n`` to ``n + 1``; a fresh database runs them all, so a fresh schema and a migrated
one are the same by construction (a test checks it anyway).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

from caliber.errors import QueueDamagedError, QueueError
from caliber.platform import create_new_file, disk_hint, make_private_folder
from caliber.queue.blobs import FolderBlobStore
from caliber.queue.sqlite import blobs as sqlite_blobs

MIGRATIONS: list[str] = [
    # 0 -> 1: workloads, their history, and results.
    """
    CREATE TABLE workloads (
        id              TEXT PRIMARY KEY,
        pinion          TEXT NOT NULL,
        workflow_name   TEXT NOT NULL,
        status          TEXT NOT NULL,
        created_at      TEXT NOT NULL,          -- ISO 8601 UTC, sorts in time order
        attempts        INTEGER NOT NULL DEFAULT 0,
        lease_owner     TEXT,
        lease_token     TEXT,
        lease_expires   REAL,                   -- unix seconds
        secret          TEXT NOT NULL,
        secret_mismatch TEXT,                   -- key id the secret was found not to match
        results_id      TEXT,
        last_error      TEXT,
        work_dir        TEXT,
        body            TEXT NOT NULL           -- workflow, attachments, queued_by as JSON
    );
    CREATE INDEX workloads_claim ON workloads (pinion, status, created_at);
    CREATE INDEX workloads_created ON workloads (created_at);
    CREATE TABLE workload_history (
        workload_id TEXT NOT NULL REFERENCES workloads (id) ON DELETE CASCADE,
        at          TEXT NOT NULL,
        status      TEXT NOT NULL,
        message     TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX workload_history_id ON workload_history (workload_id);
    CREATE TABLE results (
        id          TEXT PRIMARY KEY,
        workload_id TEXT UNIQUE,                -- one Results per workload, at most
        workflow    TEXT NOT NULL,
        pinion      TEXT,
        status      TEXT NOT NULL,
        finished_at TEXT NOT NULL,
        body        TEXT NOT NULL               -- the Results as JSON
    );
    CREATE INDEX results_workflow ON results (workflow, finished_at);
    CREATE INDEX results_finished ON results (finished_at);
    """,
    # 1 -> 2: indexes for the claim and for ``queue list``'s filters, and a trigger that
    # records in a workload's history that a pinion's lease ran out when another pinion takes
    # it (the claim is one UPDATE statement, which cannot return the row's previous holder).
    """
    DROP INDEX workloads_claim;
    CREATE INDEX workloads_claimable ON workloads (pinion, created_at)
        WHERE status IN ('queued', 'running');
    CREATE INDEX workloads_pinion ON workloads (pinion, created_at);
    CREATE INDEX workloads_status ON workloads (status, created_at);
    CREATE TRIGGER workloads_lease_lost AFTER UPDATE OF lease_token ON workloads
        WHEN OLD.status = 'running' AND NEW.status = 'running'
             AND NEW.lease_token IS NOT OLD.lease_token
    BEGIN
        INSERT INTO workload_history (workload_id, at, status, message) VALUES (
            NEW.id, strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'), 'queued',
            'lease of ' || COALESCE(OLD.lease_owner, '?') || ' ran out (attempt '
                || OLD.attempts || ' lost)');
    END;
    """,
    # 2 -> 3: the claim looks up queued rows and expired leases separately, so running rows
    # never have to be walked past (workloads_claimable held them too: claims got slower with
    # every running workload).
    """
    DROP INDEX workloads_claimable;
    CREATE INDEX workloads_queued ON workloads (pinion, created_at) WHERE status = 'queued';
    CREATE INDEX workloads_leases ON workloads (lease_expires) WHERE status = 'running';
    """,
    # 3 -> 4: a workload's life goes on after it ends (``queue cancel``, ``queue retry``):
    # who asked to cancel a running one (its pinion learns it when it renews), and a retried
    # workload has Results of every attempt series, so results.workload_id is no longer unique.
    """
    ALTER TABLE workloads ADD COLUMN cancel_requested TEXT;
    CREATE TABLE results_4 (
        id          TEXT PRIMARY KEY,
        workload_id TEXT,
        workflow    TEXT NOT NULL,
        pinion      TEXT,
        status      TEXT NOT NULL,
        finished_at TEXT NOT NULL,
        body        TEXT NOT NULL               -- the Results as JSON
    );
    INSERT INTO results_4 (id, workload_id, workflow, pinion, status, finished_at, body)
        SELECT id, workload_id, workflow, pinion, status, finished_at, body FROM results;
    DROP TABLE results;
    ALTER TABLE results_4 RENAME TO results;
    CREATE INDEX results_workflow ON results (workflow, finished_at);
    CREATE INDEX results_finished ON results (finished_at);
    CREATE INDEX results_workload ON results (workload_id, finished_at);
    """,
    # 4 -> 5: a cancel that stops the running task at once (``queue cancel --now``): its
    # pinion learns it when it renews, as any cancel (1: now; NULL: after the current task).
    """
    ALTER TABLE workloads ADD COLUMN cancel_now INTEGER;
    """,
    # 5 -> 6: attachments stored once, by content, in the store beside the database; the
    # blobs each workload and Results refer to (caliber.queue.sqlite.blobs). Then the inline
    # attachments of older rows move into the store (PYTHON_STEPS).
    sqlite_blobs.SCHEMA,
    # 6 -> 7: chains, start times, priorities (``workflow queue --after, --not-before,
    # --priority, --notify``). The ids a workload runs after are rows of workload_after, one
    # per (workload, position), found both ways by an index: the claim never looks at them,
    # completing or cancelling an upstream finds its dependents by workloads_after_upstream.
    # A claim takes the highest priority first, then the oldest (workloads_queued, in that
    # order); workloads_starts finds the next start time of an idle pinion's queue.
    """
    ALTER TABLE workloads ADD COLUMN not_before TEXT;  -- ISO 8601 UTC as signed, or NULL
    ALTER TABLE workloads ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE workloads ADD COLUMN notify TEXT;
    DROP INDEX workloads_queued;
    CREATE INDEX workloads_queued ON workloads (pinion, priority DESC, created_at)
        WHERE status = 'queued';
    CREATE INDEX workloads_starts ON workloads (pinion, not_before)
        WHERE status = 'queued' AND not_before IS NOT NULL;
    CREATE TABLE workload_after (
        workload TEXT NOT NULL REFERENCES workloads (id) ON DELETE CASCADE,
        upstream TEXT NOT NULL,                 -- no reference: it may be reset first
        position INTEGER NOT NULL,
        PRIMARY KEY (workload, position)
    ) WITHOUT ROWID;
    CREATE INDEX workloads_after_upstream ON workload_after (upstream, workload);
    """,
    # 7 -> 8: every end is told once. A workload that ends with no pinion there (cancelled
    # while queued or waiting, down a chain, failed by expire) is numbered in ``untold``
    # until a pinion of its name takes it (caliber.queue.sql.core: take_ended); NULL is
    # "nothing to tell", so every workload that had ended before counts as told. A pinion
    # asks often: workloads_untold holds only the untold rows, in the order they are taken.
    """
    ALTER TABLE workloads ADD COLUMN untold INTEGER;
    CREATE INDEX workloads_untold ON workloads (pinion, untold, id) WHERE untold IS NOT NULL;
    """,
    # 8 -> 9: the workloads that ended last, the latest end first (the dashboard's ended
    # list: caliber.queue.sql.core list_ended): workload_history_ended holds the history
    # rows of an end, in time order (then rowid, as every index holds it), so the walk from
    # the newest stops after the few it needs however many workloads ended.
    """
    CREATE INDEX workload_history_ended ON workload_history (at)
        WHERE status IN ('completed', 'failed', 'cancelled');
    """,
]

PYTHON_STEPS: dict[int, Callable[[sqlite3.Connection, Path], object]] = {
    6: lambda conn, path: sqlite_blobs.store_inline_attachments(
        conn, FolderBlobStore(blob_folder(path))),
}
"""Steps a migration takes in Python after the SQL that brings the schema to version n (data
that SQL alone cannot move). They leave the schema alone: a fresh schema equals a migrated
one."""

SCHEMA_VERSION = len(MIGRATIONS)

BUSY_TIMEOUT_MS = 60_000  # how long a writer waits for another one before giving up


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating and migrating if needed) the database; QueueError when unusable. A new
    database file is made 0600 (in a 0700 folder) before SQLite opens it: SQLite gives its
    ``-wal`` and ``-shm`` files the main file's mode."""
    try:
        make_private_folder(path.parent)
        with contextlib.suppress(FileExistsError):
            os.close(create_new_file(path))
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise QueueError(f"cannot open the queue database {path}: {exc}{disk_hint(path)}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise QueueError(
                f"the queue database {path} was written by a newer Caliber (schema {version}, "
                f"this one knows {SCHEMA_VERSION}); upgrade Caliber"
            )
        if version == 0 and conn.execute(  # one snapshot: another process may be creating it
            "SELECT count(*) FROM sqlite_master WHERE (SELECT user_version FROM "
            "pragma_user_version) = 0"
        ).fetchone()[0]:
            raise QueueError(
                f"{path} is an SQLite database of another program, not a Caliber queue; move "
                "it away or set CALIBER_HOME to another folder"
            )
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        if version < SCHEMA_VERSION:
            _migrate(conn, path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise queue_error(exc, "cannot open", path) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def queue_error(exc: sqlite3.Error, doing: str, path: Path) -> QueueError:
    """An sqlite error as Caliber's: a damaged file (QueueDamagedError, trying again cannot
    help), or a problem of the moment (busy, disk full, read-only) with a hint at the cause."""
    if getattr(exc, "sqlite_errorname", "") in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
        return QueueDamagedError(
            f"{path} is not a usable Caliber queue database: it is damaged or not a queue "
            f"({exc}); move it away (keep it if it holds results you need) or set CALIBER_HOME "
            "to another folder"
        )
    return QueueError(f"{doing} the queue database {path}: {exc}{disk_hint(path)}")


def blob_folder(database: Path) -> Path:
    """The blob store of the queue database ``database``: ``<database>-blobs`` beside it (as
    SQLite's ``-wal`` file is), so two queues in one folder never share (or prune) blobs."""
    return database.with_name(database.name + "-blobs")


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in _statements(step):
                conn.execute(statement)
            if number in PYTHON_STEPS:
                PYTHON_STEPS[number](conn, path)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> Iterator[str]:
    """The statements of a script one by one (a trigger's body holds semicolons too)."""
    pending = ""
    for part in script.split(";"):
        pending += part + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                yield pending
            pending = ""


def iso(moment: dt.datetime) -> str:
    """UTC, fixed width: sorts in time order as text."""
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")
