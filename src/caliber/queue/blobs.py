"""The content-addressed store beside each queue: a blob's name is its SHA-256.

Attachments (and, from other parts, big arrays and result files) are stored once by content:
the same file queued 17 times is one blob. Every queue backend is a :class:`BlobStore`. On
the local queue the blobs are files in a folder beside the database (:class:`FolderBlobStore`,
``caliber.db-blobs/<2 hex>/<sha256>``, as SQLite's own ``caliber.db-wal`` sits beside it):

- files, not SQLite blobs: SQLite caps one value at 1 GB (``SQLITE_MAX_LENGTH``), a big blob
  in the database would have to be compacted away after a prune, and a file streams with
  plain reads and writes, in bounded memory, by the operating system's own cache;
- the folders are 0700 and the files 0600, private from their first moment (the helpers of
  :mod:`caliber.platform`); each blob is written to a temporary name in ``tmp/``, flushed
  to disk (fsync) and renamed to its name: a crash leaves a half-written temporary file,
  never a half blob under its final name. Temporary files older than
  :data:`STALE_TMP_SECONDS` are swept;
- every read that hands bytes to a run checks them against the name (:func:`copy_verified`):
  a blob changed on disk is refused (BlobMismatchError), like a tampered workload;
- every blob is named with its modification time set to :data:`SEAL_NS` (the *seal*): a
  write to the file through the file system (an edit, ``numpy.load(mmap_mode="r+")``, a
  truncation) sets it to the time of the write, so a reader that finds the seal intact knows
  the file has not been written since it was named (:func:`is_sealed`; the big arrays'
  reader relies on it, :mod:`caliber.results.arrays`) and a reader that does not hashes it;
- a file Caliber's own writer made, hashing the bytes as it wrote them, is moved in by
  rename (:meth:`FolderBlobStore.take_blob`) instead of being read and hashed again.

No pydantic and no threading here: the pinion's side imports this module.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, cast, runtime_checkable

from caliber.errors import BlobMismatchError, NotFoundError, QueueError
from caliber.platform import (
    NO_FOLLOW,
    create_new_file,
    disk_hint,
    make_private_folder,
    open_private_file,
)

__all__ = [
    "CHUNK", "SEAL_NS", "BlobRef", "BlobStore", "FileBlobStore", "FolderBlobStore",
    "copy_verified", "fetch_paced", "hash_file", "is_sealed", "is_sha256", "paced",
]

CHUNK = 1 << 20  # bytes read and written at a time: memory stays bounded by this
STALE_TMP_SECONDS = 24 * 3600  # a temporary file this old is a crashed writer's: swept
SEAL_NS = 946_684_800 * 10**9
"""The modification time (ns since the epoch: 2000-01-01 00:00:00 UTC) of every blob the
store names: any later write to the file replaces it with the time of that write."""
Hold = Callable[["BlobRef"], AbstractContextManager[object]]
"""Entered around the moment a blob gets its name (see :meth:`FolderBlobStore.put_stream`)."""
_SHA256 = re.compile(r"[0-9a-f]{64}")


def is_sha256(text: object) -> bool:
    """Whether ``text`` is a blob name: 64 lowercase hex digits."""
    return isinstance(text, str) and _SHA256.fullmatch(text) is not None


@dataclass(frozen=True)
class BlobRef:
    """A blob's name (SHA-256, 64 lowercase hex digits) and size in bytes."""

    sha256: str
    size: int


def hash_file(path: Path) -> BlobRef:
    """The SHA-256 and size of the file at ``path``, read in chunks of :data:`CHUNK` (bounded
    memory whatever the file's size)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return BlobRef(digest.hexdigest(), size)


@runtime_checkable
class BlobStore(Protocol):
    """A content-addressed store beside a queue: a blob's name is its SHA-256."""

    def put_blob(self, source: Path) -> BlobRef:
        """Stream the file ``source`` through SHA-256 into the store in bounded memory;
        storing a blob that is already there stores nothing more."""

    def has_blob(self, sha256: str) -> bool:
        """Whether the store holds blob ``sha256``."""

    def open_blob(self, sha256: str) -> BinaryIO:
        """A readable binary stream of the blob's bytes (NotFoundError when absent)."""

    def fetch_blob(self, sha256: str, dest: Path, *, mode: int = 0o600) -> None:
        """Write the blob to ``dest`` (a new file, with ``mode``) by streaming, checking the
        hash on the way (BlobMismatchError when it does not match: then ``dest`` is not
        made; NotFoundError when absent)."""


@runtime_checkable
class FileBlobStore(Protocol):
    """A :class:`BlobStore` whose blobs are files on this machine, in a private folder of the
    user's own (the local queue's): it can take in a finished file by moving it, and its
    blobs carry the seal (:func:`is_sealed`)."""

    def take_blob(self, source: Path, ref: BlobRef) -> BlobRef:
        """Move the file ``source``, whose SHA-256 and size ``ref`` its writer computed from
        the bytes it wrote, into the store under that name without reading it (see
        :meth:`FolderBlobStore.take_blob`); the ref stored."""


def is_sealed(stream: object, size: int) -> bool:
    """Whether ``stream`` (an open blob) is a regular file of ``size`` bytes not written since
    the store named it (its modification time still :data:`SEAL_NS`). False for anything
    that is not a file on this machine (a remote store's stream)."""
    try:
        st = os.fstat(stream.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError):  # no file behind it (io.UnsupportedOperation too)
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size and st.st_mtime_ns == SEAL_NS


def _seal(path: Path) -> None:
    """Give the file ``path`` the seal (before it is flushed to disk and named)."""
    os.utime(path, ns=(time.time_ns(), SEAL_NS))


def copy_verified(source: BinaryIO, sha256: str, dest: Path, *, mode: int = 0o600,
                  size: int | None = None) -> None:
    """Stream ``source`` into the new file ``dest`` (never through a link; made with
    ``mode``), checking that its bytes have the SHA-256 ``sha256`` (and ``size``): they are
    written to a temporary name beside ``dest`` and renamed only when they match, so a blob
    whose bytes do not match its name never appears under ``dest`` (BlobMismatchError).
    FileExistsError when ``dest`` exists."""
    if os.path.lexists(dest):
        raise FileExistsError(f"{dest} exists")
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
    digest = hashlib.sha256()
    written = 0
    fd = create_new_file(tmp, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                written += len(chunk)
                out.write(chunk)
            if digest.hexdigest() != sha256 or (size is not None and written != size):
                raise BlobMismatchError(
                    f"stored blob {sha256[:12]} does not match its name (its bytes hash to "
                    f"{digest.hexdigest()[:12]}, {written} bytes): changed on disk or damaged"
                )
            os.chmod(tmp, mode)
        try:
            os.link(tmp, dest)  # FileExistsError when something appeared there meanwhile
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links: checked free just before
            os.rename(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


class _Paced:
    """A binary stream that calls ``between`` before each read (``read`` is all that
    :func:`copy_verified` and the hashing of a shared-drive reference use)."""

    def __init__(self, source: BinaryIO, between: Callable[[], object]) -> None:
        self._source = source
        self._between = between

    def read(self, size: int = -1) -> bytes:
        self._between()
        return self._source.read(size)


def paced(source: BinaryIO, between: Callable[[], object] | None) -> BinaryIO:
    """``source``, calling ``between`` before each read (of :data:`CHUNK` bytes when
    :func:`copy_verified` reads it): a pinion renews its lease there while it writes a big
    file over a slow link, and stops by raising there. ``source`` itself when None."""
    return source if between is None else cast("BinaryIO", _Paced(source, between))


def fetch_paced(store: BlobStore, sha256: str, dest: Path, *, mode: int = 0o600,
                between: Callable[[], object] | None = None) -> None:
    """``store.fetch_blob(sha256, dest, mode=mode)``, with ``between`` called before every
    read of :data:`CHUNK` bytes (see :func:`paced`; what it raises goes through, and
    ``dest`` is not made)."""
    if between is None:
        store.fetch_blob(sha256, dest, mode=mode)
        return
    with store.open_blob(sha256) as source:
        copy_verified(paced(source, between), sha256, dest, mode=mode)


class FolderBlobStore:
    """Blobs as files under ``root``: ``<root>/<first 2 hex>/<sha256>``, temporary files in
    ``<root>/tmp``. Safe for many processes at once: a blob is renamed into place whole, and
    two writers of one blob write the same bytes."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        """Where blob ``sha256`` is (or would be); NotFoundError for a name that is no hash."""
        if not is_sha256(sha256):
            raise NotFoundError(f"{sha256!r} is not a blob name (a SHA-256 in hex)")
        return self.root / sha256[:2] / sha256

    def put_blob(self, source: Path, hold: Hold | None = None) -> BlobRef:
        """See :meth:`BlobStore.put_blob`; ``hold`` as for :meth:`put_stream`. OSError (its
        ``filename`` the source) when ``source`` cannot be read."""
        with open(source, "rb") as stream:
            return self.put_stream(stream, hold, what=str(source))

    def put_stream(self, stream: BinaryIO, hold: Hold | None = None, *,
                   what: str = "a blob") -> BlobRef:
        """Store what ``stream`` reads, in chunks of :data:`CHUNK`, under its SHA-256.
        ``hold``, when given, is entered with the blob's ref around the moment the blob gets
        its name (and also when it was there already): the local queue records there, in its
        database's write transaction, that someone is about to refer to it, so a prune
        running at the same time cannot remove it (see :mod:`caliber.queue.sqlite.blobs`)."""
        tmp_dir = self.root / "tmp"
        try:
            make_private_folder(tmp_dir)
            tmp = tmp_dir / f"{os.getpid()}-{secrets.token_hex(8)}"
            digest = hashlib.sha256()
            size = 0
            fd = open_private_file(tmp, os.O_WRONLY | os.O_EXCL)
            try:
                with os.fdopen(fd, "wb") as out:
                    while chunk := stream.read(CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                    ref = BlobRef(digest.hexdigest(), size)
                    final = self.path(ref.sha256)
                    fresh = _size(final) != size  # absent (or cut short by hand): this goes in
                    if fresh:
                        out.flush()
                        _seal(tmp)
                        os.fsync(out.fileno())
                with hold(ref) if hold is not None else contextlib.nullcontext():
                    if fresh:
                        make_private_folder(final.parent)
                        os.replace(tmp, final)  # the same bytes if another writer won the race
                        _fsync_folder(final.parent)
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as exc:
            if exc.filename is not None and exc.filename == what:
                raise
            raise QueueError(f"cannot store {what} in the blob store {self.root}: "
                             f"{exc.strerror or exc}{disk_hint(self.root)}") from exc
        return ref

    def take_blob(self, source: Path, ref: BlobRef, hold: Hold | None = None) -> BlobRef:
        """Move the finished file ``source`` into the store as blob ``ref``, hashing nothing:
        for a file Caliber's own writer made in a private folder of this user's on the same
        file system, computing ``ref`` from the bytes it wrote (a big array's ``.npy``, see
        :class:`caliber.results.arrays.ValueWriter`), so the bytes are hashed once in all.
        The store's rules hold: the file must be a regular file of ``ref.size`` bytes with
        no other link (else BlobMismatchError, and nothing is named); it is made 0600, given
        the seal, and its data flushed to disk (fdatasync: Results that name it are stored
        next, and must not outlive it in a power cut) before it gets its name, by one
        rename, and ``hold``
        is entered around that as in :meth:`put_stream`. Where it cannot be moved (another
        file system) it is copied through SHA-256 by :meth:`put_blob`, which returns what it
        found. What this does not see: a change to the file, after its writer hashed it,
        that keeps its size (the writer is trusted, as the run's own process is: it could
        write into this folder itself)."""
        try:
            st = os.lstat(source)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size != ref.size:
                raise BlobMismatchError(
                    f"{source} is not the file its writer named {ref.sha256[:12]} ({st.st_size} "
                    f"bytes, {ref.size} written{', other links to it' * (st.st_nlink > 1)})")
            final = self.path(ref.sha256)
            os.chmod(source, 0o600)
            _seal(source)
            fd = os.open(source, os.O_RDONLY | NO_FOLLOW)
            try:  # its data, at once when its writer flushed it already (the seal and the
                _sync_data(fd)  # mode go with the folder's flush below, or are lost: safe)
            finally:
                os.close(fd)
            moved = True
            with hold(ref) if hold is not None else contextlib.nullcontext():
                make_private_folder(final.parent)
                try:
                    os.replace(source, final)  # the same bytes if another writer won the race
                except OSError as exc:
                    if exc.errno != errno.EXDEV:
                        raise
                    moved = False
            if not moved:
                return self.put_blob(source, hold)
            _fsync_folder(final.parent)
        except OSError as exc:
            raise QueueError(f"cannot store {source} in the blob store {self.root}: "
                             f"{exc.strerror or exc}{disk_hint(self.root)}") from exc
        return ref

    def has_blob(self, sha256: str) -> bool:
        return is_sha256(sha256) and self.path(sha256).is_file()

    def open_blob(self, sha256: str) -> BinaryIO:
        path = self.path(sha256)
        try:
            fd = os.open(path, os.O_RDONLY | NO_FOLLOW)
        except FileNotFoundError:
            raise NotFoundError(f"blob {sha256} is not in the store {self.root}") from None
        except OSError as exc:
            raise QueueError(f"cannot read blob {sha256} in {self.root}: "
                             f"{exc.strerror or exc}") from exc
        return os.fdopen(fd, "rb")

    def fetch_blob(self, sha256: str, dest: Path, *, mode: int = 0o600) -> None:
        with self.open_blob(sha256) as source:
            copy_verified(source, sha256, dest, mode=mode)

    # --- housekeeping ---------------------------------------------------------------------

    def names(self) -> Iterator[str]:
        """The name of every blob in the store (nothing when it has no folder yet)."""
        try:
            shards = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            return
        for shard in shards:
            if len(shard.name) != 2 or not shard.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(shard.path):
                if is_sha256(entry.name) and entry.name.startswith(shard.name):
                    yield entry.name

    def size_of(self, sha256: str) -> int:
        """The size in bytes of a blob on disk (0 when absent)."""
        try:
            return self.path(sha256).stat().st_size
        except OSError:
            return 0

    def remove(self, names: Iterable[str]) -> int:
        """Remove these blobs; returns the bytes freed. (The caller decides that nothing
        refers to them: see the backends' prune.)"""
        freed = 0
        for name in names:
            path = self.path(name)
            with contextlib.suppress(FileNotFoundError):
                freed += path.stat().st_size
                path.unlink()
        return freed

    def sweep_tmp(self, now: float | None = None) -> None:
        """Remove temporary files left by writers that crashed long ago."""
        cut = (time.time() if now is None else now) - STALE_TMP_SECONDS
        try:
            entries = list(os.scandir(self.root / "tmp"))
        except FileNotFoundError:
            return
        for entry in entries:
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and st.st_mtime < cut:
                    os.unlink(entry.path)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _sync_data(fd: int) -> None:
    """Flush a file's data to disk (``fdatasync`` where there is one: it does not wait for a
    journal commit of its times alone, so a file already flushed costs nothing)."""
    getattr(os, "fdatasync", os.fsync)(fd)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where folders can be opened: not on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
