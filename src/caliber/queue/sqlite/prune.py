"""``results prune`` on the local queue: which rows go (:func:`select`), removing them
(:func:`delete`), and giving the space back to the disk (:func:`compact`).

What goes is said in :mod:`caliber.results.prune` and decided in :mod:`caliber.queue.sql.prune`
from the rows read here.

Space: SQLite keeps the pages of deleted rows in the file and reuses them for later writes,
so a pruned queue stops growing at once. When a prune leaves a large share of the file free
(:data:`COMPACT_SHARE` of its pages and at least :data:`COMPACT_MIN_BYTES`), :func:`compact`
runs ``VACUUM`` and truncates the write-ahead log, so the file itself shrinks (measured: a
19.3 MB queue holding one task's 1e6-element list of floats goes back to 61 kB).
``VACUUM`` was chosen over ``auto_vacuum = INCREMENTAL`` because switching an existing
database to it takes a ``VACUUM`` anyway, and rewriting the file only after a big prune
costs nothing in between. Blobs (attachments, arrays, result files) nothing refers to any
more are removed from the store beside the database after the rows
(:mod:`caliber.queue.sqlite.blobs`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

from caliber.queue.blobs import FolderBlobStore
from caliber.queue.sql import prune as sql_prune
from caliber.queue.sql import refs
from caliber.queue.sql.prune import FINISHED
from caliber.queue.sqlite.schema import iso
from caliber.results.pruned import Pruned

log = logging.getLogger(__name__)

COMPACT_SHARE = 0.25  # compact when at least this share of the file's pages is free ...
COMPACT_MIN_BYTES = 1 << 20  # ... and at least this many bytes (1 MiB)

_WORKLOADS = f"""
    SELECT w.id, w.work_dir, length(CAST(w.body AS BLOB)) + COALESCE((SELECT
        sum(length(CAST(h.message AS BLOB)) + length(h.at)) FROM workload_history h
        WHERE h.workload_id = w.id), 0)
    FROM workloads w
    WHERE w.status IN ({", ".join(repr(s) for s in FINISHED)})
      AND (:workflow IS NULL OR w.workflow_name = :workflow)
      AND (:pinion IS NULL OR w.pinion = :pinion)
      AND COALESCE((SELECT h.at FROM workload_history h WHERE h.workload_id = w.id
                    ORDER BY h.rowid DESC LIMIT 1), w.created_at) < :cut
      AND w.untold IS NULL
      AND NOT EXISTS (SELECT 1 FROM workload_after a JOIN workloads d ON d.id = a.workload
                      WHERE a.upstream = w.id
                        AND d.status NOT IN ({", ".join(repr(s) for s in FINISHED)}))
    ORDER BY w.created_at"""

# The Results of the pruned workloads, and those of no workload in the queue (their age and
# filters are checked in Python, where their times are read as times).
_RESULTS = """
    SELECT r.id, r.workload_id, r.workflow, r.pinion, r.finished_at,
           length(CAST(r.body AS BLOB)),
           CASE WHEN json_valid(r.body) THEN json_extract(r.body, '$.work_dir') END
    FROM results r
    WHERE r.workload_id IN (SELECT value FROM json_each(:pruned))
       OR r.workload_id IS NULL
       OR NOT EXISTS (SELECT 1 FROM workloads w WHERE w.id = r.workload_id)
    ORDER BY r.finished_at"""


def select(conn: sqlite3.Connection, before: dt.datetime, *, workflow: str | None,
           pinion: str | None, dry_run: bool) -> Pruned:
    """What a prune at ``before`` removes (read inside the caller's transaction)."""
    params: dict[str, Any] = {"workflow": workflow, "pinion": pinion, "cut": iso(before)}
    workloads = conn.execute(_WORKLOADS, params).fetchall()
    gone = sorted(str(w[0]) for w in workloads)
    results = conn.execute(_RESULTS, {"pruned": json.dumps(gone)}).fetchall()
    return sql_prune.pruned(before, workflow=workflow, pinion=pinion, dry_run=dry_run,
                            workloads=workloads, results=results)


def blobs_freed(conn: sqlite3.Connection, store: FolderBlobStore,
                found: Pruned) -> tuple[int, int]:
    """(blobs, bytes) a prune removing ``found`` would free: those nothing but the removed
    rows refers to, and those nothing refers to now."""
    gone = {("workload", w) for w in found.workloads} | {("results", r) for r in found.results}
    kept = refs.kept_by_others(conn.execute, gone)
    names = [n for n in store.names() if n not in kept]
    return len(names), sum(store.size_of(n) for n in names)


def delete(conn: sqlite3.Connection, found: Pruned) -> None:
    """Remove what :func:`select` found (the history goes with its workload)."""
    conn.execute("DELETE FROM results WHERE id IN (SELECT value FROM json_each(?))",
                 (json.dumps(found.results),))
    conn.execute("DELETE FROM workloads WHERE id IN (SELECT value FROM json_each(?))",
                 (json.dumps(found.workloads),))


def file_size(path: Path) -> int:
    """Bytes of the database with its write-ahead log."""
    total = 0
    for part in (path, path.with_name(path.name + "-wal")):
        try:
            total += part.stat().st_size
        except OSError:
            continue
    return total


def compact(conn: sqlite3.Connection) -> bool:
    """``VACUUM`` when much of the file is free (see the module); whether it ran. A compaction
    that cannot run now (another process writing, a full disk) is only logged: the free pages
    are reused by later writes anyway."""
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    if free < pages * COMPACT_SHARE or free * size < COMPACT_MIN_BYTES:
        return False
    try:
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as exc:
        log.warning("the queue database was pruned but not compacted (%s); its free space "
                    "is reused by later writes", exc)
        return False
    return True
