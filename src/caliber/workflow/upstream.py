"""Upstream results: a workload's task takes the return value of a task of a workload it runs
after (``{"$results": {"workflow": "analysis", "task": "Solve"}}`` in the file,
``caliber.upstream("analysis", "Solve")`` in Python: :class:`~caliber.workflow.model.
UpstreamResult`).

The rules, the same for a pinion (:mod:`caliber.pinion.upstream`), for ``workflow queue``
(before anything is queued) and for ``workflow run --after-results ID``:

- **Which upstream** (:func:`choose`): only one of the workloads it runs after (``--after``:
  those are the ones that have completed when it starts; any other workload's Results could
  be missing, or change, while it runs). ``"workload"`` names one of them by id or unique
  prefix; else ``"workflow"`` picks the one of that workflow; with neither there must be
  exactly one. None, or several, is an error naming what it runs after.
- **Which value** (:func:`task_value`): the task's return value in the upstream's last
  Results, which must have completed; a branched task gives the list of its values in
  branch order (as ``caliber.get_results(ID)["Solve"]`` does). A value arrives as those
  Results hold it: JSON values as they are, big numpy arrays and pandas frames read back as
  arrays and frames (their bytes checked against the SHA-256 the Results name); a value that
  was converted to be stored (a small array as a list, a date as text) as its stored form.
- **Whose Results**: only Results signed with the key of the pinion that runs the workload
  (the key the workload itself is signed with), and only the Results of that upstream
  workload of that workflow: their values decide what the workload computes, as its own
  arguments do. Unsigned, or changed since, they are refused and the workload fails before
  it runs.

A workload whose references do not resolve fails before any of its tasks runs, with one line
naming the reference and what is wrong; it never runs with a missing value. A resumed run
(``retry --resume``) reuses a task that takes an upstream value only when the value is the one
it took then (it is part of the task's inputs fingerprint).

**Where they came from** (:func:`sources`): the run's Results record, per upstream Results it
took values from, the upstream workload, workflow, Results id, those Results' signature as
taken and the tasks taken (``Results.upstream``, signed with the rest of the Results): the ones
resolved for this run, a resumed run's too (its reused tasks took the same values then).

No pydantic, no threading: a pinion's child imports this module. Nothing of the workflow
model either: the queue API checks references with it (``workflow queue``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from caliber.errors import UsageError, WorkflowDefinitionError

if TYPE_CHECKING:
    from caliber.queue.target import QueueTarget
    from caliber.results.model import Results


UPSTREAM_KEY = "$results"
"""``{"$results": {"workflow": ..., "task": ..., "workload": ...}}``: an upstream workload's
task value in a workflow file (checked by
:func:`caliber.workflow.fileformat.check_document`)."""
UPSTREAM_FIELDS = ("workflow", "workload", "task")


@dataclass(frozen=True)
class UpstreamResult:
    """The return value of a task of an *upstream* workload (one this workload runs after,
    ``queue --after``), used as an argument: ``args=[caliber.upstream("analysis", "Solve")]``,
    written ``{"$results": {"workflow": "analysis", "task": "Solve"}}`` in the file.

    Its pinion gives it before the run, from the upstream's Results (their signature checked
    with its key): ``workflow`` picks the upstream by its workflow's name (left out: the
    workload runs after exactly one), ``workload`` by its id or a unique prefix of it, among
    the ids it runs after. A branched task's value is the list of its values, one per branch.
    """

    task: str
    workflow: str | None = None
    workload: str | None = None

    def __post_init__(self) -> None:
        for field_name, required in (("task", True), ("workflow", False), ("workload", False)):
            value = getattr(self, field_name)
            if value is None and not required:
                continue
            if not isinstance(value, str) or not value.strip():
                raise WorkflowDefinitionError(
                    f"upstream result: {field_name} must be a non-empty string, not {value!r}")

    def fields(self) -> dict[str, str]:
        """Its fields as the file writes them (those set)."""
        found = {"workflow": self.workflow, "workload": self.workload, "task": self.task}
        return {k: v for k, v in found.items() if v is not None}

    def describe(self) -> str:
        """``'Solve' of upstream 'analysis'`` (for messages and diagrams)."""
        if self.workload is not None:
            whose = f"upstream workload {self.workload}"
            if self.workflow is not None:
                whose += f" ({self.workflow})"
        elif self.workflow is not None:
            whose = f"upstream {self.workflow!r}"
        else:
            whose = "the upstream"
        return f"{self.task!r} of {whose}"

    def __repr__(self) -> str:
        return f"<result of {self.describe()}>"


class UpstreamError(UsageError):
    """An upstream result that cannot be given: the message says which and why."""


@dataclass(frozen=True)
class Upstream:
    """A workload another runs after, as the rules see it: its id and workflow's name (and
    its tasks' names, where known: ``workflow queue`` checks them)."""

    id: str
    workflow: str
    tasks: frozenset[str] | None = None


@dataclass(frozen=True)
class UpstreamValue:
    """An upstream result resolved: the value as stored in the upstream's Results (JSON, a
    big array as its reference), the value as a task takes it, and where it came from (the
    Results, their workload and workflow, their signature as taken)."""

    stored: Any
    value: Any
    results: str
    workload: str | None
    workflow: str
    signature: str | None


def sources(taken: Mapping[UpstreamResult, UpstreamValue]) -> list[dict[str, Any]]:
    """What a run's Results record of where the upstream values it took came from
    (``Results.upstream``, signed with them): one record per upstream Results, in the order
    the references first take them, with the tasks taken from each in that order."""
    found: dict[str, dict[str, Any]] = {}
    for ref, value in taken.items():
        record = found.setdefault(value.results, {
            "workload": value.workload, "workflow": value.workflow, "results": value.results,
            "signature": value.signature, "tasks": []})
        if ref.task not in record["tasks"]:
            record["tasks"].append(ref.task)
    return list(found.values())


def document_refs(value: Any) -> Iterator[UpstreamResult]:
    """Every ``$results`` reference in a checked workflow document (or a part of it), in
    document order, as UpstreamResult."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, dict):
            fields = item.get(UPSTREAM_KEY)
            if len(item) == 1 and isinstance(fields, dict):
                yield UpstreamResult(str(fields.get("task")), workflow=fields.get("workflow"),
                                     workload=fields.get("workload"))
            else:
                stack.extend(reversed(list(item.values())))


def refs_of(document: dict[str, Any]) -> list[UpstreamResult]:
    """The distinct upstream results a workflow document's tasks take."""
    return list(dict.fromkeys(document_refs(document.get("process"))))


def _listed(upstreams: Sequence[Upstream]) -> str:
    return ", ".join(f"{u.id} ({u.workflow})" for u in upstreams)


def choose(ref: UpstreamResult, upstreams: Sequence[Upstream]) -> Upstream:
    """The upstream ``ref`` takes its value from (see the module), or UpstreamError."""
    what = f"the result of {ref.describe()}"
    if not upstreams:
        raise UpstreamError(f"{what}: it runs after no workload (queue it with --after ID)")
    if ref.workload is not None:
        named = [u for u in upstreams if u.id == ref.workload]
        named = named or [u for u in upstreams if u.id.startswith(ref.workload)]
        if len(named) != 1:
            how = "none" if not named else "several"
            raise UpstreamError(f"{what}: {ref.workload!r} names {how} of the workloads it runs "
                                f"after ({_listed(upstreams)})")
        if ref.workflow is not None and named[0].workflow != ref.workflow:
            raise UpstreamError(f"{what}: workload {named[0].id} is of workflow "
                                f"{named[0].workflow!r}, not {ref.workflow!r}")
        return named[0]
    if ref.workflow is not None:
        named = [u for u in upstreams if u.workflow == ref.workflow]
        if not named:
            raise UpstreamError(f"{what}: it runs after no workload of workflow "
                                f"{ref.workflow!r} (it runs after {_listed(upstreams)})")
        if len(named) > 1:
            raise UpstreamError(f"{what}: it runs after {len(named)} workloads of workflow "
                                f"{ref.workflow!r} ({_listed(named)}); name one with "
                                '"workload": ID')
        return named[0]
    if len(upstreams) > 1:
        raise UpstreamError(f"{what}: it runs after {len(upstreams)} workloads "
                            f"({_listed(upstreams)}); say which with \"workflow\": NAME")
    return upstreams[0]


def task_value(results: dict[str, Any], ref: UpstreamResult) -> Any:
    """The value of ``ref``'s task in ``results`` (their JSON form) as stored: a branched
    task's values as a list, in branch order. UpstreamError when the Results did not
    complete, have no such task, or it did not complete."""
    whose = f"results {results.get('id')} of workload {results.get('workload_id')}"
    if results.get("status") != "completed":
        raise UpstreamError(f"the result of {ref.describe()}: {whose} ended "
                            f"{results.get('status')}, not completed")
    runs = [t for t in results.get("tasks") or [] if t.get("name") == ref.task]
    if not runs:
        names = ", ".join(repr(n) for n in dict.fromkeys(
            str(t.get("name")) for t in results.get("tasks") or []))
        raise UpstreamError(f"the result of {ref.describe()}: {whose} have no task "
                            f"{ref.task!r} (their tasks: {names or 'none'})")
    for run in runs:
        if run.get("status") != "completed":
            branch = "" if run.get("branch") is None else f" (branch {run.get('branch')})"
            raise UpstreamError(f"the result of {ref.describe()}: task {ref.task!r}{branch} "
                                f"did not complete in {whose} ({run.get('status')})")
    if runs[0].get("branch") is None:
        return runs[0].get("return")
    return [r.get("return") for r in sorted(runs, key=lambda r: r.get("branch") or 0)]


def without(refs: Sequence[UpstreamResult], source: str) -> UpstreamError:
    """The error of a run that has no upstream to take ``refs`` from (``workflow run``
    without ``--after-results``)."""
    first = refs[0]
    more = f" (and {len(refs) - 1} more)" if len(refs) > 1 else ""
    return UpstreamError(
        f"{source}: takes the result of {first.describe()}{more}, which comes from a workload "
        "it runs after: queue it with --after ID, or run it with --after-results ID (the "
        "upstream's Results)")


def given_results(refs: Sequence[UpstreamResult], target: QueueTarget,
                  given: Sequence[str | Results], key: bytes, *,
                  name: str) -> dict[UpstreamResult, UpstreamValue]:
    """The upstream values of a run in this process (``workflow run --after-results ID``,
    ``Workflow.run(after_results=...)``): ``given`` stands for the workloads it runs after,
    each as its Results or their id (or a workload's id: its last Results; unique prefixes
    too) in ``target``'s store. Each one's signature must check with ``key``, as for a
    resume (UpstreamError otherwise, before anything runs). ``refs``: the upstream results
    the tasks of workflow ``name`` take."""
    if not given:
        return {}
    if not refs:
        raise UpstreamError(f"workflow {name!r} takes no upstream results "
                            "($results), so there is nothing to take from the Results given "
                            "(--after-results)")
    from caliber.queue.registry import open_backend
    from caliber.queue.resume import results_problem, resumable_results
    from caliber.results.api import queue_values

    chosen: list[Results] = []
    with open_backend(target) as backend:
        for item in given:
            if isinstance(item, str):
                item = resumable_results(backend, item)
                item.reading_values(queue_values(target, item.id))
            chosen.append(item)
    for results in chosen:
        problem = results_problem(results, key)
        if problem is not None:
            raise UpstreamError(f"cannot take results {results.id}: {problem}")
    by_id = {results.workload_id or results.id: results for results in chosen}
    upstreams = [Upstream(upstream_id, r.workflow) for upstream_id, r in by_id.items()]
    found: dict[UpstreamResult, UpstreamValue] = {}
    for ref in refs:
        results = by_id[choose(ref, upstreams).id]
        stored = task_value(results.to_json_dict(), ref)
        value = results.value_of(stored, f"the result of {ref.describe()}")
        found[ref] = UpstreamValue(stored, value, results.id, results.workload_id,
                                   results.workflow, results.signature)
    return found


def check_after(document: dict[str, Any], upstreams: Sequence[Upstream]) -> None:
    """``workflow queue``: every ``$results`` reference of ``document`` picks one of the
    workloads it is queued after, and a task that upstream's workflow has (UpstreamError,
    before anything is queued): a mistake in post.json is told when it is queued, not in the
    morning."""
    for ref in refs_of(document):
        chosen = choose(ref, upstreams)
        if chosen.tasks is not None and ref.task not in chosen.tasks:
            names = ", ".join(repr(n) for n in sorted(chosen.tasks))
            raise UpstreamError(f"the result of {ref.describe()}: workflow "
                                f"{chosen.workflow!r} (workload {chosen.id}) has no task "
                                f"{ref.task!r} (its tasks: {names or 'none'})")


def task_names(document: Any) -> frozenset[str]:
    """The names of the tasks of a workflow document (a workload's, as stored)."""
    names: set[str] = set()
    stack = [document.get("process") if isinstance(document, dict) else None]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        if node.get("type") == "task" and isinstance(node.get("name"), str):
            names.add(node["name"])
        elif isinstance(node.get("tasks"), list):
            stack.extend(node["tasks"])
    return frozenset(names)


def check_queued(backend: Any, document: dict[str, Any], after: Sequence[str]) -> None:
    """:func:`check_after` with the workloads ``after`` names (full ids) read from
    ``backend`` (a queue backend): what ``workflow queue --after`` calls."""
    if not refs_of(document):
        return
    upstreams = []
    for upstream_id in after:
        found = backend.get(upstream_id)
        upstreams.append(Upstream(found.id, found.workflow_name,
                                  task_names(found.workflow)))
    check_after(document, upstreams)
