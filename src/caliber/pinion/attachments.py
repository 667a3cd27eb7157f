"""Writing a workload's attachments into its run folder, each checked against its hash.

- stored (the usual form): the blob is copied from the queue's content store by streaming,
  its SHA-256 checked on the way (:meth:`caliber.queue.blobs.BlobStore.fetch_blob`); bytes
  that do not match are never written under the attachment's name, and the workload is
  refused like a tampered one (BlobMismatchError: never run). A copy, not a hard link: a task
  that writes into its input (or chmods it and does) would otherwise change the blob for
  every later workload that attaches the same file, and the copy checks the hash in the
  same pass that a link would need anyway to check it;
- by reference: the file on the shared drive is read once through SHA-256 before the run and
  linked into the run folder (a symbolic link; a checked copy where links cannot be made);
  missing or changed, the workload fails before any task with the reason (AttachmentError);
- inline (older queues, the remote queue for now): the bytes in the workload, checked too.

Files are 0700 when the attachment is executable, else 0600; folders 0700.

A big attachment over a slow link (or a slow shared drive) can take longer than the lease:
``between`` is called before every read of :data:`~caliber.queue.blobs.CHUNK` bytes (1 MiB),
so the pinion renews its lease while it writes, and stops by raising there (the lease lost, a
cancel: see :meth:`caliber.pinion.loop.Pinion.prepare`).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from caliber.errors import AttachmentError, BlobMismatchError, NotFoundError
from caliber.platform import make_private_folder
from caliber.queue.blobs import CHUNK, copy_verified, paced
from caliber.workflow.attachments import resolve_inside

if TYPE_CHECKING:
    from caliber.queue.blobs import BlobStore
    from caliber.queue.workload import Attachment


def write_attachments(attachments: Sequence[Attachment], work_dir: Path,
                      store: BlobStore | None, *,
                      between: Callable[[], object] | None = None) -> None:
    """Write every attachment into ``work_dir`` (paths re-checked), as the module says;
    ``store``: the content store of the queue the workload came from; ``between``: called
    before every chunk read (what it raises stops the writing and goes through)."""
    for a in attachments:
        target = resolve_inside(work_dir, a.path)
        make_private_folder(target.parent)
        mode = 0o700 if a.executable else 0o600
        if a.reference is not None:
            _link_reference(a, target, between)
        elif a.content is not None:
            copy_verified(paced(io.BytesIO(a.data()), between), a.sha256, target, mode=mode,
                          size=a.size)
        else:
            try:
                if store is None:
                    raise NotFoundError("this queue has no content store")
                with store.open_blob(a.sha256) as source:  # fetch_blob, paced
                    copy_verified(paced(source, between), a.sha256, target, mode=mode,
                                  size=a.size)
            except NotFoundError:
                raise AttachmentError(
                    f"the stored content of attachment {a.path!r} (blob {a.sha256[:12]}) is "
                    "missing from the queue's store") from None
            except BlobMismatchError as exc:
                raise BlobMismatchError(f"attachment {a.path!r}: {exc}") from exc


def _link_reference(a: Attachment, target: Path,
                    between: Callable[[], object] | None) -> None:
    """Check the file an attachment by reference names, then link it in as ``target``."""
    assert a.reference is not None
    where = f"attachment {a.path!r} by reference to {a.reference}"
    try:
        with open(a.reference, "rb") as f:
            digest, size, source = hashlib.sha256(), 0, paced(f, between)
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        raise AttachmentError(f"{where}: the file is missing on this machine") from None
    except OSError as exc:
        raise AttachmentError(f"{where}: the file cannot be read "
                              f"({exc.strerror or exc})") from exc
    if digest.hexdigest() != a.sha256 or size != a.size:
        raise AttachmentError(
            f"{where}: the file changed since it was queued (SHA-256 {digest.hexdigest()[:12]},"
            f" {size} bytes; queued: {a.sha256[:12]}, {a.size} bytes)")
    try:
        os.symlink(a.reference, target)
    except OSError:  # no links here (Windows without the right): a checked copy instead
        with open(a.reference, "rb") as f:
            try:
                copy_verified(paced(f, between), a.sha256, target, size=a.size)
            except BlobMismatchError as exc:
                raise AttachmentError(f"{where}: the file changed while it was read") from exc
