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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AwareDatetime, BaseModel, Field

from caliber.errors import AttachmentError
from caliber.queue.blobs import hash_file
from caliber.queue.lifecycle import ResumeGrant
from caliber.queue.secret import DamagedEntry, attachment_data, resume_ok, signed_time
from caliber.queue.status import WorkloadStatus
from caliber.queue.summary import StoredSummary, WorkloadSummary
from caliber.results.model import new_id, utcnow
from caliber.workflow.attachments import Reference, find_attachments

if TYPE_CHECKING:
    from caliber.queue.blobs import BlobStore

__all__ = [
    "Attachment", "HistoryEntry", "Lease", "Workload", "WorkloadStatus", "collect_attachments",
    "queued_by",
]


class Attachment(BaseModel):
    """One attached file: where it goes in the run folder, its SHA-256, size and mode.

    Three forms, each signed as it is (:func:`caliber.queue.secret.attachment_entry`):

    - stored (the usual one): the bytes are blob ``sha256`` in the queue's content store
      (:mod:`caliber.queue.blobs`), stored once however many workloads attach them; the pinion
      checks them against the hash as it writes them into the run folder;
    - by reference (``reference``, an absolute path on a drive the pinions share): never
      copied; the pinion checks the file's hash and size before the run;
    - inline (``encoding`` and ``content``): the bytes in the workload itself, as Caliber
      before the store kept them (the local queue's migration moves them into the store) and
      the remote queue until it has a store of its own. Inline attachments have no ``mode``.
    """

    path: str
    sha256: str
    size: int
    mode: int | None = Field(default=None, description=(
        "0o755 for an executable file, else 0o644 (its run folder copy is 0700 or 0600); "
        "None in the inline form of older queues"))
    reference: str | None = Field(default=None, description=(
        "an attachment by reference: the absolute path of the file on a shared drive"))
    encoding: Literal["text", "base64"] | None = None
    content: str | None = None

    @classmethod
    def from_bytes(cls, path: str, data: bytes) -> Attachment:
        """The inline form of ``data`` (text as text, anything else as base64)."""
        try:
            text = data.decode("utf-8")
            encoding: Literal["text", "base64"] = "text"
            content = text
        except UnicodeDecodeError:
            encoding, content = "base64", base64.b64encode(data).decode("ascii")
        return cls(path=path, encoding=encoding, content=content,
                   sha256=hashlib.sha256(data).hexdigest(), size=len(data))

    @property
    def inline(self) -> bool:
        return self.content is not None

    @property
    def executable(self) -> bool:
        return bool((self.mode or 0) & 0o111)

    @property
    def kind(self) -> str:
        """``stored``, ``reference`` or ``inline``."""
        return "reference" if self.reference is not None else (
            "inline" if self.inline else "stored")

    def data(self) -> bytes:
        """An inline attachment's bytes, as they were when queued (DamagedEntry when they
        cannot be decoded, or the attachment is not inline; a workload read back from a
        queue is checked for that, see :func:`caliber.queue.secret.problem`)."""
        return attachment_data(self.encoding or "", self.content)

    def content_matches(self) -> bool | None:
        """Whether an inline attachment's content can be decoded and still has the hash and
        size recorded; None for the other forms (their bytes are checked by the pinion, as
        it writes them into the run folder: nothing here reads them)."""
        if not self.inline:
            return None
        try:
            data = self.data()
        except DamagedEntry:
            return False
        return hashlib.sha256(data).hexdigest() == self.sha256 and len(data) == self.size

    def describe(self) -> dict[str, Any]:
        """What ``queue view --json`` shows of it (never its bytes)."""
        out: dict[str, Any] = {"path": self.path, "size": self.size, "sha256": self.sha256,
                               "mode": None if self.mode is None else f"{self.mode:o}",
                               "kind": self.kind}
        if self.reference is not None:
            out["reference"] = self.reference
        if self.inline:
            out["encoding"] = self.encoding
            out["content_ok"] = self.content_matches()
        return out


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
    after: list[str] = Field(default_factory=list, description=(
        "ids of the workloads it runs after (--after): it waits while one of them has not "
        "completed (signed)"))
    not_before: AwareDatetime | None = Field(default=None, description=(
        "no pinion claims it before this time (--not-before; signed)"))
    priority: int = Field(default=0, description=(
        "claim order among claimable workloads: higher first, then queue order (signed)"))
    notify: str | None = Field(default=None, description=(
        "an address its pinion posts its outcome to, besides the settings' (signed)"))
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
            resume_ok=resume_ok, after=tuple(self.after),
            not_before=None if self.not_before is None else self.not_before.isoformat(),
            priority=self.priority,
        )

    def stored_summary(self) -> StoredSummary:
        """What a backend that keeps whole workloads lists of it for ``caliber queue list``
        (the queue API checks it: :func:`caliber.queue.api.check_summary`)."""
        return StoredSummary(
            id=self.id, name=self.workflow_name, pinion=self.pinion, status=self.status.value,
            created_at=signed_time(self.created_at), attempts=self.attempts,
            results_id=self.results_id, secret=self.secret,
            secret_mismatch=self.secret_mismatch, last_error=self.last_error,
            workflow=self.workflow,
            attachments=[a.model_dump(exclude_none=True) for a in self.attachments],
            queued_by=self.queued_by, resume_from=self.resume_from,
            resume_signature=self.resume_signature, resume_grant=self.resume_grant,
            damaged=self.damaged, after=list(self.after),
            not_before=None if self.not_before is None else signed_time(self.not_before),
            priority=self.priority, notify=self.notify,
        )

    def summary(self, secret_ok: bool | None, resume_ok: bool | None = None) -> dict[str, Any]:
        """The stable keys of ``caliber queue list --json``."""
        return self.to_summary(secret_ok, resume_ok).to_dict()

    def detail(self, secret_ok: bool | None, resume_ok: bool | None = None) -> dict[str, Any]:
        """Everything about the workload (``caliber queue view --json``): the summary's keys
        and more; attachments without their content."""
        return {
            **self.summary(secret_ok, resume_ok),
            "attachments": [a.describe() for a in self.attachments],
            "lease": self.lease.model_dump(mode="json") if self.lease else None,
            "work_dir": self.work_dir,
            "notify": self.notify,
            "history": [h.model_dump(mode="json") for h in self.history],
            "workflow_document": self.workflow,
        }


def queued_by() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def collect_attachments(base_dir: Path, names: Sequence[str | Reference],
                        store: BlobStore | None = None) -> list[Attachment]:
    """Every attachment as it is on disk now: files and every file inside folders (paths
    checked, relative paths kept), each streamed through SHA-256 into ``store`` (in bounded
    memory; None: only hashed); references hashed where they are when no hash was given,
    never copied. AttachmentError before anything is stored when one cannot be attached."""
    found = find_attachments(base_dir, names)
    references = {id(r): reference_attachment(r) for r in found if isinstance(r, Reference)}
    out = []
    for item in found:  # every check done: now the files go into the store
        if isinstance(item, Reference):
            out.append(references[id(item)])
            continue
        rel, path, mode = item
        try:
            ref = store.put_blob(path) if store is not None else hash_file(path)
        except OSError as exc:
            raise AttachmentError(f"attachment {rel!r} cannot be read: "
                                  f"{exc.strerror or exc}") from exc
        out.append(Attachment(path=rel, sha256=ref.sha256, size=ref.size, mode=mode))
    return out


def reference_attachment(ref: Reference) -> Attachment:
    """The attachment of a :class:`Reference`: its hash as given, or read from the file now
    (bounded memory); AttachmentError when the file is missing or does not match."""
    sha256, size = ref.sha256, ref.size
    if sha256 is None or size is None:
        try:
            found = hash_file(Path(ref.path))
        except OSError as exc:
            raise AttachmentError(f"attachment by reference {ref.path!r} cannot be read: "
                                  f"{exc.strerror or exc}") from exc
        if sha256 is not None and sha256 != found.sha256:
            raise AttachmentError(f"attachment by reference {ref.path!r} does not have the "
                                  f"SHA-256 given (it has {found.sha256})")
        if size is not None and size != found.size:
            raise AttachmentError(f"attachment by reference {ref.path!r} is {found.size} "
                                  f"bytes, not the {size} given")
        sha256, size = found.sha256, found.size
    return Attachment(path=ref.name, sha256=sha256, size=size, mode=0o644,
                      reference=ref.path)
