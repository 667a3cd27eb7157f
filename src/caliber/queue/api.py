"""The queue for the command line and for scripts: queue a workflow, list, view, cancel,
retry, reset and re-sign workloads.

Every function takes the :class:`~caliber.queue.target.QueueTarget` to work on (see
:func:`caliber.queue.target.resolve_target`), opens it, does one thing and closes it again.
Run-secrets are checked against this user's key (:mod:`caliber.queue.secret`).

``list_summaries`` (``caliber queue list``) imports no pydantic: keep it so.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from caliber.errors import NotFoundError, QueueStateError, ResumeError, UsageError
from caliber.queue.lifecycle import check_retry, no_results
from caliber.queue.plan import Plan
from caliber.queue.resume import resumable_results
from caliber.queue.status import WorkloadStatus, parse_status

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from caliber.queue.blobs import BlobStore
    from caliber.queue.lifecycle import ResumeGrant
    from caliber.queue.registry import Backend
    from caliber.queue.summary import StoredSummary, WorkloadSummary
    from caliber.queue.target import QueueTarget
    from caliber.queue.workload import Attachment, Workload
    from caliber.results.model import Results
    from caliber.workflow.attachments import AttachmentSpec

class Queueable(Protocol):
    """What the queue needs of a workflow (:class:`caliber.Workflow` is one): its document,
    its attachments and the folder they are relative to. The model is not imported here:
    layers point one way, the model calls this API (``Workflow.queue``), never back."""

    @property
    def base_dir(self) -> Path: ...

    @property
    def attachments(self) -> Sequence[AttachmentSpec]: ...

    def to_document(self) -> dict[str, Any]: ...


PINION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")
DEFAULT_LIMIT = 100  # workloads ``caliber queue list`` shows unless asked for more


@dataclass(frozen=True)
class CheckedWorkload:
    """A workload, whether its run-secret matches this user's key, and whether its resume
    (if it resumes) is vouched for by that key (:meth:`Workload.resume_ok`)."""

    workload: Workload
    secret_ok: bool
    resume_ok: bool | None = None

    def summary(self) -> dict[str, Any]:
        return self.workload.summary(self.secret_ok, self.resume_ok)

    def detail(self) -> dict[str, Any]:
        return self.workload.detail(self.secret_ok, self.resume_ok)


def opened(target: QueueTarget) -> Backend:
    """The queue ``target`` names, to use in a ``with`` block (which closes it)."""
    from caliber.queue.registry import open_backend

    return open_backend(target)


def check_pinion_name(name: str) -> str:
    if not isinstance(name, str) or not PINION_NAME.fullmatch(name):
        raise UsageError(
            f"pinion name {name!r} is not valid: use letters, digits and . _ @ - "
            "(at most 100, starting with a letter or digit)"
        )
    return name


def make_workload(workflow: Queueable, pinion: str, store: BlobStore | None = None,
                  key: bytes | None = None, *, after: Sequence[str] = (),
                  not_before: dt.datetime | str | None = None, priority: int = 0,
                  notify: str | None = None) -> Workload:
    """The signed Workload for ``workflow``: its document, and every attachment as it is on
    disk now (paths checked, each file streamed through SHA-256 into ``store``, the queue's
    content store; None: only hashed), signed with ``key`` (default: this user's), with its
    plan (:class:`caliber.queue.plan.Plan`: ``after`` full ids, :func:`queue_workflow`
    resolves prefixes). Raises before anything is queued."""
    plan = Plan.checked(after=after, not_before=not_before, priority=priority, notify=notify)
    return _signed(workflow, pinion, store, key, plan)


def _signed(workflow: Queueable, pinion: str, store: BlobStore | None, key: bytes | None,
            plan: Plan) -> Workload:
    from caliber.queue.secret import load_key, sign
    from caliber.queue.workload import Workload, collect_attachments, queued_by

    check_pinion_name(pinion)
    document = workflow.to_document()
    attachments = collect_attachments(workflow.base_dir, workflow.attachments, store)
    workload = Workload(
        pinion=pinion, workflow=document, attachments=attachments, queued_by=queued_by(),
        after=list(plan.after), not_before=plan.not_before, priority=plan.priority,
        notify=plan.notify,
    )
    workload.secret = sign(workload, key if key is not None else load_key())
    return workload


def queue_workflow(workflow: Queueable, pinion: str, target: QueueTarget, *,
                   resume: str | None = None, after: str | Sequence[str] = (),
                   not_before: dt.datetime | str | None = None, priority: int = 0,
                   notify: str | None = None) -> str:
    """Put ``workflow`` in the queue for ``pinion``; returns the new workload's id
    (:func:`put_workflow`, without reading it back)."""
    from caliber.queue.secret import load_key

    plan = Plan.checked(after=after, not_before=not_before, priority=priority, notify=notify)
    key = load_key()
    with opened(target) as backend:
        return _put(backend, workflow, pinion, plan, resume, key).id


def put_workflow(workflow: Queueable, pinion: str, target: QueueTarget, *,
                 resume: str | None = None, after: str | Sequence[str] = (),
                 not_before: dt.datetime | str | None = None, priority: int = 0,
                 notify: str | None = None) -> Workload:
    """Put ``workflow`` in the queue for ``pinion``; returns the new workload as the queue
    holds it (queued, or waiting). Its attachments go into the queue's content store first
    (each stored once by content). Every argument is checked before anything is stored
    (UsageError, NotFoundError, AmbiguousIdError, QueueStateError: one line, nothing queued).

    ``resume``: a Results id, or a workload id (its last Results), ids or unique prefixes:
    the workload reuses the tasks that completed there and are unchanged (the reuse rule of
    :mod:`caliber.workflow.runner`), the workflow itself as it is now. Those Results must be
    of the same workflow and signed with this user's key; the resume is granted with it
    (:mod:`caliber.queue.resume`). ResumeError (or NotFoundError) otherwise, nothing queued.

    The plan (:mod:`caliber.queue.plan`), signed with the rest: ``after`` workload ids or
    unique prefixes in this queue (it waits until each has completed; a cancelled one is
    refused: it would never run), ``not_before`` an aware datetime or text such as
    ``"22:00"`` (no pinion claims it earlier), ``priority`` -1000 to 1000 (claim order, higher
    first), ``notify`` an http(s) address its pinion posts its outcome to."""
    from caliber.queue.secret import load_key

    plan = Plan.checked(after=after, not_before=not_before, priority=priority, notify=notify)
    key = load_key()
    with opened(target) as backend:
        return backend.get(_put(backend, workflow, pinion, plan, resume, key).id)


def _put(backend: Backend, workflow: Queueable, pinion: str, plan: Plan,
         resume: str | None, key: bytes) -> Workload:
    """The workload put: ``after`` resolved, the workflow's ``$results`` references checked
    against those workloads (:func:`caliber.workflow.upstream.check_after`: UpstreamError)
    and the resume found before anything is stored."""
    from caliber.workflow.upstream import check_queued

    if plan.after:
        plan = replace(plan, after=tuple(resolve_after(backend, plan.after)))
    check_queued(backend, workflow.to_document(), plan.after)  # its $results pick upstreams
    earlier = resumable_results(backend, resume) if resume is not None else None
    workload = _signed(workflow, pinion, backend, key, plan)
    if earlier is not None:
        _grant_new(backend, workload, earlier, key)
    backend.put(workload)
    return workload


def resolve_after(backend: Backend, ids: Sequence[str]) -> list[str]:
    """The full ids of the workloads ``ids`` (ids or unique prefixes) name, each once:
    NotFoundError or AmbiguousIdError for one that names none or several, QueueStateError
    for one that never completes (cancelled, damaged)."""
    full: list[str] = []
    for given in ids:
        try:
            upstream = backend.get(given)
        except NotFoundError:
            raise NotFoundError(f"cannot run after {given!r}: no workload in the queue has "
                                "that id") from None
        name = upstream.workflow_name
        if upstream.status == WorkloadStatus.CANCELLED:
            raise QueueStateError(
                f"cannot run after workload {upstream.id} ({name}): it was cancelled, so this "
                f"would never run; queue it again first: caliber queue retry {upstream.id}")
        if upstream.damaged:
            raise QueueStateError(f"cannot run after workload {upstream.id}: {upstream.damaged}")
        full.append(upstream.id)
    return list(dict.fromkeys(full))


@dataclass(frozen=True)
class Upstream:
    """A workload another one runs after, as it is now (``queue view``): None for its
    workflow and status when it is no longer in the queue (reset)."""

    id: str
    workflow: str | None
    status: str | None
    not_before: dt.datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "workflow": self.workflow, "status": self.status,
                "not_before": None if self.not_before is None else self.not_before.isoformat()}


def upstreams(ids: Sequence[str], target: QueueTarget) -> list[Upstream]:
    """The workloads of ``ids`` (full ids: ``Workload.after``) as they are now."""
    found = []
    with opened(target) as backend:
        for workload_id in ids:
            try:
                w = backend.get(workload_id)
            except NotFoundError:
                found.append(Upstream(workload_id, None, None))
                continue
            found.append(Upstream(w.id, w.workflow_name, w.status.value, w.not_before))
    return found


@dataclass(frozen=True)
class Downstream:
    """A waiting workload that runs after another, down the chain (what a cancel or reset
    of that one cancels too): ``after`` the ids it waits for, ``direct`` when that one is
    among them."""

    id: str
    workflow: str
    status: str
    after: list[str]
    direct: bool

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "workflow": self.workflow, "status": self.status,
                "after": list(self.after), "direct": self.direct}


def waiting_after(id_or_prefix: str, target: QueueTarget) -> list[Downstream]:
    """The waiting workloads that run after the workload ``id_or_prefix``, down the chain,
    nearest first. Only waiting workloads are read: the queue filters them (a workload after
    one that has not completed is waiting), and none at all when the counts say there are
    none (a queue without chains). NotFoundError/AmbiguousIdError for the id as ``get``."""
    with opened(target) as backend:
        if not backend.count_statuses().get("waiting"):
            return []
        workload_id = backend.get(id_or_prefix).id
    waiting = list_page(target, status="waiting", limit=None, counts=False).summaries
    after: dict[str, list[WorkloadSummary]] = {}
    for s in waiting:
        for upstream in dict.fromkeys(s.after):
            after.setdefault(upstream, []).append(s)
    below: list[Downstream] = []
    reached = {workload_id}
    level = [workload_id]
    while level:  # breadth first: those right after it, then those after them, ...
        following = []
        for upstream in level:
            for s in after.get(upstream, ()):
                if s.id not in reached:
                    reached.add(s.id)
                    following.append(s.id)
                    below.append(Downstream(s.id, s.workflow, s.status, list(s.after),
                                            workload_id in s.after))
        level = following
    return below


def _grant_new(backend: Backend, workload: Workload, results: Results, key: bytes) -> None:
    """Let the new ``workload`` reuse ``results`` (of its workflow, signed with ``key``): the
    grant stored with it and the history line saying so."""
    from caliber.queue.resume import grant, results_problem
    from caliber.queue.workload import HistoryEntry

    if results.workflow != workload.workflow_name:
        raise ResumeError(f"cannot resume from results {results.id}: they are of workflow "
                          f"{results.workflow!r}, not {workload.workflow_name!r}")
    problem = results_problem(results, key)
    if problem is not None:
        raise ResumeError(f"cannot resume: {problem}; queue it without --resume")
    made = grant(workload.id, results, key)
    workload.resume_from = made.results_id
    workload.resume_signature = made.results_signature
    workload.resume_grant = made.grant
    workload.history = [HistoryEntry(
        at=workload.created_at, status=WorkloadStatus.QUEUED,
        message=f"queued by {workload.queued_by or '?'}, reusing the completed tasks of "
                f"results {results.id}")]


def _checker() -> Callable[[Workload], CheckedWorkload]:
    from caliber.queue.secret import load_key

    return _checked(load_key())


def _checked(key: bytes) -> Callable[[Workload], CheckedWorkload]:
    from caliber.queue.secret import verify

    def check(workload: Workload) -> CheckedWorkload:
        ok = verify(workload, key)
        return CheckedWorkload(workload, ok, workload.resume_ok(key, ok))

    return check


@dataclass(frozen=True)
class Page:
    """One page of ``caliber queue list``: the summaries, whether more follow, and how many
    workloads (of the pinion asked for) have each status."""

    summaries: list[WorkloadSummary]
    more: bool
    counts: dict[str, int]


def list_page(
    target: QueueTarget,
    *,
    pinion: str | None = None,
    status: str | WorkloadStatus | None = None,
    limit: int | None = DEFAULT_LIMIT,
    offset: int = 0,
    counts: bool = True,
    workflow: str | None = None,
) -> Page:
    """One page of workload summaries, oldest first, each with whether its run-secret matches
    this user's key, whether more follow, and (``counts``) the counts by status
    (``caliber queue list``); ``pinion``, ``status`` and ``workflow`` (its name) filter."""
    from caliber.queue.secret import load_key

    wanted = parse_status(status)
    page = None if limit is None else limit + 1  # one more, to know whether more follow
    key = load_key()
    with opened(target) as backend:
        stored = backend.list_summaries(pinion=pinion, status=wanted, limit=page,
                                        offset=offset, workflow=workflow)
        by_status = backend.count_statuses(pinion=pinion, workflow=workflow) if counts else {}
    summaries = [check_summary(s, key) for s in stored]
    more = limit is not None and len(summaries) > limit
    return Page(summaries[:limit] if more else summaries, more, by_status)


_UNREADABLE = (ValueError, TypeError, KeyError, AttributeError, RecursionError)
"""What reading a stored entry's fields raises when it is damaged (DamagedEntry is a
ValueError)."""


def check_summary(stored: StoredSummary, key: bytes) -> WorkloadSummary:
    """What ``caliber queue list`` shows of a workload as a backend stored it: its run-secret
    and its resume checked with ``key`` here, not in the backend (:func:`verify_raw` on the
    plain stored fields, no pydantic). An entry that cannot be read as it was signed is shown
    damaged, as :meth:`list_workloads` shows it."""
    from caliber.queue.secret import resume_ok, stored_time, verify_raw
    from caliber.queue.summary import WorkloadSummary

    s = stored
    if s.damaged is None:
        try:
            ok = verify_raw(key, workload_id=s.id, workflow=s.workflow,
                            attachments=s.attachments, pinion=s.pinion,
                            created_at=s.created_at, secret=s.secret, plan=s.plan())
            return WorkloadSummary(  # the name from the signed document, as Workload shows it
                id=s.id, workflow=str(s.workflow.get("name", "?")), pinion=s.pinion,
                status=WorkloadStatus(s.status).value,
                created_at=stored_time(s.created_at).isoformat(), attempts=s.attempts,
                results_id=s.results_id, secret_ok=ok, queued_by=s.queued_by,
                last_error=s.last_error, secret_mismatch=s.secret_mismatch,
                resume_from=s.resume_from,
                resume_ok=resume_ok(key, workload_id=s.id, resume_from=s.resume_from,
                                    results_signature=s.resume_signature,
                                    grant=s.resume_grant, secret_ok=ok,
                                    marks=s.secret_mismatch),
                after=tuple(str(a) for a in s.after), priority=int(s.priority),
                not_before=None if s.not_before is None
                else stored_time(s.not_before).isoformat(),
            )
        except _UNREADABLE as exc:
            s = s.as_damaged(damaged_reason(exc))
    return WorkloadSummary(
        id=str(s.id), workflow=s.name if isinstance(s.name, str) else "?",
        pinion=str(s.pinion), status=_status_shown(s.status),
        created_at=_time_shown(s.created_at), attempts=s.attempts, results_id=s.results_id,
        secret_ok=False, queued_by=s.queued_by, last_error=s.last_error,
        secret_mismatch=s.secret_mismatch, resume_from=s.resume_from,
        resume_ok=resume_ok(key, workload_id=s.id, resume_from=s.resume_from,
                            results_signature=s.resume_signature, grant=s.resume_grant,
                            secret_ok=False, marks=s.secret_mismatch),
    )


def damaged_reason(exc: BaseException) -> str:
    """What a damaged queue entry says (its ``last_error``)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    why = text if len(text) <= 160 else text[:157] + "..."
    return f"this queue entry is damaged and never runs ({why}); reset it"


def _status_shown(status: str) -> str:
    """A damaged entry's status as stored, or failed when it is none."""
    try:
        return WorkloadStatus(status).value
    except ValueError:
        return WorkloadStatus.FAILED.value


def _time_shown(created_at: str) -> str:
    """A damaged entry's creation time as stored (in UTC), or the epoch when it is none."""
    import datetime as dt

    try:
        moment = dt.datetime.fromisoformat(created_at).astimezone(dt.UTC)
    except (TypeError, ValueError):
        moment = dt.datetime.fromtimestamp(0, dt.UTC)
    return moment.isoformat()


def list_summaries(
    target: QueueTarget,
    *,
    pinion: str | None = None,
    status: str | WorkloadStatus | None = None,
    limit: int | None = DEFAULT_LIMIT,
    offset: int = 0,
) -> tuple[list[WorkloadSummary], bool]:
    """One page of workload summaries and whether more follow (:func:`list_page` without the
    counts)."""
    found = list_page(target, pinion=pinion, status=status, limit=limit, offset=offset,
                      counts=False)
    return found.summaries, found.more


def list_workloads(
    target: QueueTarget,
    *,
    pinion: str | None = None,
    status: str | WorkloadStatus | None = None,
    limit: int | None = None,
    offset: int = 0,
    workflow: str | None = None,
) -> list[CheckedWorkload]:
    """Workloads in full, oldest first, each with whether its run-secret matches this user's
    key."""
    wanted = parse_status(status)
    ok = _checker()
    with opened(target) as backend:
        workloads = backend.list_workloads(pinion=pinion, status=wanted, limit=limit,
                                           offset=offset, workflow=workflow)
    return [ok(w) for w in workloads]


def view_workload(id_or_prefix: str, target: QueueTarget) -> CheckedWorkload:
    """One workload in full (id or unique prefix)."""
    ok = _checker()
    with opened(target) as backend:
        workload = backend.get(id_or_prefix)
    return ok(workload)


def cancel(id_or_prefix: str, target: QueueTarget, *, now: bool = False) -> CheckedWorkload:
    """Cancel a workload (``caliber queue cancel``): a queued one never runs; a running one is
    stopped by its pinion (it learns it within about a second on the local queue, at its next
    lease renewal on a remote one), after its current task (``now``: the running task is
    stopped then, SIGTERM, then SIGKILL after the pinion's grace), and kept as cancelled with
    the Results of the tasks that finished. Returns it as it is now, checked against this
    user's key (as ``queue list`` shows it)."""
    from caliber.queue.secret import load_key
    from caliber.queue.workload import queued_by

    with opened(target) as backend:
        workload = backend.cancel(id_or_prefix, queued_by(), now=now)
    return _checked(load_key())(workload)


def retry(id_or_prefix: str, target: QueueTarget, *, resume: bool = False) -> CheckedWorkload:
    """Queue a failed or cancelled workload again (``caliber queue retry``): the same workload,
    a new attempt series, its history kept. Its run-secret is not touched: a pinion checks it
    as before. With ``resume`` the tasks that completed in its last Results are not run again
    (their values and ``g`` are reused): those Results must be signed with this user's key
    (ResumeError otherwise, nothing changed), and the resume is granted with it
    (:mod:`caliber.queue.resume`)."""
    from caliber.queue.secret import load_key
    from caliber.queue.workload import queued_by

    key = load_key()
    with opened(target) as backend:
        grant = None
        if resume:
            workload = backend.get(id_or_prefix)
            check_retry(workload, None)  # its state first: the clearer refusal
            grant = _resume_grant(backend, workload, key, "retry it without --resume")
        workload = backend.retry(id_or_prefix, queued_by(), resume=grant)
    return _checked(key)(workload)


def _resume_grant(backend: Backend, workload: Workload, key: bytes, instead: str) -> ResumeGrant:
    """A grant, made with ``key``, for ``workload`` to reuse its last Results; ResumeError
    (saying to do ``instead``) when it has none or they are not signed with ``key``."""
    from caliber.queue.resume import grant, results_problem

    if workload.results_id is None:
        raise QueueStateError(no_results(workload.id))
    results = backend.get_results(workload.results_id)
    problem = results_problem(results, key)
    if problem is not None:
        raise ResumeError(f"workload {workload.id} cannot resume: {problem}; {instead}")
    return grant(workload.id, results, key)


def reset(id_or_prefix: str, target: QueueTarget, *, force: bool = False) -> Workload:
    """Delete a workload from the queue (a running one only with ``force``); returns it."""
    with opened(target) as backend:
        return backend.reset(id_or_prefix, force=force)


def resetsecret(id_or_prefix: str, target: QueueTarget) -> CheckedWorkload:
    """Sign a workload again with this user's key (after reviewing it, or a key change). A
    workload that resumes (``retry --resume``) gets its resume granted again with the key,
    for the Results it resumes as they are, which must be signed with the key: the key holder
    vouches again for what a key holder stored (ResumeError, nothing changed, otherwise)."""
    from caliber.queue.secret import key_id, load_key, sign

    key = load_key()
    with opened(target) as backend:
        workload = backend.get(id_or_prefix)
        if workload.damaged:
            raise QueueStateError(f"workload {workload.id}: {workload.damaged}")
        damaged = [a.path for a in workload.attachments if not _bytes_match(backend, a)]
        if damaged:
            raise QueueStateError(
                f"workload {workload.id}: the content of attachment {damaged[0]!r} does not "
                "match its SHA-256, so it cannot be signed; reset it and queue the workflow again"
            )
        grant = None
        if workload.resume_from is not None:
            grant = _regrant(backend, workload, key)
        workload = backend.resetsecret(workload.id, sign(workload, key), key_id(key),
                                       resume=grant)
    return _checked(key)(workload)


def _bytes_match(backend: Backend, attachment: Attachment) -> bool:
    """Whether an attachment's bytes (inline, or stored: read through SHA-256 in bounded
    memory) still have its hash; True for one by reference (checked where it is run)."""
    from caliber.queue.blobs import CHUNK

    if attachment.kind != "stored":
        return attachment.content_matches() is not False
    digest = hashlib.sha256()
    try:
        with backend.open_blob(attachment.sha256) as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    except NotFoundError:
        return False
    return digest.hexdigest() == attachment.sha256


def _regrant(backend: Backend, workload: Workload, key: bytes) -> ResumeGrant:
    """The grant ``resetsecret`` makes again for a workload that resumes; ResumeError when
    the Results it resumes are gone or not signed with ``key``."""
    from caliber.queue.resume import grant, results_problem

    assert workload.resume_from is not None
    instead = (f"to run it from the start: caliber queue cancel {workload.id}, then "
               f"caliber queue retry {workload.id}")
    try:
        results = backend.get_results(workload.resume_from)
    except NotFoundError:
        raise ResumeError(f"workload {workload.id} resumes from results "
                          f"{workload.resume_from}, which are gone; {instead}") from None
    problem = results_problem(results, key)
    if problem is not None:
        raise ResumeError(f"workload {workload.id} cannot resume: {problem}, so your key "
                          f"cannot vouch for them; {instead}")
    return grant(workload.id, results, key)
