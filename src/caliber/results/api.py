"""``caliber.get_results()``: fetch stored Results from the results store of a queue (the
local one, or the remote queue), through :class:`caliber.results.store.ResultsStore`."""

from __future__ import annotations

from contextlib import closing
from typing import TYPE_CHECKING

from caliber.errors import NotFoundError

if TYPE_CHECKING:
    from caliber.queue.target import QueueTarget
    from caliber.results.model import Results


def get_results(
    workload_id: str | None = None,
    *,
    results_id: str | None = None,
    workflow: str | None = None,
    pinion: str | None = None,
    project: str | None = None,
    model: str | None = None,
    local: bool = False,
    target: QueueTarget | None = None,
) -> Results:
    """Results by workload id, by results id, or the latest for a workflow name (optionally
    per pinion); with no argument, the latest results of all. Ids may be unique prefixes.

    The store is that of ``target``, or, without it, of the queue ``project``/``model``/
    ``local`` and the settings select (:func:`caliber.queue.target.resolve_target`).

    Raises NotFoundError when there are none (yet), for example while the workload still waits.
    """
    from caliber.queue.registry import open_backend, open_results
    from caliber.queue.target import resolve_target

    if target is None:
        target = resolve_target(project=project, model=model, local=local)
    if workload_id is not None and results_id is None:
        with closing(open_backend(target)) as backend:  # the queue knows the workload's id
            workload = backend.get(workload_id)
            found = backend.find_results(workload_id=workload.id)
        if found is None:
            raise NotFoundError(
                f"workload {workload.id} has no results yet (status {workload.status.value})"
            )
        return found
    with closing(open_results(target)) as store:
        if results_id is not None:
            return store.get_results(results_id)
        found = store.find_results(workflow=workflow, pinion=pinion)
    if found is None:
        what = f" for workflow {workflow!r}" if workflow else ""
        what += f" from pinion {pinion!r}" if pinion else ""
        raise NotFoundError(f"no results stored{what}")
    return found


def list_results(
    target: QueueTarget,
    *,
    workflow: str | None = None,
    pinion: str | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[Results]:
    """Stored results, newest first (``caliber results list``)."""
    from caliber.queue.registry import open_results

    with closing(open_results(target)) as store:
        return store.list_results(workflow=workflow, pinion=pinion, limit=limit, offset=offset)


def save_results(results: Results, target: QueueTarget) -> None:
    """Keep ``results`` of a run made here (``workflow run``) in ``target``'s results store."""
    from caliber.queue.registry import open_results

    with closing(open_results(target)) as store:
        store.save_results(results)
