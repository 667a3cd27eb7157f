"""The values folder of a run in your own process (``workflow run``, ``Workflow.run``): one
per run, removed however the run ends, and what a killed run left removed by the next.

A run writes its big arrays into ``.caliber/values/`` of its working folder before they go
into the content store (:mod:`caliber.results.arrays`). That folder is the workflow's own
folder, where another run may be going at the same moment, so each run writes into a
subfolder of its own, ``<pid>-<random>/``, beside a lock file ``<pid>-<random>.lock`` that it
holds locked (``flock``) for as long as it runs:

- on every way out the run controls (it ends, a task fails, Ctrl-C anywhere, an exception
  while its Results are stored) it removes its subfolder and its lock
  (:func:`run_values_folder`'s ``finally``), and ``.caliber/values`` and ``.caliber`` when
  they are left empty;
- a run killed outright (SIGKILL, a power cut) cannot; its lock is released by the system
  with its process, so the next run in that folder (:func:`sweep`) finds the lock free and
  removes the subfolder. A lock still held is a run still going: never touched, whatever its
  process id says (ids are reused, and another machine or container may share the folder).

A lock file appears under its name already locked (made under a hidden name, locked, then
renamed), and the subfolder is made after it: a sweep never sees a run's folder without its
held lock. Entries that follow none of this (a file an older Caliber left, a hidden lock a
run killed between making and renaming it left) are removed when older than
:data:`STALE_SECONDS`. Where the system has no ``flock`` (Windows) nothing locked is swept.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from caliber.platform import NO_FOLLOW, create_new_file, make_private_folder
from caliber.results.arrays import VALUES_DIR

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK = ".lock"
STALE_SECONDS = 3600  # an entry of no run that is this old (by its mtime) is swept


@dataclass(frozen=True)
class _Own:
    folder: Path
    lock: Path
    fd: int


@contextlib.contextmanager
def run_values_folder(work_dir: Path) -> Iterator[Path]:
    """The values folder of one run in ``work_dir`` (not made yet: the run's
    :class:`~caliber.results.arrays.ValueWriter` makes it at its first array), removed with
    whatever is in it when the ``with`` ends, however it ends; what killed runs left in
    ``work_dir``'s ``.caliber/values`` is swept first."""
    base = work_dir / VALUES_DIR
    sweep(base)
    try:
        own = _claim(base)
    except OSError:  # a folder this run cannot write in: an array fails there, as it would
        yield base / f"{os.getpid()}-unwritable"
        return
    try:
        yield own.folder
    finally:
        _release(own)


def _claim(base: Path) -> _Own:
    make_private_folder(base)
    name = f"{os.getpid()}-{secrets.token_hex(6)}"
    hidden = base / f".{name}{LOCK}"
    lock = base / f"{name}{LOCK}"
    fd = create_new_file(hidden)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(hidden, lock)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(hidden)
        raise
    return _Own(base / name, lock, fd)


def _release(own: _Own) -> None:
    """Remove the run's folder, then its lock (held until it is gone), then the empty
    folders above."""
    try:
        shutil.rmtree(own.folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.unlink(own.lock)
    finally:
        os.close(own.fd)
    for empty in (own.folder.parent, own.folder.parent.parent):  # values, then .caliber
        try:
            empty.rmdir()
        except OSError:
            break


def sweep(base: Path, *, now: float | None = None) -> int:
    """Remove from the values folder ``base`` what runs that ended without cleaning up left
    (see the module); returns how many entries went. Never raises for what it cannot read
    or remove."""
    now = time.time() if now is None else now
    try:
        with os.scandir(base) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return 0
    names = {e.name for e in entries}
    removed = 0
    for entry in entries:
        name = entry.name
        if name.endswith(LOCK) and not name.startswith("."):
            removed += _sweep_locked(base, name[: -len(LOCK)])
        elif name.endswith(LOCK) or f"{name}{LOCK}" not in names:  # of no run
            removed += _sweep_stale(Path(entry.path), now)
    return removed


def _sweep_locked(base: Path, run: str) -> int:
    """The folder of ``run`` and its lock, when nobody holds the lock (its run is gone)."""
    if fcntl is None:  # pragma: no cover - Windows: nothing tells a live run from a dead one
        return 0
    try:
        fd = os.open(base / f"{run}{LOCK}", os.O_RDONLY | NO_FOLLOW)
    except OSError:  # removed meanwhile by another sweep, or not ours to read
        return 0
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its run is going
            return 0
        shutil.rmtree(base / run, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.unlink(base / f"{run}{LOCK}")
        return 1
    finally:
        os.close(fd)


def _sweep_stale(path: Path, now: float) -> int:
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    if now - st.st_mtime < STALE_SECONDS:
        return 0
    try:
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except OSError:
        return 0
    return 1
