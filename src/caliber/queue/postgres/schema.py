"""The PostgreSQL queue's schema and its migrations, in one place.

Everything lives in the PostgreSQL schema ``caliber`` of the database the URL names (the
connection's ``search_path``), so the database can hold other things too. The version is
the one row of ``caliber.schema_version``; ``MIGRATIONS[n]`` takes the schema from version
``n`` to ``n + 1``, and a new database runs them all. Migrating takes a transaction-level
advisory lock first, so two processes opening a new database at once make it once (the
second waits, then finds it made). DDL is transactional in PostgreSQL: a migration that
fails leaves nothing behind.

The tables are those of the SQLite queue (:mod:`caliber.queue.sqlite.schema`) with the same
columns, so the SQL core reads both alike: times as ISO 8601 text (sorting in time order),
lease expiry as unix seconds, ids compared byte-wise (``COLLATE "C"``: prefix lookups and
ordering as in SQLite). A history row has a ``seq`` (SQLite's rowid). Blobs are rows too:
``blobs`` (one per blob) and ``blob_chunks`` (its bytes, 1 MiB a row).
"""

from __future__ import annotations

from typing import Any

from caliber.errors import QueueError

SCHEMA = "caliber"
LOCK_KEY = 0x63616C69626572  # pg_advisory_xact_lock key of migrations ("caliber")

MIGRATIONS: list[str] = [
    # 0 -> 1: workloads, their history, Results, what refers to each blob, and the blobs.
    """
    CREATE TABLE workloads (
        id               TEXT COLLATE "C" PRIMARY KEY,
        pinion           TEXT COLLATE "C" NOT NULL,
        workflow_name    TEXT NOT NULL,
        status           TEXT NOT NULL,
        created_at       TEXT COLLATE "C" NOT NULL,  -- ISO 8601 UTC, sorts in time order
        attempts         INTEGER NOT NULL DEFAULT 0,
        lease_owner      TEXT,
        lease_token      TEXT,
        lease_expires    DOUBLE PRECISION,          -- unix seconds
        secret           TEXT NOT NULL,
        secret_mismatch  TEXT,                      -- key ids found not to match, spaced
        results_id       TEXT,
        last_error       TEXT,
        work_dir         TEXT,
        body             TEXT NOT NULL,             -- workflow, attachments, queued_by: JSON
        cancel_requested TEXT,
        cancel_now       INTEGER
    );
    CREATE INDEX workloads_queued ON workloads (pinion, created_at) WHERE status = 'queued';
    CREATE INDEX workloads_running ON workloads (pinion, created_at) WHERE status = 'running';
    CREATE INDEX workloads_leases ON workloads (lease_expires) WHERE status = 'running';
    CREATE INDEX workloads_pinion ON workloads (pinion, created_at);
    CREATE INDEX workloads_status ON workloads (status, created_at);
    CREATE INDEX workloads_created ON workloads (created_at);

    CREATE TABLE workload_history (
        seq         BIGSERIAL PRIMARY KEY,
        workload_id TEXT COLLATE "C" NOT NULL REFERENCES workloads (id) ON DELETE CASCADE,
        at          TEXT NOT NULL,
        status      TEXT NOT NULL,
        message     TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX workload_history_id ON workload_history (workload_id, seq);

    CREATE TABLE results (
        id          TEXT COLLATE "C" PRIMARY KEY,
        workload_id TEXT COLLATE "C",
        workflow    TEXT NOT NULL,
        pinion      TEXT,
        status      TEXT NOT NULL,
        finished_at TEXT COLLATE "C" NOT NULL,
        body        TEXT NOT NULL                   -- the Results as JSON
    );
    CREATE INDEX results_workflow ON results (workflow, finished_at);
    CREATE INDEX results_finished ON results (finished_at);
    CREATE INDEX results_workload ON results (workload_id, finished_at);

    -- A pinion's lease that ran out, noted when another pinion takes the workload (the claim
    -- is one UPDATE, which cannot return the row's previous holder).
    CREATE FUNCTION lease_lost() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO workload_history (workload_id, at, status, message) VALUES (
            NEW.id,
            to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
            'queued',
            'lease of ' || COALESCE(OLD.lease_owner, '?') || ' ran out (attempt '
                || OLD.attempts || ' lost)');
        RETURN NEW;
    END $$;
    CREATE TRIGGER workloads_lease_lost AFTER UPDATE OF lease_token ON workloads
        FOR EACH ROW WHEN (OLD.status = 'running' AND NEW.status = 'running'
                           AND NEW.lease_token IS DISTINCT FROM OLD.lease_token)
        EXECUTE FUNCTION lease_lost();

    -- What refers to each blob (caliber.queue.sql.refs); rows go with their owner.
    CREATE TABLE blob_refs (
        sha256  TEXT COLLATE "C" NOT NULL,
        kind    TEXT NOT NULL,              -- 'workload', 'results' or 'pending'
        owner   TEXT COLLATE "C" NOT NULL,  -- workload id, Results id, or a writer's token
        at      DOUBLE PRECISION NOT NULL,  -- unix seconds it was recorded
        PRIMARY KEY (kind, owner, sha256)
    );
    CREATE INDEX blob_refs_sha256 ON blob_refs (sha256);
    CREATE FUNCTION drop_blob_refs() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM blob_refs WHERE kind = TG_ARGV[0] AND owner = OLD.id;
        RETURN OLD;
    END $$;
    CREATE TRIGGER workloads_blob_refs AFTER DELETE ON workloads
        FOR EACH ROW EXECUTE FUNCTION drop_blob_refs('workload');
    CREATE TRIGGER results_blob_refs AFTER DELETE ON results
        FOR EACH ROW EXECUTE FUNCTION drop_blob_refs('results');

    -- The content store (caliber.queue.postgres.blobs): a blob by its SHA-256, its bytes in
    -- rows of 1 MiB (stored as they are: most big inputs are compressed already).
    CREATE TABLE blobs (
        sha256  TEXT COLLATE "C" PRIMARY KEY,
        size    BIGINT NOT NULL,
        chunks  INTEGER NOT NULL
    );
    CREATE TABLE blob_chunks (
        blob    TEXT COLLATE "C" NOT NULL,  -- a blob's sha256, or 'tmp-' and a writer's token
        n       INTEGER NOT NULL,
        data    BYTEA NOT NULL,
        PRIMARY KEY (blob, n)
    );
    ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

    -- A field of a text that may not be JSON (a row damaged by hand): NULL then.
    CREATE FUNCTION json_field(doc TEXT, field TEXT) RETURNS TEXT
        LANGUAGE plpgsql IMMUTABLE AS $$
    BEGIN
        RETURN doc::json ->> field;
    EXCEPTION WHEN others THEN
        RETURN NULL;
    END $$;
    """,
    # 1 -> 2: chains, start times, priorities (as the SQLite queue's schema 7): the ids a
    # workload runs after are rows of workload_after, found both ways by an index; a claim
    # takes the highest priority first, then the oldest (workloads_queued, in that order).
    """
    ALTER TABLE workloads ADD COLUMN not_before TEXT COLLATE "C";  -- ISO 8601 UTC as signed
    ALTER TABLE workloads ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE workloads ADD COLUMN notify TEXT;
    DROP INDEX workloads_queued;
    CREATE INDEX workloads_queued ON workloads (pinion, priority DESC, created_at)
        WHERE status = 'queued';
    CREATE INDEX workloads_starts ON workloads (pinion, not_before)
        WHERE status = 'queued' AND not_before IS NOT NULL;
    CREATE TABLE workload_after (
        workload TEXT COLLATE "C" NOT NULL REFERENCES workloads (id) ON DELETE CASCADE,
        upstream TEXT COLLATE "C" NOT NULL,         -- no reference: it may be reset first
        position INTEGER NOT NULL,
        PRIMARY KEY (workload, position)
    );
    CREATE INDEX workloads_after_upstream ON workload_after (upstream, workload);
    """,
    # 2 -> 3: every end is told once (as the SQLite queue's schema 8): a workload that ends
    # with no pinion there is numbered in ``untold`` (from workloads_untold_seq) until a
    # pinion of its name takes it; NULL is "nothing to tell", so every workload that had
    # ended before counts as told. workloads_untold holds only the untold rows, in the order
    # they are taken: a pinion asks often.
    """
    ALTER TABLE workloads ADD COLUMN untold BIGINT;
    CREATE SEQUENCE workloads_untold_seq;
    CREATE INDEX workloads_untold ON workloads (pinion, untold, id) WHERE untold IS NOT NULL;
    """,
    # 3 -> 4: the workloads that ended last, the latest end first (as the SQLite queue's
    # schema 9): workload_history_ended holds the history rows of an end, in time order,
    # then seq.
    """
    CREATE INDEX workload_history_ended ON workload_history (at, seq)
        WHERE status IN ('completed', 'failed', 'cancelled');
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: Any, where: str) -> None:
    """Bring the schema of the database ``conn`` is connected to (autocommit) up to
    :data:`SCHEMA_VERSION`, creating it the first time; QueueError when a newer Caliber
    wrote it."""
    if _version(conn) == SCHEMA_VERSION:  # the usual case: one read, no lock
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        version = _version(conn) or 0
        if version > SCHEMA_VERSION:
            raise QueueError(
                f"the PostgreSQL queue {where} was written by a newer Caliber (schema "
                f"{version}, this one knows {SCHEMA_VERSION}); upgrade Caliber")
        for step in MIGRATIONS[version:]:
            conn.execute(step)
        conn.execute("DELETE FROM schema_version")
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))


def _version(conn: Any) -> int | None:
    """The schema's version, or None when there is no schema yet."""
    found = conn.execute("SELECT to_regclass('schema_version')").fetchone()
    if found is None or found[0] is None:
        return None
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else None
