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

The state is split in two: the queued and running workloads, and the ended ones no pinion
has told of yet (all a claim and ``take_ended`` need), and an *archive* of the other
finished workloads and of the results, which a reader fetches only when a command lists or
looks them up. Both are stored in chunks of :data:`CHUNK`, each a detached
object; the archive's chunks are carried over from one checkpoint to the next (finished
workloads stop changing), so they keep their ids and are neither uploaded nor downloaded
again, and a reader keeps the ones it read on disk (:class:`ChunkCache`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from caliber.errors import QueueDamagedError
from caliber.platform import make_private_folder, write_private_file
from caliber.queue.speckle import adapter as sp
from caliber.queue.speckle.events import FORMAT
from caliber.queue.speckle.log import Archive, Folded, Lease, Order, ResultsRef, State, settled
from caliber.queue.workload import WorkloadStatus

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
    """A workload's state as a list: 17 items, then groups that came later (cancel and
    retry; a resume grant; a cancel --now and the run's progress; what it runs after, its
    start time, priority and notification address; where its untold end is and the token of
    the ``tell`` that took it), each only when it or a later one holds something (an older
    reader reads the groups it knows)."""
    holder = None if s.lease is None else [s.lease.token, s.lease.owner,
                                           _iso(s.lease.expires_at)]
    groups = [([s.cancel, s.resume_from], bool(s.cancel or s.resume_from)),
              ([s.resume_signature, s.resume_grant], bool(s.resume_grant)),
              ([s.cancel_now or None, s.progress], bool(s.cancel_now or s.progress)),
              ([s.after, s.not_before, s.priority, s.notify],
               bool(s.after or s.not_before is not None or s.priority or s.notify is not None)),
              ([None if s.untold is None else [_iso(s.untold[0]), s.untold[1]], s.told],
               bool(s.untold or s.told))]
    used = max((i + 1 for i, (_, held) in enumerate(groups) if held), default=0)
    return [s.id, s.pinion, s.workflow, _iso(s.created_at), s.queued_by, s.object_id,
            [_iso(s.order[0]), s.order[1]], s.status.value, s.attempts, holder, s.secret,
            s.mismatch, s.results_id, s.last_error, s.work_dir, s.deleted,
            [[_iso(at), status.value, text] for at, status, text in s.history],
            *[group for group, _ in groups[:used]]]


def _state(doc: list[Any]) -> State:
    (wid, pinion, workflow, created, queued_by, object_id, order, status, attempts, holder,
     secret, mismatch, results_id, last_error, work_dir, deleted, history) = doc[:17]
    cancel, resume_from = doc[17] if len(doc) > 17 else (None, None)  # cancel/retry events
    signature, grant = doc[18] if len(doc) > 18 else (None, None)  # a resume grant
    now, progress = doc[19] if len(doc) > 19 else (None, None)  # cancel --now, progress
    after, not_before, priority, notify = doc[20] if len(doc) > 20 else ([], None, 0, None)
    untold, told = doc[21] if len(doc) > 21 else (None, None)  # every end told once
    return State(
        id=wid, pinion=pinion, workflow=workflow, created_at=_when(created),
        queued_by=queued_by, object_id=object_id, order=(_when(order[0]), order[1]),
        status=WorkloadStatus(status), attempts=int(attempts),
        lease=None if holder is None else Lease(holder[0], holder[1], _when(holder[2])),
        secret=secret, mismatch=mismatch, results_id=results_id, last_error=last_error,
        work_dir=work_dir, deleted=bool(deleted), cancel=cancel, resume_from=resume_from,
        resume_signature=signature, resume_grant=grant, cancel_now=bool(now),
        progress=progress if isinstance(progress, dict) else None,
        after=[str(a) for a in after], not_before=not_before, priority=int(priority),
        notify=notify, untold=None if untold is None else (_when(untold[0]), untold[1]),
        told=told,
        history=[(_when(at), WorkloadStatus(st), text) for at, st, text in history],
    )


def _ref_doc(r: ResultsRef) -> list[Any]:
    return [r.id, r.workload_id, r.workflow, r.pinion, r.status, _iso(r.finished_at),
            r.object_id]


def _ref(doc: list[Any]) -> ResultsRef:
    rid, workload_id, workflow, pinion, status, finished, object_id = doc
    return ResultsRef(id=rid, workload_id=workload_id, workflow=workflow, pinion=pinion,
                      status=status, finished_at=_when(finished), object_id=object_id)


def _chunks(kind: str, texts: list[str], docs: list[Any]) -> list[Any]:
    """Chunk objects: the ``texts`` of existing chunks as they are (the same ids: neither
    uploaded nor downloaded again), then ``docs``, the last small chunk filled up first."""
    texts = list(texts)
    if texts and docs:
        last = json.loads(texts[-1])
        if len(last) < CHUNK:
            texts.pop()
            docs = last + docs
    texts += [json.dumps(docs[i:i + CHUNK], ensure_ascii=False)
              for i in range(0, len(docs), CHUNK)]
    return [sp.new_object({"caliber": f"queue checkpoint {kind}", "items_json": text})
            for text in texts]


def to_object(folded: Folded, cutoff: Order, archived: tuple[list[str], list[str]]) -> Any:
    """The checkpoint object of ``folded`` (the state after every event up to ``cutoff``);
    ``archived``: the chunk texts (workloads, results) of the checkpoint ``folded`` started
    from, if any (:func:`archived_texts`)."""
    states = sorted(folded.workloads.values(), key=lambda s: s.order)
    done = [s for s in states if settled(s)]  # (an untold one stays active: see settled)
    ids = set(folded.archive.ids) - folded.pruned if folded.archive is not None else set()
    ids.update(s.id for s in done)
    refs = sorted(folded.results.values(), key=lambda r: (r.finished_at, r.id))
    gone = folded.pruned
    if gone:  # ``prune`` events since the last checkpoint: their ids leave the archive
        archived = (_without(archived[0], lambda doc: doc[0] in gone),
                    _without(archived[1], lambda doc: doc[0] in gone or doc[1] in gone))
    return sp.new_object({
        "caliber": "queue checkpoint", "format": FORMAT,
        "about": "Caliber workflow queue: the state of every workload up to the cutoff",
        "cutoff_at": _iso(cutoff[0]), "cutoff_version": cutoff[1],
        "archived": ",".join(sorted(ids)),
        "@active": _chunks("active", [], [_state_doc(s) for s in states if not settled(s)]),
        "@archive": _chunks("archive", archived[0], [_state_doc(s) for s in done]),
        "@results": _chunks("results", archived[1], [_ref_doc(r) for r in refs]),
    })


def _without(texts: list[str], drop: Callable[[list[Any]], bool]) -> list[str]:
    """Chunk texts without the items ``drop`` names; a chunk that loses none is kept as it
    is (the same object id), an emptied one is left out."""
    out = []
    for text in texts:
        docs = json.loads(text)
        kept = [doc for doc in docs if not drop(doc)]
        if len(kept) == len(docs):
            out.append(text)
        elif kept:
            out.append(json.dumps(kept, ensure_ascii=False))
    return out


Fetch = Callable[[list[str]], dict[str, dict[str, Any]]]


def _refs(root: dict[str, Any], member: str) -> list[str]:
    try:
        return [str(r["referencedId"]) for r in root.get(member) or []]
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"damaged checkpoint ({exc!r})") from exc


def _texts(fetch: Fetch, ids: list[str]) -> list[str]:
    found = fetch(ids)
    try:
        return [str(found[i]["items_json"]) for i in ids]
    except KeyError as exc:
        raise CheckpointError(f"a part of the checkpoint is missing ({exc})") from exc


def chunk_ids(root: dict[str, Any]) -> list[str]:
    """Every chunk of a checkpoint object."""
    return [i for member in ("@active", "@archive", "@results") for i in _refs(root, member)]


def from_object(root: dict[str, Any], fetch: Fetch) -> Folded:
    """The state a checkpoint object holds: its unfinished workloads now (``fetch`` gets
    objects by id), the archive when a command asks for it."""
    version = root.get("format")
    if not isinstance(version, int) or version > FORMAT:
        raise CheckpointError(f"a checkpoint written by a newer Caliber (format {version})")
    archive_ids, result_ids = _refs(root, "@archive"), _refs(root, "@results")
    out = Folded(workloads=_decode(_texts(fetch, _refs(root, "@active")), _state))

    def load() -> tuple[dict[str, State], dict[str, ResultsRef]]:
        # a later chunk may hold a newer state of the same workload (deleted, re-signed)
        texts = raw()
        try:
            return _decode(texts[0], _state), _decode(texts[1], _ref)
        except CheckpointError as exc:
            raise QueueDamagedError(f"the queue's newest checkpoint is damaged: {exc}") from exc

    def raw() -> tuple[list[str], list[str]]:
        try:
            return _texts(fetch, archive_ids), _texts(fetch, result_ids)
        except CheckpointError as exc:
            raise QueueDamagedError(f"the queue's newest checkpoint is damaged: {exc}") from exc

    ids = root.get("archived")
    if not isinstance(ids, str):
        raise CheckpointError("damaged checkpoint (no list of archived workloads)")
    out.archive = Archive(frozenset(filter(None, ids.split(","))), load, raw)
    return out


def archived_texts(folded: Folded) -> tuple[list[str], list[str]]:
    """The archive chunk texts ``folded`` started from (none without a checkpoint)."""
    return folded.archive.raw() if folded.archive is not None else ([], [])


def _decode(texts: list[str], make: Callable[[list[Any]], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        for text in texts:
            for doc in json.loads(text):
                item = make(doc)
                out[item.id] = item
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"damaged checkpoint ({exc!r})") from exc
    return out


class ChunkCache:
    """Checkpoint chunks kept on disk, one folder per server, project and model under
    CALIBER_HOME: a chunk's id is the hash of its content, so a kept one is never stale;
    after a checkpoint is read, the chunks it does not use are removed. The cache only
    saves downloads: when it cannot be written, everything still works. Its folders are
    0700 and its files 0600."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @classmethod
    def of(cls, host: str, project: str, model: str) -> ChunkCache:
        from caliber.paths import home

        key = hashlib.sha256(f"{host}\n{project}\n{model}".encode()).hexdigest()[:24]
        return cls(home() / "speckle-cache" / key)

    def get(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for object_id in ids:
            try:
                obj = json.loads((self.folder / f"{object_id}.json").read_text("utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(obj, dict) and obj.get("id") == object_id:
                found[object_id] = obj
        return found

    def put(self, objects: dict[str, dict[str, Any]]) -> None:
        for object_id, obj in objects.items():
            if not str(obj.get("caliber", "")).startswith("queue checkpoint "):
                continue
            try:
                make_private_folder(self.folder)
                part = self.folder / f".{object_id}.{os.getpid()}.part"
                write_private_file(part, json.dumps(obj, ensure_ascii=False).encode("utf-8"))
                os.replace(part, self.folder / f"{object_id}.json")
            except OSError:
                return

    def keep(self, ids: list[str]) -> None:
        wanted = {f"{i}.json" for i in ids}
        try:
            for path in self.folder.glob("*.json"):
                if path.name not in wanted:
                    path.unlink(missing_ok=True)
        except OSError:
            pass
