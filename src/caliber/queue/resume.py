"""Which stored Results a run may reuse: only those a key holder vouched for.

A resumed run takes return values and ``g`` from earlier Results instead of computing them, so
those values choose what the run's later tasks do as much as its code does. Two signatures
made with the user's key vouch for them (:mod:`caliber.queue.secret` computes both):

- the **Results signature**, made by whoever stored the Results with the key (the pinion that
  ran the workload, ``Workflow.run``): it covers everything a resume reuses or checks;
- the **resume grant**, made by ``queue retry --resume`` (and again by ``queue resetsecret``):
  this workload may reuse these Results, as they were signed then.

The pinion checks both with its key before it hands the Results to a child
(:func:`resume_problem`); a workload whose reuse does not check is never run, as a run-secret
mismatch. ``workflow run --resume`` and ``queue retry --resume`` check the Results signature
(:func:`results_problem`) before anything is run or queued.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from caliber.errors import NotFoundError
from caliber.queue.secret import grant_ok, results_signed, sign_grant, sign_results

if TYPE_CHECKING:
    from caliber.queue.backend import QueueBackend
    from caliber.queue.lifecycle import ResumeGrant
    from caliber.queue.workload import Workload
    from caliber.results.model import Results

NO_SIGNATURE = "carry no signature (stored before Caliber signed Results, or by hand)"


def signed(results: Results, key: bytes) -> Results:
    """``results`` with their signature made with ``key`` (whoever stores them vouches)."""
    signature = sign_results(results.to_json_dict(), key)
    return results.model_copy(update={"signature": signature})


def results_problem(results: Results, key: bytes, whose: str = "your key") -> str | None:
    """Why ``results`` may not be reused with ``key`` (``results R carry no signature ...``),
    or None when their signature checks."""
    if results.signature is None:
        return f"results {results.id} {NO_SIGNATURE}"
    if not results_signed(results.to_json_dict(), key):
        return (f"results {results.id} are not signed with {whose} (signed with another key, "
                "or changed since)")
    return None


def grant(workload_id: str, results: Results, key: bytes) -> ResumeGrant:
    """The leave for workload ``workload_id`` to reuse ``results`` (whose signature must check:
    see :func:`results_problem`)."""
    from caliber.queue.lifecycle import ResumeGrant

    assert results.signature is not None
    return ResumeGrant(results.id, results.signature,
                       sign_grant(workload_id, results.id, results.signature, key))


def resume_problem(workload: Workload, results: Results, key: bytes) -> str | None:
    """Why a pinion with ``key`` must not let ``workload`` reuse ``results`` (read from the
    queue for its ``resume_from``), or None: the Results are the ones named, their signature
    checks, a grant made with the key lets this workload reuse them, and they are as they
    were when it was granted (the signature it covers is theirs). The grant is checked over
    the workload's stored fields, as ``queue list`` checks it (:func:`~caliber.queue.secret.
    resume_ok`): what the listing says of a grant is what the pinion decides."""
    if results.id != workload.resume_from:
        return (f"it resumes from results {workload.resume_from}, but the queue gave results "
                f"{results.id}")
    problem = results_problem(results, key, "this pinion's key")
    if problem is not None:
        return f"cannot resume: {problem}"
    if workload.resume_grant is None:
        return (f"its resume from results {results.id} was not granted with a key (queued "
                "again by hand, or by a Caliber from before resume grants)")
    if not grant_ok(key, workload_id=workload.id, results_id=results.id,
                    results_signature=workload.resume_signature, grant=workload.resume_grant):
        return "its resume grant does not match this pinion's key (tampered, or another key)"
    if workload.resume_signature != results.signature:
        return f"results {results.id} are not those its resume was granted for (replaced since)"
    return None


def resumable_results(backend: QueueBackend, id_or_prefix: str) -> Results:
    """The Results a resume names: by Results id, else by workload id (its last Results);
    either may be a unique prefix. NotFoundError when neither is found."""
    try:
        return backend.get_results(id_or_prefix)
    except NotFoundError as first:
        try:
            workload = backend.get(id_or_prefix)
        except NotFoundError:
            raise first from None
    if workload.results_id is None:
        raise NotFoundError(f"workload {workload.id} has no results to resume from (no run "
                            "of it finished)")
    return backend.get_results(workload.results_id)
