"""What differs between operating systems outside a workload's process, in one module.

The queue and the pinion both use it, so it sits below both (the child-process side is
:mod:`caliber.pinion.platform`). Where a system lacks a call (``statvfs``, ``resource``,
``O_NOFOLLOW``, group and other permission bits on Windows), the answer is the safe neutral
one: no hint, no extra flag, no permission check.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

MIN_FREE_BYTES = 64 * 1024  # below this a disk counts as full
NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)
"""``os.O_NOFOLLOW`` where the system has it: opening a link fails instead of following it."""


def disk_hint(path: Path) -> str:
    """`` (its file system is read-only)``, `` (its disk is full)``, a file size limit, or
    nothing: why writing ``path`` may have failed."""
    try:
        st = os.statvfs(path.parent)
    except (OSError, AttributeError):  # no statvfs on Windows
        return ""
    if st.f_flag & getattr(os, "ST_RDONLY", 1 << 30):
        return " (its file system is read-only)"
    if st.f_bavail * st.f_frsize < MIN_FREE_BYTES:
        return " (its disk is full)"
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return ""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        return f" (files are limited to {limit} bytes here: see 'ulimit -f')"
    return ""


def create_new_file(path: Path, mode: int = 0o644) -> int:
    """A file descriptor for writing a file that must not exist yet, never through a link."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NO_FOLLOW, mode)


def readable_by_others(st: os.stat_result) -> bool:
    """Whether group or other permission bits are set (Windows has none to check)."""
    return sys.platform != "win32" and bool(st.st_mode & (stat.S_IRWXG | stat.S_IRWXO))


def process_exists(pid: int) -> bool:
    """Whether process ``pid`` runs (as far as this process can tell); True where that cannot
    be asked without harm (on Windows, ``os.kill`` ends the process)."""
    if sys.platform == "win32":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: it exists
        return True
    return True
