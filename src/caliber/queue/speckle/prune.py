"""``results prune`` on the remote queue: what goes (:func:`select`), and which versions of
the model go with it (:func:`doomed`). :meth:`caliber.queue.speckle.backend.SpeckleBackend.prune`
runs the steps:

1. select, from the fold, the finished workloads whose last change (their last history
   entry, in server time) is older than the cut, except those whose end no pinion has told
   yet (:func:`caliber.queue.speckle.log.settled`) and those that a workload which has not
   ended (waiting, queued or running) runs after (``--after``: its pinion takes their
   Results for ``$results``), and the Results of no workload that finished before it (what
   goes is said in :mod:`caliber.results.prune`);
2. write ``prune`` events naming them (:data:`PRUNE_BATCH` ids each). From then on every
   reader's fold leaves them out, also a reader that starts from a checkpoint still holding
   them (the events are after its cutoff), and the next checkpoint's archive drops them. A
   workload that is no longer finished at that point of the log (queued again meanwhile),
   or whose end is untold at that point, or that a workload not ended at that point runs
   after (queued after it meanwhile), stays: the fold decides, the same for every reader;
3. delete every version about a workload or Results that a ``prune`` event of the log
   removed, so a prune that stopped half-way is finished by the next one, but those of a
   workload that one which stays runs after (its ``put`` folds against them: they go at a
   later prune, with the last of those). Every event is about one workload (or one
   Results), so what any reader folds for the others is the same before and after; readers
   notice the versions deleted and read the log afresh.
   ``prune`` and ``checkpoint`` versions are never deleted;
4. delete the versions of the workflows' results models
   (:func:`caliber.queue.speckle.results.results_model`) that show a pruned Results.

The objects stay: a Speckle server has no call that deletes an object (a project keeps every
object sent to it until the project is deleted, and an object may be shared by any number of
versions, as blobs are by content). So a prune on Speckle makes the pruned workloads,
Results and their attachments unreachable from the queue and the results models, and frees
nothing on the server's disk; ``bytes`` of its report is None.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

from caliber.queue.speckle import adapter as sp
from caliber.queue.speckle import events as ev
from caliber.queue.speckle.log import Folded, ResultsRef, State, held, settled

PRUNE_BATCH = 200  # ids per ``prune`` event (about 3 KB of version message)


def last_change(state: State) -> dt.datetime:
    """When the log last changed ``state`` (server time)."""
    return state.history[-1][0] if state.history else state.order[0]


def select(folded: Folded, before: dt.datetime, server_before: dt.datetime, *,
           workflow: str | None, pinion: str | None,
           ) -> tuple[list[State], list[ResultsRef], list[ResultsRef]]:
    """``(workloads, their Results, Results of no workload)`` a prune at ``before`` removes
    (``server_before``: the same moment in server time, for the log's times)."""
    every = folded.every_workload()
    kept = held(folded)
    states = sorted((s for s in every.values()
                     if settled(s) and last_change(s) < server_before and s.id not in kept
                     and workflow in (None, s.workflow) and pinion in (None, s.pinion)),
                    key=lambda s: s.order)
    gone = {s.id for s in states}
    live = {s.id for s in every.values() if not s.deleted}
    theirs, orphans = [], []
    for ref in sorted(folded.every_result().values(), key=lambda r: (r.finished_at, r.id)):
        if ref.workload_id in gone:
            theirs.append(ref)
        elif ((ref.workload_id is None or ref.workload_id not in live)
              and ref.finished_at < before and workflow in (None, ref.workflow)
              and pinion in (None, ref.pinion)):
            orphans.append(ref)
    return states, theirs, orphans


def every_version(conn: sp.SpeckleConnection,
                  model_id: str | None = None) -> list[sp.VersionInfo]:
    """Every version of the model (or of ``model_id``), newest first (all pages)."""
    page = conn.list_versions(model_id=model_id)
    found = {v.id: v for v in page.items}
    while len(page.items) >= sp.VERSIONS_PAGE and page.cursor:
        page = conn.list_versions(page.cursor, model_id=model_id)
        fresh = [v for v in page.items if v.id not in found]
        if not fresh:  # (a page may repeat versions of the previous one's last moment)
            break
        found.update((v.id, v) for v in fresh)
    return list(found.values())


def doomed(versions: Iterable[sp.VersionInfo], folded: Folded,
           also: Iterable[str] = ()) -> list[str]:
    """Ids of the versions about what the ``prune`` events among ``versions`` removed in
    ``folded`` (what is still there stays), and about the ids ``also`` (a dry run's). Not
    those of a workload that one which stays runs after (``--after``): without its ``put`` a
    reader of the whole log would fold that one as put after a workload not in the queue
    (cancelled at once, its end and whether it is told rewritten); they go with the last
    workload after it."""
    events = [e for v in versions
              if (e := ev.parse(v.id, v.object_id, v.message, v.created_at)) is not None]
    named = {i for e in events if isinstance(e.body, ev.Prune) for i in e.body.ids}
    every = folded.every_workload()
    dead = (named - set(every) - set(folded.every_result())) | set(also)
    dead -= {uid for s in every.values() if s.id not in dead for uid in s.after}
    out = []
    for e in events:
        body = e.body
        if isinstance(body, ev.Prune | ev.Checkpoint | ev.Unknown):
            continue
        about = getattr(body, "workload", None)
        if about in dead or (isinstance(body, ev.SavedResults) and body.results in dead):
            out.append(e.version_id)
    return out


_SHOWN = re.compile(r"results (\S+) of workload ")


def shown_results(conn: sp.SpeckleConnection, models: Iterable[str],
                  results: Iterable[str]) -> list[str]:
    """Ids of the versions of the results models ``models`` (names as stored) that show one
    of ``results`` (their message names it: see
    :meth:`caliber.queue.speckle.backend.SpeckleBackend._publish`)."""
    gone = set(results)
    out = []
    for name in sorted(set(models)):
        model_id = conn.find_model(name)
        if model_id is None:
            continue
        for version in every_version(conn, model_id):
            found = _SHOWN.search(version.message)
            if found and found.group(1) in gone:
                out.append(version.id)
    return out
