"""This process's view of the remote queue's log: the state at a base (a checkpoint's, or
nothing) and the versions after it, kept current by reading only what is new.

Reading costs the same however many workloads the model has finished: a first look lists
versions newest first back to the newest checkpoint's cutoff (see
:mod:`caliber.queue.speckle.checkpoint`) and fetches that checkpoint's object; later looks
list only the versions written since. When a newer checkpoint appears in the log, the events
up to its cutoff are folded into the base here, without fetching it.

Versions deleted (in the web app) or listed late are noticed by the version count the server
gives: when it differs from what this view accounts for, the view is read afresh.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from caliber.queue.speckle import adapter as sp
from caliber.queue.speckle import checkpoint as ck
from caliber.queue.speckle.events import Checkpoint, Event, parse
from caliber.queue.speckle.log import Folded, Order, at_time, fold

log = logging.getLogger(__name__)


class LogView:
    """The folded log: ``base`` (the state up to ``cutoff``) plus the events after it."""

    def __init__(self, conn: sp.SpeckleConnection, fetch: ck.Fetch,
                 cache: ck.ChunkCache | None = None) -> None:
        self.conn = conn
        self.fetch = fetch
        self.cache = cache
        self.loaded = False
        self._clear()

    def _clear(self) -> None:
        self.base = Folded()
        self.cutoff: Order | None = None
        self.versions: dict[str, Order] = {}  # versions after the cutoff: id -> order
        self.events: dict[str, Event] = {}
        self.older = 0  # versions at or before the cutoff, as the server counted them
        self.folded = Folded()

    def _after(self, order: Order) -> bool:
        return self.cutoff is None or order > self.cutoff

    # --- reading ------------------------------------------------------------------------

    def refresh(self) -> Folded:
        """Read the versions written since the last look, and fold them in."""
        first = self.conn.list_versions()
        if not self.loaded or not first.items:
            return self._read_all(first)
        page, found = first, dict[str, sp.VersionInfo]()
        while True:
            # new to this view (a page repeats its predecessor's last millisecond: those
            # count as new here, so only a version read before ends the look)
            fresh = [v for v in page.items if v.id not in self.versions
                     and self._after((v.created_at, v.id))]
            found.update((v.id, v) for v in fresh)
            if len(fresh) < len(page.items) or len(page.items) < sp.VERSIONS_PAGE \
                    or not page.cursor:
                break
            page = self.conn.list_versions(page.cursor)
        self.add(found.values())
        top = first.items[0].created_at
        listed = self.older + sum(1 for at, _ in self.versions.values() if at <= top)
        if listed != first.total:  # versions deleted, or seen late: read afresh
            return self._read_all(self.conn.list_versions())
        return self.folded

    def _read_all(self, first: sp.VersionPage) -> Folded:
        """Read back to the newest readable checkpoint (or the first version)."""
        self._clear()
        self.loaded = True
        listed: dict[str, sp.VersionInfo] = {}  # (a page repeats its predecessor's last ms)
        waiting: list[tuple[Order, Event]] = []  # checkpoints met, newest first
        page = first
        while True:
            new = [v for v in page.items if v.id not in listed]
            listed.update((v.id, v) for v in new)
            for v in new:
                event = parse(v.id, v.object_id, v.message, v.created_at)
                if event is not None and isinstance(event.body, Checkpoint):
                    cutoff = (at_time(event.body.cutoff_at, event.at),
                              event.body.cutoff_version)
                    waiting.append((cutoff, event))
            end = len(page.items) < sp.VERSIONS_PAGE or not page.cursor
            oldest = page.items[-1].created_at if page.items else None
            while waiting and self.cutoff is None and (
                    end or (oldest is not None and oldest < waiting[0][0][0])):
                cutoff, event = waiting.pop(0)
                self._load(cutoff, event)
            if end or (self.cutoff is not None and oldest is not None
                       and oldest < self.cutoff[0]):
                break
            page = self.conn.list_versions(page.cursor)
        window = [v for v in listed.values() if self._after((v.created_at, v.id))]
        self.older = first.total - len(window)
        self.add(window, force=True)
        return self.folded

    def _load(self, cutoff: Order, event: Event) -> None:
        """Start from the checkpoint of ``event``, unless it cannot be read (then an older
        one, or the whole log, is read instead)."""
        try:
            root = self.fetch([event.object_id]).get(event.object_id)
            if root is None:
                raise ck.CheckpointError(f"its object {event.object_id} is missing")
            self.base = ck.from_object(root, self.fetch)
        except ck.CheckpointError as exc:
            log.warning("%s: skipped the checkpoint in version %s (%s); reading further back",
                        self.conn.where, event.version_id, exc)
            return
        self.cutoff = cutoff
        if self.cache is not None:
            self.cache.keep(ck.chunk_ids(root))

    def add(self, versions: Iterable[sp.VersionInfo], *, force: bool = False) -> None:
        """Versions this view had not seen (listed, or just written by this process)."""
        changed = force
        for v in versions:
            order = (v.created_at, v.id)
            if v.id in self.versions or not self._after(order):
                continue
            self.versions[v.id] = order
            event = parse(v.id, v.object_id, v.message, v.created_at)
            if event is not None:
                self.events[v.id] = event
                changed = True
        if changed:
            self._rebase()
            self.folded = fold(self.events.values(), start=self.base)

    def _rebase(self) -> None:
        """Fold the events up to the newest checkpoint's cutoff into the base: the log's
        checkpoint says every reader has them, so they are not kept one by one."""
        cutoffs = [(at_time(e.body.cutoff_at, e.at), e.body.cutoff_version)
                   for e in self.events.values() if isinstance(e.body, Checkpoint)]
        newest = max(cutoffs, default=None)
        if newest is None or not self._after(newest):
            return
        done = [i for i, order in self.versions.items() if order <= newest]
        self.base = fold([self.events[i] for i in done if i in self.events], start=self.base)
        for i in done:
            del self.versions[i]
            self.events.pop(i, None)
        self.older += len(done)
        self.cutoff = newest

    # --- checkpoints --------------------------------------------------------------------

    def checkpoint_due(self) -> tuple[Order, Folded] | None:
        """``(cutoff, state)`` of a checkpoint to write, when :data:`ck.EVERY` events lie
        between the newest one and the newest possible cutoff; else None."""
        if not self.versions or self.folded.unknown:
            return None
        top = max(self.versions.values())[0]
        limit = top.timestamp() - ck.LAG
        ready = sorted((e for e in self.events.values() if e.at.timestamp() <= limit),
                       key=lambda e: e.order)
        if len(ready) < ck.EVERY:
            return None
        return ready[-1].order, fold(ready, start=self.base)
