"""Blobs (attachments, stored arrays and files) on a Speckle server, as chunked objects.

A blob is a *root* object naming its SHA-256 and size and listing its *chunks*, each chunk an
object holding up to :data:`CHUNK_BYTES` of the file as base64 text. Object ids are content
hashes, and the server keeps one copy of an id (``/objects`` inserts with ``ON CONFLICT
IGNORE``; ``/api/diff`` says which ids it has): the same bytes sent twice are stored once,
and a file that grew at its end shares its first chunks with the older one.

Both ways go in bounded memory: sending reads the file :data:`CHUNK_BYTES` at a time, hashing
it, and uploads :data:`BATCH_CHUNKS` chunks a request (only those the server lacks);
receiving fetches :data:`FETCH_CHUNKS` chunks a request and writes them out in order. No
specklepy serialiser is involved (it holds a whole object tree in memory): the objects are
written here in a fixed layout, sent and fetched through the connection's REST calls
(:mod:`caliber.queue.speckle.adapter`), which bound every request with a timeout and
translate errors.

Every object read back is checked against its id (the id is the hash of the fixed layout
rebuilt from its fields; the server itself never checks ids), and the bytes against the
SHA-256 the workload or Results recorded (the run-secret covers that hash): a blob changed
on the server is never written out as if it were the one queued.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from caliber.errors import BlobMismatchError, NotFoundError
from caliber.queue.blobs import copy_verified

CHUNK_BYTES = 1 << 20
"""Bytes of the file per chunk object (about 1.4 MB of base64 text)."""
BATCH_CHUNKS = 6
"""Chunks per upload request (about 8.4 MB of text before gzip)."""
FETCH_CHUNKS = 4
"""Chunks per download request."""
BLOB_KIND = "blob"
CHUNK_KIND = "blob chunk"


class Connection(Protocol):
    """What this module needs of :class:`caliber.queue.speckle.adapter.SpeckleConnection`."""

    def upload(self, objects: Mapping[str, str]) -> None: ...

    def get_objects(self, ids: list[str]) -> dict[str, dict[str, Any]]: ...


def _speckle_id(builder: dict[str, Any]) -> str:
    """A content id in the form Speckle uses (32 hex digits of a SHA-256 of the object
    without its id), over this module's fixed layout."""
    text = json.dumps(builder, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _chunk_builder(data: str) -> dict[str, Any]:
    return {"id": "", "speckle_type": "Base", "totalChildrenCount": 0, "applicationId": None,
            "caliber": CHUNK_KIND, "data": data}


def chunk_object(piece: bytes) -> tuple[str, str]:
    """``(id, JSON text)`` of the chunk object holding ``piece``."""
    builder = _chunk_builder(base64.b64encode(piece).decode("ascii"))
    builder["id"] = _speckle_id(builder)
    return builder["id"], json.dumps(builder, separators=(",", ":"))


def _root_builder(sha256: str, size: int, chunk_ids: list[str]) -> dict[str, Any]:
    return {"id": "", "speckle_type": "Base", "totalChildrenCount": len(set(chunk_ids)),
            "applicationId": None, "caliber": BLOB_KIND, "sha256": sha256, "size": size,
            "chunk_bytes": CHUNK_BYTES,
            "@chunks": [{"referencedId": i, "speckle_type": "reference"} for i in chunk_ids]}


def root_object(sha256: str, size: int, chunk_ids: list[str]) -> tuple[str, str]:
    """``(id, JSON text)`` of a blob's root object: its hash, size and chunks in order (a
    Speckle object with its ``__closure``, so specklepy's ``receive`` reads it too)."""
    builder = _root_builder(sha256, size, chunk_ids)
    builder["id"] = _speckle_id(builder)
    builder["__closure"] = dict.fromkeys(chunk_ids, 1)
    return builder["id"], json.dumps(builder, separators=(",", ":"))


def put_file(conn: Connection, source: Path) -> tuple[str, int, str]:
    """Send the file ``source`` as a blob: ``(sha256, size, root object id)``. Only the
    chunks the server lacks are uploaded (the connection asks ``/api/diff`` first)."""
    digest = hashlib.sha256()
    chunk_ids: list[str] = []
    batch: dict[str, str] = {}
    size = 0
    with open(source, "rb") as f:
        while piece := f.read(CHUNK_BYTES):
            digest.update(piece)
            size += len(piece)
            object_id, text = chunk_object(piece)
            chunk_ids.append(object_id)
            batch[object_id] = text
            if len(batch) >= BATCH_CHUNKS:
                conn.upload(batch)
                batch = {}
    if not chunk_ids:  # an empty file: one empty chunk, so every blob has one
        object_id, text = chunk_object(b"")
        chunk_ids.append(object_id)
        batch[object_id] = text
    sha256 = digest.hexdigest()
    root_id, root_text = root_object(sha256, size, chunk_ids)
    batch[root_id] = root_text
    conn.upload(batch)
    return sha256, size, root_id


def _damaged(what: str) -> BlobMismatchError:
    return BlobMismatchError(f"a stored blob is damaged on the server: {what}")


def read_root(conn: Connection, root_id: str, sha256: str) -> tuple[int, list[str]]:
    """``(size, chunk ids)`` of the blob ``root_id``, checked to be the blob of ``sha256``."""
    root = conn.get_objects([root_id]).get(root_id)
    if root is None:
        raise NotFoundError(f"blob {sha256[:12]} (object {root_id}) is not on the server")
    try:
        chunk_ids = [str(r["referencedId"]) for r in root["@chunks"]]
        size = int(root["size"])
        builder = _root_builder(str(root["sha256"]), size, chunk_ids)
        builder["chunk_bytes"] = root["chunk_bytes"]
    except (KeyError, TypeError, ValueError) as exc:
        raise _damaged(f"object {root_id} is not a blob ({exc!r})") from exc
    if root.get("caliber") != BLOB_KIND or _speckle_id(builder) != root_id:
        raise _damaged(f"object {root_id} does not match its id")
    if root["sha256"] != sha256:
        raise _damaged(f"object {root_id} holds blob {str(root['sha256'])[:12]}, not "
                       f"{sha256[:12]}")
    return size, chunk_ids


def _chunks(conn: Connection, chunk_ids: list[str]) -> Iterator[bytes]:
    """The chunks' bytes in order, :data:`FETCH_CHUNKS` a request, each checked against its
    id."""
    for start in range(0, len(chunk_ids), FETCH_CHUNKS):
        wanted = chunk_ids[start:start + FETCH_CHUNKS]
        found = conn.get_objects(list(dict.fromkeys(wanted)))
        for object_id in wanted:
            obj = found.get(object_id)
            if obj is None:
                raise _damaged(f"its chunk {object_id} is missing")
            data = obj.get("data")
            if (obj.get("caliber") != CHUNK_KIND or not isinstance(data, str)
                    or _speckle_id(_chunk_builder(data)) != object_id):
                raise _damaged(f"its chunk {object_id} does not match its id")
            yield base64.b64decode(data)
        del found


class BlobStream(io.RawIOBase):
    """The bytes of a blob, fetched as they are read; the last read checks size and SHA-256
    (BlobMismatchError when they are not the ones recorded)."""

    def __init__(self, conn: Connection, root_id: str, sha256: str) -> None:
        super().__init__()
        self.sha256 = sha256
        self.size, chunk_ids = read_root(conn, root_id, sha256)
        self._pieces = _chunks(conn, chunk_ids)
        self._digest = hashlib.sha256()
        self._seen = 0
        self._buffer = memoryview(b"")
        self._checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            piece = next(self._pieces, None)
            if piece is None:
                self._check()
                return 0
            self._digest.update(piece)
            self._seen += len(piece)
            if self._seen > self.size:
                raise _damaged(f"blob {self.sha256[:12]} has more bytes than its size")
            self._buffer = memoryview(piece)
        count = min(len(target), len(self._buffer))
        target[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count

    def _check(self) -> None:
        if self._checked:
            return
        if self._seen != self.size or self._digest.hexdigest() != self.sha256:
            raise _damaged(f"the bytes of blob {self.sha256[:12]} do not have the SHA-256 "
                           "the queue recorded")
        self._checked = True


def open_stream(conn: Connection, root_id: str, sha256: str) -> BinaryIO:
    return io.BufferedReader(BlobStream(conn, root_id, sha256), buffer_size=CHUNK_BYTES)


def fetch_file(conn: Connection, root_id: str, sha256: str, dest: Path, mode: int) -> None:
    """Write the blob to the new file ``dest`` by streaming, checking its hash on the way:
    when it does not match, nothing is made under ``dest`` (BlobMismatchError)."""
    stream = BlobStream(conn, root_id, sha256)
    with io.BufferedReader(stream, buffer_size=CHUNK_BYTES) as source:
        copy_verified(source, sha256, dest, mode=mode, size=stream.size)
