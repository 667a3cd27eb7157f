"""Attachment paths: relative, inside their folder, and valid on every file system.

The same checks run when a workflow is exported or queued and again, on the pinion, before a
single file is written to the run's working folder.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from caliber.errors import AttachmentError

# Characters Windows refuses in file names, and its reserved device names: a workload queued on
# Linux may be run by a pinion on Windows.
_INVALID_CHARS = set('<>:"|?*\\') | {chr(c) for c in range(32)}
_RESERVED = {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(1, 10)} | {
    f"lpt{i}" for i in range(1, 10)
}


def check_relative_path(name: str) -> str:
    """Return ``name`` normalised to forward slashes, or raise AttachmentError saying why."""
    if not isinstance(name, str) or not name.strip():
        raise AttachmentError(f"attachment path {name!r} is empty")
    posix = name.replace("\\", "/") if os.sep == "\\" else name
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        raise AttachmentError(f"attachment path {name!r} is absolute; give it relative to the "
                              "workflow's folder")
    parts = [p for p in PurePosixPath(posix).parts if p != "."]
    if not parts:
        raise AttachmentError(f"attachment path {name!r} names no file")
    for part in parts:
        if part == "..":
            raise AttachmentError(f"attachment path {name!r} climbs out of its folder with '..'")
        bad = sorted(set(part) & _INVALID_CHARS)
        if bad:
            raise AttachmentError(
                f"attachment path {name!r} has a character not allowed in file names: {bad[0]!r}"
            )
        if part.split(".")[0].lower() in _RESERVED or part.endswith((" ", ".")):
            raise AttachmentError(f"attachment path {name!r} is not a valid file name everywhere")
    return "/".join(parts)


def resolve_inside(base: Path, name: str) -> Path:
    """The absolute path of attachment ``name`` under ``base``, refusing links that escape."""
    rel = check_relative_path(name)
    root = base.resolve()
    target = (root / rel).resolve()
    if target != root and root not in target.parents:
        raise AttachmentError(f"attachment path {name!r} leads outside its folder (via a link)")
    return target


def read_attachment(base: Path, name: str) -> bytes:
    """The content of an attachment on disk: a regular file inside ``base``."""
    path = resolve_inside(base, name)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise AttachmentError(f"attachment {name!r} not found in {base}") from exc
    if not stat.S_ISREG(mode):
        raise AttachmentError(f"attachment {name!r} is not a regular file")
    return path.read_bytes()
