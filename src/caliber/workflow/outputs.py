"""Result files: the ``outputs=`` globs of a workflow, checked, and found in a run folder.

A pattern is a path relative to the run folder, with ``/`` between folders: ``report.pdf``,
``fields/*.vtu``, ``**/*.odb``. In a part, ``*`` is any run of characters, ``?`` one character
and ``[abc]`` one of those; a part that is ``**`` is any number of folders, none included. A
wildcard never matches a name that starts with ``.`` (as in a shell: write the dot), and
Caliber's own folder ``.caliber`` is never looked in. A pattern that names a folder takes
every file inside it, at any depth (hidden ones too); a ``**`` that ends a pattern takes every
file below, in folders that are not hidden.

What is never collected, whatever the pattern:

- a path outside the run folder: ``..`` and absolute patterns are refused when the workflow
  is made, and nothing is read through a link;
- a symbolic link (to a file or a folder, inside the run folder or not): it is listed as
  skipped, with the reason, and its target is not read;
- anything that is not a regular file (a FIFO, a socket, a device).

:func:`find_outputs` only looks (no file is opened); :func:`open_found` opens one file it found
without following any link on the way (``openat`` with ``O_NOFOLLOW`` at each folder where the
system has it), so a folder swapped for a link meanwhile is refused too. No pydantic and no
threading here: the pinion's side and the workflow model import this module.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from caliber.errors import WorkflowDefinitionError

PRIVATE = ".caliber"  # Caliber's own folder in a run folder: never collected
NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_WILDCARDS = set("*?[")


def check_pattern(pattern: object) -> str:
    """``pattern`` normalised (``./a//b`` -> ``a/b``), or WorkflowDefinitionError saying why it
    cannot be an output pattern."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise WorkflowDefinitionError(f"output pattern {pattern!r} is empty; give a path "
                                      "relative to the run folder, e.g. 'fields/*.vtu'")
    if "\x00" in pattern:
        raise WorkflowDefinitionError(f"output pattern {pattern!r} holds a NUL character")
    if "\\" in pattern:
        raise WorkflowDefinitionError(f"output pattern {pattern!r} has a backslash; separate "
                                      "folders with '/'")
    if pattern.startswith("/") or (len(pattern) > 1 and pattern[1] == ":"):
        raise WorkflowDefinitionError(f"output pattern {pattern!r} is absolute; give it "
                                      "relative to the run folder")
    parts = [p for p in pattern.split("/") if p not in ("", ".")]
    if not parts:
        raise WorkflowDefinitionError(f"output pattern {pattern!r} names no file; '**' "
                                      "takes every file of the run folder")
    if ".." in parts:
        raise WorkflowDefinitionError(f"output pattern {pattern!r} climbs out of the run "
                                      "folder with '..'")
    if parts[0] == PRIVATE:
        raise WorkflowDefinitionError(f"output pattern {pattern!r} is in {PRIVATE}/, "
                                      "Caliber's own folder")
    for part in parts:
        try:
            _part_regex(part)
        except re.error as exc:
            raise WorkflowDefinitionError(f"output pattern {pattern!r}: {exc}") from None
    return "/".join(parts)


def check_patterns(patterns: object) -> list[str]:
    """A workflow's ``outputs``: a list of patterns, each checked (a single string is taken
    as a list of one)."""
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, Iterable):
        raise WorkflowDefinitionError(
            f"outputs must be a list of patterns, not {type(patterns).__name__}")
    return [check_pattern(p) for p in patterns]


def _part_regex(part: str) -> re.Pattern[str]:
    """One part of a pattern (no ``/``) as a regular expression (``fnmatch``'s rules, with a
    leading ``.`` matched only by a leading ``.``)."""
    out = []
    i = 0
    while i < len(part):
        c = part[i]
        i += 1
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = part.find("]", i + 1 if i < len(part) and part[i] in "!]" else i)
            if end < 0:
                out.append(re.escape(c))
                continue
            body = part[i:end].replace("\\", "\\\\")
            i = end + 1
            if body.startswith("!"):
                body = "^" + body[1:]
            elif body.startswith("^"):
                body = "\\" + body
            out.append(f"[{body}]")
        else:
            out.append(re.escape(c))
    return re.compile("".join(out), re.DOTALL)


@dataclass
class Found:
    """What the patterns found in a run folder."""

    files: list[str] = field(default_factory=list)
    """Regular files, as paths relative to the run folder (``/``-separated), sorted, each
    once however many patterns match it."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(path, why) of what a pattern matched but is not collected (a link, a FIFO, ...)."""
    unmatched: list[str] = field(default_factory=list)
    """The patterns that matched nothing at all."""


class _Finder:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: set[str] = set()
        self.skipped: dict[str, str] = {}

    def add(self, rel: str, mode: int | None) -> bool:
        """One matched entry (``mode`` from lstat); whether it added anything."""
        if mode is None:
            return False
        if stat.S_ISDIR(mode):
            return self.folder(rel, hidden=True)
        if stat.S_ISLNK(mode):
            target = _link_target(self.root / rel)
            self.skipped[rel] = f"a symbolic link (to {target}); links are not followed"
        elif stat.S_ISREG(mode):
            self.files.add(rel)
        else:
            self.skipped[rel] = f"not a regular file ({_kind(mode)})"
        return True

    def folder(self, rel: str, *, hidden: bool) -> bool:
        """Every file under the folder ``rel``, at any depth (``hidden``: names that start
        with ``.`` too); whether there was any."""
        hit = False
        for name, mode in _entries(self.root / rel):
            if (rel == "" and name == PRIVATE) or (not hidden and name.startswith(".")):
                continue
            child = _join(rel, name)
            if stat.S_ISDIR(mode):
                hit = self.folder(child, hidden=hidden) or hit
            else:
                hit = self.add(child, mode) or hit
        return hit

    def match(self, rel: str, parts: Sequence[str]) -> bool:
        """Entries under folder ``rel`` matching ``parts``; whether any added anything."""
        part, rest = parts[0], parts[1:]
        if part == "**":
            if not rest:  # '**' last: every file below, in folders not hidden
                return self.folder(rel, hidden=False)
            hit = self.match(rel, rest)  # no folder at all
            for folder, kind in _entries(self.root / rel):
                if not folder.startswith(".") and stat.S_ISDIR(kind):
                    hit = self.match(_join(rel, folder), parts) or hit
            return hit
        if not _WILDCARDS & set(part):
            names: list[tuple[str, int | None]] = [(part, _lstat(self.root / rel / part))]
        else:
            regex = _part_regex(part)
            names = [(n, m) for n, m in _entries(self.root / rel)
                     if regex.fullmatch(n) and (part.startswith(".") or not n.startswith("."))]
        hit = False
        for name, mode in names:
            if rel == "" and name == PRIVATE:
                continue
            child = _join(rel, name)
            if not rest:
                hit = self.add(child, mode) or hit
            elif mode is not None and stat.S_ISDIR(mode):
                hit = self.match(child, rest) or hit
            elif mode is not None and stat.S_ISLNK(mode):  # a folder named through a link
                hit = self.add(child, mode) or hit
        return hit


def find_outputs(root: Path, patterns: Sequence[str]) -> Found:
    """The files ``patterns`` (checked ones: :func:`check_pattern`) match in the folder
    ``root``, without following any link and without opening any file."""
    finder = _Finder(root)
    unmatched = [p for p in patterns if not finder.match("", p.split("/"))]
    files = sorted(finder.files)
    skipped = sorted((p, why) for p, why in finder.skipped.items() if p not in finder.files)
    return Found(files=files, skipped=skipped, unmatched=unmatched)


def open_found(root: Path, rel: str) -> int:
    """A read-only descriptor of the regular file ``rel`` (a path :func:`find_outputs` gave)
    under ``root``, reached without following a link at any step: OSError when a part is a
    link now (ELOOP, ENOTDIR) or is gone; ValueError when it is not a regular file."""
    parts = rel.split("/")
    if os.open not in os.supports_dir_fd or not NO_FOLLOW:  # Windows: no openat
        path = root.joinpath(*parts)
        if path.resolve() != path.absolute() or path.is_symlink():
            raise ValueError("reached through a symbolic link")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        return _regular(fd)
    folder = os.open(root, os.O_RDONLY | _DIRECTORY)
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_RDONLY | _DIRECTORY | NO_FOLLOW, dir_fd=folder)
            os.close(folder)
            folder = inner
        fd = os.open(parts[-1], os.O_RDONLY | NO_FOLLOW | _NONBLOCK, dir_fd=folder)
    finally:
        os.close(folder)
    return _regular(fd)


def _regular(fd: int) -> int:
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ValueError(f"not a regular file ({_kind(mode)})")
    return fd


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _lstat(path: Path) -> int | None:
    try:
        return os.lstat(path).st_mode
    except (OSError, ValueError):
        return None


def _entries(folder: Path) -> list[tuple[str, int]]:
    """(name, lstat mode) of each entry of ``folder``, sorted; none when it cannot be read."""
    try:
        with os.scandir(folder) as it:
            found = []
            for entry in it:
                try:
                    found.append((entry.name, entry.stat(follow_symlinks=False).st_mode))
                except OSError:
                    continue
    except OSError:
        return []
    return sorted(found)


def _link_target(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "an unusual file"
