"""A queue, results store and content store in this process's memory (``memory://NAME``).

Every verb of :class:`~caliber.queue.backend.QueueBackend`, with the local queue's rules
(the contract suite, ``tests/contract``, runs against it), and nothing on disk: for fast
tests of what uses a queue (a pinion's decisions) and for trying things out. Every backend
opened on one name shares one :class:`Space` while the process lives; none is shared with
another process. Each verb holds the space's lock from its first read to its last write, as
the local queue holds one transaction: a claim is atomic, and a pinion whose lease was taken
can never complete. Stored records are copies (workloads deep-copied, Results as their
JSON), so nothing a caller changes afterwards changes the queue. Chains are settled in the
verb that ends an upstream (:meth:`MemoryBackend._settled`): its completion queues what waited
for it, its cancellation or reset cancels that, down the chain. A workload that ends with no
pinion there (cancelled while queued or waiting, down a chain, failed by ``expire``) is marked
with the next number of its space (:attr:`Entry.untold`) until a pinion of its name takes it
(:meth:`MemoryBackend.take_ended`), in the order of those numbers.
"""

from __future__ import annotations

import builtins
import datetime as dt
import itertools
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from caliber.errors import (
    AmbiguousIdError,
    LeaseLostError,
    NotFoundError,
    QueueError,
    QueueStateError,
)
from caliber.queue.backend import IdleWait
from caliber.queue.lifecycle import (
    cancel_asked,
    cancelled,
    check_cancel,
    check_retry,
    ending,
    restored_waiting,
    retried,
    start_status,
    upstream_completed,
    upstream_ended,
    waits_for,
)
from caliber.queue.memory.blobs import MemoryBlobs
from caliber.queue.secret import add_mismatch, mismatch_marked
from caliber.queue.status import WorkloadStatus
from caliber.results.pruned import Pruned

if TYPE_CHECKING:
    from pathlib import Path
    from typing import BinaryIO

    from caliber.queue.backend import Claim
    from caliber.queue.blobs import BlobRef
    from caliber.queue.lifecycle import ResumeGrant
    from caliber.queue.summary import StoredSummary
    from caliber.queue.target import QueueTarget
    from caliber.queue.workload import Workload
    from caliber.results.model import Results

FINISHED = (WorkloadStatus.COMPLETED, WorkloadStatus.FAILED, WorkloadStatus.CANCELLED)


@dataclass
class Entry:
    """One stored workload and what only the queue knows of it."""

    workload: Workload
    cancel_requested: str | None = None
    cancel_now: bool = False
    untold: int | None = None
    """Ended with no pinion there, not yet taken (:meth:`MemoryBackend.take_ended`): the
    number of its end in its space (older ends, smaller numbers)."""


@dataclass
class Space:
    """One named in-memory queue: its workloads, Results (as JSON) and blobs."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    entries: dict[str, Entry] = field(default_factory=dict)
    results: dict[str, str] = field(default_factory=dict)
    blobs: MemoryBlobs = field(default_factory=MemoryBlobs)
    ends: Iterator[int] = field(default_factory=itertools.count)
    """Numbers the ends no pinion was there to tell of (:attr:`Entry.untold`)."""


_SPACES: dict[str, Space] = {}
_SPACES_LOCK = threading.Lock()


def space(name: str) -> Space:
    """The queue named ``name`` in this process (made empty on first use)."""
    with _SPACES_LOCK:
        return _SPACES.setdefault(name, Space())


def forget(name: str) -> None:
    """Drop the queue named ``name`` (a test's clean-up)."""
    with _SPACES_LOCK:
        _SPACES.pop(name, None)


def open_target(target: QueueTarget) -> MemoryBackend:
    """The backend of a ``memory`` :class:`~caliber.queue.target.QueueTarget`."""
    return MemoryBackend(str(target.settings))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _copy(workload: Workload) -> Workload:
    return workload.model_copy(deep=True)


def _due(workload: Workload, now: float) -> bool:
    """Whether a queued workload's start time (if any) has come."""
    return workload.not_before is None or workload.not_before.timestamp() <= now


def _gone(workload: Workload, now: float) -> bool:
    """Whether a running workload's lease ran out (or it has none a pinion could renew)."""
    return workload.lease is None or workload.lease.expires_at.timestamp() < now


class MemoryBackend(IdleWait):
    """The in-memory queue (see :class:`caliber.queue.backend.QueueBackend` for the verbs)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.location = f"memory://{name}"
        self.space = space(name)

    def close(self) -> None:
        """Nothing to release: the queue stays while the process lives."""

    def __enter__(self) -> MemoryBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _locked(self) -> Iterator[Space]:
        with self.space.lock:
            yield self.space

    # --- ids and history ------------------------------------------------------------------

    @staticmethod
    def _resolve(ids: Iterable[str], id_or_prefix: str, what: str) -> str:
        prefix = id_or_prefix.strip().lower()
        if not prefix:
            raise NotFoundError(f"no {what} id given")
        found = sorted(i for i in ids if i.startswith(prefix))
        if prefix in found:
            return prefix
        if not found:
            raise NotFoundError(f"no {what} with id {id_or_prefix!r}")
        if len(found) > 1:
            raise AmbiguousIdError(id_or_prefix, found[:21])
        return found[0]

    def _entry(self, id_or_prefix: str) -> Entry:
        return self.space.entries[self._resolve(self.space.entries, id_or_prefix, "workload")]

    @staticmethod
    def _note(workload: Workload, status: WorkloadStatus | None, message: str) -> None:
        """A history entry; a None status means "unchanged"."""
        from caliber.queue.workload import HistoryEntry

        workload.history.append(HistoryEntry(at=_now(), status=status or workload.status,
                                             message=message))

    def _held(self, claim: Claim) -> Entry:
        """The claimed workload's entry while ``claim`` holds it; LeaseLostError otherwise."""
        entry = self.space.entries.get(claim.workload.id)
        w = entry.workload if entry else None
        if (entry is None or w is None or w.status != WorkloadStatus.RUNNING
                or w.lease is None or w.lease.token != claim.token):
            raise LeaseLostError(
                f"workload {claim.workload.id} is no longer held by {claim.owner} (its lease "
                "ran out and another pinion took it, or it was reset)")
        return entry

    def _cancel_if_asked(self, entry: Entry) -> None:
        """A workload cancelled while it ran is cancelled, not queued again, when its run
        ends without Results."""
        w = entry.workload
        if entry.cancel_requested is not None and w.status == WorkloadStatus.QUEUED:
            w.status, w.last_error = WorkloadStatus.CANCELLED, cancelled(entry.cancel_requested)
            self._note(w, WorkloadStatus.CANCELLED, cancelled(entry.cancel_requested))
            self._settled(w.id, "cancelled")

    # --- chains ---------------------------------------------------------------------------

    def _upstream(self, workload: Workload) -> dict[str, WorkloadStatus]:
        """The statuses of the workloads ``workload`` runs after that are in the queue."""
        entries = self.space.entries
        return {up: entries[up].workload.status for up in workload.after if up in entries}

    def _waiting_after(self, upstream_id: str) -> list[Workload]:
        return sorted((e.workload for e in self.space.entries.values()
                       if e.workload.status == WorkloadStatus.WAITING
                       and upstream_id in e.workload.after), key=lambda w: w.created_at)

    def _settled(self, upstream_id: str, how: str) -> None:
        """What waits after ``upstream_id`` now that it was ``how``: "completed" queues each
        one whose upstreams have all completed; "cancelled" or "reset" cancels each one, and
        so on down the chain; "failed" leaves them waiting."""
        for w in self._waiting_after(upstream_id):
            if how == "completed":
                if start_status(w, self._upstream(w)) == WorkloadStatus.QUEUED:
                    w.status = WorkloadStatus.QUEUED
                    self._note(w, WorkloadStatus.QUEUED, upstream_completed(upstream_id))
            elif how in ("cancelled", "reset"):
                w.status, w.last_error = WorkloadStatus.CANCELLED, upstream_ended(upstream_id, how)
                self._note(w, WorkloadStatus.CANCELLED, w.last_error)
                self._untold(w.id)
                self._settled(w.id, "cancelled")

    def _untold(self, workload_id: str) -> None:
        """Mark a workload that just ended with no pinion there, for :meth:`take_ended`."""
        self.space.entries[workload_id].untold = next(self.space.ends)

    # --- workloads ------------------------------------------------------------------------

    def put(self, workload: Workload) -> None:
        self._put(workload, chained=True)

    def restore(self, workload: Workload) -> None:
        """Kept as it is (status, history and all), then the chains go on from there (as
        :func:`caliber.queue.sql.chains.restored` says)."""
        with self._locked() as s:
            self._put(workload, chained=False)
            w = s.entries[workload.id].workload
            if w.status in (WorkloadStatus.COMPLETED, WorkloadStatus.CANCELLED):
                self._settled(w.id, w.status.value)
            elif w.status == WorkloadStatus.WAITING and (
                    change := restored_waiting(w, self._upstream(w))) is not None:
                w.status, line = change
                if w.status == WorkloadStatus.CANCELLED:
                    w.last_error = line
                self._note(w, w.status, line)
                if w.status == WorkloadStatus.CANCELLED:
                    self._untold(w.id)  # ended here, now, with no pinion there
                    self._settled(w.id, "cancelled")

    def _put(self, workload: Workload, *, chained: bool) -> None:
        """Store a copy of ``workload``; ``chained``: its status from what it runs after
        (a new workload), otherwise as given (a restored one)."""
        from caliber.queue.workload import HistoryEntry

        stored = _copy(workload)
        with self._locked() as s:
            if stored.id in s.entries:
                raise QueueError(f"cannot queue workload {stored.id}: its id is taken")
            message = f"queued by {stored.queued_by or '?'}"
            if chained and stored.after:
                upstream = self._upstream(stored)
                stored.status = start_status(stored, upstream)
                if stored.status == WorkloadStatus.WAITING:
                    message += f"; {waits_for(stored, upstream)}"
            if not stored.history:
                stored.history = [HistoryEntry(at=stored.created_at, status=stored.status,
                                               message=message)]
            s.entries[stored.id] = Entry(stored)

    def get(self, id_or_prefix: str) -> Workload:
        with self._locked():
            return _copy(self._entry(id_or_prefix).workload)

    def _listed(self, pinion: str | None, status: WorkloadStatus | None,
                workflow: str | None = None) -> list[Workload]:
        found = [e.workload for e in self.space.entries.values()
                 if pinion in (None, e.workload.pinion)
                 and workflow in (None, e.workload.workflow_name)
                 and (status is None or e.workload.status == status)]
        return sorted(found, key=lambda w: w.created_at)

    def list_workloads(self, *, pinion: str | None = None, status: WorkloadStatus | None = None,
                       limit: int | None = None, offset: int = 0,
                       workflow: str | None = None) -> list[Workload]:
        with self._locked():
            listed = self._listed(pinion, status, workflow)
            page = listed[offset:None if limit is None else offset + limit]
            return [_copy(w) for w in page]

    def list_summaries(self, *, pinion: str | None = None, status: WorkloadStatus | None = None,
                       limit: int | None = None, offset: int = 0,
                       workflow: str | None = None) -> list[StoredSummary]:
        with self._locked():
            listed = self._listed(pinion, status, workflow)
            page = listed[offset:None if limit is None else offset + limit]
            return [w.stored_summary() for w in page]

    def list_ended(self, limit: int) -> builtins.list[Workload]:
        with self._locked() as s:
            ended = [e.workload for e in s.entries.values()
                     if e.workload.status in FINISHED and e.workload.history
                     and e.workload.history[-1].status in FINISHED]
            ended.sort(key=lambda w: w.history[-1].at, reverse=True)
            return [_copy(w) for w in ended[:max(limit, 0)]]

    def claim(self, pinion: str, owner: str, lease_seconds: float, key_id: str) -> Claim | None:
        from caliber.queue.backend import Claim
        from caliber.queue.workload import Lease

        now = time.time()
        with self._locked() as s:
            claimable = [e for e in s.entries.values()
                         if e.workload.pinion == pinion and not e.workload.damaged
                         and not mismatch_marked(e.workload.secret_mismatch, key_id)
                         and ((e.workload.status == WorkloadStatus.QUEUED
                               and _due(e.workload, now))
                              or (e.workload.status == WorkloadStatus.RUNNING
                                  and _gone(e.workload, now)))]
            if not claimable:
                return None
            w = min(claimable, key=lambda e: (-e.workload.priority, e.workload.created_at,
                                              e.workload.id)).workload
            if w.status == WorkloadStatus.RUNNING:
                dead = w.lease.owner if w.lease else "?"
                self._note(w, WorkloadStatus.QUEUED,
                           f"lease of {dead} ran out (attempt {w.attempts} lost)")
            token = secrets.token_hex(16)
            expires = dt.datetime.fromtimestamp(now + lease_seconds, dt.UTC)
            w.status, w.attempts = WorkloadStatus.RUNNING, w.attempts + 1
            w.lease = Lease(owner=owner, token=token, expires_at=expires)
            self._note(w, WorkloadStatus.RUNNING, f"claimed by {owner} (attempt {w.attempts})")
            claimed = _copy(w)
        claimed.history = []
        return Claim(workload=claimed, owner=owner, token=token, expires_at=expires)

    def renew(self, claim: Claim, lease_seconds: float, *,
              progress: dict[str, Any] | None = None) -> Claim:
        """See :meth:`QueueBackend.renew`; ``progress`` is kept with the workload."""
        expires = dt.datetime.fromtimestamp(time.time() + lease_seconds, dt.UTC)
        with self._locked():
            entry = self._held(claim)
            assert entry.workload.lease is not None
            entry.workload.lease = entry.workload.lease.model_copy(update={"expires_at": expires})
            if progress is not None:
                entry.workload.progress = dict(progress)
            return replace(claim, expires_at=expires, cancel_requested=entry.cancel_requested,
                           cancel_now=entry.cancel_now)

    def peek_cancel(self, claim: Claim) -> Claim:
        """See :meth:`QueueBackend.peek_cancel`: the claim with the cancel held now."""
        with self._locked():
            entry = self._held(claim)
            return replace(claim, cancel_requested=entry.cancel_requested,
                           cancel_now=entry.cancel_now)

    def release(self, claim: Claim, *, reason: str, mismatch_key_id: str | None = None) -> None:
        with self._locked():
            entry = self._held(claim)
            w = entry.workload
            w.status, w.attempts, w.lease = WorkloadStatus.QUEUED, max(w.attempts - 1, 0), None
            w.secret_mismatch = add_mismatch(w.secret_mismatch, mismatch_key_id)
            self._note(w, WorkloadStatus.QUEUED, f"released by {claim.owner}: {reason}")
            self._cancel_if_asked(entry)

    def complete(self, claim: Claim, results: Results) -> None:
        results, end = ending(claim, results)
        status, error = end.status, end.error
        body = results.model_dump_json(by_alias=True)
        with self._locked() as s:
            w = self._held(claim).workload
            if results.id in s.results:
                raise QueueError(f"cannot store the results of workload {w.id}: results "
                                 f"{results.id} are stored already")
            s.results[results.id] = body
            w.status, w.results_id, w.last_error = status, results.id, error
            w.work_dir, w.lease = results.work_dir, None
            self._note(w, status, end.message)
            self._settled(w.id, status.value)

    def fail(self, claim: Claim, reason: str, *, retry: bool) -> None:
        status = WorkloadStatus.QUEUED if retry else WorkloadStatus.FAILED
        with self._locked():
            entry = self._held(claim)
            w = entry.workload
            w.status, w.last_error, w.lease = status, reason, None
            self._note(w, status, f"attempt failed: {reason}" + ("; queued again" if retry
                                                                  else ""))
            self._cancel_if_asked(entry)

    def expire(self, max_attempts: int) -> list[str]:
        now = time.time()
        with self._locked() as s:
            gone = sorted((e.workload for e in s.entries.values()
                           if e.workload.status == WorkloadStatus.RUNNING
                           and e.workload.attempts >= max_attempts and _gone(e.workload, now)),
                          key=lambda w: w.created_at)
            for w in gone:
                w.status, w.lease = WorkloadStatus.FAILED, None
                w.last_error = f"lease ran out {w.attempts} times (pinion died?)"
                self._note(w, WorkloadStatus.FAILED, w.last_error)
                self._untold(w.id)
            return [w.id for w in gone]

    def reset(self, id_or_prefix: str, *, force: bool = False) -> Workload:
        with self._locked() as s:
            w = self._entry(id_or_prefix).workload
            if w.status == WorkloadStatus.RUNNING and not force:
                holder = w.lease.owner if w.lease else "a pinion"
                raise QueueStateError(f"workload {w.id} is running (held by {holder}); stop "
                                      "the pinion first or use --force")
            del s.entries[w.id]
            s.blobs.sweep(self._blobs_of([w], []), self._referred())
            self._settled(w.id, "reset")
            return w

    def resetsecret(self, id_or_prefix: str, secret: str, key_id: str, *,
                    resume: ResumeGrant | None = None) -> Workload:
        with self._locked():
            w = self._entry(id_or_prefix).workload
            w.secret, w.secret_mismatch = secret, None
            if resume is not None and w.resume_from == resume.results_id:
                w.resume_signature, w.resume_grant = resume.results_signature, resume.grant
            self._note(w, None, f"signed again with key {key_id}")
            return _copy(w)

    def cancel(self, id_or_prefix: str, by: str, *, now: bool = False) -> Workload:
        with self._locked():
            entry = self._entry(id_or_prefix)
            w = entry.workload
            check_cancel(w)
            lease = w.lease
            if w.status in (WorkloadStatus.QUEUED, WorkloadStatus.WAITING) or (
                    lease is not None and lease.expires_at.timestamp() < time.time()):
                w.status, w.lease, w.last_error = WorkloadStatus.CANCELLED, None, cancelled(by)
                self._note(w, WorkloadStatus.CANCELLED, cancelled(by))
                self._untold(w.id)
                self._settled(w.id, "cancelled")
            else:
                entry.cancel_requested, entry.cancel_now = by, entry.cancel_now or now
                self._note(w, None, cancel_asked(by, now))
            return _copy(w)

    def retry(self, id_or_prefix: str, by: str, *,
              resume: ResumeGrant | None = None) -> Workload:
        with self._locked():
            entry = self._entry(id_or_prefix)
            w = entry.workload
            grant = check_retry(w, resume)
            upstream = self._upstream(w)
            status = start_status(w, upstream, retry=True)
            w.status, w.attempts, w.lease, w.last_error = status, 0, None, None
            entry.cancel_requested, entry.cancel_now, w.secret_mismatch = None, False, None
            entry.untold = None  # not ended any more: its next end is told
            w.resume_from, w.resume_signature, w.resume_grant = (
                (grant.results_id, grant.results_signature, grant.grant) if grant
                else (None, None, None))
            message = retried(by, grant.results_id if grant else None)
            if status == WorkloadStatus.WAITING:
                message += f"; {waits_for(w, upstream)}"
            self._note(w, status, message)
            return _copy(w)

    def count_statuses(self, *, pinion: str | None = None,
                       workflow: str | None = None) -> dict[str, int]:
        with self._locked() as s:
            counts: dict[str, int] = {}
            for e in s.entries.values():
                if pinion in (None, e.workload.pinion) and workflow in (
                        None, e.workload.workflow_name):
                    status = e.workload.status.value
                    counts[status] = counts.get(status, 0) + 1
            return counts

    def take_ended(self, pinion: str, limit: int = 100) -> builtins.list[Workload]:
        with self._locked() as s:
            untold = sorted((e for e in s.entries.values()
                             if e.untold is not None and e.workload.pinion == pinion),
                            key=lambda e: e.untold or 0)[:max(limit, 0)]
            for e in untold:
                e.untold = None
            return [_copy(e.workload) for e in untold]

    def next_start(self, pinion: str) -> dt.datetime | None:
        now = time.time()
        with self._locked() as s:
            starts = [e.workload.not_before for e in s.entries.values()
                      if e.workload.pinion == pinion and not e.workload.damaged
                      and e.workload.status == WorkloadStatus.QUEUED
                      and e.workload.not_before is not None
                      and e.workload.not_before.timestamp() > now]
            return min(starts, default=None)

    def prune(self, before: dt.datetime, *, workflow: str | None = None,
              pinion: str | None = None, dry_run: bool = False) -> Pruned:
        """See :meth:`caliber.queue.backend.QueueBackend.prune`: a workload's last change is
        its last history entry; one whose end is untold (:attr:`Entry.untold`) stays; the
        blobs only the pruned records referred to go too."""
        with self._locked() as s:
            waited_for = {up for e in s.entries.values()  # (not ended: their $results)
                          if e.workload.status not in FINISHED for up in e.workload.after}
            workloads = [e.workload for e in s.entries.values()
                         if e.workload.status in FINISHED and e.workload.id not in waited_for
                         and e.untold is None  # (its end not told yet: kept until it is)
                         and workflow in (None, e.workload.workflow_name)
                         and pinion in (None, e.workload.pinion)
                         and (e.workload.history[-1].at if e.workload.history
                              else e.workload.created_at) < before]
            workloads.sort(key=lambda w: w.created_at)
            pruned = {w.id for w in workloads}
            results = [r for r in self._all_results()
                       if r.workload_id in pruned or (
                           (r.workload_id is None or r.workload_id not in s.entries)
                           and r.finished_at < before and workflow in (None, r.workflow)
                           and pinion in (None, r.pinion))]
            size = (sum(len(w.model_dump_json()) for w in workloads)
                    + sum(len(s.results[r.id]) for r in results))
            dirs = [w.work_dir for w in workloads] + [r.work_dir for r in results]
            found = Pruned(before=before, dry_run=dry_run,
                           workloads=tuple(w.id for w in workloads),
                           results=tuple(r.id for r in results), bytes=size,
                           work_dirs=tuple(dict.fromkeys(d for d in dirs if d)))
            if not dry_run:
                for w in workloads:
                    del s.entries[w.id]
                for r in results:
                    del s.results[r.id]
            freed = self._blobs_of(workloads, results)
            if dry_run:
                blobs, blob_bytes = s.blobs.unreferred(freed, self._referred(skip=found))
            else:
                blobs, blob_bytes = s.blobs.sweep(freed, self._referred())
            return replace(found, blobs=blobs, blob_bytes=blob_bytes)

    # --- blobs (caliber.queue.blobs.BlobStore) ----------------------------------------------

    @staticmethod
    def _blobs_of(workloads: Iterable[Workload], results: Iterable[Results]) -> set[str]:
        shas = {a.sha256 for w in workloads for a in w.attachments if a.kind == "stored"}
        return shas | {sha for r in results for sha in r.blobs}

    def _referred(self, skip: Pruned | None = None) -> set[str]:
        """Every blob a stored workload or Results refers to (but those ``skip`` names)."""
        gone_w = set(skip.workloads) if skip else set()
        gone_r = set(skip.results) if skip else set()
        workloads = [e.workload for i, e in self.space.entries.items() if i not in gone_w]
        results = [r for r in self._all_results() if r.id not in gone_r]
        return self._blobs_of(workloads, results)

    def put_blob(self, source: Path) -> BlobRef:
        return self.space.blobs.put_blob(source)

    def has_blob(self, sha256: str) -> bool:
        return self.space.blobs.has_blob(sha256)

    def open_blob(self, sha256: str) -> BinaryIO:
        return self.space.blobs.open_blob(sha256)

    def fetch_blob(self, sha256: str, dest: Path, *, mode: int = 0o600) -> None:
        self.space.blobs.fetch_blob(sha256, dest, mode=mode)

    # --- results --------------------------------------------------------------------------

    def _all_results(self) -> builtins.list[Results]:
        from caliber.results.model import Results

        return [Results.model_validate_json(body) for body in self.space.results.values()]

    def save_results(self, results: Results) -> None:
        body = results.model_dump_json(by_alias=True)
        with self._locked() as s:
            if results.id in s.results:
                raise QueueError(f"cannot store results {results.id}: they are stored already")
            s.results[results.id] = body

    def get_results(self, id_or_prefix: str) -> Results:
        from caliber.results.model import Results

        with self._locked() as s:
            body = s.results[self._resolve(s.results, id_or_prefix, "results")]
        return Results.model_validate_json(body)

    def find_results(self, *, workload_id: str | None = None, workflow: str | None = None,
                     pinion: str | None = None) -> Results | None:
        found = self.list_results(workflow=workflow, pinion=pinion, workload_id=workload_id)
        return found[0] if found else None

    def list_results(self, *, workflow: str | None = None, pinion: str | None = None,
                     limit: int | None = None, offset: int = 0,
                     workload_id: str | None = None) -> builtins.list[Results]:
        with self._locked():
            found = [r for r in self._all_results()
                     if workflow in (None, r.workflow) and pinion in (None, r.pinion)
                     and workload_id in (None, r.workload_id)]
        found.sort(key=lambda r: r.finished_at, reverse=True)
        return found[offset:None if limit is None else offset + limit]
