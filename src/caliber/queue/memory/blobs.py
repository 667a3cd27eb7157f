"""The in-memory queue's content store: blobs as bytes named by their SHA-256
(:class:`caliber.queue.blobs.BlobStore`), read back through the same hash check as the
local store's files (:func:`caliber.queue.blobs.copy_verified`)."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from caliber.errors import NotFoundError
from caliber.queue.blobs import CHUNK, BlobRef, copy_verified, is_sha256


class MemoryBlobs:
    """Blobs in a dict, safe for the threads of one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blobs: dict[str, bytes] = {}

    def put_blob(self, source: Path) -> BlobRef:
        digest, parts = hashlib.sha256(), []
        with open(source, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                parts.append(chunk)
        data = b"".join(parts)
        ref = BlobRef(digest.hexdigest(), len(data))
        with self._lock:
            self._blobs.setdefault(ref.sha256, data)
        return ref

    def has_blob(self, sha256: str) -> bool:
        with self._lock:
            return is_sha256(sha256) and sha256 in self._blobs

    def open_blob(self, sha256: str) -> BinaryIO:
        with self._lock:
            data = self._blobs.get(sha256) if is_sha256(sha256) else None
        if data is None:
            raise NotFoundError(f"blob {sha256} is not in the in-memory store")
        return io.BytesIO(data)

    def fetch_blob(self, sha256: str, dest: Path, *, mode: int = 0o600) -> None:
        with self.open_blob(sha256) as source:
            copy_verified(source, sha256, dest, mode=mode)

    def unreferred(self, candidates: Iterable[str], referred: set[str]) -> tuple[int, int]:
        """(blobs, bytes) of the ``candidates`` held here that nothing ``referred`` names."""
        with self._lock:
            gone = {sha for sha in candidates if sha in self._blobs and sha not in referred}
            return len(gone), sum(len(self._blobs[sha]) for sha in gone)

    def sweep(self, candidates: Iterable[str], referred: set[str]) -> tuple[int, int]:
        """Remove the ``candidates`` nothing ``referred`` names (blobs the records that went
        referred to; a blob put but not referred to yet is never a candidate): (blobs,
        bytes) freed."""
        with self._lock:
            gone = {sha for sha in candidates if sha in self._blobs and sha not in referred}
            freed = sum(len(self._blobs.pop(sha)) for sha in gone)
            return len(gone), freed
