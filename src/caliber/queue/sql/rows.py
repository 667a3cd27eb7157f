"""Rows of the SQL queues as what the verbs return: Workloads, summaries, Results.

Plain columns in a fixed order (``COLUMNS``, ``SUMMARY_COLUMNS``, ``RESULTS_COLUMNS``), the
same in every dialect; a workload row read back ends with the ids it runs after, as a JSON
array that the dialect's expression gathers from ``workload_after`` (:func:`reading`). No
pydantic at import: :func:`summary` (``caliber queue list``) builds plain records (the queue
API checks their run-secrets); the models are imported by the functions that build them.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from caliber.queue.status import WorkloadStatus
from caliber.queue.summary import StoredSummary

if TYPE_CHECKING:
    from caliber.queue.lifecycle import ResumeGrant
    from caliber.queue.workload import Workload
    from caliber.results.model import Results

COLUMNS = (
    "id, pinion, workflow_name, status, created_at, attempts, lease_owner, lease_token, "
    "lease_expires, secret, secret_mismatch, results_id, last_error, work_dir, body, "
    "not_before, priority, notify"
)
"""The stored columns of a workload, as ``put`` writes them."""
SUMMARY_COLUMNS = (
    "id, pinion, workflow_name, status, created_at, attempts, results_id, secret, "
    "secret_mismatch, last_error, body, not_before, priority, notify"
)
ENDED = "('completed', 'failed', 'cancelled')"
"""The statuses a workload ends in, for ``status IN ENDED`` (the index
workload_history_ended holds the history rows of these, word for word)."""


def reading(columns: str, after_ids: str) -> str:
    """``columns`` and then ``after_ids``, the dialect's expression of the JSON array of ids
    the row's workload runs after (``workload_after`` in order; ``[]`` or NULL for none)."""
    return f"{columns}, {after_ids}"


def after_list(text: object) -> list[str]:
    """The ids a workload runs after, from the JSON array :func:`reading` gathers."""
    if text is None:
        return []
    found = json.loads(str(text))
    if not isinstance(found, list):
        raise ValueError("its list of workloads it runs after is not a list")
    return [str(a) for a in found]
RESULTS_COLUMNS = "id, workload_id, workflow, pinion, finished_at, body"


def grant_params(grant: ResumeGrant | None) -> tuple[str | None, str | None, str | None]:
    """A workload's resume and its grant as three values (all None: it resumes nothing)."""
    if grant is None:
        return None, None, None
    return grant.results_id, grant.results_signature, grant.grant


def from_unix(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def iso(moment: dt.datetime) -> str:
    """UTC, fixed width: sorts in time order as text."""
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


def start_time(text: object) -> dt.datetime | None:
    """A stored ``not_before`` as a time (ValueError when it is not one)."""
    if text is None:
        return None
    moment = dt.datetime.fromisoformat(str(text))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def body(workload: Workload) -> str:
    return workload.model_dump_json(
        include={"workflow", "attachments", "queued_by", "resume_from", "resume_signature",
                 "resume_grant"}, exclude_none=True)


def stored(workload: Workload) -> list[str]:
    """The blobs a workload's attachments are (not those by reference, nor inline ones)."""
    return [a.sha256 for a in workload.attachments if a.kind == "stored"]


def workload(row: tuple[Any, ...]) -> Workload:
    """The row as a Workload; a row that cannot be read (edited by hand, damaged) becomes a
    placeholder that says why, has no run-secret (so it never runs) and can still be reset."""
    try:
        return _parse_workload(row)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        return _damaged_workload(row, exc)


def _parse_workload(row: tuple[Any, ...]) -> Workload:
    from caliber.queue.secret import DamagedEntry, problem, stored_time
    from caliber.queue.workload import Attachment, Lease, Workload
    (wid, pinion, _name, status, created_at, attempts, owner, token, expires, secret,
     mismatch, results_id, last_error, work_dir, text, not_before, priority, notify,
     after) = row
    data = json.loads(text)
    lease = None
    if owner is not None and token is not None and expires is not None:
        lease = Lease(owner=owner, token=token, expires_at=from_unix(expires))
    made = Workload(
        id=wid, pinion=pinion, status=WorkloadStatus(status),
        created_at=stored_time(created_at), attempts=attempts, lease=lease,
        secret=secret, secret_mismatch=mismatch, results_id=results_id, last_error=last_error,
        work_dir=work_dir, workflow=data["workflow"],
        attachments=[Attachment.model_validate(a) for a in data.get("attachments", [])],
        queued_by=data.get("queued_by", ""), resume_from=data.get("resume_from"),
        resume_signature=data.get("resume_signature"), resume_grant=data.get("resume_grant"),
        after=after_list(after), priority=priority, notify=notify,
        not_before=None if not_before is None else stored_time(not_before),
    )
    why = problem(made)  # what verify_raw finds damaged when queue list shows it
    if why is not None:
        raise DamagedEntry(why)
    return made


def why(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _damaged(row: tuple[Any, ...], exc: BaseException) -> dict[str, Any]:
    """What is left of a row that cannot be read (its first five columns are
    id, pinion, workflow_name, status, created_at), and why it never runs."""
    wid, pinion, name, status, created_at = row[:5]
    reason = f"this queue entry is damaged and never runs ({why(exc)}); reset it"
    try:
        state = WorkloadStatus(status)
    except ValueError:
        state = WorkloadStatus.FAILED
    try:
        created = dt.datetime.fromisoformat(created_at).astimezone(dt.UTC)
    except (TypeError, ValueError):
        created = dt.datetime.fromtimestamp(0, dt.UTC)
    return {"id": str(wid), "pinion": str(pinion), "status": state, "created_at": created,
            "workflow": name if isinstance(name, str) else "?", "reason": reason}


def _damaged_workload(row: tuple[Any, ...], exc: BaseException) -> Workload:
    from caliber.queue.workload import Workload

    d = _damaged(row, exc)
    return Workload(
        id=d["id"], pinion=d["pinion"], status=d["status"], created_at=d["created_at"],
        workflow={"name": d["workflow"]}, secret="", last_error=d["reason"],
        damaged=d["reason"],
    )


def summary(row: tuple[Any, ...]) -> StoredSummary:
    """A workload row (``SUMMARY_COLUMNS``) as stored, for the queue API to check; a row
    whose body cannot be read as a damaged one (as :func:`workload` shows it)."""
    (wid, pinion, name, state, created_at, attempts, results_id, secret, mismatch,
     last_error, text, not_before, priority, notify, after) = row
    stored = StoredSummary(
        id=wid, name=name, pinion=pinion, status=state, created_at=created_at,
        attempts=attempts, results_id=results_id, secret=secret, secret_mismatch=mismatch,
        last_error=last_error, not_before=not_before, priority=priority, notify=notify)
    try:
        data = json.loads(text)
        return replace(stored, workflow=data["workflow"], after=after_list(after),
                       attachments=data.get("attachments", []),
                       queued_by=data.get("queued_by", ""), resume_from=data.get("resume_from"),
                       resume_signature=data.get("resume_signature"),
                       resume_grant=data.get("resume_grant"))
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        return stored.as_damaged(_damaged(row, exc)["reason"])


def results(row: tuple[Any, ...]) -> Results:
    """A results row as Results; a damaged one as failed Results that say so."""
    from caliber.results.model import ErrorInfo, Results, RunStatus
    rid, workload_id, workflow, pinion, finished_at, text = row
    try:
        return Results.model_validate_json(text)
    except (ValueError, TypeError, RecursionError) as exc:
        try:
            finished = dt.datetime.fromisoformat(finished_at)
        except (TypeError, ValueError):
            finished = dt.datetime.fromtimestamp(0, dt.UTC)
        return Results(
            id=str(rid), workload_id=_text(workload_id), workflow=_text(workflow) or "?",
            pinion=_text(pinion), status=RunStatus.FAILED, started_at=finished,
            finished_at=finished,
            error=ErrorInfo(type="DamagedResults",
                            message=f"these stored results are damaged ({why(exc)})"),
        )


def results_row(made: Results) -> tuple[Any, ...]:
    """Results as the values of ``INSERT INTO results (id, workload_id, workflow, pinion,
    status, finished_at, body)``."""
    return (
        made.id, made.workload_id, made.workflow, made.pinion, made.status.value,
        made.finished_at.isoformat(), made.model_dump_json(by_alias=True),
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
