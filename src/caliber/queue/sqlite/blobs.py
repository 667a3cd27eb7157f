"""The local queue's content store: which blobs are referred to, and removing the rest.

The blobs are files beside the database (:class:`caliber.queue.blobs.FolderBlobStore`,
``<database>-blobs``). What refers to them is one small table, ``blob_refs`` (schema 6, see
:mod:`caliber.queue.sqlite.schema`): one row per (kind, owner, blob), where kind is

- ``workload``: a workload's stored attachments (owner: the workload id), written by ``put``;
- ``results``: blobs a Results refers to (owner: the Results id): arrays, result files;
  whoever stores such Results calls :func:`refer` in the transaction that inserts them;
- ``pending``: a blob just stored by a writer that has not yet stored what refers to it
  (owner: that writer's token). :func:`refer` clears the writer's pending rows it covers; one
  left by a writer that died expires after :data:`PENDING_SECONDS`.

Rows go with their owner: triggers delete a workload's or a Results' rows when the row is
deleted (``queue reset``, ``results prune``, anything else), so "referenced" is always
``SELECT sha256 FROM blob_refs`` (:func:`referenced`), and a new kind of owner needs only its
rows and, if its owner can be deleted, one trigger like those.

A blob gets its name inside a write transaction that first records a pending reference
(:func:`pending_hold`), and blobs are removed (:func:`sweep`) inside a write transaction
after reading the references: the two never interleave, so a prune never removes a blob a
``workflow queue`` running at the same time has just stored.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager

from caliber.queue.blobs import BlobRef, FolderBlobStore
from caliber.queue.sql import refs

PENDING_SECONDS = refs.PENDING_SECONDS  # a pending reference this old is a dead writer's

SCHEMA = """
    CREATE TABLE blob_refs (
        sha256  TEXT NOT NULL,              -- the blob referred to
        kind    TEXT NOT NULL,              -- 'workload', 'results' or 'pending'
        owner   TEXT NOT NULL,              -- workload id, Results id, or a writer's token
        at      REAL NOT NULL,              -- unix seconds it was recorded
        PRIMARY KEY (kind, owner, sha256)
    ) WITHOUT ROWID;
    CREATE INDEX blob_refs_sha256 ON blob_refs (sha256);
    CREATE TRIGGER workloads_blob_refs AFTER DELETE ON workloads BEGIN
        DELETE FROM blob_refs WHERE kind = 'workload' AND owner = OLD.id;
    END;
    CREATE TRIGGER results_blob_refs AFTER DELETE ON results BEGIN
        DELETE FROM blob_refs WHERE kind = 'results' AND owner = OLD.id;
    END;
"""

Transaction = Callable[[], AbstractContextManager[sqlite3.Connection]]


def refer(conn: sqlite3.Connection, kind: str, owner: str, shas: Iterable[str],
          token: str | None = None) -> None:
    """Record that ``owner`` (of ``kind``) refers to these blobs, inside the caller's write
    transaction, clearing the pending references of writer ``token`` that they cover."""
    refs.refer(conn.execute, kind, owner, shas, token)


def pending_hold(transaction: Transaction, token: str) -> Callable[[BlobRef],
                                                                    AbstractContextManager[None]]:
    """The ``hold`` of :meth:`FolderBlobStore.put_stream` for the local queue: a write
    transaction that records a pending reference of writer ``token`` to the blob."""

    @contextmanager
    def hold(ref: BlobRef) -> Iterator[None]:
        with transaction() as conn:
            refs.hold(conn.execute, ref.sha256, token)
            yield

    return hold


def referenced(conn: sqlite3.Connection) -> set[str]:
    """Every blob something refers to (pending references included)."""
    return refs.referenced(conn.execute)


def sweep(conn: sqlite3.Connection, store: FolderBlobStore, *,
          only: Iterable[str] | None = None, dry_run: bool = False) -> tuple[int, int]:
    """Remove the blobs nothing refers to (of ``only``, when given: those of a workload just
    reset), inside the caller's write transaction; expired pending references first. Returns
    (blobs, bytes) removed (or, with ``dry_run``, that would be)."""
    if not dry_run:
        refs.drop_expired(conn.execute)
        store.sweep_tmp()
    keep = referenced(conn)
    names = store.names() if only is None else (s for s in dict.fromkeys(only)
                                                if store.has_blob(s))
    gone = [name for name in names if name not in keep]
    if dry_run:
        return len(gone), sum(store.size_of(name) for name in gone)
    return len(gone), store.remove(gone)


def store_inline_attachments(conn: sqlite3.Connection, store: FolderBlobStore) -> int:
    """Schema 5 -> 6: move every workload's inline attachments (the bytes in the row, as
    Caliber before the store kept them) into the store, one row at a time (bounded memory:
    one row's bytes), each attachment keeping its path, hash and size and no mode, so it is
    signed as it was (:func:`caliber.queue.secret.attachment_entry`) and written 0600 as
    before. Content that cannot be decoded or does not match its hash stays in the row as
    it is: the run-secret check still finds it damaged, and it never runs. Returns how many
    attachments moved."""
    import io
    import json

    from caliber.queue.secret import DamagedEntry, attachment_data

    moved = 0
    ids = [wid for (wid,) in conn.execute(
        "SELECT id FROM workloads WHERE instr(body, '\"content\"') > 0")]
    for wid in ids:
        (body,) = conn.execute("SELECT body FROM workloads WHERE id = ?", (wid,)).fetchone()
        try:
            data = json.loads(body)
            attachments = data.get("attachments") or []
            shas = []
            for a in attachments:
                if not isinstance(a, dict) or a.get("content") is None:
                    continue
                try:
                    raw = attachment_data(a.get("encoding") or "", a["content"])
                except DamagedEntry:
                    continue
                ref = store.put_stream(io.BytesIO(raw), what=f"an attachment of {wid}")
                if (ref.sha256, ref.size) != (a.get("sha256"), a.get("size")):
                    continue  # tampered or damaged: left as it is, never runs
                for field in ("encoding", "content"):
                    a.pop(field, None)
                shas.append(ref.sha256)
            if not shas:
                continue
            new_body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        except (ValueError, TypeError, AttributeError, RecursionError):
            continue  # a damaged row: left as it is (shown damaged, never runs)
        conn.execute("UPDATE workloads SET body = ? WHERE id = ?", (new_body, wid))
        refer(conn, "workload", str(wid), shas)
        moved += len(shas)
    return moved
