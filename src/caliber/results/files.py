"""Result files: collected from a run folder into a queue's content store when a run ends
(:func:`keep_outputs`), and brought back from it (:func:`save_files`, :func:`open_file`).

A workflow names the files with ``outputs=`` globs (:mod:`caliber.workflow.outputs`). When
its run ends, completed, failed or cancelled, whoever ran it (a pinion, ``workflow run``)
streams each file it matches into the store beside the queue (``put_blob``: bounded memory,
stored once by content) and lists it in the Results: path, size, SHA-256, mode. The Results
signature covers that list (:func:`caliber.queue.secret.results_message`), and bringing a
file back checks its bytes against its SHA-256 on the way (``fetch_blob``): what arrives is
what the pinion collected.

Limits (settings of whoever collects): ``CALIBER_OUTPUT_MAX`` bytes per file and
``CALIBER_OUTPUT_TOTAL_MAX`` for all the files of one run. A file over either is not kept and
the Results say so (``files_skipped``); the run's status does not change for it: the values
and the other files are kept.

A resumed run does not run the tasks it reuses, so it would not make their files again: its
run folder starts with the files of the Results it resumes from written back
(:func:`write_back`, only files of Results whose signature the caller checked), so the tasks
that run again find them (a mesh file a reused task wrote), and when it ends a file still as
it was written back is listed by reference (the same blob, not read or stored again), one the
run wrote anew as the run left it.

No pydantic here on the collecting side (:func:`keep_outputs` returns plain JSON fields).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO

from caliber.errors import (
    BlobMismatchError,
    CaliberError,
    NotFoundError,
    QueueDamagedError,
    QueueError,
    UsageError,
    WorkflowDefinitionError,
)
from caliber.text import valid_unicode
from caliber.workflow.outputs import PRIVATE, check_pattern, find_outputs, open_found

if TYPE_CHECKING:
    from caliber.queue.blobs import BlobStore
    from caliber.results.model import ResultFile, Results

MAX_ENV = "CALIBER_OUTPUT_MAX"
TOTAL_ENV = "CALIBER_OUTPUT_TOTAL_MAX"
SAVED_MODE_MASK = 0o755  # a file brought back keeps its owner's bits; nobody else may write


@dataclass(frozen=True)
class OutputLimits:
    """How much of a run's result files is kept, in bytes (0: no limit)."""

    per_file: int
    total: int


def output_limits() -> OutputLimits:
    """The limits the settings give (``CALIBER_OUTPUT_MAX``, ``CALIBER_OUTPUT_TOTAL_MAX``);
    ConfigError naming the variable when one is not valid."""
    from caliber.settings import load_settings

    settings = load_settings()
    return OutputLimits(settings.output_max, settings.output_total_max)


def _bytes(count: int) -> str:
    """``1.5 GB`` (powers of 1000, as ``results files`` shows sizes)."""
    size = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "TB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def _source(fd: int, path: Path) -> Path:
    """A path that opens the file ``fd`` is open on (the one :func:`open_found` checked),
    never the name again: a link put in its place meanwhile is not followed."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        if os.path.isdir(folder):
            return Path(folder) / str(fd)
    return path  # Windows: no such folder (and no links made by an ordinary workload)


def keep_outputs(store: BlobStore, root: Path, patterns: Sequence[str], limits: OutputLimits,
                 *, between: Callable[[], None] | None = None,
                 written_back: Mapping[str, WrittenBack] | None = None) -> dict[str, Any]:
    """Collect the files ``patterns`` match in the run folder ``root`` into ``store``; the
    Results fields that list them (``files``, ``files_skipped``, ``files_unmatched``), as
    JSON. Each file is streamed (``put_blob``, bounded memory); one that cannot be read or
    stored, or is over a limit, is listed as skipped with the reason, and the rest are kept.
    ``written_back``: the files of earlier Results a resumed run started with
    (:func:`write_back`); one still as it was written, whose blob the store has, is listed
    as the earlier Results list it, without reading it (nor counting it against the limits:
    it is stored already). ``between``: called before each file (a pinion renews its lease
    there). Raises only what ``between`` raises and QueueDamagedError."""
    good: list[str] = []
    skipped: list[dict[str, str]] = []
    for pattern in patterns:
        try:
            good.append(check_pattern(pattern))
        except WorkflowDefinitionError as exc:  # checked when queued: a document by hand
            skipped.append({"path": str(pattern), "reason": str(exc)})
    found = find_outputs(root, good)
    skipped += [{"path": valid_unicode(path), "reason": valid_unicode(why)}
                for path, why in found.skipped]
    files: list[dict[str, Any]] = []
    total = 0
    for rel in found.files:
        if between is not None:
            between()
        back = (written_back or {}).get(rel)
        if back is not None and back.unchanged(root) and store.has_blob(back.record["sha256"]):
            files.append(dict(back.record))
            continue
        bad = _bad_name(rel)
        if bad is not None:
            skipped.append({"path": valid_unicode(rel), "reason": bad})
            continue
        kept, why = _keep_one(store, root, rel, limits, total)
        if kept is None:
            skipped.append({"path": rel, "reason": why})
            continue
        total += kept["size"]
        files.append(kept)
    skipped.sort(key=lambda s: s["path"])
    return {"files": files, "files_skipped": skipped, "files_unmatched": found.unmatched}


def _bad_name(rel: str) -> str | None:
    """Why the file name ``rel`` cannot be listed and written back as it is, or None."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not UTF-8 text"
    if "\\" in rel or any(ord(c) < 32 or ord(c) == 127 for c in rel):
        return "its name holds a backslash or a control character"
    return None


def _keep_one(store: BlobStore, root: Path, rel: str, limits: OutputLimits,
              total: int) -> tuple[dict[str, Any] | None, str]:
    """One file into the store: its record, or None and why it was not kept."""
    try:
        fd = open_found(root, rel)
    except ValueError as exc:
        return None, str(exc)
    except OSError as exc:
        return None, f"cannot be read: {exc.strerror or exc}"
    try:
        st = os.fstat(fd)
        why = _over(st.st_size, total, limits)
        if why is not None:
            return None, why
        try:
            ref = store.put_blob(_source(fd, root / rel))
        except QueueDamagedError:
            raise
        except QueueError as exc:
            return None, f"could not be stored: {exc}"
        except OSError as exc:
            return None, f"cannot be read: {exc.strerror or exc}"
        why = _over(ref.size, total, limits)
        if why is not None:
            return None, why + " (it grew while it was kept)"
        return {"path": rel, "size": ref.size, "sha256": ref.sha256,
                "mode": stat.S_IMODE(st.st_mode) & 0o777}, ""
    finally:
        os.close(fd)


def _over(size: int, total: int, limits: OutputLimits) -> str | None:
    """Why a file of ``size`` bytes is not kept after ``total`` bytes of files, or None."""
    if limits.per_file and size > limits.per_file:
        return (f"{_bytes(size)}, over the limit of {_limit(limits.per_file)} per file "
                f"({MAX_ENV})")
    if limits.total and total + size > limits.total:
        return (f"{_bytes(size)} more would make {_bytes(total + size)} of files, over the "
                f"limit of {_limit(limits.total)} for one run ({TOTAL_ENV})")
    return None


def _limit(size: int) -> str:
    """A limit as it is set: ``2G``, or ``30000 bytes``."""
    from caliber.sizes import format_size

    text = format_size(size)
    return f"{text} bytes" if text.isdigit() else text


# --- a resumed run: the earlier Results' files written back ---------------------------------


@dataclass(frozen=True)
class WrittenBack:
    """A file of earlier Results written back into a resumed run's folder."""

    record: dict[str, Any]
    """Its record in those Results (path, size, sha256, mode): what the new Results list
    while the file stays as it was written."""
    key: tuple[int, ...]
    """Device, inode, size, modification and change times right after it was written: any
    write, ``touch``, ``chmod`` or replacement since changes one of them (the change time
    cannot be set back)."""

    def unchanged(self, root: Path) -> bool:
        """Whether the file at its path under ``root`` is still the one written back (reached
        without following a link, as collecting does)."""
        try:
            fd = open_found(root, self.record["path"])
        except (OSError, ValueError):
            return False
        try:
            return _identity(os.fstat(fd)) == self.key
        finally:
            os.close(fd)


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def write_back(store: BlobStore, files: Iterable[Mapping[str, Any]], root: Path, *,
               between: Callable[[], object] | None = None) -> dict[str, WrittenBack]:
    """Write the result files ``files`` of earlier Results (their ``files`` records, as JSON;
    the caller checked their signature) into the run folder ``root`` of a run that resumes
    from them, each at its path, streamed from ``store`` and checked against its SHA-256 on
    the way, its mode kept but for group and others' write. A file already there is left as
    it is: an attachment, or a file of yours in ``workflow run``'s folder, wins over the
    earlier run's. A path that leads through a link, a file where a folder must be, or into
    ``.caliber`` is not written. Returns what was written, by path; BlobMismatchError or
    NotFoundError when a file cannot be had as it was signed (the run must not start).
    ``between`` is called before every chunk read (a pinion renews its lease there: what it
    raises stops the writing and goes through)."""
    from caliber.queue.blobs import fetch_paced

    done: dict[str, WrittenBack] = {}
    for record in files:
        path = str(record["path"])
        try:
            rel = check_name(path)
        except UsageError:
            continue
        dest = root.joinpath(*rel.parts)
        if rel.parts[0] == PRIVATE or os.path.lexists(dest) or not _folders_free(root, rel):
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)  # as the task that wrote it made them
        fetch_paced(store, str(record["sha256"]), dest,
                    mode=int(record["mode"]) & SAVED_MODE_MASK, between=between)
        kept = {name: record[name] for name in ("path", "size", "sha256", "mode")}
        done[path] = WrittenBack(kept, _identity(os.lstat(dest)))
    return done


def _folders_free(root: Path, rel: PurePosixPath) -> bool:
    """Whether each folder on the way to ``rel`` under ``root`` is a folder or missing (never
    a link, which a file written through would leave the run folder by)."""
    folder = root
    for part in rel.parts[:-1]:
        folder = folder / part
        try:
            mode = os.lstat(folder).st_mode
        except FileNotFoundError:
            return True
        if not stat.S_ISDIR(mode):
            return False
    return True


# --- bringing them back ------------------------------------------------------------------


def check_name(path: str) -> PurePosixPath:
    """A stored file's path as a relative path that stays inside the folder it is written to
    (UsageError otherwise: Results written by hand)."""
    if not isinstance(path, str) or not path or "\x00" in path or "\\" in path:
        raise UsageError(f"result file name {path!r} cannot be written")
    rel = PurePosixPath(path)
    if rel.is_absolute() or any(p in ("..", ".", "") for p in path.split("/")) or (
            len(path) > 1 and path[1] == ":"):
        raise UsageError(f"result file name {path!r} leads outside the folder it is saved to")
    return rel


def find_file(results: Results, name: str) -> ResultFile:
    """The record of result file ``name`` (NotFoundError naming the files there are)."""
    for record in results.files:
        if record.path == name:
            return record
    names = ", ".join(repr(f.path) for f in results.files[:10]) or "none"
    more = f" and {len(results.files) - 10} more" if len(results.files) > 10 else ""
    raise NotFoundError(f"results {results.id} have no file {name!r} (files: {names}{more})")


def check_signed(results: Results, key: bytes) -> None:
    """CaliberError unless the Results' signature (which covers their file list) checks with
    ``key``: files are written out only as the pinion or run that collected them listed."""
    from caliber.queue.resume import results_problem

    if not results.files:
        return
    problem = results_problem(results, key)
    if problem is not None:
        raise CaliberError(f"{problem}: their files are not brought back (the list of files "
                           "is not known to be the one collected)")


def planned(results: Results, dest: Path, names: Sequence[str] | None = None,
            *, force: bool = False) -> list[tuple[ResultFile, Path]]:
    """Where each file goes under ``dest``; UsageError, before anything is written, when one
    is there already (unless ``force``) or stands where a folder must be made."""
    chosen = results.files if names is None else [find_file(results, n) for n in names]
    plan = []
    for record in chosen:
        target = dest.joinpath(*check_name(record.path).parts)
        for parent in list(target.relative_to(dest).parents)[:-1]:
            inside = dest / parent
            if os.path.lexists(inside) and (inside.is_symlink() or not inside.is_dir()):
                raise UsageError(f"{inside} is there and is not a folder; the file "
                                 f"{record.path!r} cannot be saved under it")
        if os.path.lexists(target):
            if not force:
                raise UsageError(f"{target} exists; nothing was written (use --force to "
                                 "overwrite, or another folder)")
            if target.is_dir() and not target.is_symlink():
                raise UsageError(f"{target} is a folder; the file {record.path!r} cannot "
                                 "replace it")
        plan.append((record, target))
    return plan


def save_files(store: BlobStore, results: Results, dest: Path, *,
               names: Sequence[str] | None = None, force: bool = False) -> list[Path]:
    """Write the result files (all, or those ``names``) under the folder ``dest`` (made when
    missing), keeping their relative paths; returns the paths written. Each is streamed from
    the store and checked against its SHA-256 before it appears under its name. An existing
    file is refused before anything is written (UsageError), unless ``force``: then it is
    replaced whole (never half-written). Modes are kept, but for group and others' write."""
    plan = planned(results, dest, names, force=force)
    written: list[Path] = []
    try:
        for record, target in plan:
            _save_one(store, record, target)
            written.append(target)
    except OSError as exc:
        done = f" ({len(written)} of {len(plan)} written)" if written else ""
        raise UsageError(f"cannot write {exc.filename or dest}: {exc.strerror or exc}"
                         f"{done}") from exc
    return written


def _save_one(store: BlobStore, record: ResultFile, target: Path) -> None:
    """One file to ``target``: a new file, or (``force``) fetched beside the one there and
    renamed over it, so it is never half-written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = record.mode & SAVED_MODE_MASK
    if not os.path.lexists(target):
        store.fetch_blob(record.sha256, target, mode=mode)
        return
    part = target.with_name(f".{target.name}.{os.getpid()}.caliber-part")
    with contextlib.suppress(FileNotFoundError):
        part.unlink()
    try:
        store.fetch_blob(record.sha256, part, mode=mode)
        os.replace(part, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()


def open_file(store: BlobStore, results: Results, name: str, *,
              on_close: Callable[[], None] | None = None) -> BinaryIO:
    """A readable binary stream of result file ``name`` (close it when done: ``with``),
    checked against its SHA-256 as it is read: reaching its end raises BlobMismatchError when
    the bytes were not the ones collected. ``on_close``: called once when it is closed."""
    record = find_file(results, name)
    raw = _Checked(store.open_blob(record.sha256), record.sha256, on_close)
    return io.BufferedReader(raw, buffer_size=1 << 20)


class _Checked(io.RawIOBase):
    """The bytes of a blob, hashed as they are read; at their end, checked."""

    def __init__(self, raw: BinaryIO, sha256: str,
                 on_close: Callable[[], None] | None) -> None:
        super().__init__()
        self._raw = raw
        self._on_close = on_close
        self._sha256 = sha256
        self._digest = hashlib.sha256()
        self._checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        if not data:
            if not self._checked:
                self._checked = True
                if self._digest.hexdigest() != self._sha256:
                    raise BlobMismatchError(
                        f"stored blob {self._sha256[:12]} does not match its name: changed "
                        "on disk or damaged")
            return 0
        self._digest.update(data)
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._raw.close()
        finally:
            super().close()
            if self._on_close is not None:
                self._on_close()
