"""``caliber queue list`` on the local queue, fast: straight from the SQLite rows.

Listing is what people run most, so it skips building pydantic Workloads (and importing
pydantic at all): it reads the columns it shows, verifies each run-secret on the raw row with
:func:`caliber.queue.secret.verify_raw`, and returns the same summary dicts as
:meth:`caliber.queue.workload.Workload.summary` (a test holds the two equal). It reads one
page (``limit`` rows) and says whether there are more. The remote queue goes the normal way.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from caliber.errors import UsageError

# WorkloadStatus's values, without importing pydantic (a test keeps the two equal).
STATUSES = ("queued", "running", "completed", "failed", "cancelled")
DEFAULT_LIMIT = 100  # rows shown unless asked for more

_SELECT = (
    "SELECT id, pinion, workflow_name, status, created_at, attempts, results_id, secret, "
    "secret_mismatch, last_error, body FROM workloads"
)


def check_status(status: str | None) -> str | None:
    if status is None:
        return None
    if status.lower() not in STATUSES:
        raise UsageError(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
    return status.lower()


def list_summaries(
    *,
    pinion: str | None = None,
    status: str | None = None,
    limit: int | None = DEFAULT_LIMIT,
    offset: int = 0,
    project: str | None = None,
    model: str | None = None,
    local: bool = False,
) -> tuple[list[dict[str, Any]], bool]:
    """One page of workload summaries, oldest first, and whether more follow."""
    wanted = check_status(status)
    page = None if limit is None else limit + 1  # one more, to know whether more follow
    if not local:
        from caliber.settings import load_remote_settings

        if load_remote_settings(project=project, model=model) is not None:
            from caliber.queue.api import list_workloads

            items = list_workloads(pinion=pinion, status=wanted, limit=page, project=project,
                                   model=model, offset=offset)
            summaries = [item.summary() for item in items]
            return _cut(summaries, limit)
    import sqlite3

    from caliber.paths import database_path
    from caliber.queue.secret import load_key
    from caliber.queue.sqlite_schema import connect, queue_error

    given = {k: v for k, v in (("pinion", pinion), ("status", wanted)) if v is not None}
    where = ("WHERE " + " AND ".join(f"{k} = ?" for k in given)) if given else ""
    key = load_key()
    path = database_path()
    conn = connect(path)
    try:
        rows = conn.execute(
            f"{_SELECT} {where} ORDER BY created_at LIMIT ? OFFSET ?",
            (*given.values(), -1 if page is None else page, offset),
        ).fetchall()
    except sqlite3.Error as exc:
        raise queue_error(exc, "cannot read", path) from exc
    finally:
        conn.close()
    summaries = []
    for row in rows:
        try:
            summaries.append(_summary(key, row))
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            summaries.append(_damaged(row, exc))
    return _cut(summaries, limit)


def _damaged(row: tuple[Any, ...], exc: BaseException) -> dict[str, Any]:
    """A row that cannot be read, as :func:`caliber.queue.sqlite._damaged_workload` shows it."""
    wid, pinion_name, workflow, state, created_at = row[:5]
    why = " ".join(str(exc).split()) or type(exc).__name__
    why = why if len(why) <= 160 else why[:157] + "..."
    reason = f"this queue entry is damaged and never runs ({why}); reset it"
    state = state if state in STATUSES else "failed"
    try:
        created = dt.datetime.fromisoformat(created_at).astimezone(dt.UTC)
    except (TypeError, ValueError):
        created = dt.datetime.fromtimestamp(0, dt.UTC)
    return {
        "id": str(wid), "workflow": workflow if isinstance(workflow, str) else "?",
        "pinion": str(pinion_name), "status": state, "created_at": created.isoformat(),
        "attempts": 0, "results_id": None, "secret_ok": False,
        "completed": state == "completed", "queued_by": "", "last_error": reason,
        "secret_mismatch": None,
    }


def _summary(key: bytes, row: tuple[Any, ...]) -> dict[str, Any]:
    from caliber.queue.secret import verify_raw

    (wid, pinion_name, workflow, state, created_at, attempts, results_id, secret,
     mismatch, last_error, body) = row
    data = json.loads(body)
    secret_ok = verify_raw(
        key, workload_id=wid, workflow=data["workflow"],
        attachments=data.get("attachments", []), pinion=pinion_name,
        created_at=created_at, secret=secret,
    )
    return {
        "id": wid,
        "workflow": workflow,
        "pinion": pinion_name,
        "status": state,
        "created_at": dt.datetime.fromisoformat(created_at).isoformat(),
        "attempts": attempts,
        "results_id": results_id,
        "secret_ok": secret_ok,
        "completed": state == "completed",
        "queued_by": data.get("queued_by", ""),
        "last_error": last_error,
        "secret_mismatch": mismatch,
    }


def _cut(summaries: list[dict[str, Any]], limit: int | None) -> tuple[list[dict[str, Any]], bool]:
    if limit is not None and len(summaries) > limit:
        return summaries[:limit], True
    return summaries, False
