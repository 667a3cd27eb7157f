"""The remote queue's content store, for now: blobs travel inline in the workload object.

Until the remote queue stores blobs as objects of their own, ``put_blob`` keeps the bytes in
this process's memory and ``put`` writes them into the workload's attachment objects in the
inline form (:class:`caliber.queue.workload.Attachment`), as before; a pinion writes inline
attachments from the workload it claimed, checking them against their hash. What is held is
forgotten when the backend closes.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from caliber.errors import NotFoundError
from caliber.queue.blobs import BlobRef, copy_verified, is_sha256

if TYPE_CHECKING:
    from caliber.queue.workload import Workload


class InlineBlobs:
    """:class:`caliber.queue.blobs.BlobStore` by holding bytes until ``put`` inlines them."""

    def __init__(self) -> None:
        self._blobs_held: dict[str, bytes] = {}

    def put_blob(self, source: Path) -> BlobRef:
        data = Path(source).read_bytes()
        ref = BlobRef(hashlib.sha256(data).hexdigest(), len(data))
        self._blobs_held[ref.sha256] = data
        return ref

    def has_blob(self, sha256: str) -> bool:
        return is_sha256(sha256) and sha256 in self._blobs_held

    def open_blob(self, sha256: str) -> BinaryIO:
        try:
            return io.BytesIO(self._blobs_held[sha256])
        except KeyError:
            raise NotFoundError(f"blob {sha256} is not held by this remote queue") from None

    def fetch_blob(self, sha256: str, dest: Path, *, mode: int = 0o600) -> None:
        with self.open_blob(sha256) as source:
            copy_verified(source, sha256, dest, mode=mode)

    def inlined(self, workload: Workload) -> Workload:
        """``workload`` with every stored attachment's bytes (held by ``put_blob``) inline;
        NotFoundError when one was not put here."""
        from caliber.queue.workload import Attachment

        attachments = []
        for a in workload.attachments:
            if a.kind == "stored":
                with self.open_blob(a.sha256) as f:
                    inline = Attachment.from_bytes(a.path, f.read())
                a = a.model_copy(update={"encoding": inline.encoding, "content": inline.content})
            attachments.append(a)
        return workload.model_copy(update={"attachments": attachments})
