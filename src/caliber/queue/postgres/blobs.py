"""The PostgreSQL queue's content store: blobs in the database, so every pinion of a team
reads them from the queue it shares (no shared disk needed).

A blob is one row of ``blobs`` (its SHA-256, size, number of chunks) and its bytes rows of
``blob_chunks``, :data:`caliber.queue.blobs.CHUNK` (1 MiB) each: written and read a chunk at
a time, so memory stays bounded whatever the blob's size (a value of one ``bytea`` is capped
at 1 GB, a blob is not). What refers to each blob is ``blob_refs``
(:mod:`caliber.queue.sql.refs`), as in the SQLite queue.

Storing a blob is one transaction on a connection of its own (a pinion's renewals on the
main one are never held up by an upload): the chunks go in under a temporary name while
their hash is computed; then a pending reference of the writer is recorded and the blob
gets its name (or, when it was there already, the temporary chunks go). A crash rolls the
whole transaction back: no half blob, nothing to sweep.

Prune and a put never race: removing blobs (:func:`sweep`) first locks ``blob_refs`` in
``SHARE ROW EXCLUSIVE`` mode, which waits for every transaction that has written a
reference (a put's pending one) to end and holds off new ones until it commits; each
statement after the lock sees every reference committed before it.
"""

from __future__ import annotations

import hashlib
import io
import secrets
from collections.abc import Iterable
from typing import Any, BinaryIO

from caliber.errors import NotFoundError
from caliber.queue.blobs import CHUNK, BlobRef, is_sha256
from caliber.queue.sql import refs


def put_stream(conn: Any, stream: BinaryIO, writer: str) -> BlobRef:
    """Store what ``stream`` reads, inside the caller's transaction on ``conn``; a pending
    reference of ``writer`` holds it until what refers to it is stored."""
    tmp = f"tmp-{secrets.token_hex(8)}"
    digest = hashlib.sha256()
    size = n = 0
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
        conn.execute("INSERT INTO blob_chunks (blob, n, data) VALUES (%s, %s, %b)",
                     (tmp, n, chunk))
        n += 1
    ref = BlobRef(digest.hexdigest(), size)
    refs.hold(_run(conn), ref.sha256, writer)  # waits for a sweep at work (see the module)
    made = conn.execute("INSERT INTO blobs (sha256, size, chunks) VALUES (%s, %s, %s) "
                        "ON CONFLICT DO NOTHING RETURNING 1", (ref.sha256, size, n)).fetchone()
    if made:
        conn.execute("UPDATE blob_chunks SET blob = %s WHERE blob = %s", (ref.sha256, tmp))
    else:
        conn.execute("DELETE FROM blob_chunks WHERE blob = %s", (tmp,))
    return ref


def has_blob(conn: Any, sha256: str) -> bool:
    return is_sha256(sha256) and conn.execute(
        "SELECT 1 FROM blobs WHERE sha256 = %s", (sha256,)).fetchone() is not None


def stat(conn: Any, sha256: str) -> tuple[int, int]:
    """(size, chunks) of a blob; NotFoundError when absent."""
    if not is_sha256(sha256):
        raise NotFoundError(f"{sha256!r} is not a blob name (a SHA-256 in hex)")
    row = conn.execute("SELECT size, chunks FROM blobs WHERE sha256 = %s", (sha256,)).fetchone()
    if row is None:
        raise NotFoundError(f"blob {sha256} is not in the queue's store")
    return int(row[0]), int(row[1])


class ChunkReader(io.RawIOBase):
    """A blob's bytes, read one chunk (one query) at a time by ``chunk(n)``."""

    def __init__(self, chunk: Any, chunks: int) -> None:
        super().__init__()
        self._chunk = chunk
        self._chunks = chunks
        self._next = 0
        self._buffer = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, into: Any) -> int:
        while not self._buffer and self._next < self._chunks:
            self._buffer = memoryview(self._chunk(self._next))
            self._next += 1
        count = min(len(into), len(self._buffer))
        into[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count


def read_chunk(conn: Any, sha256: str, n: int) -> bytes:
    """Chunk ``n`` of a blob (empty when it went meanwhile: the reader's hash check fails)."""
    row = conn.execute("SELECT data FROM blob_chunks WHERE blob = %s AND n = %s",
                       (sha256, n)).fetchone()
    return bytes(row[0]) if row is not None else b""


def sweep(conn: Any, only: Iterable[str] | None = None, *,
          dry_run: bool = False, gone: set[tuple[str, str]] | None = None) -> tuple[int, int]:
    """Remove the blobs nothing refers to (of ``only``, when given), inside the caller's
    transaction; expired pending references first. With ``dry_run`` nothing changes and
    the references of the (kind, owner) pairs ``gone`` count as removed. (blobs, bytes)."""
    run = _run(conn)
    if dry_run:
        kept = refs.kept_by_others(run, gone or set())
        rows = conn.execute("SELECT sha256, size FROM blobs").fetchall()
        freed = [(sha, size) for sha, size in rows if sha not in kept]
        return len(freed), sum(int(size) for _, size in freed)
    conn.execute("LOCK TABLE blob_refs IN SHARE ROW EXCLUSIVE MODE")
    refs.drop_expired(run)
    names = None if only is None else sorted(set(only))
    removed = conn.execute(
        "DELETE FROM blobs b WHERE (%s::text[] IS NULL OR b.sha256 = ANY(%s::text[])) AND NOT "
        "EXISTS (SELECT 1 FROM blob_refs r WHERE r.sha256 = b.sha256) RETURNING sha256, size",
        (names, names)).fetchall()
    if removed:
        conn.execute("DELETE FROM blob_chunks WHERE blob = ANY(%s)", ([r[0] for r in removed],))
    return len(removed), sum(int(size) for _, size in removed)


def _run(conn: Any) -> refs.Execute:
    """The statements of :mod:`caliber.queue.sql.refs` (``?`` placeholders) on ``conn``."""
    return lambda sql, params: conn.execute(sql.replace("?", "%s"), params)
