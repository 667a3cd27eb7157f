"""Attachment paths: relative, inside their folder, and valid on every file system.

The same checks run when a workflow is exported or queued and again, on the pinion, before a
single file is written to the run's working folder. A folder attaches every file inside it
(:func:`find_attachments`); a :class:`Reference` attaches a file on a shared drive by its hash.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

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


_SHA256_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Reference:
    """An attachment by reference, for an input too big to copy: a file on a drive every
    pinion mounts at the same ``path`` (absolute), never copied into the queue. Its SHA-256
    and size are the ones given, or read from the file when the workflow is queued; the
    pinion checks them before the run (a changed or missing file fails the workload before
    any task) and links the file into the run folder as ``name`` (its file name unless
    given)::

        Workflow(process, "solve", attachments=["solve.py",
                 caliber.Reference("/mnt/share/mesh.bdf", sha256="9f2c...", size=2_000_000)])
    """

    path: str
    sha256: str | None = None
    size: int | None = None
    name: str = ""

    def __post_init__(self) -> None:
        path = os.fspath(self.path) if isinstance(self.path, os.PathLike) else self.path
        if not isinstance(path, str) or not os.path.isabs(path):
            raise AttachmentError(f"attachment by reference {self.path!r} must be an absolute "
                                  "path (on a drive every pinion mounts at the same place)")
        object.__setattr__(self, "path", path)
        if self.sha256 is not None and not (
                isinstance(self.sha256, str) and len(self.sha256) == 64
                and set(self.sha256) <= _SHA256_HEX):
            raise AttachmentError(f"attachment by reference {path!r}: sha256 must be 64 "
                                  f"lowercase hex digits, not {self.sha256!r}")
        if self.size is not None and (type(self.size) is not int or self.size < 0):
            raise AttachmentError(f"attachment by reference {path!r}: size must be a whole "
                                  f"number of bytes, not {self.size!r}")
        name = self.name or PurePosixPath(path.replace("\\", "/")).name
        object.__setattr__(self, "name", check_relative_path(name))

    def to_json(self) -> dict[str, Any]:
        """Its form in a workflow file's ``attachments`` (unset fields left out)."""
        out: dict[str, Any] = {"reference": self.path}
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        if self.size is not None:
            out["size"] = self.size
        if self.name != PurePosixPath(self.path.replace("\\", "/")).name:
            out["name"] = self.name
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Reference:
        return cls(data["reference"], sha256=data.get("sha256"), size=data.get("size"),
                   name=data.get("name") or "")


AttachmentSpec = str | Reference
"""One entry of a workflow's ``attachments``: a file or folder relative to the workflow's
folder, or a :class:`Reference`."""

FoundFile = tuple[str, Path, int]
"""A file to attach: its path in the run folder, where it is now, its mode (0o755/0o644)."""


def find_attachments(base: Path, names: Sequence[AttachmentSpec]) -> list[FoundFile | Reference]:
    """What ``names`` attach, checked and in order: each file, every file inside each folder
    (relative paths kept, sorted; empty folders are not kept), each reference. Paths are
    checked as :func:`check_relative_path` says, links may not lead outside ``base`` (nor,
    inside a folder, to another folder); AttachmentError names the first problem, and a path
    attached twice (also through a folder) is one."""
    out: list[FoundFile | Reference] = []
    seen: set[str] = set()

    def add(rel: str, item: FoundFile | Reference, name: object) -> None:
        if rel in seen:
            raise AttachmentError(f"attachment {name!r} is listed twice"
                                  + ("" if rel == name else f" (as {rel!r})"))
        seen.add(rel)
        out.append(item)

    for name in names:
        if isinstance(name, Reference):
            add(name.name, name, name.path)
            continue
        rel = check_relative_path(name)
        path = resolve_inside(base, rel)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise AttachmentError(f"attachment {name!r} not found in {base}") from None
        if stat.S_ISDIR(st.st_mode):
            for inner, file in _folder_files(base, rel, path):
                add(inner, (inner, file, _mode(file.stat())), name)
        elif stat.S_ISREG(st.st_mode):
            add(rel, (rel, path, _mode(st)), name)
        else:
            raise AttachmentError(f"attachment {name!r} is not a regular file or a folder")
    return out


def _folder_files(base: Path, rel: str, folder: Path) -> list[tuple[str, Path]]:
    """Every file in ``folder`` (attached as ``rel``), sorted by path, each checked."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        here = Path(dirpath)
        for d in dirnames:
            if (here / d).is_symlink():
                raise AttachmentError(f"attachment {rel!r} holds a link to a folder "
                                      f"({(here / d).relative_to(folder).as_posix()}); "
                                      "attach the folder itself")
        for f in filenames:
            inner = f"{rel}/{(here / f).relative_to(folder).as_posix()}"
            path = resolve_inside(base, check_relative_path(inner))
            if not path.is_file():
                raise AttachmentError(f"attachment {inner!r} is not a regular file")
            found.append((inner, path))
    return sorted(found)


def _mode(st: os.stat_result) -> int:
    """0o755 for a file anyone may execute, else 0o644: only the executable bit travels."""
    return 0o755 if st.st_mode & 0o111 else 0o644
