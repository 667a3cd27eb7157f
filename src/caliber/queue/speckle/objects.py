"""What the remote queue stores of a workload as Speckle objects (its workflow, attachments and
run-secret, referenced by its ``put`` version), and how a workload is read back; plus finding
an id from a prefix. Results: :mod:`caliber.queue.speckle.results`; the bytes of attachments:
:mod:`caliber.queue.speckle.blobs`."""

from __future__ import annotations

import json
from typing import Any

from caliber.errors import AmbiguousIdError, NotFoundError
from caliber.queue.secret import problem, stored_time
from caliber.queue.speckle import adapter as sp
from caliber.queue.speckle.log import State
from caliber.queue.workload import Attachment, HistoryEntry, Lease, Workload, WorkloadStatus

ATTACHMENT_FIELDS = ("path", "sha256", "size", "mode", "reference", "encoding", "content")
BLOB_MEMBER = "blob"
"""The member of an attachment child naming the Speckle object of its blob
(:mod:`caliber.queue.speckle.blobs`): a plain string, not a reference, so the workload
object's closure (what the web app downloads to show it) never holds the bytes."""


def workload_object(workload: Workload, blobs: dict[str, str]) -> Any:
    """The workload as a Speckle object: readable members for the web app, and the lossless
    JSON the queue reads back; each attachment a small detached child: its path, SHA-256,
    size and mode, and the id of its blob's object (``blobs``: SHA-256 to object id), or the
    content itself for an inline attachment."""
    doc = workload.model_dump(mode="json", include={
        "id", "pinion", "workflow", "created_at", "queued_by", "secret"})
    return sp.new_object({
        "caliber": "workload", "workload_id": workload.id,
        "workflow_name": workload.workflow_name, "pinion": workload.pinion,
        "queued_by": workload.queued_by, "created_at": workload.created_at.isoformat(),
        "workflow": sp.to_speckle(workload.workflow),
        "workload_json": json.dumps(doc, ensure_ascii=False),
        "@attachments": [sp.new_object(_attachment_members(a, blobs))
                         for a in workload.attachments],
    })


def _attachment_members(a: Attachment, blobs: dict[str, str]) -> dict[str, Any]:
    members = a.model_dump(exclude_none=True)
    if a.kind == "stored":
        members[BLOB_MEMBER] = blobs[a.sha256]
    return members


def attachment_blobs(children: list[dict[str, Any]]) -> dict[str, str]:
    """SHA-256 to blob object id of the stored attachments among ``children``."""
    return {str(c["sha256"]): str(c[BLOB_MEMBER]) for c in children
            if isinstance(c.get(BLOB_MEMBER), str) and isinstance(c.get("sha256"), str)}


def workload_from(s: State, root: dict[str, Any], children: list[dict[str, Any]],
                  lease: Lease | None) -> Workload:
    """The workload the log's state ``s`` and its stored objects describe (one shown as
    damaged, never run, when its object is not a workload's, or its ``not_before`` is not in
    the form it was signed in); its scheduling fields are the ``put`` event's."""
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
        attachments = [Attachment.model_validate(
            {k: child[k] for k in ATTACHMENT_FIELDS if child.get(k) is not None})
            for child in children]
        if doc.get("id") != s.id:
            raise ValueError(f"its object belongs to workload {doc.get('id')!r}")
        blobs = attachment_blobs(children)
        for a in attachments:
            if a.kind == "stored" and a.sha256 not in blobs:
                raise ValueError(f"attachment {a.path!r} names no stored object")
        workload = Workload(
            workflow=doc["workflow"], attachments=attachments, last_error=s.last_error,
            secret=s.secret if s.secret is not None else doc.get("secret", ""),
            after=s.after, priority=s.priority, notify=s.notify,
            not_before=None if s.not_before is None else stored_time(s.not_before), **common,
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
