"""The embedded local queue and results store: one SQLite file.

WAL mode and a busy timeout let any number of pinions and CLI commands share the file; every
write is one short ``BEGIN IMMEDIATE`` transaction, and claiming is one atomic
``UPDATE ... RETURNING``. ``synchronous=NORMAL`` in WAL mode survives a crashed process (a
power cut may lose the last transactions, never corrupt the file).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from caliber.errors import AmbiguousIdError, NotFoundError, QueueError
from caliber.queue.sqlite_schema import MIGRATIONS, SCHEMA_VERSION
from caliber.results.model import Results

BUSY_TIMEOUT_MS = 60_000  # how long a writer waits for another one before giving up


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating and migrating if needed) the database; QueueError when unusable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise QueueError(f"cannot open the queue database {path}: {exc}") from None
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise QueueError(
                f"the queue database {path} was written by a newer Caliber (schema {version}, "
                f"this one knows {SCHEMA_VERSION}); upgrade Caliber"
            )
        if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        if version < SCHEMA_VERSION:
            _migrate(conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise QueueError(
            f"{path} is not a usable Caliber queue database ({exc}); move it away or set "
            "CALIBER_HOME to another folder"
        ) from None
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for step in MIGRATIONS[version:]:
            for statement in step.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class SQLiteBackend:
    """The local queue (see :class:`caliber.queue.backend.QueueBackend` for the verbs)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)
        self.conn = connect(path)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> SQLiteBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (no lock upgrade deadlocks)."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise QueueError(f"the queue database {self.path} is busy or unwritable: {exc}") from None
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self.conn.execute("ROLLBACK")
            raise QueueError(f"cannot write the queue database {self.path}: {exc}") from None

    def resolve_id(self, table: str, id_or_prefix: str, what: str) -> str:
        """The full id for an id or unique prefix (NotFoundError, AmbiguousIdError)."""
        prefix = id_or_prefix.strip().lower()
        if not prefix:
            raise NotFoundError(f"no {what} id given")
        rows = self.conn.execute(
            f"SELECT id FROM {table} WHERE id >= ? AND id < ? ORDER BY id LIMIT 21",
            (prefix, prefix + "\uffff"),
        ).fetchall()
        ids = [r[0] for r in rows]
        if prefix in ids:
            return prefix
        if not ids:
            raise NotFoundError(f"no {what} with id {id_or_prefix!r}")
        if len(ids) > 1:
            raise AmbiguousIdError(id_or_prefix, ids)
        return str(ids[0])

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

    def save_results(self, results: Results) -> None:
        with self.transaction() as conn:
            self.insert_results(conn, results)

    def get_results(self, id_or_prefix: str) -> Results:
        full = self.resolve_id("results", id_or_prefix, "results")
        row = self.conn.execute("SELECT body FROM results WHERE id = ?", (full,)).fetchone()
        if row is None:
            raise NotFoundError(f"no results with id {id_or_prefix!r}")
        return Results.model_validate_json(row[0])

    def find_results(
        self,
        *,
        workload_id: str | None = None,
        workflow: str | None = None,
        pinion: str | None = None,
    ) -> Results | None:
        where, params = self._filters(workload_id=workload_id, workflow=workflow, pinion=pinion)
        row = self.conn.execute(
            f"SELECT body FROM results {where} ORDER BY finished_at DESC LIMIT 1", params
        ).fetchone()
        return Results.model_validate_json(row[0]) if row else None

    def list_results(
        self,
        *,
        workflow: str | None = None,
        pinion: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Results]:
        where, params = self._filters(workflow=workflow, pinion=pinion)
        rows = self.conn.execute(
            f"SELECT body FROM results {where} ORDER BY finished_at DESC LIMIT ? OFFSET ?",
            (*params, -1 if limit is None else limit, offset),
        ).fetchall()
        return [Results.model_validate_json(r[0]) for r in rows]

    @staticmethod
    def _filters(**filters: str | None) -> tuple[str, tuple[str, ...]]:
        given = {k: v for k, v in filters.items() if v is not None}
        if not given:
            return "", ()
        return "WHERE " + " AND ".join(f"{k} = ?" for k in given), tuple(given.values())
