"""The remote queue on a Speckle model (see docs/remote-queue.md for the protocol).

Every state change is one version on the model (:mod:`caliber.queue.speckle.events`):
``put`` references the workload object (the workflow, attachments and run-secret), ``done``
and ``results`` reference the results object, ``checkpoint`` the folded state up to a cutoff
(:mod:`caliber.queue.speckle.checkpoint`), every other event a tiny shared marker object. The
state of the queue is the fold of those versions (:mod:`caliber.queue.speckle.log`), read back
to the newest checkpoint and then only what is new (:mod:`caliber.queue.speckle.view`).

Claiming is "write, settle, read": write a claim, wait ``settle`` seconds, read the log again;
the claim holds only if the fold says it won. Taking ended workloads to tell of them
(``take_ended``: a ``tell``) works the same way. Leases are judged in server time (version
``createdAt``); this process estimates the server's clock from its own writes.
"""

from __future__ import annotations

import builtins
import datetime as dt
import logging
import secrets
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

from caliber.errors import (
    CaliberError,
    ClaimReturnedError,
    ConfigError,
    LeaseLostError,
    NotFoundError,
    QueueDamagedError,
    QueueError,
    QueueStateError,
)
from caliber.queue.backend import Claim, IdleWait
from caliber.queue.blobs import BlobRef
from caliber.queue.lifecycle import ResumeGrant, check_cancel, check_retry, start_status
from caliber.queue.secret import mismatch_marked, workload_plan
from caliber.queue.speckle import adapter as sp
from caliber.queue.speckle import blobs as bl
from caliber.queue.speckle import events as ev
from caliber.queue.speckle.checkpoint import ChunkCache, archived_texts, to_object
from caliber.queue.speckle.events import clip, message
from caliber.queue.speckle.log import FINISHED, Folded, State
from caliber.queue.speckle.objects import (
    attachment_blobs,
    resolve,
    workload_from,
    workload_object,
)
from caliber.queue.speckle.results import closure, results_from, results_model, results_object
from caliber.queue.speckle.view import LogView
from caliber.queue.summary import StoredSummary
from caliber.queue.target import QueueTarget
from caliber.queue.workload import (
    Lease,
    Workload,
    WorkloadStatus,
)
from caliber.results.model import Results
from caliber.results.pruned import Pruned
from caliber.settings import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MIN_LEASE,
    DEFAULT_SETTLE,
    RemoteSettings,
)

MAX_CLAIM_TRIES = 3  # workloads one claim() call tries after losing races, before giving up
OBJECT_CACHE = 256  # objects kept in memory (they are immutable: their id is their hash)
RECHECK_WAIT = 1.0  # seconds: wait before looking whether an unanswered write happened
FRESH_ENOUGH = 0.5  # seconds: a look at the log this young is good enough to pick a workload
RUNNING = WorkloadStatus.RUNNING
MISSING_LOOKS = DEFAULT_MAX_ATTEMPTS  # claims of a workload whose objects are missing, then
# it is failed (its objects were deleted, or never uploaded: looking again cannot help)
MISSING_TEXT = "is missing on the server"


class MissingObjectError(QueueError):
    """An object the queue needs is not on the server."""

    def __init__(self, where: str, object_id: str) -> None:
        self.detail = f"object {object_id} {MISSING_TEXT}"
        super().__init__(f"{where}: {self.detail}")


log = logging.getLogger(__name__)
_TOLD: set[str] = set()  # notices given already, once per process (see SpeckleBackend._tell)


def _grant_fields(grant: ResumeGrant | None) -> dict[str, str | None]:
    """A resume grant as the fields of a ``retry`` or ``resign`` event (none: no resume)."""
    if grant is None:
        return {}
    return {"results": grant.results_id, "signature": grant.results_signature,
            "grant": grant.grant}


def _upstream(folded: Folded, workload: Workload) -> dict[str, WorkloadStatus]:
    """The statuses of the workloads ``workload`` runs after that are in the queue (for
    :func:`caliber.queue.lifecycle.start_status`)."""
    found = {uid: folded.find(uid) for uid in workload.after}
    return {uid: s.status for uid, s in found.items() if s is not None and not s.deleted}


def _asked(state: State) -> bool | None:
    """``te`` on the ``release`` or ``fail`` of a workload someone asked to cancel (it ends
    cancelled, and so do the workloads waiting after it: their ends are told by a pinion
    that takes them); None otherwise (the event as earlier Caliber wrote it)."""
    return True if state.cancel is not None else None


def open_target(target: QueueTarget) -> SpeckleBackend:
    """The backend of a ``speckle`` :class:`~caliber.queue.target.QueueTarget`."""
    return SpeckleBackend.open(target.settings)


class SpeckleBackend(IdleWait):
    """The remote queue (see :class:`caliber.queue.backend.QueueBackend` for the verbs)."""

    def __init__(self, connection: sp.SpeckleConnection, *, settle: float = DEFAULT_SETTLE,
                 min_lease: float = DEFAULT_MIN_LEASE) -> None:
        self.conn = connection
        self.settle = settle
        self.min_lease = min_lease
        self.location = f"{connection.host} project {connection.project_id} model " \
                        f"{connection.model_name}"
        self.lock = threading.RLock()
        self.cache = ChunkCache.of(connection.host, connection.project_id,
                                   connection.model_key)
        self.view = LogView(connection, self._found, self.cache)
        self.skew = 0.0  # seconds the server's clock is ahead of ours
        self._objects: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._marker: str | None = None
        self._looked = -1e9  # monotonic time of the last listing
        self._blob_ids: dict[str, str] = {}
        """SHA-256 to the object id of a blob (:mod:`caliber.queue.speckle.blobs`): what
        this backend stored, and what the workloads and Results it read name."""

    @classmethod
    def open(cls, settings: RemoteSettings) -> SpeckleBackend:
        return cls(sp.SpeckleConnection(settings), settle=settings.settle,
                   min_lease=settings.min_lease)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> SpeckleBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the log --------------------------------------------------------------------------

    def refresh(self, max_age: float = 0.0) -> Folded:
        """Read the versions written since the last look (unless that look is younger than
        ``max_age`` seconds), and fold the log again."""
        with self.lock:
            if max_age > 0 and time.monotonic() - self._looked < max_age:
                return self.view.folded
            self._looked = time.monotonic()
            folded = self.view.refresh()
            if self.conn.model_id is None:
                self._tell(self._no_model_yet())
            if folded.unknown:
                self._tell(f"{self.location}: {folded.unknown[0].describe()}; until then "
                           "this shows only what this Caliber understands")
            return folded

    def _no_model_yet(self) -> str:
        return (f"model {self.conn.model_name} does not exist yet on {self.conn.host} project "
                f"{self.conn.project_id}; it is made by the first `caliber workflow queue`")

    def _tell(self, notice: str) -> None:
        """A notice on stderr (through logging), once per process (a command may open the
        queue more than once)."""
        if notice not in _TOLD:
            _TOLD.add(notice)
            log.warning("%s", notice)

    def server_now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(time.time() + self.skew, dt.UTC)

    def _local(self, server_time: dt.datetime) -> dt.datetime:
        return server_time - dt.timedelta(seconds=self.skew)

    def _write(self, human: str, body: ev.Body, object_id: str | None = None) -> None:
        """Append one event; the log and the clock estimate learn of it at once. Now and
        then a checkpoint follows (:mod:`caliber.queue.speckle.checkpoint`)."""
        text = message(human, body)
        target = object_id or self._marker_id()
        before = set(self.view.versions)
        started = time.time()
        try:
            version = self.conn.create_version(target, text)
        except sp.AmbiguousWriteError:
            time.sleep(RECHECK_WAIT)
            self.refresh()
            if not any(i not in before and e.body == body
                       for i, e in self.view.events.items()):
                raise
            return
        self.skew = version.created_at.timestamp() - (started + time.time()) / 2
        self.view.add([version])
        self._checkpoint()

    def _checkpoint(self) -> None:
        due = self.view.checkpoint_due()
        if due is None:
            return
        cutoff, state = due
        known = set(state.workloads) | (
            state.archive.ids - state.pruned if state.archive else frozenset())
        body = ev.Checkpoint(cutoff_at=cutoff[0].isoformat(), cutoff_version=cutoff[1],
                             workloads=len(known))
        try:
            root = self._upload(to_object(state, cutoff, archived_texts(state)))
            version = self.conn.create_version(root, message(
                f"checkpoint: the queue up to {cutoff[0]:%Y-%m-%d %H:%M:%S} "
                f"({body.workloads} workloads)", body))
        except QueueError as exc:  # the next writer tries again; nothing depends on it
            log.warning("%s: could not write a checkpoint (%s)", self.location, exc)
            return
        self.view.add([version])

    def _marker_id(self) -> str:
        if self._marker is None:
            root, objects = sp.serialise(sp.new_object({
                "caliber": "queue event",
                "about": "Caliber workflow queue: the version message says what happened",
            }))
            self.conn.upload(objects)
            self._marker = root
        return self._marker

    # --- objects --------------------------------------------------------------------------

    def _fetch(self, ids: builtins.list[str]) -> dict[str, dict[str, Any]]:
        got = self._found(ids)
        for i in ids:
            if i not in got:
                raise MissingObjectError(self.location, i)
        return got

    def _found(self, ids: builtins.list[str]) -> dict[str, dict[str, Any]]:
        """The objects of ``ids`` that the server has (recently used ones are kept)."""
        got = {i: self._objects[i] for i in ids if i in self._objects}
        wanted = [i for i in dict.fromkeys(ids) if i not in got]
        if wanted:
            got.update(self.cache.get(wanted))
            wanted = [i for i in wanted if i not in got]
        if wanted:
            fetched = self.conn.get_objects(wanted)
            self.cache.put(fetched)
            got.update(fetched)
        for object_id, obj in got.items():
            self._objects[object_id] = obj
            self._objects.move_to_end(object_id)
        while len(self._objects) > OBJECT_CACHE:
            self._objects.popitem(last=False)
        return got

    def _workloads(self, states: builtins.list[State]) -> builtins.list[Workload]:
        roots = self._fetch([s.object_id for s in states])
        refs = {s.id: [r["referencedId"] for r in roots[s.object_id].get("@attachments") or []]
                for s in states}
        children = self._fetch([i for ids in refs.values() for i in ids])
        self._blob_ids.update(attachment_blobs(list(children.values())))
        return [workload_from(s, roots[s.object_id], [children[i] for i in refs[s.id]],
                              self._lease_of(s)) for s in states]

    def _lease_of(self, s: State) -> Lease | None:
        if s.status != RUNNING or s.lease is None:
            return None
        return Lease(owner=s.lease.owner, token=s.lease.token,
                     expires_at=self._local(s.lease.expires_at))

    def _upload(self, obj: Any) -> str:
        root, objects = sp.serialise(obj)
        self.conn.upload(objects)
        return root

    # --- workloads ------------------------------------------------------------------------

    def _state(self, id_or_prefix: str) -> State:
        live = {s.id: s for s in self.refresh().live()}
        return live[resolve(live, id_or_prefix, "workload")]

    def put(self, workload: Workload) -> None:
        with self.lock:
            _TOLD.add(self._no_model_yet())  # (this put makes it: nothing to tell)
            folded = self.refresh()
            if folded.knows(workload.id):
                raise QueueError(f"cannot queue workload {workload.id}: that id is in the "
                                 "queue already")
            start_status(workload, _upstream(folded, workload))  # refused: nothing written
            unknown = [a.path for a in workload.attachments
                       if a.kind == "stored" and a.sha256 not in self._blob_ids]
            if unknown:
                raise QueueError(f"cannot queue workload {workload.id}: attachment "
                                 f"{unknown[0]!r} is not stored on {self.location} "
                                 "(put_blob it first)")
            root = self._upload(workload_object(workload, self._blob_ids))
            plan = workload_plan(workload)  # as signed, each only when set
            self._write(
                f"queued {workload.id} ({workload.workflow_name}) for pinion {workload.pinion}"
                f" by {workload.queued_by or '?'}",
                ev.Put(workload=workload.id, pinion=workload.pinion,
                       workflow=workload.workflow_name, created_at=workload.created_at.isoformat(),
                       queued_by=workload.queued_by, **_grant_fields(workload.grant),
                       after=plan.get("after"), not_before=plan.get("not_before"),
                       priority=plan.get("priority"), notify=plan.get("notify")),
                root,
            )

    def restore(self, workload: Workload) -> None:
        raise ConfigError(f"the remote queue on Speckle ({self.location}) cannot import "
                          "workloads as they were (its log starts each one as queued): import "
                          "into a SQLite or PostgreSQL queue")

    def get(self, id_or_prefix: str) -> Workload:
        with self.lock:
            return self._workloads([self._state(id_or_prefix)])[0]

    def list_workloads(
        self,
        *,
        pinion: str | None = None,
        status: WorkloadStatus | None = None,
        limit: int | None = None,
        offset: int = 0,
        workflow: str | None = None,
    ) -> builtins.list[Workload]:
        with self.lock:
            states = [s for s in self.refresh().live()
                      if (pinion is None or s.pinion == pinion)
                      and (workflow is None or s.workflow == workflow)
                      and (status is None or s.status == WorkloadStatus(status))]
            end = None if limit is None else offset + limit
            return self._workloads(states[offset:end])

    def list_summaries(
        self,
        *,
        pinion: str | None = None,
        status: WorkloadStatus | None = None,
        limit: int | None = None,
        offset: int = 0,
        workflow: str | None = None,
    ) -> builtins.list[StoredSummary]:
        listed = self.list_workloads(pinion=pinion, status=status, limit=limit, offset=offset,
                                     workflow=workflow)
        return [w.stored_summary() for w in listed]

    def list_ended(self, limit: int) -> builtins.list[Workload]:
        """See :meth:`caliber.queue.backend.QueueBackend.list_ended`: from the fold (the
        archive too), then the objects of those ``limit`` only."""
        with self.lock:
            ended = [s for s in self.refresh().live()
                     if s.status in FINISHED and s.history and s.history[-1][1] in FINISHED]
            ended.sort(key=lambda s: s.history[-1][0], reverse=True)
            return self._workloads(ended[:max(limit, 0)])

    def _lease(self, seconds: float) -> float:
        return max(seconds, self.min_lease) if seconds > 0 else seconds

    def claim(self, pinion: str, owner: str, lease_seconds: float, key_id: str) -> Claim | None:
        lease = self._lease(lease_seconds)
        with self.lock:
            tried: set[str] = set()
            for _ in range(MAX_CLAIM_TRIES):
                now = self.server_now()
                folded = self.refresh(FRESH_ENOUGH)  # (a look just taken by expire() will do)
                if folded.unknown:  # the fold may be wrong: running anything could be too
                    raise QueueDamagedError(f"{self.location}: {folded.unknown[0].describe()}")
                candidates = [
                    s for s in folded.unfinished()
                    if s.pinion == pinion and s.id not in tried
                    and not mismatch_marked(s.mismatch, key_id)
                    and ((s.status == WorkloadStatus.QUEUED and s.due(now)) or (
                        s.status == RUNNING and s.lease is not None and s.lease.expires_at < now))
                ]
                if not candidates:
                    return None
                state = max(candidates, key=lambda s: s.priority)  # the first of the highest
                tried.add(state.id)
                token = secrets.token_hex(12)
                try:
                    self._write(f"claimed {state.id} ({state.workflow}) by {owner}",
                                ev.Claim(workload=state.id, token=token, owner=owner,
                                         lease=lease, key=key_id))
                    lost: QueueError | None = None
                except sp.AmbiguousWriteError as exc:
                    lost = exc
                if self.settle > 0:
                    time.sleep(self.settle)
                won = self.refresh().workloads.get(state.id)
                if won is not None and not won.deleted and won.held_by(token):
                    assert won.lease is not None
                    try:
                        workload = self._workloads([won])[0]
                    except Exception as exc:  # never leave the claim standing: give it back
                        returned = self._unreadable(won, token, exc)
                        if returned is None:
                            raise
                        raise returned from exc
                    return Claim(workload=workload, owner=owner, token=token,
                                 expires_at=self._local(won.lease.expires_at))
                if lost is not None:
                    raise lost
            return None

    def _unreadable(self, state: State, token: str,
                    exc: Exception) -> ClaimReturnedError | None:
        """Give back a claim just won whose workload could not be read; the error to raise
        (None when even that could not be written: the lease runs out instead). When its
        objects are missing at the :data:`MISSING_LOOKS`-th claim, fail it instead: it would
        otherwise be claimed and given back on every look, for ever."""
        missing = exc.detail if isinstance(exc, MissingObjectError) else None
        reason = f"cannot read the workload: {missing or exc}"
        looks = 1 + sum(1 for _, _, text in state.history
                        if text.startswith("released by ") and MISSING_TEXT in text)
        if missing and looks >= MISSING_LOOKS:
            reason = f"{reason} (at {looks} claims); queue the workflow again to run it"
            try:
                self._write(f"failed {state.id} ({state.workflow}): {reason}",
                            ev.Fail(workload=state.id, token=token, reason=clip(reason),
                                    tell=_asked(state)))
            except QueueError as error:
                log.warning("could not fail %s (%s): its lease runs out instead", state.id,
                            error)
                return None
            return ClaimReturnedError(f"{self.location}: workload {state.id}: {reason}",
                                      workload_id=state.id, outcome="failed")
        if not self._give_back(state, token, reason):
            return None
        return ClaimReturnedError(f"{self.location}: workload {state.id}: {reason}; it was put "
                                  "back in the queue", workload_id=state.id)

    def _give_back(self, state: State, token: str, reason: str) -> bool:
        """Release a claim just won whose workload could not be read (its attempt uncounted);
        False when even that cannot be written: the lease runs out as after a dead pinion."""
        try:
            self._write(f"released {state.id} ({state.workflow}): {reason}",
                        ev.Release(workload=state.id, token=token, reason=clip(reason) or "",
                                   tell=_asked(state)))
        except QueueError as exc:
            log.warning("could not release %s (%s): its lease runs out instead", state.id, exc)
            return False
        return True

    def _held(self, claim: Claim) -> State:
        state = self.refresh().workloads.get(claim.workload.id)
        if state is None or state.deleted or not state.held_by(claim.token):
            raise LeaseLostError(
                f"workload {claim.workload.id} is no longer held by {claim.owner} (its lease "
                "ran out and another pinion took it, or it was reset)"
            )
        return state

    def renew(self, claim: Claim, lease_seconds: float, *,
              progress: dict[str, Any] | None = None) -> Claim:
        """See :meth:`QueueBackend.renew`: a renewal is written only when less than half the
        lease is left, and ``progress`` goes with it (no version of its own)."""
        lease = self._lease(lease_seconds)
        with self.lock:
            state = self._held(claim)
            assert state.lease is not None
            left = (state.lease.expires_at - self.server_now()).total_seconds()
            if not (lease > 0 and left > lease / 2):  # else plenty left: spare the server
                self._write(f"lease of {state.id} renewed by {claim.owner}",
                            ev.Renew(workload=state.id, token=claim.token, lease=lease,
                                     progress=progress))
                state = self._held(claim)
            assert state.lease is not None
            return replace(claim, expires_at=self._local(state.lease.expires_at),
                           cancel_requested=state.cancel, cancel_now=state.cancel_now)

    def peek_cancel(self, claim: Claim) -> Claim:
        """See :meth:`QueueBackend.peek_cancel`: a look would cost a request to the server
        every second, so none is made; the pinion learns a cancel at its next renewal."""
        return claim

    def release(self, claim: Claim, *, reason: str, mismatch_key_id: str | None = None) -> None:
        with self.lock:
            state = self._held(claim)
            self._write(f"released {state.id} ({state.workflow}) by {claim.owner}: {reason}",
                        ev.Release(workload=state.id, token=claim.token,
                                   reason=clip(reason) or "", mismatch=mismatch_key_id,
                                   tell=_asked(state)))

    def complete(self, claim: Claim, results: Results) -> None:
        if results.workload_id != claim.workload.id:
            results = results.model_copy(update={"workload_id": claim.workload.id})
        with self.lock:
            state = self._held(claim)
            root = self._upload(results_object(results, self._blob_ids))
            error = results.error.summary() if results.error is not None else None
            done = results.status.value
            self._write(
                f"{done} {state.id} ({state.workflow}): "
                + (error or f"results {results.id}"),
                ev.Done(workload=state.id, token=claim.token, results=results.id,
                        workflow=results.workflow, pinion=results.pinion,
                        status=results.status.value, finished_at=results.finished_at.isoformat(),
                        error=clip(error), work_dir=results.work_dir,
                        tell=True if done == "cancelled" else None),  # (its chain ends)
                root,
            )
            if self.refresh().workloads[state.id].results_id != results.id:
                raise LeaseLostError(f"workload {state.id} was taken by another pinion before "
                                     "its results were kept")
            self._publish(results, root)

    def _publish(self, results: Results, root: str) -> None:
        """Make the Results the newest version of their workflow's results model
        (:func:`caliber.queue.speckle.results.results_model`), so the web app opens that
        model at them. Nothing depends on it: when it cannot be written, a warning says so."""
        name = results_model(self.conn.model_key, results.workflow)
        try:
            model = self.conn.named_model(
                name, f"Caliber: the Results of workflow {results.workflow}, newest last")
            self.conn.create_version(
                root, f"{results.status.value}: results {results.id} of workload "
                f"{results.workload_id or '-'}", model_id=model)
        except CaliberError as exc:
            log.warning("%s: the results %s were kept, but not shown in model %s (%s)",
                        self.location, results.id, name, exc)

    def fail(self, claim: Claim, reason: str, *, retry: bool) -> None:
        with self.lock:
            state = self._held(claim)
            again = "; queued again" if retry else ""
            self._write(f"failed {state.id} ({state.workflow}): {reason}{again}",
                        ev.Fail(workload=state.id, token=claim.token, reason=clip(reason),
                                retry=retry, tell=_asked(state)))

    def expire(self, max_attempts: int) -> builtins.list[str]:
        with self.lock:
            now = self.server_now()
            out = []
            for s in self.refresh().unfinished():
                if (s.status == RUNNING and s.lease is not None and s.lease.expires_at < now
                        and s.attempts >= max_attempts):
                    self._write(f"failed {s.id} ({s.workflow}): lease ran out {s.attempts} "
                                "times (pinion died?)",
                                ev.Expire(workload=s.id, token=s.lease.token,
                                          max_attempts=max_attempts, tell=True))
                    if self.view.folded.workloads[s.id].status == WorkloadStatus.FAILED:
                        out.append(s.id)
            return out

    def reset(self, id_or_prefix: str, *, force: bool = False) -> Workload:
        with self.lock:
            workload = self.get(id_or_prefix)
            if workload.status == RUNNING and not force:
                holder = workload.lease.owner if workload.lease else "a pinion"
                raise QueueStateError(
                    f"workload {workload.id} is running (held by {holder}); "
                    "stop the pinion first or use --force"
                )
            self._write(f"deleted {workload.id} ({workload.workflow_name})",
                        ev.Delete(workload=workload.id, force=force, tell=True))
            return workload

    def resetsecret(self, id_or_prefix: str, secret: str, key_id: str, *,
                    resume: ResumeGrant | None = None) -> Workload:
        with self.lock:
            state = self._state(id_or_prefix)
            self._write(f"re-signed {state.id} ({state.workflow}) with key {key_id}",
                        ev.Resign(workload=state.id, secret=secret, key=key_id,
                                  **_grant_fields(resume)))
            return self.get(state.id)

    def cancel(self, id_or_prefix: str, by: str, *, now: bool = False) -> Workload:
        with self.lock:
            state = self._state(id_or_prefix)
            workload = self._workloads([state])[0]
            check_cancel(workload)
            if state.cancel is not None and (state.cancel_now or not now):
                return workload  # asked already: another version would change nothing
            self._write(f"cancel {workload.id} ({workload.workflow_name}) asked by {by}"
                        + (" (now)" if now else ""),
                        ev.Cancel(workload=workload.id, by=by, now=True if now else None,
                                  tell=True))
            return self.get(workload.id)

    def retry(self, id_or_prefix: str, by: str, *,
              resume: ResumeGrant | None = None) -> Workload:
        with self.lock:
            workload = self.get(id_or_prefix)
            grant = check_retry(workload, resume)
            start_status(workload, _upstream(self.view.folded, workload), retry=True)
            self._write(f"queued {workload.id} ({workload.workflow_name}) again by {by}",
                        ev.Retry(workload=workload.id, by=by, **_grant_fields(grant)))
            return self.get(workload.id)

    def next_start(self, pinion: str) -> dt.datetime | None:
        """See :meth:`caliber.queue.backend.QueueBackend.next_start`: from the fold of the
        pinion's last look (no request of its own when that look is fresh)."""
        with self.lock:
            folded = self.refresh(FRESH_ENOUGH)
            now = self.server_now()
            starts = [start for s in folded.unfinished()
                      if s.pinion == pinion and s.status == WorkloadStatus.QUEUED
                      and (start := s.start_at()) is not None and start > now]
            return min(starts, default=None)

    def take_ended(self, pinion: str, limit: int = 100) -> builtins.list[Workload]:
        """See :meth:`caliber.queue.backend.QueueBackend.take_ended`: the untold ends in the
        fold of the pinion's last look (no request of its own: a claim or a renewal reads
        the log anyway); when there are some, "write, settle, read" as a claim: a ``tell``
        naming the oldest (their objects read first), then only those the fold gives to it
        (a racing pinion's ``tell`` earlier in the log took the others)."""
        with self.lock:
            folded = self.view.folded if self.view.loaded else self.refresh()
            if folded.unknown:  # the fold may be wrong: the pinion's claim says so
                return []
            untold = sorted((s for s in folded.workloads.values()
                             if s.untold is not None and not s.deleted and s.pinion == pinion),
                            key=lambda s: (s.untold or s.order, s.order))[:max(limit, 0)]
            if not untold:
                return []
            lost_objects = self._unreadable_for_good(untold)  # (read first: then kept here)
            ids, token = [s.id for s in untold], secrets.token_hex(12)
            try:
                self._write(f"{pinion} tells of the end of {len(ids)} workload"
                            f"{'s' if len(ids) > 1 else ''}: {' '.join(ids)}",
                            ev.Tell(pinion=pinion, token=token, ids=ids))
                lost: QueueError | None = None
            except sp.AmbiguousWriteError as exc:
                lost = exc
            if self.settle > 0:
                time.sleep(self.settle)
            now = self.refresh().workloads
            won = [now[i] for i in ids
                   if i in now and now[i].told == token and not now[i].deleted]
            if lost is not None and not won:
                raise lost
            return self._workloads([s for s in won if s.id not in lost_objects])

    def _unreadable_for_good(self, states: builtins.list[State]) -> set[str]:
        """Read the workloads of ``states`` (their objects are kept); the ids of those whose
        objects are missing on the server, with a warning: their end is taken all the same
        but told of by no one (else every look would try them again, for ever). Any other
        failure to read is raised (nothing taken)."""
        try:
            self._workloads(states)
            return set()
        except MissingObjectError:
            pass
        missing = set()
        for state in states:
            try:
                self._workloads([state])
            except MissingObjectError as exc:
                log.warning("%s: workload %s ended (%s), but no event is sent: %s",
                            self.location, state.id, state.status.value, exc.detail)
                missing.add(state.id)
        return missing

    def count_statuses(self, *, pinion: str | None = None,
                       workflow: str | None = None) -> dict[str, int]:
        with self.lock:
            states = self.refresh().live()
        return dict(Counter(s.status.value for s in states
                            if pinion in (None, s.pinion) and workflow in (None, s.workflow)))

    def prune(self, before: dt.datetime, *, workflow: str | None = None,
              pinion: str | None = None, dry_run: bool = False) -> Pruned:
        """See :meth:`caliber.queue.backend.QueueBackend.prune` and the steps in
        :mod:`caliber.queue.speckle.prune`."""
        from caliber.queue.speckle import prune as pr

        with self.lock:
            folded = self.refresh()
            if folded.unknown:  # the fold may be wrong: what is finished may not be
                raise QueueDamagedError(f"{self.location}: {folded.unknown[0].describe()}")
            skew = dt.timedelta(seconds=self.skew)
            states, theirs, orphans = pr.select(folded, before, before + skew,
                                                workflow=workflow, pinion=pinion)
            ids = [s.id for s in states] + [r.id for r in orphans]
            for start in range(0, 0 if dry_run else len(ids), pr.PRUNE_BATCH):
                batch = ids[start:start + pr.PRUNE_BATCH]
                self._write(f"pruned {len(batch)} finished workloads and results from before "
                            f"{before:%Y-%m-%d %H:%M}", ev.Prune(ids=batch))
            versions = pr.doomed(pr.every_version(self.conn), self.refresh(),
                                 ids if dry_run else ())
            if versions and not dry_run:
                self.conn.delete_versions(versions)
                self.refresh()
            gone = [*theirs, *orphans]
            shown = pr.shown_results(
                self.conn, [results_model(self.conn.model_key, r.workflow) for r in gone],
                [r.id for r in gone])
            if shown and not dry_run:
                self.conn.delete_versions(shown)
        return Pruned(
            before=before, dry_run=dry_run, workloads=tuple(s.id for s in states),
            results=tuple(r.id for r in [*theirs, *orphans]), bytes=None,
            work_dirs=tuple(s.work_dir for s in states if s.work_dir),
            versions=len(versions) + len(shown))

    # --- blobs (see caliber.queue.blobs.BlobStore and caliber.queue.speckle.blobs) ----------

    def put_blob(self, source: Path) -> BlobRef:
        sha256, size, root = bl.put_file(self.conn, source)
        with self.lock:
            self._blob_ids[sha256] = root
        return BlobRef(sha256, size)

    def blob_object(self, sha256: str) -> str:
        """The object id of blob ``sha256`` (NotFoundError when no workload or Results this
        backend stored or read names it)."""
        with self.lock:
            found = self._blob_ids.get(sha256)
        if found is None:
            raise NotFoundError(f"blob {sha256[:12]} is not known on {self.location} (read "
                                "the workload or Results that name it first)")
        return found

    def has_blob(self, sha256: str) -> bool:
        with self.lock:
            found = self._blob_ids.get(sha256)
        return found is not None and self.conn.has_objects([found])[found]

    def open_blob(self, sha256: str) -> BinaryIO:
        return bl.open_stream(self.conn, self.blob_object(sha256), sha256)

    def fetch_blob(self, sha256: str, dest: Path, *, mode: int = 0o600) -> None:
        bl.fetch_file(self.conn, self.blob_object(sha256), sha256, dest, mode)

    # --- results --------------------------------------------------------------------------

    def _results(self, object_ids: builtins.list[str]) -> builtins.list[Results]:
        """The Results of these root objects (their objects fetched past the cache: a
        Results' objects can be many and big)."""
        roots = self._fetch(object_ids)
        out = []
        for object_id in object_ids:
            below = closure(roots[object_id])
            objects = self.conn.get_objects(below) if below else {}
            try:
                results, blobs = results_from(roots[object_id], objects)
            except (KeyError, ValueError, TypeError) as exc:
                raise QueueError(f"{self.location}: stored results are damaged "
                                 f"({exc!r})") from exc
            self._blob_ids.update(blobs)
            out.append(results)
        return out

    def save_results(self, results: Results) -> None:
        with self.lock:
            if results.id in self.refresh().every_result():  # the log would keep the first
                raise QueueError(f"cannot store results {results.id}: they are stored already")
            root = self._upload(results_object(results, self._blob_ids))
            self._write(f"results {results.id} ({results.workflow}) saved",
                        ev.SavedResults(results=results.id, workload=results.workload_id,
                                        workflow=results.workflow, pinion=results.pinion,
                                        status=results.status.value,
                                        finished_at=results.finished_at.isoformat()), root)
            self._publish(results, root)

    def get_results(self, id_or_prefix: str) -> Results:
        with self.lock:
            known = self.refresh().every_result()
            ref = known[resolve(known, id_or_prefix, "results")]
            return self._results([ref.object_id])[0]

    def find_results(
        self,
        *,
        workload_id: str | None = None,
        workflow: str | None = None,
        pinion: str | None = None,
    ) -> Results | None:
        with self.lock:
            refs = self._matching(workflow, pinion, workload_id)
            return self._results([refs[0].object_id])[0] if refs else None

    def list_results(
        self,
        *,
        workflow: str | None = None,
        pinion: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> builtins.list[Results]:
        with self.lock:
            refs = self._matching(workflow, pinion, None)
            end = None if limit is None else offset + limit
            return self._results([r.object_id for r in refs[offset:end]])

    def _matching(self, workflow: str | None, pinion: str | None,
                  workload_id: str | None) -> builtins.list[Any]:
        refs = [r for r in self.refresh().every_result().values()
                if (workflow is None or r.workflow == workflow)
                and (pinion is None or r.pinion == pinion)
                and (workload_id is None or r.workload_id == workload_id)]
        return sorted(refs, key=lambda r: r.finished_at, reverse=True)


