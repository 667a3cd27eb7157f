"""What the remote queue stores as Speckle objects: a workload (its workflow, attachments and
run-secret, referenced by its ``put`` version) and its results (referenced by ``done``), and
how a workload is read back; plus finding an id from a prefix."""

from __future__ import annotations

import json
from typing import Any

from caliber.errors import AmbiguousIdError, NotFoundError
from caliber.queue import speckle_adapter as sp
from caliber.queue.secret import problem
from caliber.queue.speckle_log import State
from caliber.queue.workload import Attachment, HistoryEntry, Lease, Workload, WorkloadStatus
from caliber.results.model import Results

ATTACHMENT_FIELDS = ("path", "encoding", "content", "sha256", "size", "mode", "reference")


def workload_object(workload: Workload) -> Any:
    """The workload as a Speckle object: readable members for the web app, and the lossless
    JSON the queue reads back; each attachment a detached child."""
    doc = workload.model_dump(mode="json", include={
        "id", "pinion", "workflow", "created_at", "queued_by", "secret"})
    return sp.new_object({
        "caliber": "workload", "workload_id": workload.id,
        "workflow_name": workload.workflow_name, "pinion": workload.pinion,
        "queued_by": workload.queued_by, "created_at": workload.created_at.isoformat(),
        "workflow": sp.to_speckle(workload.workflow),
        "workload_json": json.dumps(doc, ensure_ascii=False),
        "@attachments": [sp.new_object(a.model_dump(exclude_none=True))
                         for a in workload.attachments],
    })


def workload_from(s: State, root: dict[str, Any], children: list[dict[str, Any]],
                  lease: Lease | None) -> Workload:
    """The workload the log's state ``s`` and its stored objects describe (one shown as
    damaged, never run, when its object is not a workload's)."""
    common: dict[str, Any] = dict(
        id=s.id, pinion=s.pinion, created_at=s.created_at, queued_by=s.queued_by,
        status=s.status, results_id=s.results_id, attempts=s.attempts, lease=lease,
        secret_mismatch=s.mismatch, work_dir=s.work_dir, resume_from=s.resume_from,
        resume_signature=s.resume_signature, resume_grant=s.resume_grant,
        progress=s.progress if s.status == WorkloadStatus.RUNNING else None,
        history=[HistoryEntry(at=at, status=status, message=text)
                 for at, status, text in s.history],
    )
    try:
        doc = json.loads(root["workload_json"])
        attachments = [Attachment.model_validate({k: child[k] for k in ATTACHMENT_FIELDS
                                                  if k in child}) for child in children]
        if doc.get("id") != s.id:
            raise ValueError(f"its object belongs to workload {doc.get('id')!r}")
        workload = Workload(
            workflow=doc["workflow"], attachments=attachments, last_error=s.last_error,
            secret=s.secret if s.secret is not None else doc.get("secret", ""), **common,
        )
        why = problem(workload)  # cannot be checked as signed: damaged, as on the local queue
        if why is not None:
            raise ValueError(why)
        return workload
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # Shown as damaged and never run (as on the local queue), not a failed listing.
        reason = f"this queue entry is damaged on the server and never runs ({exc!r}); reset it"
        return Workload(workflow={"name": s.workflow}, secret="", last_error=reason,
                        damaged=reason, **common)


def results_object(results: Results) -> Any:
    """The results as Speckle objects: one child per task run, its return value as Speckle
    members (a Speckle object as itself), and the lossless JSON the queue reads back."""
    tasks = []
    for task in results.tasks:
        try:
            value = sp.to_speckle(task.return_)
        except Exception:  # a value Speckle cannot hold as members: keep it as JSON text
            value = json.dumps(task.return_, ensure_ascii=False)
        member = "@value" if sp.is_speckle_object(value) else "value"
        tasks.append(sp.new_object({
            "name": task.name, "path": list(task.path), "branch": task.branch,
            "status": task.status.value, "duration": task.duration,
            "conversion": task.conversion,
            "error": task.error.summary() if task.error else None, member: value,
        }))
    return sp.new_object({
        "caliber": "results", "results_id": results.id, "workload_id": results.workload_id,
        "workflow": results.workflow, "pinion": results.pinion, "status": results.status.value,
        "started_at": results.started_at.isoformat(),
        "finished_at": results.finished_at.isoformat(),
        "error": results.error.summary() if results.error else None,
        "results_json": results.model_dump_json(by_alias=True), "@tasks": tasks,
    })


def resolve(ids: Any, id_or_prefix: str, what: str) -> str:
    prefix = id_or_prefix.strip().lower()
    if not prefix:
        raise NotFoundError(f"no {what} id given")
    if prefix in ids:
        return prefix
    found = sorted(i for i in ids if i.startswith(prefix))
    if not found:
        raise NotFoundError(f"no {what} with id {id_or_prefix!r}")
    if len(found) > 1:
        raise AmbiguousIdError(id_or_prefix, found[:21])
    return str(found[0])
