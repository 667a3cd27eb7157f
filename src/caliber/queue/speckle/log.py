"""The remote queue's fold: it turns the events of the log (one Speckle version each, see
:mod:`caliber.queue.speckle.events`) into the state of every workload.

The fold reads events in server order (``createdAt``, then version id) and applies each one
only when it fits the state at that point: the first claim of a claimable workload wins, a
later claim is ignored while that lease lives, and a renewal, release, completion or failure
counts only when its claim token is the current holder's. So the log decides, identically for
every reader, who holds what, whatever order the writes arrived in. See docs/remote-queue.md.

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

from caliber.queue.lifecycle import CANCELLABLE, RETRIABLE, cancel_asked, cancelled, retried
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


def fold(events: Iterable[ev.Event], start: Folded | None = None) -> Folded:
    """The state of every workload after ``events`` (applied in server order), starting
    from ``start`` (which is left as it is)."""
    out = Folded()
    if start is not None:
        out.workloads = dict(start.workloads)
        out.results = dict(start.results)
        out.unknown = list(start.unknown)
        out.archive = start.archive
        out.pruned = set(start.pruned)
    mine: set[str] = set()  # states copied from ``start`` for this fold (copy on write)

    def writable(state: State) -> State:
        if start is not None and state.id not in mine:
            state = out.workloads[state.id] = copy.deepcopy(state)
            mine.add(state.id)
        return state

    for event in sorted(events, key=lambda e: e.order):
        body = event.body
        if isinstance(body, ev.Unknown):
            out.unknown.append(body)
            continue
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
            continue
        if isinstance(body, ev.Checkpoint):
            continue
        if isinstance(body, ev.Prune):
            _prune(out, body.ids)
            continue
        if isinstance(body, ev.Put):
            if not out.knows(body.workload):
                state = out.workloads[body.workload] = State(
                    id=body.workload, pinion=body.pinion, workflow=body.workflow,
                    created_at=at_time(body.created_at, event.at), queued_by=body.queued_by,
                    object_id=event.object_id, order=event.order,
                )
                mine.add(body.workload)
                if body.results is not None:  # workflow queue --resume
                    state.resume_from = body.results
                    state.resume_signature, state.resume_grant = body.signature, body.grant
                state.note(event.at, f"queued by {state.queued_by or '?'}" + (
                    f", reusing the completed tasks of results {body.results}"
                    if body.results else ""))
            continue
        wid = getattr(body, "workload", None)
        current = out.workloads.get(wid) if isinstance(wid, str) else None
        if (current is None and out.archive is not None and wid in out.archive.ids
                and wid not in out.pruned):
            current = out.archive.states().get(wid)  # an event about a finished one: rare
        if current is None or current.deleted or not _applies(current, body, event.at):
            continue
        _apply(writable(current), body, event.at)
        if isinstance(body, ev.Done) and ref is not None:
            out.results.setdefault(ref.id, ref)
    return out


def _prune(out: Folded, ids: Iterable[str]) -> None:
    """A ``prune`` event: each id names a workload, removed with its Results when it is
    finished at this point of the log (an unfinished one stays), or Results of no workload.
    An archived workload not in ``out.workloads`` is finished: no event touched it since its
    checkpoint (the archive is not read for this)."""
    for pid in ids:
        state = out.workloads.get(pid)
        if state is not None and not finished(state):
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
        return state.status == WorkloadStatus.QUEUED
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


def _apply(state: State, body: ev.Body, at: dt.datetime) -> None:
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
    elif isinstance(body, ev.Cancel):
        if state.status == WorkloadStatus.QUEUED or (lease is not None
                                                     and lease.expires_at < at):
            state.status = WorkloadStatus.CANCELLED
            state.last_error = cancelled(body.by)
            state.lease = None
            state.note(at, state.last_error)
        else:
            state.cancel = body.by
            state.cancel_now = state.cancel_now or bool(body.now)
            state.note(at, cancel_asked(body.by, bool(body.now)))
    elif isinstance(body, ev.Retry):
        state.status = WorkloadStatus.QUEUED
        state.attempts = 0
        state.lease = None
        state.last_error = state.cancel = state.mismatch = None  # every key looks afresh
        state.cancel_now = False
        state.resume_from = body.results
        state.resume_signature = body.signature if body.results else None
        state.resume_grant = body.grant if body.results else None
        state.note(at, retried(body.by, body.results))
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
