"""A pinion's part in upstream results (``{"$results": ...}``, the rules in
:mod:`caliber.workflow.upstream`): before a workload's child starts, each upstream value its
tasks take is read from the queue and checked, and the stored arrays among them are written
into its run folder.

:func:`resolve` reads the workloads it runs after (its ``after``, signed with its run-secret,
which the pinion has checked), picks the one each reference names, and takes the task's value
from that upstream's last Results once their signature checks with the pinion's key and they
are that upstream's own (its id and workflow, both signed): Results decide what runs here as
much as the workflow does. Anything else is an UpstreamError of one line, and the workload
fails without running. :func:`fetch_upstream` writes the big arrays and frames those values
refer to into the run's values folder, their hashes checked (as a resumed run's,
:func:`caliber.pinion.values.fetch_resumed`); the child reads them from there. :func:`taken`
is what the run's Results record of them (``Results.upstream``): the pinion writes it into
the Results it signs, however the run ended.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caliber.errors import NotFoundError
from caliber.queue.blobs import BlobStore
from caliber.queue.status import WorkloadStatus
from caliber.results.arrays import VALUES_DIR, fetch_values, value_refs
from caliber.workflow.upstream import (
    Upstream,
    UpstreamError,
    UpstreamResult,
    UpstreamValue,
    choose,
    refs_of,
    sources,
    task_value,
)

if TYPE_CHECKING:
    from caliber.queue.backend import QueueBackend
    from caliber.queue.workload import Workload
    from caliber.results.model import UpstreamSource


def resolve(backend: QueueBackend, workload: Workload, key: bytes) -> list[dict[str, Any]]:
    """The upstream values of ``workload`` as its child takes them (``job["upstream"]``:
    per reference its fields, the value as stored, the Results, workload and workflow it
    came from and the Results' signature as checked); empty when it takes none.
    UpstreamError when one cannot be given (see the module)."""
    refs = refs_of(workload.workflow)
    if not refs:
        return []
    upstreams: dict[str, Workload] = {}
    for upstream_id in workload.after:
        try:
            upstreams[upstream_id] = backend.get(upstream_id)
        except NotFoundError:
            raise UpstreamError(f"upstream workload {upstream_id} is no longer in the queue "
                                "(reset or pruned)") from None
    found = [Upstream(w.id, w.workflow_name) for w in upstreams.values()]
    results: dict[str, dict[str, Any]] = {}
    entries = []
    for ref in refs:
        chosen = choose(ref, found)
        if chosen.id not in results:
            results[chosen.id] = _checked_results(backend, upstreams[chosen.id], key)
        data = results[chosen.id]
        entries.append({"ref": ref.fields(), "stored": task_value(data, ref),
                        "results": data["id"], "workload": chosen.id,
                        "workflow": chosen.workflow, "signature": data["signature"]})
    return entries


def taken(entries: list[dict[str, Any]]) -> list[UpstreamSource]:
    """The upstream Results a run was given its values from (the entries :func:`resolve`
    made), as its Results record them: the pinion writes what it resolved and checked into
    the Results it signs, whatever the child said (:func:`caliber.workflow.upstream.
    sources`)."""
    from caliber.results.model import UpstreamSource

    given = {UpstreamResult(**entry["ref"]): UpstreamValue(
        entry["stored"], entry["stored"], entry["results"], entry["workload"],
        entry["workflow"], entry["signature"]) for entry in entries}
    return [UpstreamSource(**record) for record in sources(given)]


def _checked_results(backend: QueueBackend, upstream: Workload, key: bytes) -> dict[str, Any]:
    """The last Results of ``upstream`` (JSON form), when it completed and they are its own,
    signed with ``key``."""
    from caliber.queue.resume import results_problem

    name = f"upstream workload {upstream.id} ({upstream.workflow_name})"
    if upstream.status != WorkloadStatus.COMPLETED:
        raise UpstreamError(f"{name} is {upstream.status.value}, not completed")
    if upstream.results_id is None:
        raise UpstreamError(f"{name} has no Results")
    try:
        stored = backend.get_results(upstream.results_id)
    except NotFoundError:
        raise UpstreamError(f"{name}: its results {upstream.results_id} are not in the "
                            "queue (pruned?)") from None
    problem = results_problem(stored, key, "this pinion's key")
    if problem is not None:
        raise UpstreamError(f"{name}: {problem}; refused, as a tampered workload is")
    data = stored.to_json_dict()
    if data["workload_id"] != upstream.id or data["workflow"] != upstream.workflow_name:
        raise UpstreamError(f"{name}: its results {stored.id} are those of workload "
                            f"{data['workload_id']} ({data['workflow']}); refused, as a "
                            "tampered workload is")
    return data


def fetch_upstream(backend: object, work_dir: Path, entries: list[dict[str, Any]], *,
                   between: Callable[[], object] | None = None) -> None:
    """Write the stored arrays the upstream values refer to into the run's values folder
    (BlobMismatchError or NotFoundError when one cannot be had as it was signed);
    ``between`` is called before every chunk read (the pinion renews its lease there)."""
    refs = {ref["sha256"]: ref for entry in entries for ref in value_refs(entry["stored"])}
    if refs and isinstance(backend, BlobStore):
        fetch_values(backend, work_dir / VALUES_DIR, refs, between=between)
