"""Checkpoints of the remote queue: the folded state of the log up to a cutoff, stored as an
object that a ``checkpoint`` version references, so a reader starts there instead of at the
first version ever written.

A checkpoint written at server time T holds ``fold(every event up to the cutoff C)`` with C
at least :data:`LAG` seconds before the newest version its writer had seen: every version
created before C was visible to the writer (the same assumption the claim's settle time
makes, with a wider margin). A reader lists versions newest first until it meets a
checkpoint, goes on back to that checkpoint's cutoff, and folds every event after C on top of
the stored state. The fold is a state machine in server order, so that equals the fold of
the whole log, including claims that raced the checkpoint (created between C and T, or after
T): they are after C, so every reader folds them on top.

The state is split into chunks of :data:`CHUNK` workloads (and of results), oldest first, each
a detached object: finished workloads stop changing, so most chunks keep their id from one
checkpoint to the next and are neither uploaded nor downloaded again.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from caliber.queue import speckle_adapter as sp
from caliber.queue.speckle_events import FORMAT
from caliber.queue.speckle_log import Folded, Holder, Order, ResultsRef, State
from caliber.queue.workload import HistoryEntry, WorkloadStatus

EVERY = 100
"""A writer adds a checkpoint once this many events lie between the newest checkpoint and
the cutoff a new one could have."""
LAG = 30.0
"""Seconds between a checkpoint's cutoff and the newest version its writer had seen."""
CHUNK = 200
"""Workloads (or results) per chunk object."""


class CheckpointError(ValueError):
    """A checkpoint object this Caliber cannot read (damaged, or a newer format)."""


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat()


def _when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _state_doc(s: State) -> list[Any]:
    holder = None if s.holder is None else [s.holder.token, s.holder.owner,
                                            _iso(s.holder.expires)]
    return [s.id, s.pinion, s.workflow, _iso(s.created_at), s.queued_by, s.object_id,
            [_iso(s.order[0]), s.order[1]], s.status.value, s.attempts, holder, s.secret,
            s.mismatch, s.results_id, s.last_error, s.work_dir, s.deleted,
            [[_iso(h.at), h.status.value, h.message] for h in s.history]]


def _state(doc: list[Any]) -> State:
    (wid, pinion, workflow, created, queued_by, object_id, order, status, attempts, holder,
     secret, mismatch, results_id, last_error, work_dir, deleted, history) = doc
    return State(
        id=wid, pinion=pinion, workflow=workflow, created_at=_when(created),
        queued_by=queued_by, object_id=object_id, order=(_when(order[0]), order[1]),
        status=WorkloadStatus(status), attempts=int(attempts),
        holder=None if holder is None else Holder(holder[0], holder[1], _when(holder[2])),
        secret=secret, mismatch=mismatch, results_id=results_id, last_error=last_error,
        work_dir=work_dir, deleted=bool(deleted),
        history=[HistoryEntry.model_construct(at=_when(at), status=WorkloadStatus(st),
                                              message=text) for at, st, text in history],
    )


def _ref_doc(r: ResultsRef) -> list[Any]:
    return [r.id, r.workload_id, r.workflow, r.pinion, r.status, _iso(r.finished_at),
            r.object_id]


def _ref(doc: list[Any]) -> ResultsRef:
    rid, workload_id, workflow, pinion, status, finished, object_id = doc
    return ResultsRef(id=rid, workload_id=workload_id, workflow=workflow, pinion=pinion,
                      status=status, finished_at=_when(finished), object_id=object_id)


def _chunks(kind: str, docs: list[Any]) -> list[Any]:
    return [sp.new_object({"caliber": f"queue checkpoint {kind}",
                           "items_json": json.dumps(docs[i:i + CHUNK], ensure_ascii=False)})
            for i in range(0, len(docs), CHUNK)]


def to_object(folded: Folded, cutoff: Order) -> Any:
    """The checkpoint object of ``folded`` (the state after every event up to ``cutoff``)."""
    states = sorted(folded.workloads.values(), key=lambda s: s.order)
    refs = sorted(folded.results.values(), key=lambda r: (r.finished_at, r.id))
    return sp.new_object({
        "caliber": "queue checkpoint", "format": FORMAT,
        "about": "Caliber workflow queue: the state of every workload up to the cutoff",
        "cutoff_at": _iso(cutoff[0]), "cutoff_version": cutoff[1],
        "@workloads": _chunks("workloads", [_state_doc(s) for s in states]),
        "@results": _chunks("results", [_ref_doc(r) for r in refs]),
    })


def chunk_ids(root: dict[str, Any]) -> list[str]:
    """The ids of a checkpoint object's chunks (to fetch them)."""
    try:
        return [str(r["referencedId"]) for kind in ("@workloads", "@results")
                for r in root.get(kind) or []]
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"damaged checkpoint ({exc!r})") from exc


def from_object(root: dict[str, Any], chunks: dict[str, dict[str, Any]]) -> Folded:
    """The state a checkpoint object holds (``chunks``: its chunk objects by id)."""
    version = root.get("format")
    if not isinstance(version, int) or version > FORMAT:
        raise CheckpointError(f"a checkpoint written by a newer Caliber (format {version})")
    out = Folded()
    try:
        for kind in ("@workloads", "@results"):
            for ref in root.get(kind) or []:
                for doc in json.loads(chunks[ref["referencedId"]]["items_json"]):
                    if kind == "@workloads":
                        state = _state(doc)
                        out.workloads[state.id] = state
                    else:
                        result = _ref(doc)
                        out.results[result.id] = result
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"damaged checkpoint ({exc!r})") from exc
    return out
