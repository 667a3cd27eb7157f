"""The Workload: a queued workflow with its attached files, metadata and run-secret.

:class:`~caliber.queue.status.WorkloadStatus` lives in a module of its own (no pydantic) and
is re-exported here.
"""

from __future__ import annotations

import base64
import datetime as dt
import getpass
import hashlib
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, Field

from caliber.errors import AttachmentError
from caliber.queue.lifecycle import ResumeGrant
from caliber.queue.secret import DamagedEntry, attachment_data, resume_ok
from caliber.queue.status import WorkloadStatus
from caliber.queue.summary import WorkloadSummary
from caliber.results.model import new_id, utcnow
from caliber.workflow.attachments import check_relative_path, read_attachment

__all__ = [
    "Attachment", "HistoryEntry", "Lease", "Workload", "WorkloadStatus", "collect_attachments",
    "queued_by",
]


class Attachment(BaseModel):
    """One attached file: text as text, anything else as base64, with its SHA-256."""

    path: str
    encoding: Literal["text", "base64"]
    content: str
    sha256: str
    size: int

    @classmethod
    def from_bytes(cls, path: str, data: bytes) -> Attachment:
        try:
            text = data.decode("utf-8")
            encoding: Literal["text", "base64"] = "text"
            content = text
        except UnicodeDecodeError:
            encoding, content = "base64", base64.b64encode(data).decode("ascii")
        return cls(path=path, encoding=encoding, content=content,
                   sha256=hashlib.sha256(data).hexdigest(), size=len(data))

    def data(self) -> bytes:
        """The file's bytes, as they were when queued (DamagedEntry when they cannot be
        decoded; a workload read back from a queue is checked for that, see
        :func:`caliber.queue.secret.problem`)."""
        return attachment_data(self.encoding, self.content)

    def content_matches(self) -> bool:
        """Whether the content can be decoded and still has the hash and size recorded."""
        try:
            data = self.data()
        except DamagedEntry:
            return False
        return hashlib.sha256(data).hexdigest() == self.sha256 and len(data) == self.size


class HistoryEntry(BaseModel):
    """A status change: when, to what, and why."""

    at: dt.datetime
    status: WorkloadStatus
    message: str = ""


class Lease(BaseModel):
    """Which pinion holds a running workload, with which claim token, until when."""

    owner: str
    token: str
    expires_at: dt.datetime


class Workload(BaseModel):
    """A workflow wrapped for the queue."""

    id: str = Field(default_factory=new_id)
    pinion: str
    workflow: dict[str, Any] = Field(description="the workflow file's JSON document")
    attachments: list[Attachment] = Field(default_factory=list)
    created_at: AwareDatetime = Field(default_factory=utcnow)
    queued_by: str = ""
    status: WorkloadStatus = WorkloadStatus.QUEUED
    results_id: str | None = None
    attempts: int = 0
    last_error: str | None = None
    lease: Lease | None = None
    secret: str = ""
    secret_mismatch: str | None = Field(
        default=None, description="id of a key this workload was found not to be signed with"
    )
    work_dir: str | None = None
    resume_from: str | None = Field(
        default=None, description="id of the Results whose completed tasks its run reuses")
    resume_signature: str | None = Field(
        default=None, description="the signature those Results had when the reuse was granted")
    resume_grant: str | None = Field(
        default=None, description="HMAC with the key of whoever granted the reuse (retry "
        "--resume): over the workload id, resume_from and resume_signature")
    history: list[HistoryEntry] = Field(default_factory=list)
    progress: dict[str, Any] | None = Field(
        default=None, description="where its run is, as its pinion wrote with its last lease "
        "renewal (remote queue, while it runs; the local queue has its run folder's file)")
    damaged: str | None = Field(
        default=None, description="why the stored entry could not be read (it never runs)"
    )

    @property
    def workflow_name(self) -> str:
        return str(self.workflow.get("name", "?"))

    @property
    def completed(self) -> bool:
        """The completed flag of the mission page."""
        return self.status == WorkloadStatus.COMPLETED

    @property
    def grant(self) -> ResumeGrant | None:
        """The stored leave to reuse ``resume_from`` (None: it resumes nothing, or nobody
        granted it)."""
        if self.resume_from is None or self.resume_signature is None or self.resume_grant is None:
            return None
        return ResumeGrant(self.resume_from, self.resume_signature, self.resume_grant)

    def resume_ok(self, key: bytes, secret_ok: bool | None) -> bool | None:
        """What ``queue list`` says of its resume with ``key``
        (:func:`caliber.queue.secret.resume_ok`)."""
        return resume_ok(key, workload_id=self.id, resume_from=self.resume_from,
                         results_signature=self.resume_signature, grant=self.resume_grant,
                         secret_ok=bool(secret_ok), marks=self.secret_mismatch)

    def to_summary(self, secret_ok: bool | None,
                   resume_ok: bool | None = None) -> WorkloadSummary:
        """What ``caliber queue list`` shows of it."""
        return WorkloadSummary(
            id=self.id, workflow=self.workflow_name, pinion=self.pinion,
            status=self.status.value, created_at=self.created_at.isoformat(),
            attempts=self.attempts, results_id=self.results_id, secret_ok=secret_ok,
            queued_by=self.queued_by, last_error=self.last_error,
            secret_mismatch=self.secret_mismatch, resume_from=self.resume_from,
            resume_ok=resume_ok,
        )

    def summary(self, secret_ok: bool | None, resume_ok: bool | None = None) -> dict[str, Any]:
        """The stable keys of ``caliber queue list --json``."""
        return self.to_summary(secret_ok, resume_ok).to_dict()

    def detail(self, secret_ok: bool | None, resume_ok: bool | None = None) -> dict[str, Any]:
        """Everything about the workload (``caliber queue view --json``): the summary's keys
        and more; attachments without their content."""
        return {
            **self.summary(secret_ok, resume_ok),
            "attachments": [
                {"path": a.path, "size": a.size, "sha256": a.sha256, "encoding": a.encoding,
                 "content_ok": a.content_matches()}
                for a in self.attachments
            ],
            "lease": self.lease.model_dump(mode="json") if self.lease else None,
            "work_dir": self.work_dir,
            "history": [h.model_dump(mode="json") for h in self.history],
            "workflow_document": self.workflow,
        }


def queued_by() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def collect_attachments(base_dir: Path, names: list[str]) -> list[Attachment]:
    """Read every attachment from disk as it is now (paths checked, content hashed)."""
    seen: set[str] = set()
    out = []
    for name in names:
        rel = check_relative_path(name)
        if rel in seen:
            raise AttachmentError(f"attachment {name!r} is listed twice")
        seen.add(rel)
        out.append(Attachment.from_bytes(rel, read_attachment(base_dir, rel)))
    return out
