"""What differs between operating systems outside a workload's process, in one module.

The queue and the pinion both use it, so it sits below both (the child-process side is
:mod:`caliber.pinion.platform`). Where a system lacks a call (``statvfs``, ``resource``,
``O_NOFOLLOW``, group and other permission bits on Windows), the answer is the safe neutral
one: no hint, no extra flag, no permission check.

Every folder and file Caliber makes is its user's alone, whatever the umask: folders are made
0700 (:func:`make_private_folder`) and files 0600 (:func:`open_private_file`), each with its
mode from its first moment (never made wider, then narrowed: nobody can slip a file in
between). A folder made before, that Caliber runs code from, is checked with
:func:`own_folder`. What a workload writes follows the umask: the process umask is never
changed.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

from caliber.errors import ConfigError

MIN_FREE_BYTES = 64 * 1024  # below this a disk counts as full
NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)
"""``os.O_NOFOLLOW`` where the system has it: opening a link fails instead of following it."""
PRIVATE_FOLDER = 0o700  # every folder Caliber makes
PRIVATE_FILE = 0o600  # every file Caliber makes
SHARED_BITS = stat.S_IRWXG | stat.S_IRWXO


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


def create_new_file(path: Path, mode: int = PRIVATE_FILE) -> int:
    """A file descriptor for writing a file that must not exist yet, never through a link
    (0600 unless ``mode`` says otherwise)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NO_FOLLOW, mode)


def readable_by_others(st: os.stat_result) -> bool:
    """Whether group or other permission bits are set (Windows has none to check)."""
    return sys.platform != "win32" and bool(st.st_mode & SHARED_BITS)


def make_private_folder(path: Path, *, exist_ok: bool = True) -> None:
    """Make the folder ``path`` and each missing one above it, every one 0700 as it is made
    (``os.mkdir`` with the mode: the umask can only take bits away, and nobody can add a
    file before it is private). A folder there already is left as it is (:func:`own_folder`
    judges those), or FileExistsError without ``exist_ok``; FileExistsError too when
    something other than a folder is there. When the parent exists, this is one ``mkdir``."""
    try:
        os.mkdir(path, PRIVATE_FOLDER)
    except FileNotFoundError:
        if path.parent == path:
            raise
        make_private_folder(path.parent)
        try:
            os.mkdir(path, PRIVATE_FOLDER)
        except FileExistsError:  # another process made it meanwhile
            if not exist_ok or not path.is_dir():
                raise
    except FileExistsError:
        if not exist_ok or not path.is_dir():
            raise


def open_private_file(path: Path, flags: int = os.O_WRONLY | os.O_TRUNC) -> int:
    """A file descriptor for ``path`` (``os.O_CREAT`` added; never through a link), the file
    made 0600 if it is new. ``flags`` as for ``os.open``: writing, truncated, by default."""
    return os.open(path, flags | os.O_CREAT | NO_FOLLOW, PRIVATE_FILE)


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, made 0600 if it is new (replacing what it held)."""
    with os.fdopen(open_private_file(path), "wb") as f:
        f.write(data)


def own_folder(path: Path, what: str) -> None:
    """Check a folder Caliber runs code from, or reads signed-for things from, that exists
    already: one another user owns is refused (ConfigError naming it and the ``chown`` to
    run); one of this user's that group or others may use (an older Caliber made its folders
    0755, or the umask was 000) is tightened to 0700, saying nothing. A missing folder passes
    (it is made 0700 when needed), and so does everything on Windows (no such permissions)."""
    if sys.platform == "win32":
        return
    try:
        st = os.stat(path)
    except OSError:  # missing, or unreadable: whatever uses it says why
        return
    if not stat.S_ISDIR(st.st_mode):
        return
    me = os.geteuid()
    if st.st_uid != me:
        raise ConfigError(
            f"{what} {path} belongs to another user ({_user(st.st_uid)}), who could change "
            f"what Caliber runs; use a folder of your own, or make it yours: "
            f"{'' if me == 0 else 'sudo '}chown -R {_user(me)} {path} && chmod 700 {path}"
        )
    if st.st_mode & SHARED_BITS:
        try:
            os.chmod(path, PRIVATE_FOLDER)
        except OSError as exc:  # a read-only file system: nobody can add anything either
            if exc.errno != errno.EROFS:
                raise ConfigError(f"{what} {path} is open to other users and cannot be "
                                  f"made private ({exc.strerror}); run: chmod 700 "
                                  f"{path}") from exc


def _user(uid: int) -> str:
    """A user's name, or their number when it has none."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


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
