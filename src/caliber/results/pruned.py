"""What a prune removed (:class:`Pruned`): the record every backend's ``prune`` returns and
``caliber results prune`` shows. A plain dataclass in a module of its own that imports none of
the API, so the backend protocol (:mod:`caliber.queue.backend`) can name it without pulling
in :mod:`caliber.results.prune`, which opens queues (the import circle it once closed)."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Pruned:
    """What a prune removed (or, with ``dry_run``, would remove)."""

    before: dt.datetime
    """The cut: finished work older than this."""
    dry_run: bool
    workloads: tuple[str, ...] = ()
    """Ids of the finished workloads removed."""
    results: tuple[str, ...] = ()
    """Ids of the Results removed (those of the workloads, and those of no workload)."""
    bytes: int | None = 0
    """Bytes of the removed records as stored (their JSON); None on the remote queue."""
    work_dirs: tuple[str, ...] = ()
    """The run folders the removed workloads and Results name (on the pinion that ran them)."""
    versions: int = 0
    """Remote queue: versions deleted from the model."""
    file_before: int | None = None
    """Local queue: size of the database file(s) before, in bytes."""
    file_after: int | None = None
    """Local queue: size after (compacted when the prune freed much)."""
    run_folders: int = 0
    """Run folders removed from this machine."""
    run_bytes: int = 0
    """Bytes those run folders held."""
    blobs: int = 0
    """Blobs removed from the queue's content store: nothing refers to them any more."""
    blob_bytes: int = 0
    """Bytes those blobs held."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["before"] = self.before.isoformat()
        out["workloads"], out["results"] = list(self.workloads), list(self.results)
        out["work_dirs"] = list(self.work_dirs)
        return out
