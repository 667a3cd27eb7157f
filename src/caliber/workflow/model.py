"""The workflow model: Task, Process, BranchProcess and Workflow.

A workflow is a tree. Its leaves are tasks, each a reference to a module-level function with
its arguments; its inner nodes are processes, which run their items in order, and branch
processes, which run the same tasks once per branch. Everything here is plain data: running
is :mod:`caliber.workflow.runner`, the JSON file is :mod:`caliber.workflow.fileformat`.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, Union

from caliber.errors import WorkflowDefinitionError
from caliber.workflow.attachments import AttachmentSpec, Reference
from caliber.workflow.limits import check_timeout
from caliber.workflow.upstream import UpstreamResult as UpstreamResult

if TYPE_CHECKING:
    import datetime as dt

    from caliber.queue.target import QueueTarget
    from caliber.results.model import Results
    from caliber.workflow.runner import TaskEvent


@dataclass(frozen=True)
class TaskRef:
    """The return value of an earlier task, used as an argument: ``args=[dough.result]``.

    Inside a branch process it means the same branch's value of a task of that branch process;
    outside, a branched task's reference is the list of its values, one per branch.
    """

    task: str

    def __repr__(self) -> str:
        return f"<result of {self.task!r}>"


def upstream(*names: str, workload: str | None = None) -> UpstreamResult:
    """The value of a task of an upstream workload, to pass as an argument (the workload is
    queued to run after it: ``Workflow.queue(after=[...])``, ``workflow queue --after``):

    - ``upstream("Solve")``: task ``Solve`` of the one workload it runs after;
    - ``upstream("analysis", "Solve")``: of the one it runs after whose workflow is
      ``analysis``;
    - ``workload="3fa1"``: of that one (an id, or a unique prefix among those it runs
      after).
    """
    if len(names) == 1:
        return UpstreamResult(names[0], workload=workload)
    if len(names) == 2:
        return UpstreamResult(names[1], workflow=names[0], workload=workload)
    raise WorkflowDefinitionError(
        f"upstream() takes the task's name, or the workflow's and the task's, not {len(names)} "
        "names")


def function_ref(function: Callable[..., Any]) -> str:
    """The ``module:qualname`` import path of a module-level function, or a clear error."""
    name = getattr(function, "__qualname__", None) or getattr(function, "__name__", None)
    if inspect.ismethod(function):
        raise WorkflowDefinitionError(
            f"task function {name} is a bound method; use a module-level function instead"
        )
    module = getattr(function, "__module__", None)
    if not callable(function) or not isinstance(name, str) or not isinstance(module, str):
        raise WorkflowDefinitionError(
            f"task function {function!r} is not a plain function; use a module-level function"
        )
    if name == "<lambda>" or name.endswith(".<lambda>"):
        code = getattr(function, "__code__", None)
        where = f" (defined at {code.co_filename}:{code.co_firstlineno})" if code else ""
        raise WorkflowDefinitionError(
            f"task function is a lambda{where}, which cannot be exported; define it with def at "
            "the top level of a module"
        )
    if "<locals>" in name:
        raise WorkflowDefinitionError(
            f"task function {name} is defined inside another function, which cannot be exported; "
            "move it to the top level of a module"
        )
    if module == "__main__":
        raise WorkflowDefinitionError(
            f"task function {name} is defined in the script being run (__main__), which a pinion "
            "cannot import; move it into a module (e.g. my_functions.py) and import it"
        )
    found = sys.modules.get(module)
    target: Any = found
    for part in name.split("."):
        target = getattr(target, part, None)
    if target is not function:
        raise WorkflowDefinitionError(
            f"task function {module}:{name} cannot be found again by its import path "
            "(a decorator without functools.wraps?); use a module-level function"
        )
    return f"{module}:{name}"


def import_function(ref: str) -> Callable[..., Any]:
    """Import ``module:qualname``; raise ImportError naming the module and the attribute."""
    module_name, _, qualname = ref.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"cannot import module {module_name!r} for {ref}: {exc}") from exc
    for part in qualname.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise ImportError(
                f"module {module_name!r} has no attribute {qualname!r} (for {ref})"
            ) from exc
    if not callable(target):
        raise ImportError(f"{ref} is not callable")
    return target  # type: ignore[no-any-return]


class Task:
    """One call of a module-level function.

    ``function`` is the function itself or its import path ``"module:qualname"``. In a
    :class:`BranchProcess`, ``args`` is a list of per-branch argument lists and ``kwargs`` a
    list of per-branch dicts. ``timeout``: seconds the task may run (each branch's run, in a
    branch process); past that it fails with a timeout error naming it (see
    :mod:`caliber.workflow.limits` for what can be interrupted).
    """

    def __init__(
        self,
        function: Callable[..., Any] | str,
        name: str | None = None,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
        timeout: float | None = None,
    ) -> None:
        self._callable: Callable[..., Any] | None
        if isinstance(function, str):
            module, sep, qualname = function.partition(":")
            if not sep or not module or not qualname:
                raise WorkflowDefinitionError(
                    f"task function {function!r} must be an import path 'module:function'"
                )
            self.function = function
            self._callable = None
        else:
            try:
                self.function = function_ref(function)
            except WorkflowDefinitionError as exc:
                if name is None:
                    raise
                raise WorkflowDefinitionError(f"task {name!r}: {exc}") from exc
            self._callable = function
        if name is None:
            name = self.function.partition(":")[2]
        if not isinstance(name, str) or not name.strip():
            raise WorkflowDefinitionError(f"task name must be a non-empty string, not {name!r}")
        self.name = name
        try:
            self.timeout = check_timeout(timeout, f"task {name!r}")
        except ValueError as exc:
            raise WorkflowDefinitionError(str(exc)) from None
        if args is not None and (isinstance(args, str | bytes) or not isinstance(args, Sequence)):
            raise WorkflowDefinitionError(
                f"task {name!r}: args must be a list, not {type(args).__name__}"
            )
        self.args: list[Any] = list(args) if args is not None else []
        self.kwargs: Any = kwargs if kwargs is not None else {}
        self._args_given = args is not None
        self._kwargs_given = kwargs is not None

    @property
    def result(self) -> TaskRef:
        """A reference to this task's return value, to pass as an argument of a later task."""
        return TaskRef(self.name)

    def resolve(self) -> Callable[..., Any]:
        """The function to call, imported by its path if needed."""
        if self._callable is None:
            self._callable = import_function(self.function)
        return self._callable

    def __repr__(self) -> str:
        return f"Task({self.name!r}, function={self.function!r})"


class Process:
    """Runs its items (tasks, processes, branch processes) one after the other, in list order."""

    def __init__(self, tasks: Sequence[Node], name: str | None = None) -> None:
        if isinstance(tasks, Task | Process | BranchProcess) or not isinstance(tasks, Sequence):
            raise WorkflowDefinitionError(f"process {name or 'process'!r}: tasks must be a list")
        for item in tasks:
            if not isinstance(item, Task | Process | BranchProcess):
                raise WorkflowDefinitionError(
                    f"process {name or 'process'!r}: {item!r} is not a Task, Process or "
                    "BranchProcess"
                )
        self.items: list[Node] = list(tasks)
        self.name = name

    @property
    def tasks(self) -> list[Node]:
        return self.items

    def __repr__(self) -> str:
        return f"Process({self.name!r}, {len(self.items)} items)"


class BranchProcess:
    """Runs the same tasks once per branch; branches are independent of each other.

    ``parallel=N`` runs each branch in a process of its own, at most N at a time, with the
    Results a run one after the other gives; then each branch starts from ``g`` as it was
    when the branch process began, and their changes to ``g`` are merged in branch order
    (two branches setting one name to different values fail the run), and a failed branch
    stops the others starting further tasks (:mod:`caliber.workflow.branches`). Left out
    (None), the branches run one after the other in the workflow's process, each seeing what
    the ones before it put in ``g``.
    """

    def __init__(self, tasks: Sequence[Task], branches: int, name: str | None = None,
                 parallel: int | None = None) -> None:
        label = repr(name or "branch process")
        if isinstance(branches, bool) or not isinstance(branches, int) or branches < 1:
            raise WorkflowDefinitionError(f"{label}: branches must be a whole number >= 1")
        if parallel is not None and (
                isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1):
            raise WorkflowDefinitionError(
                f"{label}: parallel must be a whole number >= 1 (branches at a time), or None, "
                f"not {parallel!r}")
        if not isinstance(tasks, Sequence) or not tasks:
            raise WorkflowDefinitionError(f"{label}: tasks must be a non-empty list of Tasks")
        for task in tasks:
            if not isinstance(task, Task):
                raise WorkflowDefinitionError(f"{label}: {task!r} is not a Task")
            _check_branch_arguments(task, branches)
        self.items: list[Task] = list(tasks)
        self.branches = branches
        self.name = name
        self.parallel = parallel

    @property
    def tasks(self) -> list[Task]:
        return self.items

    def how(self) -> str:
        """``4 branches``, or ``4 branches, in parallel 2 at a time`` (for diagrams)."""
        text = f"{self.branches} branches"
        if self.parallel is not None:
            text += f", in parallel {min(self.parallel, self.branches)} at a time"
        return text

    def __repr__(self) -> str:
        at_once = "" if self.parallel is None else f", parallel={self.parallel}"
        return f"BranchProcess({self.name!r}, {self.branches} branches{at_once})"


def _check_branch_arguments(task: Task, branches: int) -> None:
    if not task._args_given:
        task.args = [[] for _ in range(branches)]
    elif len(task.args) != branches or not all(
        isinstance(a, list | tuple) for a in task.args
    ):
        raise WorkflowDefinitionError(
            f"task {task.name!r}: in a BranchProcess with {branches} branches, args must be a "
            f"list of {branches} argument lists, one per branch"
        )
    if not task._kwargs_given:
        task.kwargs = [{} for _ in range(branches)]
    elif (
        isinstance(task.kwargs, dict)
        or not isinstance(task.kwargs, Sequence)
        or len(task.kwargs) != branches
        or not all(isinstance(k, dict) for k in task.kwargs)
    ):
        raise WorkflowDefinitionError(
            f"task {task.name!r}: in a BranchProcess with {branches} branches, kwargs must be a "
            f"list of {branches} dicts, one per branch"
        )


Node = Union[Task, Process, BranchProcess]  # noqa: UP007 (used at runtime in isinstance)


@dataclass(frozen=True)
class Step:
    """One task run in execution order: the task, its branch (or None) and its place."""

    task: Task
    branch: int | None
    path: tuple[str, ...]
    branch_process: BranchProcess | None


def iter_steps(node: Node, path: tuple[str, ...] = ()) -> Iterator[Step]:
    """Every task run of the tree in execution order (a branched task once per branch)."""
    if isinstance(node, Task):
        yield Step(node, None, path, None)
    elif isinstance(node, Process):
        inner = (*path, node.name or "process")
        for item in node.items:
            yield from iter_steps(item, inner)
    else:
        inner = (*path, node.name or "branch process")
        for branch in range(node.branches):
            for task in node.items:
                yield Step(task, branch, inner, node)


def iter_tasks(node: Node) -> Iterator[Task]:
    """Every task of the tree once, in definition order."""
    if isinstance(node, Task):
        yield node
    else:
        for item in node.items:
            yield from iter_tasks(item)


_Found = TypeVar("_Found")


def iter_refs(value: Any) -> Iterator[TaskRef]:
    """Every TaskRef inside an argument value (lists, tuples and dict values)."""
    return _iter_found(value, TaskRef)


def iter_upstream(value: Any) -> Iterator[UpstreamResult]:
    """Every UpstreamResult inside an argument value (lists, tuples and dict values)."""
    return _iter_found(value, UpstreamResult)


def _iter_found(value: Any, kind: type[_Found]) -> Iterator[_Found]:
    if isinstance(value, kind):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _iter_found(item, kind)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _iter_found(item, kind)


def upstream_results(workflow: Workflow) -> dict[UpstreamResult, list[str]]:
    """Each upstream result the workflow's tasks take, with the names of the tasks that take
    it (in definition order)."""
    found: dict[UpstreamResult, list[str]] = {}
    for task in iter_tasks(workflow.process):
        for ref in iter_upstream([task.args, task.kwargs]):
            takers = found.setdefault(ref, [])
            if task.name not in takers:
                takers.append(task.name)
    return found


def _check_outputs(name: str, outputs: object) -> list[str]:
    """The output patterns, checked (:func:`caliber.workflow.outputs.check_patterns`)."""
    if not outputs:
        return []
    from caliber.workflow.outputs import check_patterns

    try:
        return check_patterns(outputs)
    except WorkflowDefinitionError as exc:
        raise WorkflowDefinitionError(f"workflow {name!r}: {exc}") from None


def _default_base_dir() -> Path:
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    return Path(main_file).resolve().parent if main_file else Path.cwd()


class Workflow:
    """A named process tree, with the files it needs (attachments), the files it makes that
    come back with its Results (outputs) and a description.

    Attachment paths are relative to ``base_dir``: the folder of the script that defines the
    workflow, or of the JSON file it was loaded from. A folder attaches every file inside it
    (relative paths kept); a :class:`~caliber.workflow.attachments.Reference` attaches a file
    on a shared drive by its hash, never copied (for inputs too big to copy). Output
    patterns are relative to the folder the workflow runs in (a pinion's run folder): globs
    such as ``"fields/*.vtu"`` or ``"**/*.odb"`` (:mod:`caliber.workflow.outputs`), collected
    when the run ends, however it ends.
    """

    def __init__(
        self,
        process: Process | BranchProcess,
        name: str,
        attachments: Sequence[str | os.PathLike[str] | Reference] = (),
        description: str | None = None,
        *,
        base_dir: str | Path | None = None,
        outputs: Sequence[str] = (),
    ) -> None:
        if not isinstance(process, Process | BranchProcess):
            raise WorkflowDefinitionError(
                f"workflow {name!r}: process must be a Process or BranchProcess"
            )
        if not isinstance(name, str) or not name.strip():
            raise WorkflowDefinitionError(f"workflow name must be a non-empty string, not {name!r}")
        if isinstance(attachments, str):
            attachments = [attachments]
        self.process = process
        self.name = name
        self.attachments: list[AttachmentSpec] = [
            a if isinstance(a, Reference) else str(a) for a in attachments]
        self.description = description
        self.base_dir = Path(base_dir).resolve() if base_dir is not None else _default_base_dir()
        self.outputs: list[str] = _check_outputs(name, outputs)
        self._validate()

    @classmethod
    def checked(cls, process: Process | BranchProcess, name: str, *,
                attachments: Sequence[AttachmentSpec], description: str | None,
                base_dir: Path, outputs: Sequence[str] = ()) -> Workflow:
        """A workflow built from parts already checked as :class:`Workflow` checks them, with
        ``base_dir`` resolved (a pinion's child: its pinion checked the document), without
        checking again: a fresh process pays for every page of code it runs."""
        workflow = cls.__new__(cls)
        workflow.process = process
        workflow.name = name
        workflow.attachments = list(attachments)
        workflow.description = description
        workflow.base_dir = base_dir
        workflow.outputs = list(outputs)
        return workflow

    def _validate(self) -> None:
        seen: dict[str, Task] = {}
        for task in iter_tasks(self.process):
            if task.name in seen:
                raise WorkflowDefinitionError(
                    f"workflow {self.name!r}: task name {task.name!r} is used twice; "
                    "task names must be unique within a workflow"
                )
            seen[task.name] = task
        done: set[str] = set()
        for step in iter_steps(self.process):
            task = step.task
            for ref in iter_refs([task.args, task.kwargs]):
                if ref.task not in seen:
                    raise WorkflowDefinitionError(
                        f"task {task.name!r} uses the result of {ref.task!r}, "
                        "which is not a task of this workflow"
                    )
                if ref.task not in done:
                    raise WorkflowDefinitionError(
                        f"task {task.name!r} uses the result of {ref.task!r}, which runs later; "
                        "a task can only use the results of tasks that run before it"
                    )
            done.add(task.name)

    @property
    def tasks(self) -> list[Task]:
        """Every task, in definition order."""
        return list(iter_tasks(self.process))

    def steps(self) -> list[Step]:
        """Every task run, in execution order (branched tasks once per branch)."""
        return list(iter_steps(self.process))

    # --- file format -------------------------------------------------------------------

    def to_document(self, *, relative_to: Path | None = None) -> dict[str, Any]:
        """The JSON document of this workflow (raises ExportError for non-JSON arguments)."""
        from caliber.workflow.fileformat import to_document

        return to_document(self, relative_to=relative_to)

    def export(self, path: str | Path) -> Path:
        """Write the workflow file; returns its path."""
        from caliber.workflow.fileformat import export

        return export(self, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> Workflow:
        """Read and validate a workflow file, reporting every problem with its place."""
        from caliber.workflow.fileformat import load

        return load(Path(path))

    # --- running -----------------------------------------------------------------------

    def run(
        self,
        *,
        work_dir: str | Path | None = None,
        store: bool = True,
        on_event: Callable[[TaskEvent], None] | None = None,
        target: QueueTarget | None = None,
        resume: str | Results | None = None,
        after_results: Sequence[str | Results] = (),
    ) -> Results:
        """Run the workflow here and now, in ``work_dir`` (default: the current folder); keep
        the Results (``store``) in the results store of ``target``, by default the local one,
        with the files :attr:`outputs` match in ``work_dir`` when it ends (however it ends;
        ``store=False`` keeps no file).

        A big numpy array (or pandas frame) a task returns or puts in g is kept as binary
        (``CALIBER_ARRAY_INLINE_MAX``): written to ``.caliber/values/`` in ``work_dir`` and
        moved into the store's content store, or kept in memory when not ``store``; the
        Results give it back as an array.

        ``resume``: earlier Results of this workflow (or their id in that store, or the id of
        a workload whose last Results they are; unique prefixes too): the tasks that
        completed there and are unchanged are reused instead of run again (the reuse rule of
        :mod:`caliber.workflow.runner`); ResumeError when they are another workflow's, or
        when their signature does not check with your key (:mod:`caliber.queue.resume`): a
        resume reuses only values a key holder stored. The Results are signed with your
        key.

        ``after_results``: the Results (or their ids, or workload ids: their last Results)
        of the upstream workloads whose task values the tasks take (:func:`upstream`, a
        ``$results`` reference), as a pinion gives them to a workload queued ``after=``
        those (:mod:`caliber.workflow.upstream`); their signatures must check with your key.
        Without them such a workflow does not run (UpstreamError)."""
        from caliber.results.api import finish_run, planned_run
        from caliber.workflow.runner import run_workflow
        from caliber.workflow.upstream import given_results

        with planned_run(target, work_dir=work_dir, store=store, resume=resume) as plan:
            upstream = given_results(list(upstream_results(self)), plan.target,
                                     after_results, plan.key, name=self.name)
            results = run_workflow(self, work_dir=plan.work_dir, on_event=on_event,
                                   resume=plan.resume, values=plan.values, upstream=upstream)
            return finish_run(plan, results, outputs=self.outputs)

    def queue(
        self,
        pinion: str,
        *,
        queue: str | None = None,
        project: str | None = None,
        model: str | None = None,
        local: bool = False,
        target: QueueTarget | None = None,
        resume: str | None = None,
        after: str | Sequence[str] = (),
        not_before: dt.datetime | str | None = None,
        priority: int = 0,
        notify: str | None = None,
    ) -> str:
        """Put the workflow in the queue for ``pinion``; returns the workload id. The queue is
        ``target``, or, without it, the one ``queue`` (a URL: ``sqlite:///path``,
        ``postgresql://...``, ``speckle://host/PROJECT/MODEL``) or ``project``/``model``/
        ``local`` and the settings select (:func:`caliber.queue.target.resolve_target`).

        ``resume``: a Results id or a workload id (its last Results) in that queue: the
        workflow runs as it is now, reusing the tasks that completed there and are unchanged
        (:func:`caliber.queue.api.queue_workflow`).

        ``after``: workload ids (or unique prefixes) in that queue, such as the ids earlier
        calls returned: it waits until every one has completed (``caliber workflow queue
        --after``). ``not_before``: no pinion starts it earlier; an aware datetime, or text
        as ``--not-before`` takes it (``"22:00"``: the next 22:00, local time;
        ``"2026-12-08T22:00+01:00"``; ``"+2h"``). ``priority``: -1000 to 1000, higher is
        claimed first (default 0). ``notify``: an http(s) address its pinion posts the
        outcome to, besides the settings' ``CALIBER_NOTIFY_URL``. A bad value raises a
        UsageError and queues nothing::

            analysis = wf.queue("lab", not_before="22:00")
            post.queue("lab", after=[analysis], notify="https://hooks.example/night")
        """
        from caliber.queue.api import queue_workflow
        from caliber.queue.target import target_of

        chosen = target_of(target, queue=queue, project=project, model=model, local=local)
        return queue_workflow(self, pinion, chosen, resume=resume, after=after,
                              not_before=not_before, priority=priority, notify=notify)

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, {len(self.tasks)} tasks)"
