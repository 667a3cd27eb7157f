"""What the dashboard shows, as plain JSON-able dicts: the queue, one workload (with the chain
it is in), its output, one Results with its plots, the pinions, the workloads that ended last
(the events the notifications send). Each function takes the dashboard's
:class:`~caliber.queue.target.QueueTarget` and goes through the same library API the command
line uses (:mod:`caliber.queue.api`, :mod:`caliber.pinion.follow`, :mod:`caliber.results.api`),
so every backend works and the run-secrets are checked with this user's key. No web framework
here: :mod:`caliber.dashboard.app` serves these."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caliber.dashboard import charts

if TYPE_CHECKING:
    from caliber.queue.target import QueueTarget
    from caliber.results.arrays import BlobValues
    from caliber.results.model import Results

PAGE = 100
"""Workloads per page of the queue table."""
VALUE_TEXT = 2000
"""Characters of a value shown as text before it is cut (plots show the numbers)."""
LOG_CHUNK = 256 << 10
"""Bytes of output sent per request while following a log."""
EVENTS = 50
"""Ended workloads the events page shows at most (the panel on the queue page fewer)."""
CANCELLABLE = ("queued", "waiting", "running")
RETRIABLE = ("failed", "cancelled")


def _iso(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(dt.UTC).isoformat()


def queue_page(target: QueueTarget, *, status: str | None = None, pinion: str | None = None,
               workflow: str | None = None, offset: int = 0, limit: int = PAGE
               ) -> dict[str, Any]:
    """One page of the queue table (oldest first), the counts by status, whether more follow.
    Each row has what ``queue list --json`` gives and when its last run started and ended."""
    from caliber.queue.api import list_page, list_workloads

    counts = list_page(target, pinion=pinion, status=status, workflow=workflow, limit=0).counts
    checked = list_workloads(target, pinion=pinion, status=status, workflow=workflow,
                             limit=limit + 1, offset=offset)
    more = len(checked) > limit
    checked = checked[:limit]
    now = dt.datetime.now(dt.UTC)
    items = []
    for item in checked:
        row = item.summary()
        started, ended = _run_times(item.workload)
        row["started_at"], row["ended_at"] = _iso(started), _iso(ended)
        row["duration"] = (None if started is None else
                           ((ended or now) - started).total_seconds())
        items.append(row)
    return {"items": items, "more": more, "offset": offset, "counts": counts,
            "location": target.location}


def _run_times(workload: Any) -> tuple[dt.datetime | None, dt.datetime | None]:
    """When the workload's last run started (claimed) and ended (None: not yet)."""
    started = ended = None
    for entry in workload.history:
        value = entry.status.value if entry.status is not None else None
        if value == "running":
            started, ended = entry.at, None
        elif value in ("completed", "failed", "cancelled") and started is not None:
            ended = entry.at
    return started, ended


def _statuses(results: Results | None, progress: dict[str, Any] | None
              ) -> dict[tuple[str, int | None], str]:
    found: dict[tuple[str, int | None], str] = {}
    if results is not None:
        for t in results.tasks:
            found[t.name, t.branch] = t.status.value
    if progress and progress.get("name"):
        found[progress["name"], progress.get("branch")] = "running"
    return found


def workload(target: QueueTarget, workload_id: str) -> dict[str, Any]:
    """One workload: its detail (``queue view --json``), progress, history and what can be
    done with it."""
    from caliber.pinion.follow import look
    from caliber.queue.api import upstreams

    found = look(workload_id, target)
    detail = found.detail()
    w = found.item.workload
    detail.pop("workflow_document", None)
    detail["actions"] = {
        "cancel": w.status.value in CANCELLABLE,
        "cancel_now": w.status.value == "running",
        "retry": w.status.value in RETRIABLE,
        "retry_resume": w.status.value in RETRIABLE and w.results_id is not None,
    }
    detail["waits_for"] = [u.to_dict() for u in upstreams(w.after, target)] if w.after else []
    detail["waited_by"] = _downstreams(target, w.id)
    return detail


def _downstreams(target: QueueTarget, workload_id: str) -> list[dict[str, Any]]:
    """The waiting workloads that run after ``workload_id``, down the chain (what a cancel or
    reset of it cancels too), nearest first (:func:`caliber.queue.api.waiting_after`)."""
    from caliber.queue.api import waiting_after

    return [d.to_dict() for d in waiting_after(workload_id, target)]


def events(target: QueueTarget, limit: int = EVENTS) -> list[dict[str, Any]]:
    """The workloads that ended last, newest first (at most ``limit``, at most
    :data:`EVENTS`), each as the event its pinion notifies
    (:func:`caliber.pinion.notify.ended_event`: the same text and fields).

    Bounded whatever the queue's size: the queue's own answer
    (:meth:`~caliber.queue.backend.QueueBackend.list_ended`), by when each ended however long
    ago it was queued, and no Results read."""
    from caliber.pinion.notify import ended_event
    from caliber.queue.api import opened

    limit = max(0, min(limit, EVENTS))
    if not limit:
        return []
    with opened(target) as backend:
        found = backend.list_ended(limit)
    return [body for w in found if (body := ended_event(w)) is not None]


def diagram(target: QueueTarget, workload_id: str) -> str:
    """The workload's workflow as SVG, its tasks coloured by the run's statuses."""
    from caliber.dashboard.diagram import workflow_svg
    from caliber.errors import NotFoundError
    from caliber.pinion.follow import look
    from caliber.results.api import get_results
    from caliber.workflow.fileformat import from_document

    found = look(workload_id, target)
    w = found.item.workload
    document = {**w.workflow, "attachments": []}  # drawn from the document alone
    workflow = from_document(document, Path.cwd(), source=f"workload {w.id}")
    results = None
    if w.results_id is not None:
        try:
            results = get_results(results_id=w.results_id, target=target)
        except NotFoundError:
            results = None
    progress = found.progress.to_dict(dt.datetime.now(dt.UTC)) if found.progress else None
    return workflow_svg(workflow.process, _statuses(results, progress))


def timeline(target: QueueTarget, workload_id: str) -> str | None:
    """The tasks of the workload's last Results on a time axis (SVG), or None (no Results)."""
    from caliber.dashboard.diagram import timeline_svg
    from caliber.queue.api import view_workload
    from caliber.results.api import get_results

    results_id = view_workload(workload_id, target).workload.results_id
    if results_id is None:
        return None
    found = get_results(results_id=results_id, target=target)
    start = found.started_at
    rows = [(t.name + ("" if t.branch is None else f" [{t.branch}]"),
             (t.started_at - start).total_seconds(), t.duration or 0.0, t.status.value)
            for t in found.tasks if t.started_at is not None]
    return timeline_svg(rows, (found.finished_at - start).total_seconds())


def output(target: QueueTarget, workload_id: str, offset: int = 0) -> dict[str, Any]:
    """The workload's output from byte ``offset`` on (at most :data:`LOG_CHUNK` bytes):
    ``output.log`` of its run folder on this machine as it grows, else the output kept with
    its Results. ``offset`` in the answer is where to ask next; ``reset`` says the log was
    cut or replaced (start again from the text given)."""
    from caliber.pinion.follow import OUTPUT_FILE, look

    found = look(workload_id, target)
    running = found.status in CANCELLABLE
    path = found.work_dir / OUTPUT_FILE if found.work_dir is not None else None
    if path is not None and path.is_file():
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            reset = offset > size
            start = 0 if reset else offset
            f.seek(start)
            chunk = f.read(LOG_CHUNK)
        return {"text": chunk.decode("utf-8", errors="replace"), "offset": start + len(chunk),
                "reset": reset, "done": not running and start + len(chunk) >= size}
    kept = ""
    if not running and found.item.workload.results_id is not None:
        from caliber.results.api import get_results

        kept = get_results(results_id=found.item.workload.results_id, target=target).output or ""
    data = kept.encode("utf-8", errors="surrogateescape")
    return {"text": data[offset:].decode("utf-8", errors="replace") if offset <= len(data)
            else kept, "offset": len(data), "reset": offset > len(data), "done": not running}


def _text(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= VALUE_TEXT else text[:VALUE_TEXT - 1] + "\u2026"


def _shown(results: Results, source: BlobValues, stored: Any, what: str
           ) -> tuple[str, str | None, list[Any]]:
    """A value as text (stored arrays as their summary, read from ``source`` slice by slice),
    the kind of plot it makes, and records for a table (a list of dicts), if it is one."""
    from caliber.results.arrays import (
        NDARRAY,
        REF_KEY,
        ArrayReader,
        describe,
        describe_ref,
        describe_slices,
        restore,
        value_refs,
    )

    kind = charts.kind_of(stored)
    if next(value_refs(stored), None) is None:
        records = stored[:200] if (isinstance(stored, list) and stored
                                   and all(isinstance(r, dict) for r in stored)) else []
        return _text(stored), kind, records
    kinds: list[str | None] = []

    def summary(ref: dict[str, Any]) -> str:
        if ref[REF_KEY] == NDARRAY:  # slice by slice, never whole
            with source.opened(ref, what) as (stream, check):
                reader = ArrayReader(stream, ref, what, check=check)
                kinds.append(charts.kind_of_array(reader.shape, reader.dtype))
                return describe_slices(reader)
        value = results.value_of(ref, what, keep=False)
        kinds.append(charts.kind_of(value))
        return describe_ref(value) if value is ref else describe(value)

    shown = restore(stored, summary)
    whole = isinstance(stored, dict) and len(kinds) == 1 and "$caliber" in stored
    return (shown if isinstance(shown, str) else _text(shown)), (kinds[0] if whole else None), []


def results(target: QueueTarget, results_id: str) -> dict[str, Any]:
    """One Results: every task's status, time and value (as text, with the kind of plot it
    makes), ``g``, the error, the result files, the link to its Speckle model, the upstream
    Results its values came from, and why its signature does not check with your key (if it
    does not)."""
    from caliber.results.api import get_results, queue_values, signature_problem

    found = get_results(results_id=results_id, target=target)
    source = queue_values(target, found.id)
    tasks = []
    for index, t in enumerate(found.tasks):
        text, kind, records = ("", None, []) if t.status.value != "completed" else _shown(
            found, source, t.return_, f"the value of task {t.name!r}")
        tasks.append({
            "index": index, "name": t.name, "branch": t.branch, "status": t.status.value,
            "duration": t.duration, "value": text, "chart": kind, "records": records,
            "error": None if t.error is None else {
                "type": t.error.type, "message": t.error.message,
                "traceback": t.error.traceback},
            "reused_from": t.reused_from,
        })
    g = []
    for key, stored in found.g_json.items():
        text, kind, records = _shown(found, source, stored, f"g[{key!r}]")
        g.append({"key": key, "value": text, "chart": kind, "records": records})
    return {
        "id": found.id, "workload_id": found.workload_id, "workflow": found.workflow,
        "pinion": found.pinion, "status": found.status.value,
        "started_at": _iso(found.started_at), "finished_at": _iso(found.finished_at),
        "tasks": tasks, "g": g,
        "error": None if found.error is None else found.error.summary(),
        "files": [{"path": f.path, "size": f.size} for f in found.files],
        "speckle_url": _speckle_url(target, found),
        "upstream": [{"workload": u.workload, "workflow": u.workflow, "results": u.results,
                      "tasks": u.tasks} for u in found.upstream],
        "unsigned": signature_problem(found),
    }


def _speckle_url(target: QueueTarget, found: Results) -> str | None:
    """The web page of the Speckle model that holds these Results (remote queue only)."""
    if target.kind != "speckle":
        return None
    settings = target.settings
    host = str(getattr(settings, "host", "")).rstrip("/")
    project = getattr(settings, "project", None)
    model = getattr(settings, "model", None)
    if not host or not project:
        return None
    from urllib.parse import quote

    return f"{host}/projects/{quote(str(project))}/models/" + quote(
        f"{model}/results/{found.workflow}", safe="")


def chart(target: QueueTarget, results_id: str, which: str) -> str | None:
    """The plot of one value: ``task:<index>`` (a task's return) or ``g:<name>``."""
    from caliber.results.api import get_results

    found = get_results(results_id=results_id, target=target)
    kind, _, key = which.partition(":")
    if kind == "task" and key.isdigit() and int(key) < len(found.tasks):
        task = found.tasks[int(key)]
        stored, title = task.return_, task.name + (
            f" (branch {task.branch})" if task.branch is not None else "")
    elif kind == "g" and key in found.g_json:
        stored, title = found.g_json[key], f"g[{key!r}]"
    else:
        return None
    if _plottable_ref(stored):  # read slice by slice, never whole (memory bounded by a slice)
        from caliber.results.api import queue_values
        from caliber.results.arrays import ArrayReader

        with queue_values(target, found.id).opened(stored, title) as (stream, check):
            return charts.svg_of_slices(ArrayReader(stream, stored, title, check=check), title)
    return charts.svg(found.value_of(stored, title, keep=False), title)


def _plottable_ref(stored: Any) -> bool:
    """Whether ``stored`` is a reference to a stored array that makes a plot (of numbers,
    of 1 or 2 dimensions)."""
    from caliber.results.arrays import NDARRAY, REF_KEY, is_ref

    if not (is_ref(stored) and stored[REF_KEY] == NDARRAY
            and isinstance(stored.get("dtype"), str) and isinstance(stored.get("shape"), list)):
        return False
    import numpy as np

    try:
        dtype = np.dtype(stored["dtype"])
    except (TypeError, ValueError):
        return False
    return charts.kind_of_array(stored["shape"], dtype) is not None


def pinions(target: QueueTarget) -> list[dict[str, Any]]:
    """The pinions seen running something: each lease's owner, its workload, and whether the
    lease is still alive (a pinion renews it while it runs)."""
    from caliber.queue.api import list_workloads

    now = dt.datetime.now(dt.UTC)
    seen = []
    for item in list_workloads(target, status="running"):
        w = item.workload
        lease = w.lease
        seen.append({
            "pinion": w.pinion, "owner": lease.owner if lease else None,
            "workload": w.id, "workflow": w.workflow_name,
            "expires_at": _iso(lease.expires_at) if lease else None,
            "alive": bool(lease and lease.expires_at > now),
        })
    return seen


def act(target: QueueTarget, workload_id: str, action: str) -> dict[str, Any]:
    """Do what a key holder does in the CLI: ``cancel``, ``cancel_now``, ``retry`` or
    ``retry_resume``; the workload's summary after it."""
    from caliber.errors import UsageError
    from caliber.queue.api import cancel, retry

    if action in ("cancel", "cancel_now"):
        done = cancel(workload_id, target, now=action == "cancel_now")
    elif action in ("retry", "retry_resume"):
        done = retry(workload_id, target, resume=action == "retry_resume")
    else:
        raise UsageError(f"unknown action {action!r}")
    return done.summary()
