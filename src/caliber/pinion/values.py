"""A pinion's part in keeping big arrays as binary (:mod:`caliber.results.arrays`).

The workload's process writes each big array as ``.npy`` into ``.caliber/values/`` of its run
folder, hashing it as it writes it, and names it by SHA-256 in the Results; before the pinion
completes the workload it puts each of those files into the queue's content store
(:func:`keep_values`; the local store moves the file in without hashing it again, see
:func:`caliber.results.arrays.put_values`), so the signed Results name exactly the bytes
stored. A resumed workload's reused arrays are written into
that folder from the store before its process starts (:func:`fetch_resumed`), their hashes
checked.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caliber.queue.blobs import BlobStore
from caliber.results.arrays import VALUES_DIR, fetch_values, put_values, results_refs

if TYPE_CHECKING:
    from caliber.results.model import Results


def inline_max(backend: object) -> int | None:
    """Bytes above which a workload's arrays are stored as binary
    (``CALIBER_ARRAY_INLINE_MAX``); None when the queue has no content store (they stay
    JSON lists then)."""
    if not isinstance(backend, BlobStore):
        return None
    from caliber.settings import load_settings

    return load_settings().array_inline_max


def fetch_resumed(backend: object, work_dir: Path, resume: dict[str, Any] | None, *,
                  between: Callable[[], object] | None = None) -> None:
    """Write the stored arrays of the Results a workload resumes into its values folder
    (BlobMismatchError or NotFoundError when one cannot be had as it was signed); ``between``
    is called before every chunk read (the pinion renews its lease there)."""
    refs = results_refs(resume) if resume is not None else {}
    if refs and isinstance(backend, BlobStore):
        fetch_values(backend, work_dir / VALUES_DIR, refs, between=between)


def keep_values(backend: object, work_dir: Path, results: Results) -> Results:
    """``results`` once every array they refer to is in the queue's store (put there from
    the run folder); failed, saying why, when one is not as the run wrote it."""
    refs = results.stored_values()
    if not refs or not isinstance(backend, BlobStore):
        return results
    problem = put_values(backend, work_dir / VALUES_DIR, refs)
    if problem is None:
        return results
    from caliber.results.model import ErrorInfo, RunStatus

    return results.model_copy(update={
        "status": RunStatus.FAILED,
        "error": results.error or ErrorInfo(type="ValueError",
                                             message=f"a value cannot be kept: {problem}")})
