"""``caliber results prune``: remove finished work older than a cut, and say what that frees.

What a prune removes, on every queue: each **finished** workload (completed, failed or
cancelled) whose last change (its last history entry: finishing, cancelling) is older than
the cut, with its history and *all* its Results; and the Results that belong to no workload in
the queue (``workflow run``, or a workload reset since) that finished before the cut. Never a
queued or running workload, and never a Result of a workload that stays in the queue: a later
``queue retry --resume`` of a failed or cancelled workload finds every Result it needs, unless
the workload itself was older than the cut and went with them. Never a workload that a
workload which has not ended (waiting, queued or running) runs after (``--after``), with its
Results: that one's pinion takes them for its ``$results`` when it starts, maybe days later;
once every workload after it ended, it goes like any other. Never a workload that ended with
no pinion there (cancelled while queued or waiting, down a chain, or failed because its pinion
died too often) before a pinion of its name has told of that end
(:meth:`caliber.queue.backend.QueueBackend.take_ended`), with its Results: its notification
would be lost; once told, it goes like any other.
``--workflow`` and ``--pinion`` narrow both.

Then the run folders of the pruned workloads that are on this machine (inside the runs folder
of ``CALIBER_HOME``, see :mod:`caliber.pinion.runs`) are removed too. The local queue is
compacted after a prune that freed much (see
:meth:`caliber.queue.sqlite.backend.SQLiteBackend.prune`);
the remote one deletes the versions of the pruned workloads (see docs/remote-queue.md).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from caliber.errors import UsageError
from caliber.results.pruned import Pruned

__all__ = ["Pruned", "parse_duration", "prune"]

if TYPE_CHECKING:
    from caliber.queue.target import QueueTarget

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
"""Duration units: seconds, minutes, hours, days, weeks."""
MAX_AGE = 36500 * 86400  # seconds: 100 years
_DURATION = re.compile(r"\s*(\d{1,9})\s*([smhdw])\s*", re.IGNORECASE)


def parse_duration(text: str) -> dt.timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` as a timedelta; UsageError otherwise."""
    found = _DURATION.fullmatch(text or "")
    if found is None:
        raise UsageError(
            f"{text!r} is not a duration: give a whole number and a unit, "
            "s, m, h, d or w (e.g. 30d, 12h, 90m)"
        )
    seconds = int(found.group(1)) * UNITS[found.group(2).lower()]
    if seconds > MAX_AGE:  # now - age must stay a date
        raise UsageError(f"{text.strip()!r} is too long ago: at most {MAX_AGE // 86400}d "
                         "(100 years)")
    return dt.timedelta(seconds=seconds)


def prune(
    older_than: dt.timedelta | str,
    *,
    workflow: str | None = None,
    pinion: str | None = None,
    dry_run: bool = False,
    queue: str | None = None,
    project: str | None = None,
    model: str | None = None,
    local: bool = False,
    target: QueueTarget | None = None,
    now: dt.datetime | None = None,
    runs: Path | None = None,
) -> Pruned:
    """Remove finished workloads and Results older than ``older_than`` (a timedelta, or text
    such as ``"30d"``; see the module for what goes) from the queue ``target`` (or the one
    ``queue``, a URL, or ``project``/``model``/``local`` and the settings select), then
    their run folders found under ``runs`` (default: the runs folder of CALIBER_HOME). With
    ``dry_run`` nothing changes: the answer says what would go."""
    from caliber.pinion.runs import remove_run_folders
    from caliber.queue.api import opened
    from caliber.queue.target import target_of

    age = parse_duration(older_than) if isinstance(older_than, str) else older_than
    if age < dt.timedelta(0):
        raise UsageError("the age to prune must not be negative")
    target = target_of(target, queue=queue, project=project, model=model, local=local)
    before = (now or dt.datetime.now(dt.UTC)) - age
    with opened(target) as backend:
        found = backend.prune(before, workflow=workflow, pinion=pinion, dry_run=dry_run)
    folders, size = remove_run_folders(found.work_dirs, runs, dry_run=dry_run)
    return replace(found, run_folders=folders, run_bytes=size)
