"""What a ``results prune`` removes from a SQL queue, from the rows its dialect reads
(:mod:`caliber.queue.sqlite.prune`, :mod:`caliber.queue.postgres.prune`): what goes is said in
:mod:`caliber.results.prune`. A workload's last change is its last history entry (finishing,
cancelling), or its queuing time when it has none. A workload whose end no pinion has told
yet (its ``untold`` number is set) is not among the rows the dialects read: it stays until a
pinion takes it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from caliber.queue.status import WorkloadStatus
from caliber.results.pruned import Pruned

FINISHED = tuple(s.value for s in (WorkloadStatus.COMPLETED, WorkloadStatus.FAILED,
                                   WorkloadStatus.CANCELLED))


def pruned(before: dt.datetime, *, workflow: str | None, pinion: str | None, dry_run: bool,
           workloads: Iterable[tuple[Any, Any, Any]],
           results: Iterable[tuple[Any, ...]]) -> Pruned:
    """What goes: ``workloads`` are the finished ones older than the cut that match the
    filters, whose end is told (no ``untold`` number) and that no unfinished workload runs
    after, as (id, work_dir, bytes);
    ``results`` the Results of those workloads and of no workload in the queue, as (id,
    workload_id, workflow, pinion, finished_at, bytes, work_dir): their age and filters are
    checked here, where their times are read as times."""
    found = [(str(wid), work_dir, size) for wid, work_dir, size in workloads]
    gone = {wid for wid, _, _ in found}
    kept: list[tuple[str, int, Any]] = []
    for rid, wid, name, by, finished, size, work_dir in results:
        if wid in gone or (_older(finished, before) and workflow in (None, name)
                           and pinion in (None, by)):
            kept.append((str(rid), int(size or 0), work_dir))
    dirs = [d for _, d, _ in found] + [d for _, _, d in kept]
    return Pruned(
        before=before, dry_run=dry_run, workloads=tuple(w for w, _, _ in found),
        results=tuple(r for r, _, _ in kept),
        bytes=sum(int(s or 0) for _, _, s in found) + sum(s for _, s, _ in kept),
        work_dirs=tuple(dict.fromkeys(d for d in dirs if isinstance(d, str))),
    )


def _older(text: object, before: dt.datetime) -> bool:
    """Whether a stored time is before ``before`` (a damaged one never is)."""
    try:
        moment = dt.datetime.fromisoformat(str(text))
    except ValueError:
        return False
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)) < before
