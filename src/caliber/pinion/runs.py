"""Cleaning up run folders: a pinion makes one per run, ``<runs>/<pinion>/<workload>-<attempt>``
(:meth:`caliber.pinion.loop.Pinion.prepare`).

Two ways remove them: ``caliber results prune`` removes the folders of the workloads it prunes
(:func:`remove_run_folders`), and ``caliber pinion init --keep-runs N`` keeps the newest N
folders of finished workloads in its own folder (:func:`keep_newest`). Neither ever removes a
folder outside the runs folder (a remote queue's Results name paths on other machines), nor
the folder of a workload that is queued or running.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)

RUN_FOLDER = re.compile(r"([a-z0-9]+)-(\d+)")
"""A run folder's name: workload id, attempt."""


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (links not followed)."""
    total = 0
    for base, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(base, name)).st_size
            except OSError:
                continue
    return total


def _remove(folder: Path) -> int | None:
    """Remove ``folder``; its bytes, or None when it could not be removed."""
    size = folder_bytes(folder)
    try:
        shutil.rmtree(folder)
    except OSError as exc:
        log.warning("could not remove the run folder %s (%s)", folder, exc)
        return None
    return size


def remove_run_folders(work_dirs: Iterable[str], runs: Path | None = None, *,
                       dry_run: bool = False) -> tuple[int, int]:
    """Remove the run folders among ``work_dirs`` that are on this machine, inside ``runs``
    (default: the runs folder of CALIBER_HOME) as ``<pinion>/<workload>-<attempt>``; others
    are left alone. Returns (folders, bytes) removed, or that would be with ``dry_run``."""
    from caliber.paths import runs_dir

    root = (runs or runs_dir()).resolve()
    count = size = 0
    for text in dict.fromkeys(work_dirs):
        folder = Path(text)
        try:
            resolved = folder.resolve()
        except (OSError, RuntimeError):
            continue
        if (resolved.parent.parent != root or not RUN_FOLDER.fullmatch(resolved.name)
                or folder.is_symlink() or not resolved.is_dir()):
            continue
        freed = folder_bytes(resolved) if dry_run else _remove(resolved)
        if freed is not None:
            count += 1
            size += freed
    return count, size


def keep_newest(folder: Path, keep: int, busy: Callable[[], set[str]]) -> tuple[int, int]:
    """Keep the newest ``keep`` run folders (by modification time) of finished workloads in
    a pinion's ``folder``; remove the older ones. ``busy()`` gives the ids of the queued and
    running workloads, whose folders are neither counted nor removed; it is asked only when
    there is something to remove. Returns (folders, bytes) removed."""
    found: list[tuple[float, Path, str]] = []
    try:
        for p in folder.iterdir():
            name = RUN_FOLDER.fullmatch(p.name)
            if name is not None and p.is_dir() and not p.is_symlink():
                found.append((p.stat().st_mtime, p, name.group(1)))
    except OSError:
        return 0, 0
    if len(found) <= keep:
        return 0, 0
    live = busy()
    finished = [p for _, p, wid in sorted(found, reverse=True) if wid not in live]
    count = size = 0
    for old in finished[keep:]:
        freed = _remove(old)
        if freed is not None:
            count += 1
            size += freed
    return count, size
