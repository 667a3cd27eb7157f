"""What refers to each blob: the ``blob_refs`` table both SQL queues keep (the SQLite one is
described in :mod:`caliber.queue.sqlite.blobs`, the PostgreSQL one in
:mod:`caliber.queue.postgres.blobs`): one row per (kind, owner, blob), kind ``workload``,
``results`` or ``pending`` (a writer's blob not yet referred to by what it stores).

The statements are written with ``?`` placeholders and run through the dialect's ``execute``
(``ON CONFLICT`` reads the same in SQLite and PostgreSQL).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

Execute = Callable[[str, tuple[Any, ...]], Any]
"""Runs one statement with its parameters in the caller's transaction; returns a cursor."""

PENDING_SECONDS = 24 * 3600  # a pending reference this old is a dead writer's: dropped


def refer(execute: Execute, kind: str, owner: str, shas: Iterable[str],
          token: str | None = None) -> None:
    """Record that ``owner`` (of ``kind``) refers to these blobs, inside the caller's write
    transaction, clearing the pending references of writer ``token`` that they cover."""
    now = time.time()
    for sha in dict.fromkeys(shas):
        execute("INSERT INTO blob_refs (sha256, kind, owner, at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING", (sha, kind, owner, now))
        if token is not None:
            execute("DELETE FROM blob_refs WHERE kind = 'pending' AND owner = ? AND "
                    "sha256 = ?", (token, sha))


def hold(execute: Execute, sha256: str, token: str) -> None:
    """A pending reference of writer ``token`` to blob ``sha256`` (made or renewed)."""
    execute("INSERT INTO blob_refs (sha256, kind, owner, at) VALUES (?, 'pending', ?, ?) "
            "ON CONFLICT (kind, owner, sha256) DO UPDATE SET at = excluded.at",
            (sha256, token, time.time()))


def drop_expired(execute: Execute) -> None:
    """Drop the pending references of writers that died long ago."""
    execute("DELETE FROM blob_refs WHERE kind = 'pending' AND at < ?",
            (time.time() - PENDING_SECONDS,))


def referenced(execute: Execute) -> set[str]:
    """Every blob something refers to (pending references included)."""
    return {str(sha) for (sha,) in execute("SELECT DISTINCT sha256 FROM blob_refs", ())}


def kept_by_others(execute: Execute, gone: set[tuple[str, str]]) -> set[str]:
    """The blobs something other than the (kind, owner) pairs in ``gone`` refers to."""
    kept: set[str] = set()
    for sha, kind, owner in execute("SELECT sha256, kind, owner FROM blob_refs", ()):
        if (kind, owner) not in gone:
            kept.add(str(sha))
    return kept
