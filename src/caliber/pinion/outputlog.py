"""``output.log`` in bounded disk and memory: the pinion's cap (:class:`LogCap`) and reading
the log back as it is written and cut (:class:`LogReader`).

The workload's process writes ``output.log`` itself (its fds 1 and 2, opened ``O_APPEND``):
nothing stands between it and the file, so a workload that prints little costs nothing. The
pinion looks at the file's size on its wake-ups while the workload runs (a few times a
second) and once more when it ends; past the cap (``--log-max``) it cuts out the middle of
the file in place. What stays is the head (the first half of the cap), one line saying how
many bytes were cut, then the newest output::

    ...the first lines...
    [caliber: 1476395008 bytes of output cut here (output.log is capped at 100M: --log-max)]
    ...the last lines...

How the middle goes, best first (:data:`MODES`):

- ``collapse``: ``fallocate(FALLOC_FL_COLLAPSE_RANGE)`` (Linux; ext4, XFS) removes whole
  blocks from the middle; the file shrinks. The kernel holds the file's lock, so the
  workload's appends go on at the new end and none is lost.
- ``punch``: ``fallocate(FALLOC_FL_PUNCH_HOLE)`` (Linux; also Btrfs, tmpfs) frees the middle's
  blocks but keeps the file's length: its disk use is bounded, a hole stands where the middle
  was, and readers here skip it. When the run ends the tail is moved down after the head and
  the file is shortened, so the log at rest has no hole.
- ``copy``: anything else (other systems, file systems without these). The tail is copied
  down after the head and the file is cut short there, copying again what the workload
  printed meanwhile; what it prints in the instant between the last look and the cut is lost
  uncounted. This writes the kept tail again at each cut, about as much as the workload
  prints.

Readers must know where the cut is while the workload runs, and that a cut is under way: the
pinion writes the layout (:class:`Layout`) to :data:`LAYOUT_FILE` in the run folder, first
marked ``busy``, then cuts, then writes it again; a reader keeps what it read only when the
layout was the same, and not busy, before and after (a sequence lock).

This module is the pinion's and the command line's, not the workload process's.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from caliber.pinion.follow import OUTPUT_FILE
from caliber.platform import NO_FOLLOW, write_private_file
from caliber.sizes import format_size

LAYOUT_FILE = "caliber-output-cut.json"
MODES = ("collapse", "punch", "copy")
CHECK_EVERY = 0.05  # seconds: the longest time between two looks at a running log's size...
CHECK_SOON = 0.01  # ... and the shortest, when at the rate it grows it would soon be past
READ_BATCH = 1 << 20  # bytes a reader reads under one look at the layout
COPY_CHUNK = 1 << 20  # bytes moved at a time when the tail is moved down after the head
BUSY_WAIT = 0.01  # seconds a reader waits for a cut under way...
BUSY_TRIES = 200  # ... this many times, then reads on (the pinion may have died mid-cut)
MARKER = ("\n[caliber: {cut} bytes of output cut here (output.log is capped at {cap}: "
          "--log-max)]\n")

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_FALLOC_FL_COLLAPSE_RANGE = 0x08


@dataclass(frozen=True)
class Layout:
    """Where a cut ``output.log`` has what: bytes ``[0, marker_at)`` are the output's first
    bytes, ``[marker_at, head)`` the marker line, and from ``tail_at`` on the file holds the
    output from byte ``skipped_to`` of all that was printed (``[head, tail_at)`` is a hole)."""

    inode: int
    """The file it describes (another file at that path is not cut)."""
    generation: int
    """Counts the cuts: a reader that saw another generation reads again."""
    head: int
    marker_at: int
    tail_at: int
    skipped_to: int
    busy: bool = False
    """A cut is under way: what the file holds is neither layout's."""

    @property
    def cut(self) -> int:
        """Bytes of output left out (the marker line stands in for them)."""
        return self.skipped_to - self.marker_at

    def logical(self, pos: int) -> int:
        """The offset in all that was printed of the file's byte ``pos``."""
        if pos < self.head:
            return pos
        return max(pos, self.tail_at) - self.tail_at + self.skipped_to


def read_layout(folder: Path, inode: int | None = None) -> Layout | None:
    """The run folder's layout (None: never cut, or about another file than ``inode``)."""
    try:
        with open(folder / LAYOUT_FILE, "rb") as f:
            layout = Layout(**json.loads(f.read(4096)))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):  # not ours: as if never cut
        return None
    return layout if inode is None or layout.inode == inode else None


def _write_layout(folder: Path, layout: Layout | None) -> None:
    path = folder / LAYOUT_FILE
    if layout is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    partial = path.with_name(LAYOUT_FILE + ".partial")
    write_private_file(partial, json.dumps(asdict(layout)).encode("utf-8"))  # 0600
    os.replace(partial, path)


@functools.cache
def _libc_fallocate() -> Callable[[int, int, int, int], int]:
    import ctypes  # only where a log is cut

    call = ctypes.CDLL(None, use_errno=True).fallocate64  # the C library's, off_t of 64 bits
    call.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    call.restype = ctypes.c_int
    return call


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """Linux ``fallocate(2)`` with its mode flags (``os.posix_fallocate`` has none)."""
    if not sys.platform.startswith("linux"):
        raise OSError(95, "fallocate is Linux's")  # EOPNOTSUPP
    if _libc_fallocate()(fd, mode, offset, length) != 0:
        import ctypes

        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class LogCap:
    """Keeps one run's ``output.log`` under ``cap`` bytes (0: no cap), cutting its middle
    out in place: :meth:`tick` while the workload runs, :meth:`finish` once it ended."""

    def __init__(self, folder: Path, cap: int, modes: tuple[str, ...] = MODES) -> None:
        self.folder = folder
        self.cap = cap
        self.modes = list(modes)
        """The ways still worth trying on this file, best first."""
        self.layout: Layout | None = None
        self._fd: int | None = None
        self._last = time.monotonic()
        self._next_check = self._last + CHECK_SOON  # a workload that ends sooner: no look
        self._size = 0  # bytes at the last look, after its cut
        self._grown = 0

    def tick(self) -> float:
        """A look at the size when it is time, and a cut when past the cap. The next look is
        due when, at the rate the log grew, it would be halfway from its size to the cap
        (within :data:`CHECK_SOON` and :data:`CHECK_EVERY`). Returns the seconds until then,
        for the pinion's wait."""
        now = time.monotonic()
        if self.cap <= 0:
            return CHECK_EVERY
        if now >= self._next_check:
            self._size = self._check(final=False)
            rate = self._grown / max(now - self._last, CHECK_SOON)  # bytes a second
            self._last = now
            wait = (self.cap - self._size) / rate / 2 if rate > 0 else CHECK_EVERY
            self._next_check = now + min(max(wait, CHECK_SOON), CHECK_EVERY)
        return self._next_check - now

    def finish(self) -> None:
        """After the run: cut to the cap for good, leave no hole, and let go of the file."""
        try:
            if self.cap > 0:
                self._check(final=True)
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _check(self, *, final: bool) -> int:
        """Cut when past the cap; the size of the log after the cut (0: no log). Sets
        ``_grown``: by how much it grew since the last look."""
        try:
            if self._fd is None:
                size = os.stat(self.folder / OUTPUT_FILE).st_size
                self._grown = size - self._size
                if size <= self.cap:
                    return size  # most runs: never opened
                self._fd = os.open(self.folder / OUTPUT_FILE, os.O_RDWR | NO_FOLLOW)
            stat = os.fstat(self._fd)
            self._grown = stat.st_size - self._size
            layout = self.layout
            if layout is not None and stat.st_size < layout.tail_at:  # truncated by someone
                self.layout = layout = None
                _write_layout(self.folder, None)
            kept = stat.st_size - (layout.tail_at - layout.head if layout else 0)
            hole = layout is not None and layout.tail_at > layout.head
            if kept > self.cap or (final and hole):
                self._cut(stat.st_size, stat.st_ino, stat.st_blksize or 4096, final)
                return os.fstat(self._fd).st_size
            return stat.st_size
        except OSError:  # a log that cannot be cut is left as it is: never the run's failure
            return 0

    def _cut(self, size: int, inode: int, block: int, final: bool) -> None:
        old = self.layout
        head = self.cap // 2 // block * block
        if head < block or self.cap - head < 2 * block:  # blocks too big for this cap
            head = self.cap // 2
            self.modes = ["copy"]
        start = old.tail_at if old else head
        keep = self.cap - head if final else (self.cap - head) // 2
        for mode in list(self.modes):
            if mode == "collapse" or (mode == "punch" and not final):
                tail = max(-(-(size - keep) // block) * block, start)  # whole blocks
            else:
                tail = max(size - keep, start)  # the tail is moved down after the head
            skipped_to = old.logical(tail) if old else tail
            marker = _marker(skipped_to, head, self.cap)
            layout = Layout(
                inode=inode, generation=(old.generation if old else 0) + 1, head=head,
                marker_at=head - len(marker),
                tail_at=tail if mode == "punch" and not final else head,
                skipped_to=skipped_to, busy=True)
            _write_layout(self.folder, layout)
            try:
                self._apply(mode, start, tail, size, head, final)
            except OSError:
                if mode == "copy":
                    _write_layout(self.folder, old and replace(old, generation=layout.generation))
                    raise
                self.modes.remove(mode)  # not on this file system: the next way
                continue
            assert self._fd is not None
            os.pwrite(self._fd, marker, layout.marker_at)
            self.layout = replace(layout, busy=False)
            _write_layout(self.folder, self.layout)
            return

    def _apply(self, mode: str, start: int, tail: int, size: int, head: int,
               final: bool) -> None:
        """Take ``[start, tail)`` out of the file (``size`` bytes), the head staying."""
        fd = self._fd
        assert fd is not None
        if mode == "collapse":  # (never after punch: the modes are tried best first)
            if tail > start:
                _fallocate(fd, _FALLOC_FL_COLLAPSE_RANGE, start, tail - start)
        elif mode == "punch" and not final:
            if tail > start:
                _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, start, tail - start)
        else:  # copy; and punch's hole goes once the workload has ended
            self._move_down(tail, size, head)

    def _move_down(self, source: int, size: int, target: int) -> None:
        """Copy the bytes from ``source`` to the end down to ``target``, then end the file
        there (bytes written meanwhile are copied too)."""
        fd = self._fd
        assert fd is not None
        while True:
            while source < size:
                data = os.pread(fd, min(COPY_CHUNK, size - source), source)
                if not data:
                    break
                os.pwrite(fd, data, target)
                source += len(data)
                target += len(data)
            size = os.fstat(fd).st_size
            if source >= size:
                break
        os.ftruncate(fd, target)


def _marker(skipped_to: int, head: int, cap: int) -> bytes:
    """The marker line ending at ``head``, its count including the head bytes it covers."""
    text = b""
    while True:  # the count grows with the marker's own length: settles at once
        again = MARKER.format(cut=skipped_to - (head - len(text)), cap=format_size(cap))
        if len(again) == len(text):
            return again.encode()
        text = again.encode()


class LogReader:
    """Reads a run folder's ``output.log`` from its start and then what is added to it, in
    batches of at most :data:`READ_BATCH` bytes, through the pinion's cuts. ``notice`` is told
    (one line) when output was lost to the reader: cut before it was read, the file truncated
    or replaced by someone (it then reads the new file from its start)."""

    def __init__(self, folder: Path, notice: Callable[[str], None] | None = None) -> None:
        self.folder = folder
        self.notice = notice or (lambda message: None)
        self.pos = 0
        """Where the next read starts in the file."""
        self.layout: Layout | None = None
        self.seen = False
        """Whether the file was there."""
        self._fd: int | None = None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def read(self) -> Iterator[bytes]:
        """What was written since the last read, up to the file's end as it is now."""
        if self._fd is None and not self._open():
            return
        while True:
            data = self._batch()
            if data:
                yield data
            elif not self._replaced():
                return

    def _open(self) -> bool:
        try:
            self._fd = os.open(self.folder / OUTPUT_FILE, os.O_RDONLY)
        except OSError:
            return False
        self.seen = True
        return True

    def _batch(self) -> bytes:
        fd = self._fd
        assert fd is not None
        stat = os.fstat(fd)
        for tries in range(BUSY_TRIES + 1):
            before = read_layout(self.folder, stat.st_ino)
            if before is not None and before.busy and tries < BUSY_TRIES:
                time.sleep(BUSY_WAIT)
                continue
            self._follow_cut(before)
            size = os.fstat(fd).st_size
            limit = READ_BATCH
            if before is not None and before.tail_at <= size:
                if before.head <= self.pos < before.tail_at:
                    self.pos = before.tail_at
                elif self.pos < before.head:
                    limit = min(limit, before.head - self.pos)
            data = os.pread(fd, limit, self.pos)
            if read_layout(self.folder, stat.st_ino) != before and tries < BUSY_TRIES:
                continue  # cut meanwhile: read again where the layout says
            if not data and size < self.pos:
                self.notice(f"{OUTPUT_FILE} was truncated (to {size} bytes): reading it "
                            "again from its start")
                self.pos, self.layout = 0, None
                continue
            self.pos += len(data)
            return data
        return b""  # pragma: no cover (the last try always returns)

    def _follow_cut(self, layout: Layout | None) -> None:
        """Move to where the same output is after the cut ``layout`` (or just after the cut,
        telling what was not read)."""
        old = self.layout
        if layout is None or (old is not None and layout.generation == old.generation):
            return
        self.layout = layout
        at = old.logical(self.pos) if old is not None else self.pos
        if at < layout.head:
            if old is None and at > layout.marker_at:  # the first cut: show its marker whole
                self.pos = layout.marker_at
        elif at >= layout.skipped_to:
            self.pos = at - layout.skipped_to + layout.tail_at
        else:
            self.notice(f"{layout.skipped_to - at} bytes of output were cut from {OUTPUT_FILE} "
                        "(over its cap) before they were read: going on after the cut")
            self.pos = layout.tail_at

    def _replaced(self) -> bool:
        """Whether another file took the log's name (it is then read from its start)."""
        fd = self._fd
        assert fd is not None
        try:
            named = os.stat(self.folder / OUTPUT_FILE)
        except OSError:
            return False
        opened = os.fstat(fd)
        if (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino):
            return False
        self.close()
        self.pos, self.layout = 0, None
        self.notice(f"{OUTPUT_FILE} was replaced by another file: reading that from its start")
        return self._open()


def stream(folder: Path) -> Iterator[bytes]:
    """All of a run folder's ``output.log``, in batches (nothing when it is not there)."""
    reader = LogReader(folder)
    try:
        yield from reader.read()
    finally:
        reader.close()
