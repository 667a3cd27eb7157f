"""``results prune`` on the PostgreSQL queue: the rows a prune takes (decided in
:mod:`caliber.queue.sql.prune`, as on SQLite), removed in one transaction that holds off
every writer of the workloads and Results meanwhile (as SQLite's single writer does: a
workload retried between the choice and the removal is never removed), then the blobs
nothing refers to any more (:mod:`caliber.queue.postgres.blobs`). PostgreSQL gives the
space of removed rows back to its tables by itself (autovacuum): no compaction step."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from caliber.queue.postgres import blobs as pg_blobs
from caliber.queue.sql import prune as sql_prune
from caliber.queue.sql.prune import FINISHED
from caliber.queue.sql.rows import iso

if TYPE_CHECKING:
    from caliber.queue.postgres.backend import PostgresBackend
    from caliber.results.pruned import Pruned

_WORKLOADS = """
    SELECT w.id, w.work_dir, octet_length(w.body) + COALESCE((SELECT
        sum(octet_length(h.message) + octet_length(h.at)) FROM workload_history h
        WHERE h.workload_id = w.id), 0)
    FROM workloads w
    WHERE w.status = ANY(%(finished)s)
      AND (%(workflow)s::text IS NULL OR w.workflow_name = %(workflow)s)
      AND (%(pinion)s::text IS NULL OR w.pinion = %(pinion)s)
      AND COALESCE((SELECT h.at FROM workload_history h WHERE h.workload_id = w.id
                    ORDER BY h.seq DESC LIMIT 1), w.created_at) < %(cut)s
      AND w.untold IS NULL
      AND NOT EXISTS (SELECT 1 FROM workload_after a JOIN workloads d ON d.id = a.workload
                      WHERE a.upstream = w.id AND d.status <> ALL(%(finished)s))
    ORDER BY w.created_at"""

_RESULTS = """
    SELECT r.id, r.workload_id, r.workflow, r.pinion, r.finished_at, octet_length(r.body),
           json_field(r.body, 'work_dir')
    FROM results r
    WHERE r.workload_id = ANY(%(pruned)s) OR r.workload_id IS NULL
       OR NOT EXISTS (SELECT 1 FROM workloads w WHERE w.id = r.workload_id)
    ORDER BY r.finished_at"""


def prune(backend: PostgresBackend, before: dt.datetime, *, workflow: str | None,
          pinion: str | None, dry_run: bool) -> Pruned:
    """See :meth:`caliber.queue.backend.QueueBackend.prune`."""
    with backend.reading() if dry_run else backend.transaction() as conn:
        if not dry_run:
            conn.execute("LOCK TABLE workloads, results IN SHARE ROW EXCLUSIVE MODE")
        found = select(conn, before, workflow=workflow, pinion=pinion, dry_run=dry_run)
        if dry_run:
            gone = ({("workload", w) for w in found.workloads}
                    | {("results", r) for r in found.results})
            blobs, blob_bytes = pg_blobs.sweep(conn, dry_run=True, gone=gone)
        else:
            conn.execute("DELETE FROM results WHERE id = ANY(%s)", (list(found.results),))
            conn.execute("DELETE FROM workloads WHERE id = ANY(%s)", (list(found.workloads),))
    if not dry_run:
        with backend.transaction() as conn:  # after the rows: what they referred to
            blobs, blob_bytes = pg_blobs.sweep(conn)
    return replace(found, blobs=blobs, blob_bytes=blob_bytes)


def select(conn: Any, before: dt.datetime, *, workflow: str | None, pinion: str | None,
           dry_run: bool) -> Pruned:
    """What a prune at ``before`` removes (read inside the caller's transaction)."""
    params: dict[str, Any] = {"workflow": workflow, "pinion": pinion, "cut": iso(before),
                              "finished": list(FINISHED)}
    workloads = conn.execute(_WORKLOADS, params).fetchall()
    gone = sorted(str(w[0]) for w in workloads)
    results = conn.execute(_RESULTS, {"pruned": gone}).fetchall()
    return sql_prune.pruned(before, workflow=workflow, pinion=pinion, dry_run=dry_run,
                            workloads=workloads, results=results)
