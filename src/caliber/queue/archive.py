"""``caliber queue export`` / ``import``: a whole queue as one JSON-lines file, to move it from
one backend to another (SQLite, PostgreSQL) through the backends' own verbs.

One JSON object a line, streamed both ways in bounded memory (a blob travels as lines of at
most :data:`CHUNK` bytes, base64):

- ``{"format": "caliber-queue-archive", "version": 1, "source": ..., "exported_at": ...}``
- ``{"blob": SHA256, "size": N}`` and then ``ceil(N / CHUNK)`` lines ``{"chunk": BASE64}``:
  a stored attachment's or a Results' bytes, each once, before the first record that names it
- ``{"workload": {...}}``: a workload as it is (status, attempts, lease, history, run-secret,
  marks, resume grant)
- ``{"results": {...}}``: one stored Results, signature and all
- ``{"end": {"workloads": W, "results": R, "blobs": B}}``: a file without it was cut short

Import reads the file twice: first it checks all of it (every line, every blob's hash and
size, the end line, ids neither twice in the file nor in the queue already, every workload a
waiting one runs after in the file or in the queue) and changes nothing when something is wrong
(UsageError, one line); then it stores it, keeping every id and signature, through
``put_blob``, ``save_results`` and ``restore`` (which goes on with the chains as this queue
stands: a waiting workload whose upstreams have all completed here is queued).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from caliber.errors import NotFoundError, UsageError

if TYPE_CHECKING:
    from caliber.queue.registry import Backend
    from caliber.queue.target import QueueTarget

FORMAT = "caliber-queue-archive"
VERSION = 1
CHUNK = 1 << 20  # bytes of a blob per line (1.4 MB of base64)
PAGE = 200  # workloads or Results read from the queue at a time


@dataclass
class Counts:
    workloads: int = 0
    results: int = 0
    blobs: int = 0
    skipped: int = 0  # damaged entries, left out of an export

    def as_dict(self) -> dict[str, int]:
        return {"workloads": self.workloads, "results": self.results, "blobs": self.blobs}


# --- export -----------------------------------------------------------------------------------


def export_queue(backend: Backend, out: IO[str]) -> Counts:
    """Write every workload and every Results of ``backend`` to ``out``, with their blobs."""
    counts = Counts()
    sent: set[str] = set()
    _line(out, {"format": FORMAT, "version": VERSION, "source": backend.location,
                "exported_at": dt.datetime.now(dt.UTC).isoformat()})
    offset = 0
    while page := backend.list_workloads(limit=PAGE, offset=offset):
        offset += len(page)
        for workload in page:
            if workload.damaged:
                counts.skipped += 1
                continue
            for a in workload.attachments:
                if a.kind == "stored":
                    _blob(backend, a.sha256, out, sent, counts)
            _line(out, {"workload": workload.model_dump(mode="json", exclude={"progress"})})
            counts.workloads += 1
    offset = 0
    written: set[str] = set()  # newest first: a Results stored meanwhile shifts the pages
    while batch := backend.list_results(limit=PAGE, offset=offset):
        offset += len(batch)
        for results in batch:
            if results.id in written:
                continue
            written.add(results.id)
            for sha256 in results.blobs:
                _blob(backend, sha256, out, sent, counts)
            _line(out, {"results": results.model_dump(mode="json", by_alias=True)})
            counts.results += 1
    _line(out, {"end": counts.as_dict()})
    return counts


def _blob(backend: Backend, sha256: str, out: IO[str], sent: set[str], counts: Counts) -> None:
    if sha256 in sent:
        return
    with backend.open_blob(sha256) as stream:
        first = stream.read(CHUNK)
        pieces: Iterator[bytes] = iter(lambda: stream.read(CHUNK), b"")
        size = _stream_size(stream)
        if size is None:  # a stream that cannot tell: count as it goes, header after a spool
            return _spooled_blob(sha256, first, pieces, out, sent, counts)
        _line(out, {"blob": sha256, "size": size})
        for piece in chain([first], pieces) if first else ():
            _line(out, {"chunk": base64.b64encode(piece).decode("ascii")})
    sent.add(sha256)
    counts.blobs += 1


def _stream_size(stream: IO[bytes]) -> int | None:
    try:
        here = stream.tell()
        end = stream.seek(0, os.SEEK_END)
        stream.seek(here)
        return end
    except (OSError, ValueError, AttributeError):
        return None


def _spooled_blob(sha256: str, first: bytes, pieces: Iterator[bytes], out: IO[str],
                  sent: set[str], counts: Counts) -> None:
    with tempfile.TemporaryFile() as spool:
        size = 0
        for piece in chain([first], pieces) if first else ():
            spool.write(piece)
            size += len(piece)
        spool.seek(0)
        _line(out, {"blob": sha256, "size": size})
        while piece := spool.read(CHUNK):
            _line(out, {"chunk": base64.b64encode(piece).decode("ascii")})
    sent.add(sha256)
    counts.blobs += 1


def _line(out: IO[str], record: dict[str, Any]) -> None:
    out.write(json.dumps(record, separators=(",", ":"), ensure_ascii=False))
    out.write("\n")


def export_to(target: QueueTarget, path: Path) -> Counts:
    """``caliber queue export FILE``: the queue ``target`` names into a new file ``path``
    (written beside it first, renamed when complete; UsageError when it exists)."""
    from caliber.queue.registry import open_backend

    if path.exists():
        raise UsageError(f"{path} exists already: export into a new file")
    part = path.with_name(f".{path.name}.part-{os.getpid()}")
    try:
        with open_backend(target) as backend, open(part, "x", encoding="utf-8") as out:
            counts = export_queue(backend, out)
        os.replace(part, path)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        part.unlink(missing_ok=True)
    return counts


# --- import -----------------------------------------------------------------------------------


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        with open(path, encoding="utf-8") as f:
            for number, text in enumerate(f, 1):
                try:
                    record = json.loads(text)
                except ValueError:
                    raise UsageError(f"{path} line {number} is not JSON: not a Caliber queue "
                                     "archive, or damaged") from None
                if not isinstance(record, dict) or len(record) == 0:
                    raise UsageError(f"{path} line {number} is not a record of a Caliber "
                                     "queue archive")
                yield number, record
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not text: not a Caliber queue archive") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _walk(path: Path, on_blob: Any = None) -> Iterator[tuple[int, str, Any]]:
    """Every record of the archive, checked: ``(line, kind, value)`` with kind ``workload``
    (a Workload), ``results`` (Results) or ``blob`` (sha256, after its bytes went to
    ``on_blob(sha256, pieces)``, or were only checked). UsageError at the first fault."""
    from pydantic import ValidationError

    from caliber.queue.workload import Workload
    from caliber.results.model import Results

    records = _records(path)
    first = next(records, None)
    if first is None or first[1].get("format") != FORMAT:
        raise UsageError(f"{path} is not a Caliber queue archive (no header line)")
    if first[1].get("version") != VERSION:
        raise UsageError(f"{path} is a queue archive of version {first[1].get('version')!r}; "
                         f"this Caliber reads version {VERSION}")
    counts = Counts()

    def blob_pieces(number: int, sha256: str, size: int) -> Iterator[bytes]:
        """The blob's bytes, as its chunk lines come: the caller reads them all."""
        digest, got = hashlib.sha256(), 0
        for _ in range(-(-size // CHUNK)):
            line_no, record = next(records, (number, {}))
            data = record.get("chunk")
            if not isinstance(data, str):
                raise UsageError(f"{path} line {line_no}: blob {sha256[:12]} is cut short "
                                 f"(its bytes end early)")
            try:
                piece = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise UsageError(f"{path} line {line_no}: blob {sha256[:12]} has a chunk "
                                 "that is not base64") from None
            digest.update(piece)
            got += len(piece)
            yield piece
        if got != size or digest.hexdigest() != sha256:
            raise UsageError(f"{path} line {number}: blob {sha256[:12]} does not match its "
                             f"SHA-256 and size (damaged archive)")

    for number, record in records:
        try:
            if "blob" in record:
                sha256, size = record["blob"], record.get("size")
                if not isinstance(sha256, str) or not isinstance(size, int) or size < 0:
                    raise UsageError(f"{path} line {number}: a blob without a hash and size")
                pieces = blob_pieces(number, sha256, size)
                if on_blob is not None:
                    on_blob(sha256, pieces)
                for _ in pieces:  # whatever on_blob left unread is still checked
                    pass
                counts.blobs += 1
                yield number, "blob", sha256
            elif "workload" in record:
                counts.workloads += 1
                yield number, "workload", Workload.model_validate(record["workload"])
            elif "results" in record:
                counts.results += 1
                yield number, "results", Results.model_validate(record["results"])
            elif "end" in record:
                if record["end"] != counts.as_dict():
                    raise UsageError(f"{path} line {number}: the end line counts "
                                     f"{record['end']}, the file holds {counts.as_dict()}")
                if next(records, None) is not None:
                    raise UsageError(f"{path}: lines after the end line")
                return
            else:
                raise UsageError(f"{path} line {number}: an unknown record "
                                 f"({', '.join(map(str, record))})")
        except ValidationError as exc:
            where = ".".join(str(p) for p in exc.errors()[0]["loc"])
            raise UsageError(f"{path} line {number}: not a valid record ({where}: "
                             f"{exc.errors()[0]['msg']})") from None
    raise UsageError(f"{path} is cut short (no end line): export it again")


def check_archive(backend: Backend, path: Path) -> Counts:
    """The first pass: the whole file is sound, none of its ids is taken, and every workload
    a waiting one runs after is in the file or in the queue; UsageError (naming the first
    problem, and how many ids are taken) otherwise. Changes nothing."""
    from caliber.queue.status import WorkloadStatus

    counts = Counts()
    seen: dict[str, set[str]] = {"workload": set(), "results": set()}
    taken: dict[str, list[str]] = {"workload": [], "results": []}
    waits: list[tuple[int, str, str]] = []  # (line, waiting workload, what it runs after)
    for number, kind, value in _walk(path):
        if kind == "blob":
            counts.blobs += 1
            continue
        if value.id in seen[kind]:
            raise UsageError(f"{path} line {number}: {kind} {value.id} is in the file twice")
        seen[kind].add(value.id)
        if kind == "workload":
            counts.workloads += 1
            exists = _exists(backend.get, value.id)
            if value.status == WorkloadStatus.WAITING:
                waits.extend((number, value.id, up) for up in dict.fromkeys(value.after))
        else:
            counts.results += 1
            exists = _exists(backend.get_results, value.id)
        if exists:
            taken[kind].append(value.id)
    if taken["workload"] or taken["results"]:
        parts = [f"{len(ids)} {kind}{'s' if kind == 'workload' and len(ids) > 1 else ''} "
                 f"({', '.join(ids[:3])}{', ...' if len(ids) > 3 else ''})"
                 for kind, ids in taken.items() if ids]
        raise UsageError(f"{backend.location} holds {' and '.join(parts)} of {path} already: "
                         "nothing imported (import into a queue without them)")
    for number, wid, up in waits:
        if up not in seen["workload"] and not _exists(backend.get, up):
            raise UsageError(f"{path} line {number}: waiting workload {wid} runs after "
                             f"workload {up}, which is neither in the file nor in "
                             f"{backend.location} (it would wait for ever): nothing imported")
    return counts


def _exists(get: Any, id_: str) -> bool:
    try:
        found = get(id_)
    except NotFoundError:
        return False
    return bool(found.id == id_)


def import_queue(backend: Backend, path: Path) -> Counts:
    """Check the archive (nothing changes when it is refused), then store it all."""
    counts = check_archive(backend, path)
    with tempfile.TemporaryDirectory(prefix="caliber-import-") as tmp:
        def store_blob(sha256: str, pieces: Iterator[bytes]) -> None:
            if backend.has_blob(sha256):
                return
            spool = Path(tmp) / sha256
            with open(spool, "wb") as f:
                for piece in pieces:
                    f.write(piece)
            backend.put_blob(spool)
            spool.unlink()

        for _, kind, value in _walk(path, on_blob=store_blob):
            if kind == "workload":
                backend.restore(value)
            elif kind == "results":
                backend.save_results(value)
    return counts


def import_from(target: QueueTarget, path: Path) -> Counts:
    """``caliber queue import FILE`` into the queue ``target`` names."""
    from caliber.queue.registry import open_backend

    if not path.is_file():
        raise UsageError(f"{path} is not a file" if path.exists() else f"{path} does not exist")
    with open_backend(target) as backend:
        return import_queue(backend, path)
