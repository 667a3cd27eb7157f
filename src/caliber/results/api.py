"""``caliber.get_results()``: fetch stored Results from the local store or the remote queue."""

from __future__ import annotations

from caliber.errors import NotFoundError
from caliber.queue.select import open_backend
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
) -> Results:
    """Results by workload id, by results id, or the latest for a workflow name (optionally
    per pinion); with no argument, the latest results of all. Ids may be unique prefixes.

    Raises NotFoundError when there are none (yet), for example while the workload still waits.
    """
    backend = open_backend(project=project, model=model, local=local)
    try:
        if results_id is not None:
            return backend.get_results(results_id)
        if workload_id is not None:
            workload = backend.get(workload_id)
            found = backend.find_results(workload_id=workload.id)
            if found is None:
                raise NotFoundError(
                    f"workload {workload.id} has no results yet (status {workload.status.value})"
                )
            return found
        found = backend.find_results(workflow=workflow, pinion=pinion)
        if found is None:
            what = f" for workflow {workflow!r}" if workflow else ""
            what += f" from pinion {pinion!r}" if pinion else ""
            raise NotFoundError(f"no results stored{what}")
        return found
    finally:
        backend.close()
