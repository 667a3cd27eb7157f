"""The settings file ``.caliber/.env``: used only when it can be trusted, read safely, parsed by
python-dotenv.

The file is used only when it is a regular file of at most :data:`MAX_SIZE` bytes, owned by the
user running Caliber and not writable by group or others, in a folder ``.caliber`` owned by
that user (or root) and not writable by group or others: the rules ssh applies to its own
config. Anything else is *ignored*: :class:`EnvFile` says why (one line the caller shows) and
the command goes on without it, so a shared folder's ``.caliber/.env`` written by someone else
never chooses your key, your queue or your data folder. On systems without user ids (Windows)
only the kind of file and its size are checked.

Reading never blocks and never runs away: the file is looked at (``stat``) before it is opened,
opened with ``O_NONBLOCK`` (a FIFO swapped in meanwhile does not hang), checked again on the
open descriptor (``fstat``), and read up to :data:`MAX_SIZE` bytes; one that cannot be looked
at, opened or read is ignored too. A file that can be trusted but not parsed (a line that is
not ``KEY=VALUE``, bytes that are not UTF-8) is the user's own mistake: a
:class:`caliber.errors.ConfigError` naming the line, which stops the command.

This module imports neither pydantic nor python-dotenv at its top: a folder without the file
(most) costs two ``stat`` calls.
"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from caliber.errors import ConfigError

MAX_SIZE = 64 * 1024  # bytes: a settings file is a few lines
FOLDER = Path(".caliber")
NAME = ".env"
POSIX = hasattr(os, "geteuid")


@dataclass(frozen=True)
class EnvFile:
    """What ``.caliber/.env`` gave: its values, or why it was ignored."""

    values: dict[str, str] = field(default_factory=dict)
    ignored: str | None = None
    """Why the file was not used (shown once on stderr), None when it was or is absent."""


def identity(folder: Path = FOLDER) -> tuple[tuple[object, ...], int]:
    """What changes whenever the file's content, owner, mode or kind may have (a cache of its
    values is good while this stays the same), and when it last changed (ns since the epoch):
    two ``stat`` calls, no read."""
    try:
        here = "" if folder.is_absolute() else os.getcwd()
    except OSError:  # the current folder was removed
        here = ""
    stats = [_stat(folder), _stat(folder / NAME)]
    changed = max((max(st[5], st[6]) for st in stats if st is not None), default=0)
    return (here, *stats), changed


def _stat(path: Path) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino, st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns,
            st.st_ctime_ns)


def read_env_file(folder: Path = FOLDER) -> EnvFile:
    """The values of ``folder/.env`` when it can be trusted; nothing (and why) otherwise."""
    path = folder / NAME
    try:
        folder_stat = os.stat(folder)
    except (FileNotFoundError, NotADirectoryError):
        return EnvFile()  # no folder: nothing to say
    except OSError as exc:
        return EnvFile(ignored=f"ignored {path}: cannot look into {folder} ({_reason(exc)})")
    try:
        before = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return EnvFile()  # no file in it: nothing to say
    except OSError as exc:
        why = _untrusted_folder(folder_stat, folder) or f"cannot look at it ({_reason(exc)})"
        return EnvFile(ignored=f"ignored {path}: {why}")
    problem = _untrusted_folder(folder_stat, folder) or _untrusted_file(before, path)
    if problem is not None:  # looked at before opening: a device or a FIFO is never opened
        return EnvFile(ignored=f"ignored {path}: {problem}")
    data, problem = _read(path)
    if problem is not None:
        return EnvFile(ignored=f"ignored {path}: {problem}")
    return EnvFile(values=parse(data, path))


def _read(path: Path) -> tuple[bytes, str | None]:
    """The file's bytes (at most MAX_SIZE), checked again on the open descriptor."""
    flags = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
             | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return b"", None
    except OSError as exc:
        return b"", f"cannot open it ({_reason(exc)})"
    try:
        problem = _untrusted_file(os.fstat(fd), path)  # what was opened, not what was looked at
        if problem is not None:
            return b"", problem
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_SIZE:
            chunk = os.read(fd, MAX_SIZE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        return b"", f"cannot read it ({_reason(exc)})"
    finally:
        os.close(fd)
    if size > MAX_SIZE:  # it grew after the check (or claims a smaller size, as /proc does)
        return b"", _too_large(size, more=True)
    return b"".join(chunks), None


def _untrusted_folder(st: os.stat_result, folder: Path) -> str | None:
    if not POSIX:
        return None
    me = os.geteuid()
    if st.st_uid not in (me, 0):
        return (f"its folder {folder} belongs to {_user(st.st_uid)}, not to you ({_user(me)}); "
                "only settings of your own are used")
    writers = _writers(st.st_mode)
    if writers:
        return (f"its folder {folder} is writable by {writers} (make it yours alone: "
                f"chmod go-w {folder})")
    return None


def _untrusted_file(st: os.stat_result, path: Path) -> str | None:
    if not stat.S_ISREG(st.st_mode):
        return f"it is {_kind(st.st_mode)}, not a regular file"
    if POSIX:
        me = os.geteuid()
        if st.st_uid != me:
            return (f"it belongs to {_user(st.st_uid)}, not to you ({_user(me)}); only "
                    "settings of your own are used")
        writers = _writers(st.st_mode)
        if writers:
            return f"it is writable by {writers} (make it yours alone: chmod go-w {path})"
    if st.st_size > MAX_SIZE:
        return _too_large(st.st_size)
    return None


def _too_large(size: int, more: bool = False) -> str:
    shown = f"more than {MAX_SIZE}" if more else f"{size}"
    return f"it is {shown} bytes, more than a settings file holds (at most {MAX_SIZE // 1024} KiB)"


def _writers(mode: int) -> str:
    group, others = bool(mode & stat.S_IWGRP), bool(mode & stat.S_IWOTH)
    return " and ".join(["its group"] * group + ["others"] * others)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


def _user(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return f"user id {uid}"


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def parse(data: bytes, path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (python-dotenv's syntax: ``#`` comments, quotes, ``export``), values
    taken as written (no ``${VAR}`` expansion); ConfigError names the first bad line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}, line {line}: not UTF-8 text") from None
    if "\x00" in text:
        raise ConfigError(f"{path}, line {text[: text.index(chr(0))].count(chr(10)) + 1}: "
                          "a NUL character")
    from dotenv.parser import parse_stream

    values: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.error or (binding.key is not None and binding.value is None):
            # the line itself is not shown: it may hold a token or a key
            raise ConfigError(f"{path}, line {binding.original.line}: expected KEY=VALUE")
        if binding.key is not None and binding.value is not None:
            values[binding.key] = binding.value
    return values
