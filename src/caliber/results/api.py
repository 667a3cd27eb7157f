"""``caliber.get_results()``: fetch stored Results from the results store of a queue (the
local one, or the remote queue), through :class:`caliber.results.store.ResultsStore`.

The Results come back reading their big arrays and frames from that queue's store when asked
for them (:mod:`caliber.results.arrays`), not before."""

from __future__ import annotations

from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from caliber.errors import CaliberError, NotFoundError

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from caliber.queue.target import QueueTarget
    from caliber.results.arrays import BlobValues, ValueWriter
    from caliber.results.files import WrittenBack
    from caliber.results.model import Results


def get_results(
    workload_id: str | None = None,
    *,
    results_id: str | None = None,
    workflow: str | None = None,
    pinion: str | None = None,
    queue: str | None = None,
    project: str | None = None,
    model: str | None = None,
    local: bool = False,
    target: QueueTarget | None = None,
) -> Results:
    """Results by workload id, by results id, or the latest for a workflow name (optionally
    per pinion); with no argument, the latest results of all. Ids may be unique prefixes.

    The store is that of ``target``, or, without it, of the queue ``queue`` (a URL) or
    ``project``/``model``/``local`` and the settings select
    (:func:`caliber.queue.target.resolve_target`).

    Raises NotFoundError when there are none (yet), for example while the workload still waits.
    A value that was a big numpy array (or pandas frame) is read back as one when it is asked
    for (``results["solve"]``): from the queue's store, its SHA-256 checked.
    """
    from caliber.queue.target import target_of

    target = target_of(target, queue=queue, project=project, model=model, local=local)
    found = _find(target, workload_id, results_id, workflow, pinion)
    found._target = target  # where its files are
    return found.reading_values(queue_values(target, found.id))


def signature_problem(results: Results) -> str | None:
    """Why ``results`` are not vouched for by your key (``results R are not signed with your
    key ...``, ``... carry no signature``), or None when their signature checks: what
    ``caliber results show`` and the dashboard say of them, their record of the upstream
    Results their values came from included. Never raises (a key that cannot be read is
    said so)."""
    from caliber.errors import SecretKeyError
    from caliber.queue.resume import results_problem
    from caliber.queue.secret import load_key

    try:
        key = load_key()
    except SecretKeyError as exc:
        return f"their signature was not checked: {exc}"
    return results_problem(results, key)


def queue_values(target: QueueTarget, results_id: str) -> BlobValues:
    """Where the stored arrays of Results ``results_id`` of ``target`` are read from: its
    store, opened for each value read."""
    from caliber.queue.registry import open_results
    from caliber.results.arrays import BlobValues

    def opened() -> closing[Any]:
        return closing(open_results(target))

    return BlobValues(opened, results_id)


def _find(target: QueueTarget, workload_id: str | None, results_id: str | None,
          workflow: str | None, pinion: str | None) -> Results:
    from caliber.queue.registry import open_backend, open_results

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
        found = store.list_results(workflow=workflow, pinion=pinion, limit=limit, offset=offset)
    for results in found:
        results._target = target
    return found


def _put_values(store: Any, results: Results, values: ValueWriter | None) -> None:
    """The big arrays ``values`` wrote, put in ``store``'s content store (QueueError)."""
    from caliber.results.arrays import put_values

    if values is not None and values.folder is not None and values.written:
        problem = put_values(store, values.folder, values.written)
        if problem is not None:
            from caliber.errors import QueueError

            raise QueueError(f"cannot keep the results of {results.workflow!r}: {problem}")


def keep_run(results: Results, target: QueueTarget, *, key: bytes, work_dir: Path,
             outputs: Sequence[str], values: ValueWriter | None = None,
             written_back: Mapping[str, WrittenBack] | None = None) -> Results:
    """Keep the Results of a run made here (``workflow run``) in ``target``'s store: the big
    arrays ``values`` wrote first, in its content store (their files are removed then), and
    the files ``outputs`` match in ``work_dir`` (:mod:`caliber.results.files`; those
    ``written_back`` from the Results it resumed and still as written, by reference); signed
    with ``key``; returns them as kept, reading those arrays from there."""
    from caliber.queue.registry import open_results
    from caliber.queue.resume import signed

    with closing(open_results(target)) as store:
        _put_values(store, results, values)
        if outputs:
            from caliber.queue.blobs import BlobStore
            from caliber.results.files import keep_outputs, output_limits

            if written_back and results.resumed_from and isinstance(store, BlobStore) and not all(
                    store.has_blob(b.record["sha256"]) for b in written_back.values()):
                with suppress(CaliberError):  # a remote store learns where they are so
                    store.get_results(results.resumed_from)
            found = keep_outputs(store, work_dir, outputs, output_limits(),  # type: ignore[arg-type]
                                 written_back=written_back)
            results = results.model_validate(results.to_json_dict() | found)
        results = signed(results, key)
        store.save_results(results)
    results._target = target
    return results.reading_values(queue_values(target, results.id))


def write_back(results: Results, folder: Path, *,
               target: QueueTarget) -> dict[str, WrittenBack]:
    """The result files of ``results``, earlier Results a run in ``folder`` resumes from,
    written back there (each that is not there already: :func:`caliber.results.files.
    write_back`), once their signature, as ``target``'s store holds them, checks with your
    key (CaliberError otherwise); BlobMismatchError or NotFoundError when one cannot be had
    as it was signed."""
    from caliber.queue.registry import open_results
    from caliber.results import files

    with closing(open_results(target)) as store:
        stored = _stored(store, results)
        return files.write_back(store, [f.model_dump() for f in stored.files],  # type: ignore[arg-type]
                                folder)


@dataclass(frozen=True)
class RunPlan:
    """What ``Workflow.run`` needs from the stores to run a workflow here, and hands back to
    :func:`finish_run` after: made by :func:`planned_run`."""

    target: QueueTarget
    """Whose results store keeps the Results."""
    key: bytes
    """This user's key: checks the resumed Results, signs the new ones."""
    work_dir: Path
    store: bool
    """Whether the Results (and their files and arrays) are kept in the store."""
    resume: Results | None
    """The earlier Results whose completed tasks are reused, checked with ``key``."""
    values: ValueWriter | None
    """What keeps the run's big arrays as binary, or None (they stay JSON lists)."""
    written_back: Mapping[str, WrittenBack] = field(default_factory=dict)
    """The result files of ``resume`` written back into ``work_dir`` before the run."""


@contextmanager
def planned_run(target: QueueTarget | None, *, work_dir: str | Path | None, store: bool,
                resume: str | Results | None) -> Iterator[RunPlan]:
    """The stores' side of ``Workflow.run`` around the run: the Results a ``resume`` names
    (read from ``target``'s store, the local one by default, when it is an id) checked with
    this user's key (ResumeError), their result files written back into the run's folder,
    and what keeps the run's big arrays (their folder removed when the ``with`` ends,
    however it ends)."""
    from caliber.queue.resume import results_problem
    from caliber.queue.secret import load_key
    from caliber.queue.target import local_target

    key = load_key()
    target = target or local_target()
    if isinstance(resume, str):
        from caliber.queue.registry import open_backend
        from caliber.queue.resume import resumable_results

        with open_backend(target) as backend:
            resume = resumable_results(backend, resume)
        resume.reading_values(queue_values(target, resume.id))
    if resume is not None:
        problem = results_problem(resume, key)
        if problem is not None:
            from caliber.errors import ResumeError

            raise ResumeError(f"cannot resume: {problem}; run the workflow again without "
                              "--resume")
    folder = Path(work_dir) if work_dir else Path.cwd()
    written: dict[str, WrittenBack] = {}
    if resume is not None and resume.files:  # what the reused tasks wrote, back in place
        written = write_back(resume, folder, target=resume._target or target)
    with _values(folder if store else None, target) as values:
        yield RunPlan(target, key, folder, store, resume, values, written)


def finish_run(plan: RunPlan, results: Results, *, outputs: Sequence[str]) -> Results:
    """The stores' side of ``Workflow.run`` after the run: the Results kept in the plan's
    store with the files ``outputs`` match (:func:`keep_run`), or, when not ``store``, only
    signed, their big arrays read from memory."""
    if plan.store:
        return keep_run(results, plan.target, key=plan.key, work_dir=plan.work_dir,
                        outputs=outputs, values=plan.values, written_back=plan.written_back)
    from caliber.queue.resume import signed

    results = signed(results, plan.key)
    if plan.values is not None:
        from caliber.results.arrays import KeptValues

        results.reading_values(KeptValues(plan.values.kept))
    return results


@contextmanager
def _values(folder: Path | None, target: QueueTarget) -> Iterator[ValueWriter | None]:
    """What keeps a run's big arrays as binary (:mod:`caliber.results.arrays`): in files in
    a values folder of the run's own under ``folder`` when they go to ``target``'s store,
    removed when the ``with`` ends however it ends (:mod:`caliber.results.runvalues`); in
    memory without a ``folder``; None when that store keeps no blobs (JSON lists then)."""
    from caliber.results.arrays import ValueWriter
    from caliber.settings import load_settings

    limit = load_settings().array_inline_max
    if folder is None:
        yield ValueWriter(None, limit)
        return
    from caliber.queue.blobs import BlobStore
    from caliber.queue.registry import open_results

    with closing(open_results(target)) as store:
        keeps_blobs = isinstance(store, BlobStore)
    if not keeps_blobs:
        yield None
        return
    from caliber.results.runvalues import run_values_folder

    with run_values_folder(folder) as own:
        yield ValueWriter(own, limit)


def save_files(results: Results, dest: Path, *, target: QueueTarget,
               names: Sequence[str] | None = None, force: bool = False) -> list[Path]:
    """:meth:`Results.save_files`: the files written under ``dest`` (``caliber results files
    --to``), after the Results' signature checks with your key."""
    from caliber.queue.registry import open_results
    from caliber.results import files

    if names is not None:
        for name in names:
            files.find_file(results, name)
    with closing(open_results(target)) as store:
        stored = _stored(store, results)
        return files.save_files(store, stored, dest, names=names, force=force)  # type: ignore[arg-type]


def _stored(store: Any, results: Results) -> Results:
    """``results`` as ``store`` holds them, read through it (a remote queue learns where
    their files are by reading them), their file list checked against their signature with
    your key (:func:`caliber.results.files.check_signed`)."""
    from caliber.queue.secret import load_key
    from caliber.results import files

    if not results.files:
        return results
    try:
        stored: Results = store.get_results(results.id)
    except NotFoundError:
        raise NotFoundError(f"results {results.id} are no longer stored in "
                            f"{store.location}: their files went with them") from None
    files.check_signed(stored, load_key())
    return stored


def open_file(results: Results, name: str, *, target: QueueTarget) -> BinaryIO:
    """:meth:`Results.open_file`: a stream of one result file, the store kept open until it is
    closed."""
    from caliber.queue.registry import open_results
    from caliber.results import files

    files.find_file(results, name)
    store: Any = open_results(target)
    try:
        stored = _stored(store, results)
        return files.open_file(store, stored, name, on_close=store.close)
    except BaseException:
        store.close()
        raise
