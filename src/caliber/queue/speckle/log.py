"""The remote queue's fold: it turns the events of the log (one Speckle version each, see
:mod:`caliber.queue.speckle.events`) into the state of every workload.

The fold reads events in server order (``createdAt``, then version id) and applies each one
only when it fits the state at that point: the first claim of a claimable workload wins, a
later claim is ignored while that lease lives, and a renewal, release, completion or failure
counts only when its claim token is the current holder's. So the log decides, identically for
every reader, who holds what, whatever order the writes arrived in. See docs/remote-queue.md.

Chains (``workflow queue --after``) are fold rules too, applied at their place in server
order: a ``put`` after workloads of which one has not completed at that point makes it
waiting; the completion of the last of them makes it queued; the cancel (or reset) of one
cancels the workloads waiting after it at that point, and theirs in turn ("upstream X was
cancelled" / "... was reset"), so a later retry of the upstream revives none of them. A
``claim`` applies only once the workload's ``not_before`` has passed (server time). A
``prune`` leaves a workload that one which has not ended at that point runs after, and one
whose end is untold at that point (below).

Every end is told once: a ``done``, ``fail`` or ``release`` ends its own workload as its
pinion tells it; the other ends an event marked ``te`` makes (a workload cancelled while
queued or waiting, or failed by ``expire``, and the workloads cancelled down a chain, by any
event) are *untold* (:attr:`State.untold`: where in the log) until the first ``tell`` of a
pinion of their name that names them takes them (:attr:`State.told`: its token), as the
first claim wins. ``retry`` clears both; an event without ``te`` (every one an earlier
Caliber wrote) leaves nothing untold, so a log from before folds as it did.

The fold is a state machine, so it can start from the state a checkpoint stored instead of
from nothing: ``fold(after, start=fold(before))`` equals ``fold(before + after)`` for events
split at any point of server order.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from caliber.queue.lifecycle import (
    CANCELLABLE,
    RETRIABLE,
    cancel_asked,
    cancelled,
    retried,
    upstream_completed,
    upstream_ended,
)
from caliber.queue.secret import add_mismatch, mismatch_marked
from caliber.queue.speckle import events as ev
from caliber.queue.workload import WorkloadStatus

Order = tuple[dt.datetime, str]
"""A place in the log: (createdAt, version id)."""
Note = tuple[dt.datetime, WorkloadStatus, str]
"""A history entry: when, to what status, why (a HistoryEntry when shown)."""


@dataclass
class Lease:
    """Who holds a running workload: claim token, owner, lease end (in server time; the
    backend shows it as a :class:`caliber.queue.workload.Lease` in local time)."""

    token: str
    owner: str
    expires_at: dt.datetime


@dataclass
class State:
    """A workload as the log says it is (its content lives in the object ``object_id``)."""

    id: str
    pinion: str
    workflow: str
    created_at: dt.datetime
    queued_by: str
    object_id: str
    order: Order
    status: WorkloadStatus = WorkloadStatus.QUEUED
    attempts: int = 0
    lease: Lease | None = None
    secret: str | None = None
    """A replacement run-secret (``resign``); None: the one in the object."""
    mismatch: str | None = None
    results_id: str | None = None
    last_error: str | None = None
    work_dir: str | None = None
    deleted: bool = False
    history: list[Note] = field(default_factory=list)
    cancel: str | None = None
    """Who asked to cancel it while it ran (its pinion learns it when it renews)."""
    cancel_now: bool = False
    """That cancel was ``--now``: its pinion stops the running task at once."""
    progress: dict[str, Any] | None = None
    """Where its run is, as its pinion wrote with its last lease renewal (while it runs)."""
    resume_from: str | None = None
    """Results whose completed tasks its next run reuses (``retry --resume``)."""
    resume_signature: str | None = None
    """Those Results' signature when the reuse was granted."""
    resume_grant: str | None = None
    """The grant (made with the user's key: :mod:`caliber.queue.resume`)."""
    after: list[str] = field(default_factory=list)
    """The workloads it runs after (``--after``): it waits while one has not completed."""
    not_before: str | None = None
    """No claim applies before this time (``--not-before``), as signed
    (:func:`caliber.queue.secret.signed_time`), or None."""
    priority: int = 0
    """Claim order among claimable workloads: higher first, then queue order."""
    notify: str | None = None
    """Its own notification address (``--notify``), or None."""
    untold: Order | None = None
    """Where in the log it ended with no pinion there to tell of it (an event marked
    ``te``), until a ``tell`` takes it; None: nothing to tell."""
    told: str | None = None
    """The token of the ``tell`` that took its end (its writer tells of it), or None."""

    def start_at(self) -> dt.datetime | None:
        """``not_before`` as a time; None without one (or when it is not a time: then the
        workload reads back as damaged, and its pinion says so)."""
        if self.not_before is None:
            return None
        try:
            moment = dt.datetime.fromisoformat(self.not_before)
        except (TypeError, ValueError):
            return None
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)

    def due(self, now: dt.datetime) -> bool:
        """Whether its ``not_before`` (if any) has passed at ``now`` (server time)."""
        start = self.start_at()
        return start is None or start <= now

    def note(self, at: dt.datetime, text: str, status: WorkloadStatus | None = None) -> None:
        self.history.append((at, status or self.status, text))

    def held_by(self, token: object) -> bool:
        return (self.status == WorkloadStatus.RUNNING and self.lease is not None
                and self.lease.token == token)


@dataclass(frozen=True)
class ResultsRef:
    """Stored results, as the log lists them (the Results are in the object)."""

    id: str
    workload_id: str | None
    workflow: str
    pinion: str | None
    status: str
    finished_at: dt.datetime
    object_id: str


FINISHED = (WorkloadStatus.COMPLETED, WorkloadStatus.FAILED, WorkloadStatus.CANCELLED)
DONE = {"completed": WorkloadStatus.COMPLETED, "cancelled": WorkloadStatus.CANCELLED}
"""The status a ``done`` event's run status gives (any other: failed)."""


def finished(state: State) -> bool:
    """Whether no event can make ``state`` claimable again (only delete or re-sign it)."""
    return state.deleted or state.status in FINISHED


def settled(state: State) -> bool:
    """Finished with nothing left to tell: a checkpoint archives it (an untold one stays
    with the unfinished ones, so that a pinion finds it without reading the archive), and a
    ``prune`` may remove it (an untold one stays until a ``tell`` takes it)."""
    return finished(state) and state.untold is None


def _tells(body: ev.Body) -> bool:
    """Whether the ends ``body`` makes with no pinion there are untold (marked ``te``)."""
    return getattr(body, "tell", None) is True


class Archive:
    """The finished workloads and the results a checkpoint holds, read only when a command
    needs them (a listing, a lookup by id), never for claiming: that reads the few
    unfinished workloads only. ``ids`` are the archived workloads."""

    def __init__(self, ids: frozenset[str],
                 load: Callable[[], tuple[dict[str, State], dict[str, ResultsRef]]],
                 raw: Callable[[], tuple[list[str], list[str]]]) -> None:
        self.ids = ids
        self._load = load
        self.raw = raw
        """The archive's chunk texts as stored (workloads, results), to write them again."""
        self._loaded: tuple[dict[str, State], dict[str, ResultsRef]] | None = None

    def _get(self) -> tuple[dict[str, State], dict[str, ResultsRef]]:
        if self._loaded is None:
            self._loaded = self._load()
        return self._loaded

    def states(self) -> dict[str, State]:
        return self._get()[0]

    def results(self) -> dict[str, ResultsRef]:
        return self._get()[1]


@dataclass
class Folded:
    workloads: dict[str, State] = field(default_factory=dict)
    """Every workload, except the archived ones no event has touched since."""
    results: dict[str, ResultsRef] = field(default_factory=dict)
    """Results, except the archived ones."""
    unknown: list[ev.Unknown] = field(default_factory=list)
    """Events this Caliber cannot read (written by a newer one): the state may be wrong."""
    archive: Archive | None = None
    pruned: set[str] = field(default_factory=set)
    """Ids ``prune`` events removed (workloads, and Results of no workload): left out of
    the archive when it is read, and of the next checkpoint's."""

    def find(self, wid: str) -> State | None:
        """Workload ``wid`` as the log says it is now, deleted ones too; None when it was
        never queued or was pruned. Reads the archive only when ``wid`` is in it."""
        if wid in self.pruned:
            return None
        state = self.workloads.get(wid)
        if state is None and self.archive is not None and wid in self.archive.ids:
            state = self.archive.states().get(wid)
        return state

    def knows(self, wid: str) -> bool:
        return wid in self.workloads or wid in self.pruned or (
            self.archive is not None and wid in self.archive.ids)

    def gone(self, ref: ResultsRef) -> bool:
        """Whether a prune removed these Results (or the workload they belong to)."""
        return ref.id in self.pruned or ref.workload_id in self.pruned

    def every_workload(self) -> dict[str, State]:
        """All workloads (reads the archive)."""
        if self.archive is None:
            return self.workloads
        kept = {k: s for k, s in self.archive.states().items() if k not in self.pruned}
        return {**kept, **self.workloads}

    def every_result(self) -> dict[str, ResultsRef]:
        """All results (reads the archive); the first of one id counts, as in the fold."""
        if self.archive is None:
            return self.results
        merged = {k: r for k, r in self.archive.results().items() if not self.gone(r)}
        for key, ref in self.results.items():
            merged.setdefault(key, ref)
        return merged

    def live(self) -> list[State]:
        """Workloads not deleted, oldest first (reads the archive)."""
        found = [s for s in self.every_workload().values() if not s.deleted]
        return sorted(found, key=lambda s: (s.created_at, s.order))

    def unfinished(self) -> list[State]:
        """Queued and running workloads, oldest first (never reads the archive)."""
        found = [s for s in self.workloads.values() if not finished(s)]
        return sorted(found, key=lambda s: (s.created_at, s.order))


def at_time(text: Any, default: dt.datetime) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(str(text))
    except ValueError:
        return default
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _seconds(value: float) -> dt.timedelta:
    """A lease's length; none (it runs out at once, as a claim without one) when it is not a
    number or too long to add to a date (edited by hand)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        return dt.timedelta(0)
    return dt.timedelta(seconds=seconds) if abs(seconds) < 1e9 else dt.timedelta(0)


def blocked(folded: Folded, state: State) -> str | None:
    """Why ``state`` can never run as things are (one of the workloads it runs after is
    cancelled, reset or not in the queue), or None."""
    for uid in state.after:
        up = folded.find(uid)
        if up is None:
            return f"upstream {uid} is not in the queue"
        if up.deleted:
            return upstream_ended(uid, "reset")
        if up.status == WorkloadStatus.CANCELLED:
            return upstream_ended(uid, "cancelled")
    return None


def held(folded: Folded) -> set[str]:
    """The workloads that a workload which has not ended (waiting, queued or running) runs
    after: a prune keeps them (its pinion takes their Results for ``$results``). Unfinished
    workloads are never archived, so every reader finds the same from any checkpoint."""
    return {uid for s in folded.workloads.values() if s.after and not finished(s)
            for uid in s.after}


def pending(folded: Folded, state: State) -> list[str]:
    """The workloads ``state`` runs after that have not completed."""
    return [uid for uid in state.after
            if (up := folded.find(uid)) is None or up.deleted
            or up.status != WorkloadStatus.COMPLETED]


def fold(events: Iterable[ev.Event], start: Folded | None = None) -> Folded:
    """The state of every workload after ``events`` (applied in server order), starting
    from ``start`` (which is left as it is)."""
    run = _Folding(start)
    for event in sorted(events, key=lambda e: e.order):
        run.apply(event)
    return run.out


class _Folding:
    """One :func:`fold`: the state ``out`` so far, and the workloads waiting in it."""

    def __init__(self, start: Folded | None) -> None:
        self.start = start
        out = self.out = Folded()
        if start is not None:
            out.workloads = dict(start.workloads)
            out.results = dict(start.results)
            out.unknown = list(start.unknown)
            out.archive = start.archive
            out.pruned = set(start.pruned)
        self.mine: set[str] = set()  # states copied from ``start`` for this fold (on write)
        self.waiting = {s.id for s in out.workloads.values()
                        if s.status == WorkloadStatus.WAITING and not s.deleted}

    def writable(self, state: State) -> State:
        if self.start is not None and state.id not in self.mine:
            state = self.out.workloads[state.id] = copy.deepcopy(state)
            self.mine.add(state.id)
        return state

    def apply(self, event: ev.Event) -> None:
        out, body = self.out, event.body
        if isinstance(body, ev.Unknown):
            out.unknown.append(body)
            return
        if isinstance(body, ev.SavedResults | ev.Done) and body.results is not None:
            ref = ResultsRef(id=body.results, workload_id=body.workload,
                             workflow=body.workflow, pinion=body.pinion, status=body.status,
                             finished_at=at_time(body.finished_at, event.at),
                             object_id=event.object_id)
        else:
            ref = None
        if ref is not None and out.gone(ref):
            ref = None
        if isinstance(body, ev.SavedResults):
            if ref is not None:
                out.results.setdefault(ref.id, ref)
            return
        if isinstance(body, ev.Checkpoint):
            return
        if isinstance(body, ev.Prune):
            _prune(out, body.ids, held(out))
            return
        if isinstance(body, ev.Tell):
            self.tell(body)
            return
        if isinstance(body, ev.Put):
            if not out.knows(body.workload):
                self.put(body, event)
            return
        wid = getattr(body, "workload", None)
        current = out.workloads.get(wid) if isinstance(wid, str) else None
        if (current is None and out.archive is not None and wid in out.archive.ids
                and wid not in out.pruned):
            current = out.archive.states().get(wid)  # an event about a finished one: rare
        if current is None or current.deleted or not _applies(current, body, event.at):
            return
        if isinstance(body, ev.Retry) and blocked(out, current) is not None:
            return  # it would never run (the retry was refused to whoever wrote it)
        before = current.status
        waits = pending(out, current) if isinstance(body, ev.Retry) else []
        state = self.writable(current)
        _apply(state, body, event.at, waits=waits)
        if isinstance(body, ev.Done) and ref is not None:
            out.results.setdefault(ref.id, ref)
        untold = event.order if _tells(body) else None
        if state.status != before and state.status in FINISHED:  # it ended here: its
            # pinion tells of a done, fail or release (it held it), no one of the others
            state.untold = None if isinstance(body, ev.Done | ev.Fail | ev.Release) else untold
        self.chain(state, before, event.at, untold)

    def put(self, body: ev.Put, event: ev.Event) -> None:
        state = self.out.workloads[body.workload] = State(
            id=body.workload, pinion=body.pinion, workflow=body.workflow,
            created_at=at_time(body.created_at, event.at), queued_by=body.queued_by,
            object_id=event.object_id, order=event.order, after=list(body.after or []),
            not_before=body.not_before, priority=int(body.priority or 0), notify=body.notify,
        )
        self.mine.add(body.workload)
        if body.results is not None:  # workflow queue --resume
            state.resume_from = body.results
            state.resume_signature, state.resume_grant = body.signature, body.grant
        why = blocked(self.out, state)
        if why is None and pending(self.out, state):
            state.status = WorkloadStatus.WAITING
            self.waiting.add(state.id)
        state.note(event.at, f"queued by {state.queued_by or '?'}" + (
            f", reusing the completed tasks of results {body.results}"
            if body.results else "") + _waits_for(pending(self.out, state)))
        if why is not None:
            state.status = WorkloadStatus.CANCELLED
            state.last_error = why
            state.note(event.at, why)

    def tell(self, body: ev.Tell) -> None:
        """A ``tell``: each workload it names whose end is untold at this point, of its
        pinion, is told by it (a later ``tell`` naming it finds nothing untold)."""
        for wid in dict.fromkeys(body.ids):
            state = self.out.workloads.get(wid)  # (an untold one is never archived)
            if (state is None or state.deleted or state.untold is None
                    or state.pinion != body.pinion):
                continue
            state = self.writable(state)
            state.untold, state.told = None, body.token

    def chain(self, state: State, before: WorkloadStatus, at: dt.datetime,
              untold: Order | None = None) -> None:
        """The chain rules after an event changed ``state``: the workloads waiting after it
        go on when it completed, and are cancelled when it was cancelled or reset (their
        ends ``untold`` at that place of the log, or None: told, by an event without
        ``te``)."""
        if state.status == WorkloadStatus.WAITING and not state.deleted:
            self.waiting.add(state.id)
        else:
            self.waiting.discard(state.id)
        if state.deleted:
            self.cancel_after(state.id, "reset", at, untold)
        elif state.status != before and state.status == WorkloadStatus.COMPLETED:
            for waiter in self.waiters(state.id):
                if not pending(self.out, waiter):
                    waiter = self.writable(waiter)
                    waiter.status = WorkloadStatus.QUEUED
                    self.waiting.discard(waiter.id)
                    waiter.note(at, upstream_completed(state.id))
        elif state.status != before and state.status == WorkloadStatus.CANCELLED:
            self.cancel_after(state.id, "cancelled", at, untold)

    def waiters(self, uid: str) -> list[State]:
        """The workloads waiting after ``uid``, in queue order."""
        found = [self.out.workloads[w] for w in self.waiting]
        return sorted((s for s in found if uid in s.after), key=lambda s: s.order)

    def cancel_after(self, uid: str, how: str, at: dt.datetime,
                     untold: Order | None = None) -> None:
        """Cancel the workloads waiting after ``uid`` (``how``: it was cancelled, or reset),
        and down the chain."""
        todo = [(uid, how)]
        while todo:
            up, how = todo.pop(0)
            for waiter in self.waiters(up):
                waiter = self.writable(waiter)
                waiter.status = WorkloadStatus.CANCELLED
                waiter.last_error = upstream_ended(up, how)
                waiter.untold = untold
                waiter.note(at, waiter.last_error)
                self.waiting.discard(waiter.id)
                todo.append((waiter.id, "cancelled"))


def _prune(out: Folded, ids: Iterable[str], held: set[str]) -> None:
    """A ``prune`` event: each id names a workload, removed with its Results when it is
    settled at this point of the log (an unfinished one stays, and so does one whose end is
    still untold, and one in ``held``: a workload that has not ended runs after it), or
    Results of no workload. An archived workload not in ``out.workloads`` is settled: no
    event touched it since its checkpoint (the archive is not read for this)."""
    for pid in ids:
        state = out.workloads.get(pid)
        if (state is not None and not settled(state)) or pid in held:
            continue
        out.workloads.pop(pid, None)
        out.pruned.add(pid)
    out.results = {k: r for k, r in out.results.items() if not out.gone(r)}


def _applies(state: State, body: ev.Body, at: dt.datetime) -> bool:
    """Whether ``body`` changes ``state`` (checked before copying the state)."""
    if isinstance(body, ev.Claim):
        lease = state.lease
        if lease is not None and lease.token == body.token:
            return False  # the same claim written twice
        if body.key is not None and mismatch_marked(state.mismatch, body.key):
            return False  # that key was found not to match: its pinions never run this one
        if state.status == WorkloadStatus.RUNNING and lease is not None:
            return lease.expires_at < at  # a live lease: this claim lost
        return state.status == WorkloadStatus.QUEUED and state.due(at)
    if isinstance(body, ev.Expire):
        return (state.held_by(body.token) and state.lease is not None
                and state.lease.expires_at < at and state.attempts >= body.max_attempts)
    if isinstance(body, ev.Renew | ev.Release | ev.Done | ev.Fail):
        return state.held_by(body.token)
    if isinstance(body, ev.Cancel):  # once, and once more to make it --now
        return state.status in CANCELLABLE and (
            state.cancel is None or (bool(body.now) and not state.cancel_now))
    if isinstance(body, ev.Retry):
        return state.status in RETRIABLE
    return isinstance(body, ev.Delete | ev.Resign)


def _waits_for(pending: list[str]) -> str:
    """What a history line adds when a workload waits (the words of
    :func:`caliber.queue.lifecycle.waits_for`)."""
    return f"; waits for {', '.join(dict.fromkeys(pending))}" if pending else ""


def _apply(state: State, body: ev.Body, at: dt.datetime, *,
           waits: list[str] | None = None) -> None:
    """``body`` applied to ``state`` (``waits``: a retry leaves it waiting for these, the
    workloads it runs after that have not completed)."""
    lease = state.lease
    if isinstance(body, ev.Release | ev.Done | ev.Fail | ev.Expire):
        state.progress = None  # the run ended
    if isinstance(body, ev.Claim):
        if state.status == WorkloadStatus.RUNNING and lease is not None:
            state.note(at, f"lease of {lease.owner} ran out (attempt {state.attempts} lost)",
                       WorkloadStatus.QUEUED)
        state.status = WorkloadStatus.RUNNING
        state.progress = None
        state.attempts += 1
        state.lease = Lease(token=body.token, owner=body.owner,
                            expires_at=at + _seconds(body.lease))
        state.note(at, f"claimed by {body.owner} (attempt {state.attempts})")
    elif isinstance(body, ev.Renew):
        assert lease is not None
        lease.expires_at = at + _seconds(body.lease)
        if body.progress is not None:
            state.progress = body.progress
    elif isinstance(body, ev.Release):
        assert lease is not None
        state.status = WorkloadStatus.QUEUED
        state.attempts = max(state.attempts - 1, 0)
        state.mismatch = add_mismatch(state.mismatch, body.mismatch)
        state.note(at, f"released by {lease.owner}: {body.reason}")
        state.lease = None
        _cancel_if_asked(state, at)
    elif isinstance(body, ev.Done):
        failed = body.status != "completed"
        state.status = DONE.get(body.status, WorkloadStatus.FAILED)
        state.results_id = body.results
        state.last_error = body.error or ("the workflow failed" if failed else None)
        state.work_dir = body.work_dir
        state.lease = None
        error = f": {state.last_error}" if state.last_error else ""
        state.note(at, f"results {state.results_id}{error}")
    elif isinstance(body, ev.Fail):
        state.status = WorkloadStatus.QUEUED if body.retry else WorkloadStatus.FAILED
        state.last_error = body.reason
        state.lease = None
        state.note(at, f"attempt failed: {body.reason}" + ("; queued again" if body.retry
                                                           else ""))
        _cancel_if_asked(state, at)
    elif isinstance(body, ev.Expire):
        state.status = WorkloadStatus.FAILED
        state.last_error = f"lease ran out {state.attempts} times (pinion died?)"
        state.lease = None
        state.note(at, state.last_error)
    elif isinstance(body, ev.Delete):
        state.deleted = True
        state.untold = None  # gone: nothing to tell of it
    elif isinstance(body, ev.Cancel):
        if state.status in (WorkloadStatus.QUEUED, WorkloadStatus.WAITING) or (
                lease is not None and lease.expires_at < at):
            state.status = WorkloadStatus.CANCELLED
            state.last_error = cancelled(body.by)
            state.lease = None
            state.note(at, state.last_error)
        else:
            state.cancel = body.by
            state.cancel_now = state.cancel_now or bool(body.now)
            state.note(at, cancel_asked(body.by, bool(body.now)))
    elif isinstance(body, ev.Retry):
        state.status = WorkloadStatus.WAITING if waits else WorkloadStatus.QUEUED
        state.attempts = 0
        state.lease = None
        state.last_error = state.cancel = state.mismatch = None  # every key looks afresh
        state.cancel_now = False
        state.untold = state.told = None  # its next end is told again
        state.resume_from = body.results
        state.resume_signature = body.signature if body.results else None
        state.resume_grant = body.grant if body.results else None
        state.note(at, retried(body.by, body.results) + _waits_for(waits or []))
    elif isinstance(body, ev.Resign):
        state.secret = body.secret
        state.mismatch = None
        if body.grant is not None and body.results == state.resume_from:
            state.resume_signature, state.resume_grant = body.signature, body.grant
        state.note(at, f"signed again with key {body.key}")


def _cancel_if_asked(state: State, at: dt.datetime) -> None:
    """A workload cancelled while it ran is not queued again when its run ends without
    Results (put back, a failed attempt with attempts left): it is cancelled."""
    if state.cancel is not None and state.status == WorkloadStatus.QUEUED:
        state.status = WorkloadStatus.CANCELLED
        state.last_error = cancelled(state.cancel)
        state.note(at, state.last_error)
