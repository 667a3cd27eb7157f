"""The remote queue's event log: one Speckle version per event, and the fold that turns the
versions into the state of every workload.

A version's message is a line for people followed by the machine part, for example::

    claimed k3v9q2mxa7 (pasta) by mypinion@host:4242 · caliber/1 {"e":"claim","w":"k3v9q2mxa7",...}

The fold reads events in server order (``createdAt``, then version id) and applies each one
only when it fits the state at that point: the first claim of a claimable workload wins, a
later claim is ignored while that lease lives, and a renewal, release, completion or failure
counts only when its claim token is the current holder's. So the log decides, identically for
every reader, who holds what, whatever order the writes arrived in. See docs/remote-queue.md.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from caliber.queue.workload import HistoryEntry, WorkloadStatus

MARK = "caliber/1"
SEPARATOR = " · "
MAX_TEXT = 300  # characters of a reason or error kept in a message
MAX_HUMAN = 200  # characters of the readable part of a message


@dataclass(frozen=True)
class Event:
    """One parsed queue version."""

    kind: str
    data: dict[str, Any]
    version_id: str
    object_id: str
    at: dt.datetime
    """The version's createdAt: server time."""

    @property
    def order(self) -> tuple[dt.datetime, str]:
        return (self.at, self.version_id)


def clip(text: str | None, limit: int = MAX_TEXT) -> str | None:
    if text is None:
        return None
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def message(human: str, data: dict[str, Any]) -> str:
    """The version message: the readable part, then the machine part."""
    readable = (clip(human, MAX_HUMAN) or "").replace(MARK, "caliber/ 1")
    machine = json.dumps({k: v for k, v in data.items() if v is not None},
                         separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    return f"{readable}{SEPARATOR}{MARK} {machine}"


def parse(version_id: str, object_id: str, text: str, at: dt.datetime) -> Event | None:
    """The event in a version message, or None (a version that is not a queue event)."""
    start = text.find(MARK + " {")
    if start < 0:
        return None
    try:
        data = json.loads(text[start + len(MARK) + 1:])
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("e"), str):
        return None
    return Event(kind=data["e"], data=data, version_id=version_id, object_id=object_id, at=at)


@dataclass
class Holder:
    """Who holds a running workload: claim token, owner, lease end (server time)."""

    token: str
    owner: str
    expires: dt.datetime


@dataclass
class State:
    """A workload as the log says it is (its content lives in the object ``object_id``)."""

    id: str
    pinion: str
    workflow: str
    created_at: dt.datetime
    queued_by: str
    object_id: str
    order: tuple[dt.datetime, str]
    status: WorkloadStatus = WorkloadStatus.QUEUED
    attempts: int = 0
    holder: Holder | None = None
    secret: str | None = None
    """A replacement run-secret (``resign``); None: the one in the object."""
    mismatch: str | None = None
    results_id: str | None = None
    last_error: str | None = None
    work_dir: str | None = None
    deleted: bool = False
    history: list[HistoryEntry] = field(default_factory=list)

    def note(self, at: dt.datetime, text: str, status: WorkloadStatus | None = None) -> None:
        self.history.append(HistoryEntry(at=at, status=status or self.status, message=text))

    def held_by(self, token: object) -> bool:
        return (self.status == WorkloadStatus.RUNNING and self.holder is not None
                and self.holder.token == token)


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


@dataclass
class Folded:
    workloads: dict[str, State] = field(default_factory=dict)
    results: dict[str, ResultsRef] = field(default_factory=dict)

    def live(self) -> list[State]:
        """Workloads not deleted, oldest first."""
        found = [s for s in self.workloads.values() if not s.deleted]
        return sorted(found, key=lambda s: (s.created_at, s.order))


def _time(text: Any, default: dt.datetime) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(str(text))
    except ValueError:
        return default
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _seconds(value: Any) -> dt.timedelta:
    try:
        return dt.timedelta(seconds=float(value))
    except (TypeError, ValueError, OverflowError):
        return dt.timedelta(0)


def fold(events: Iterable[Event]) -> Folded:
    """The state of every workload after ``events`` (applied in server order)."""
    out = Folded()
    for ev in sorted(events, key=lambda e: e.order):
        d = ev.data
        ref = _results_ref(ev) if ev.kind in ("results", "done") else None
        if ev.kind == "results":
            if ref is not None:
                out.results.setdefault(ref.id, ref)
            continue
        wid = d.get("w")
        if not isinstance(wid, str):
            continue
        state = out.workloads.get(wid)
        if ev.kind == "put":
            if state is None:
                state = out.workloads[wid] = State(
                    id=wid, pinion=str(d.get("p", "")), workflow=str(d.get("n", "?")),
                    created_at=_time(d.get("c"), ev.at), queued_by=str(d.get("b", "")),
                    object_id=ev.object_id, order=ev.order,
                )
                state.note(ev.at, f"queued by {state.queued_by or '?'}")
            continue
        if state is None or state.deleted:
            continue
        token = d.get("t")
        if ev.kind == "claim":
            _claim(state, ev)
        elif ev.kind == "renew":
            if state.held_by(token) and state.holder is not None:
                state.holder.expires = ev.at + _seconds(d.get("l"))
        elif ev.kind == "release" and state.held_by(token) and state.holder is not None:
            state.status = WorkloadStatus.QUEUED
            state.attempts = max(state.attempts - 1, 0)
            state.mismatch = d.get("m") or state.mismatch
            state.note(ev.at, f"released by {state.holder.owner}: {d.get('y', '')}")
            state.holder = None
        elif ev.kind == "done" and state.held_by(token):
            failed = d.get("s") != "completed"
            state.status = WorkloadStatus.FAILED if failed else WorkloadStatus.COMPLETED
            state.results_id = d.get("r")
            state.last_error = d.get("x") or ("the workflow failed" if failed else None)
            state.work_dir = d.get("d")
            state.holder = None
            error = f": {state.last_error}" if state.last_error else ""
            state.note(ev.at, f"results {state.results_id}{error}")
            if ref is not None:
                out.results.setdefault(ref.id, ref)
        elif ev.kind == "fail" and state.held_by(token):
            retry = bool(d.get("q"))
            state.status = WorkloadStatus.QUEUED if retry else WorkloadStatus.FAILED
            state.last_error = d.get("y")
            state.holder = None
            state.note(ev.at, f"attempt failed: {d.get('y')}" + ("; queued again" if retry
                                                                 else ""))
        elif ev.kind == "expire" and state.held_by(token) and state.holder is not None:
            if state.holder.expires < ev.at and state.attempts >= int(d.get("m", 1)):
                state.status = WorkloadStatus.FAILED
                state.last_error = f"lease ran out {state.attempts} times (pinion died?)"
                state.holder = None
                state.note(ev.at, state.last_error)
        elif ev.kind == "delete":
            state.deleted = True
        elif ev.kind == "resign" and isinstance(d.get("s"), str):
            state.secret = d["s"]
            state.mismatch = None
            state.note(ev.at, f"signed again with key {d.get('k', '?')}")
    return out


def _claim(state: State, ev: Event) -> None:
    d = ev.data
    holder = state.holder
    if holder is not None and holder.token == d.get("t"):
        return  # the same claim written twice
    if d.get("k") is not None and d.get("k") == state.mismatch:
        return  # that key was found not to match: its pinions never run this workload
    if state.status == WorkloadStatus.RUNNING and holder is not None and holder.expires < ev.at:
        state.note(ev.at, f"lease of {holder.owner} ran out (attempt {state.attempts} lost)",
                   WorkloadStatus.QUEUED)
    elif state.status != WorkloadStatus.QUEUED:
        return  # held by a live lease, or finished: this claim lost
    state.status = WorkloadStatus.RUNNING
    state.attempts += 1
    owner = str(d.get("o", "?"))
    state.holder = Holder(token=str(d.get("t")), owner=owner,
                          expires=ev.at + _seconds(d.get("l")))
    state.note(ev.at, f"claimed by {owner} (attempt {state.attempts})")


def _results_ref(ev: Event) -> ResultsRef | None:
    d = ev.data
    if not isinstance(d.get("r"), str):
        return None
    return ResultsRef(
        id=d["r"], workload_id=d.get("w"), workflow=str(d.get("n", "?")), pinion=d.get("p"),
        status=str(d.get("s", "")), finished_at=_time(d.get("f"), ev.at), object_id=ev.object_id,
    )
