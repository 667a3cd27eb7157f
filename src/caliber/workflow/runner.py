"""Running a workflow in this process and collecting its Results.

Failure rule: when a task raises, nothing after it in execution order runs (its process stops,
and so do the processes around it), except the other branches of the same branch process,
which still run to the end (in a parallel one, ``BranchProcess(parallel=N)``, they start no
further task: :mod:`caliber.workflow.branches`, which also says what ``g`` does there).
Returns of tasks that ran are kept either way. A task that runs past its time limit
(``Task(timeout=...)``, see :mod:`caliber.workflow.limits`) fails with TaskTimeout, as any
failed task. A task stopped while it ran (Ctrl-C, or SIGTERM in a
pinion's child: ``queue cancel --now``) stops the whole run, other branches too: the Results
are cancelled, with what the tasks that finished returned.

Resuming (``resume=`` earlier Results of the same workflow): a task that completed there is
reused instead of run again when, as the run reaches it (:meth:`_Run.why_not_reused`),

1. its code fingerprint is the one stored (its function and everything it reaches in the
   workflow's own modules: :mod:`caliber.workflow.fingerprint`),
2. its inputs fingerprint is the one stored (its arguments as stored),
3. the tasks whose results it takes were reused in this run (not run again), and ``g`` as
   it finds it is, name for name, what it found when it ran: the tasks before it left the
   same values (as JSON; a value only kept as a conversion, a ``repr`` say, that a task of
   this run set counts as changed). The whole of ``g``, not the names a task's code mentions:
   code can read ``g`` in ways its source does not show (a helper in an installed package,
   ``getattr(g, name)``, ``dict(g)``), and the whole is exact for every one of them.

A reused task's stored return value is given to the tasks that use it, what it did to ``g``
(``TaskResult.g_set``/``g_deleted``) is done again at its place, and its record is kept with
``reused_from``. Every task of a resumed run that runs or is reused says why in its ``reuse``
note ("reused from R", "code of solve changed", "argument 2 changed", "input from 'Mesh' was
recomputed", "did not complete in R", ...).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import importlib
import importlib.machinery
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caliber import context
from caliber.errors import ResumeError
from caliber.platform import write_private_file
from caliber.results.arrays import value_refs
from caliber.results.convert import to_json
from caliber.results.values import RunStatus, TaskStatus, error_summary, new_id, utcnow
from caliber.text import valid_unicode
from caliber.workflow.fingerprint import Fingerprinter, inputs, inputs_change
from caliber.workflow.limits import TaskStopped, TaskTimeout, time_limit
from caliber.workflow.model import (
    BranchProcess,
    Node,
    Process,
    Step,
    Task,
    TaskRef,
    UpstreamResult,
    Workflow,
    iter_refs,
    upstream_results,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from caliber.results.arrays import ValueWriter
    from caliber.results.model import ErrorInfo, Results, TaskResult
    from caliber.workflow.upstream import UpstreamValue

TRACEBACK_FILE = "caliber-traceback.txt"
STOPPED = "Cancelled"
"""The error type of a run stopped from outside: cancelled (``queue cancel``)."""
CTRL_C = "stopped by Ctrl-C"
"""The message of a task stopped by Ctrl-C (``KeyboardInterrupt``, which has none)."""


@dataclass(frozen=True)
class TaskEvent:
    """Progress: a task run starts (``kind='start'``) or ends (``'end'``), k of n."""

    kind: str
    index: int
    total: int
    name: str
    branch: int | None
    status: TaskStatus | None = None
    duration: float | None = None
    error: ErrorRecord | None = None
    result: TaskRecord | None = None
    """On ``end``: the task's full record, return value included."""
    timeout: float | None = None
    """On ``start``: the task's time limit in seconds (``Task(timeout=...)``), if it has one."""


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """An exception, as :class:`~caliber.results.model.ErrorInfo` keeps it (its fields and
    :meth:`summary`), as a plain object: see :class:`TaskRecord`."""

    type: str
    message: str
    traceback: str = ""
    task: str | None = None
    branch: int | None = None

    @classmethod
    def of(cls, info: ErrorInfo) -> ErrorRecord:
        return cls(info.type, info.message, info.traceback, info.task, info.branch)

    def summary(self) -> str:
        return error_summary(self.task, self.branch, self.type, self.message)

    def to_dict(self) -> dict[str, Any]:
        """The error as :class:`~caliber.results.model.ErrorInfo` reads it, every text
        encodable as UTF-8."""
        return {"type": valid_unicode(self.type), "message": valid_unicode(self.message),
                "traceback": valid_unicode(self.traceback),
                "task": None if self.task is None else valid_unicode(self.task),
                "branch": self.branch}


@dataclass(slots=True)
class TaskRecord:
    """One task run while the workflow runs: the fields of :class:`TaskResult`, as a plain
    object. A pinion's child never builds a pydantic model on its way (a fresh process pays
    for every page it touches); the records become TaskResults once, where they are kept."""

    name: str
    path: list[str]
    branch: int | None
    status: TaskStatus = TaskStatus.SKIPPED
    started_at: dt.datetime | None = None
    duration: float | None = None
    return_: Any = None
    conversion: str | None = None
    error: ErrorRecord | None = None
    reused_from: str | None = None
    g_set: dict[str, Any] = dataclasses.field(default_factory=dict)
    g_deleted: list[str] = dataclasses.field(default_factory=list)
    code_file: str | None = None
    code_sha256: str | None = None
    code_fingerprint: str | None = None
    inputs_fingerprint: list[str] | None = None
    reuse: str | None = None

    @classmethod
    def of(cls, result: TaskResult, **changes: Any) -> TaskRecord:
        fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(cls)}
        if result.error is not None:
            fields["error"] = ErrorRecord.of(result.error)
        return cls(**(fields | changes))

    def to_dict(self) -> dict[str, Any]:
        """The record as :class:`TaskResult` reads it (JSON values, but for ``started_at``),
        every text encodable as UTF-8."""
        return {
            "name": valid_unicode(self.name), "path": [valid_unicode(p) for p in self.path],
            "branch": self.branch, "status": self.status.value,
            "started_at": self.started_at, "duration": self.duration, "return": self.return_,
            "conversion": self.conversion,
            "error": None if self.error is None else self.error.to_dict(),
            "reused_from": self.reused_from,
            "g_set": {valid_unicode(k): v for k, v in self.g_set.items()},
            "g_deleted": [valid_unicode(k) for k in self.g_deleted],
            "code_file": None if self.code_file is None else valid_unicode(self.code_file),
            "code_sha256": self.code_sha256,
            "code_fingerprint": self.code_fingerprint,
            "inputs_fingerprint": self.inputs_fingerprint,
            "reuse": None if self.reuse is None else valid_unicode(self.reuse),
        }


def _error_info(exc: BaseException, task: str | None, branch: int | None) -> ErrorRecord:
    tb = exc.__traceback__
    # Drop the runner's own frame, so the traceback starts in the user's function.
    if tb is not None and tb.tb_frame.f_code.co_filename == __file__ and tb.tb_next is not None:
        tb = tb.tb_next
    try:
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    except Exception as failed:  # the exception's own objects may be what is broken
        text = f"(the traceback could not be formatted: {type(failed).__name__})\n"
    return ErrorRecord(
        type=type(exc).__name__, message=_message(exc), traceback=text, task=task, branch=branch
    )


def _message(exc: BaseException) -> str:
    """``str(exc)``, or a stand-in when the exception's ``__str__`` itself fails."""
    try:
        text = str(exc)
    except Exception as failed:
        return f"<str() of the exception raised {type(failed).__name__}>"
    return text if isinstance(text, str) else repr(text)


_HIDDEN_FRAMES = (  # frames of the import machinery, not of the user's code
    "<frozen",
    str(Path(__file__).resolve().parent.parent),
    str(Path(importlib.__file__).resolve().parent),
)


def _user_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` without Caliber's and importlib's own frames."""
    summary = traceback.TracebackException.from_exception(exc)
    summary.stack = traceback.StackSummary.from_list(
        [f for f in summary.stack
         if not str(f.filename).startswith(_HIDDEN_FRAMES)]
    )
    return "".join(summary.format())


def _reused(source: Results, stored: Any, what: str) -> Any:
    """A value of ``source`` a resumed run reuses, as it was returned (arrays read back)."""
    value = source.value_of(stored, what)
    if next(value_refs(value), None) is not None:
        raise ResumeError(f"cannot resume from results {source.id}: {what} is an array kept in "
                          "a queue's store, and these Results were not read from it (read "
                          "them with caliber.get_results)")
    return value


class _Run:
    def __init__(self, workflow: Workflow, on_event: Callable[[TaskEvent], None] | None,
                 values: ValueWriter | None = None) -> None:
        self.workflow = workflow
        self.on_event = on_event
        self.writer = values  # keeps big arrays as binary (None: as JSON lists)
        self.steps: list[Step] = workflow.steps()
        self.total = len(self.steps)
        self.index = 0
        self.records: dict[tuple[str, int | None], TaskRecord] = {}
        self.values: dict[tuple[str, int | None], Any] = {}
        self.errors: list[ErrorRecord] = []
        self.interrupted = False
        self.should_stop: Callable[[], bool] = lambda: False
        self.stopped_before: str | None = None  # the task a stop request kept from running
        self.stopped: ErrorRecord | None = None  # a task stopped while it ran (Ctrl-C, SIGTERM)
        self.reused: set[tuple[str, int | None]] = set()
        self.g_json: dict[str, Any] = {}  # g as JSON after the last task, to see what changed
        self.g_inexact: set[str] = set()  # g names a task of this run set to a converted value
        self.source: Results | None = None  # the Results a resumed run reuses tasks of
        self.earlier: dict[tuple[str, int | None], TaskResult] = {}
        self.g_before: dict[tuple[str, int | None], dict[str, Any]] = {}  # ... as they saw g
        self.fingerprints = Fingerprinter(str(workflow.base_dir))
        self.upstream: Mapping[UpstreamResult, UpstreamValue] = {}  # given by its pinion
        self.code: dict[str, tuple[str | None, str | None]] = {}  # function -> file, print
        for step in self.steps:
            self.records[step.task.name, step.branch] = TaskRecord(
                name=step.task.name, path=list(step.path), branch=step.branch)

    def take_over(self, source: Results) -> None:
        """Get ready to reuse the completed tasks of ``source`` (as :meth:`why_not_reused`
        allows, task by task as the run reaches it): their records, and ``g`` as each task
        found it then (replayed from what the tasks before it did; in a parallel branch
        process, from what the tasks before it in its branch did to ``g`` as it was when the
        branch process began: :mod:`caliber.workflow.branches`)."""
        if source.workflow != self.workflow.name:
            raise ResumeError(f"cannot resume from results {source.id}: they are of workflow "
                              f"{source.workflow!r}, not {self.workflow.name!r}")
        self.source = source
        parallel = {(s.task.name, s.branch): s.branch_process for s in self.steps
                    if s.branch_process is not None and s.branch_process.parallel is not None}
        g: dict[str, Any] = {}
        group: BranchProcess | None = None  # the parallel branch process replayed, if any
        start: dict[str, Any] = {}  # g as it began
        seen: dict[int | None, dict[str, Any]] = {}  # ... and g as each of its branches saw it
        for old in source.tasks:
            key = (old.name, old.branch)
            self.earlier[key] = old
            if parallel.get(key) is not group:
                group, start, seen = parallel.get(key), dict(g), {}
            own = g if group is None else seen.setdefault(old.branch, dict(start))
            self.g_before[key] = dict(own)
            for found in (g, own) if own is not g else (g,):
                for name in old.g_deleted:
                    found.pop(name, None)
                found.update(old.g_set)

    def fingerprint_code(self, known: dict[str, str] | None = None) -> None:
        """The code fingerprint of every task's function, taken once its module is imported,
        before any task runs (what a later resume compares; see
        :mod:`caliber.workflow.fingerprint`). ``known``: fingerprints a pinion learnt from
        an earlier run of the same attached files (parsing costs a fresh child about 1 ms)."""
        for task in self.workflow.tasks:
            if task.function not in self.code:
                found = (known or {}).get(task.function)
                self.code[task.function] = (
                    self.code_file(task),
                    found if found is not None else self.fingerprints.code(task.function))

    def code_file(self, task: Task) -> str | None:
        """The file that defines the task's function, relative to the workflow's folder when
        inside it; None when it has no file. (``os.path``, not pathlib: in a pinion's fresh
        child every code path run costs page faults.)"""
        found = getattr(sys.modules.get(task.function.partition(":")[0]), "__file__", None)
        if not isinstance(found, str):
            return None
        path = os.path.abspath(found)
        base = str(self.workflow.base_dir)  # resolved by Workflow
        inside = path.startswith(base.rstrip(os.sep) + os.sep)
        return (os.path.relpath(path, base) if inside else path).replace(os.sep, "/")

    def why_not_reused(self, task: Task, branch: int | None,
                       given: list[str]) -> str | None:
        """Why the run of ``task`` (in ``branch``) in the Results resumed from cannot be
        reused now (None: it can): ``given`` is its inputs fingerprint now."""
        assert self.source is not None
        source = self.source.id
        old = self.earlier.get((task.name, branch))
        if old is None:
            return f"not in results {source}"
        if old.status != TaskStatus.COMPLETED:
            return f"did not complete in {source}"
        if old.code_fingerprint is None or old.inputs_fingerprint is None:
            if all(t.code_fingerprint is None for t in self.source.tasks):
                return f"no fingerprint in results {source} (older Caliber)"
            return f"its code could not be read when it ran in {source}"
        short = task.function.partition(":")[2]
        if self.code[task.function][1] != old.code_fingerprint:
            return f"code of {short} changed"
        changed = inputs_change(old.inputs_fingerprint, given)
        if changed is not None:
            return changed
        for ref in iter_refs([task.args, task.kwargs] if branch is None
                             else [task.args[branch], task.kwargs[branch]]):
            if not all(key in self.reused for key in self.keys_of(ref, branch)):
                return f"input from {ref.task!r} was recomputed"
        return self.g_change(self.g_before.get((task.name, branch), {}))

    def g_change(self, before: dict[str, Any]) -> str | None:
        """How ``g`` now differs from ``before`` (as a task found it when it ran), or None."""
        for name in sorted(before.keys() | self.g_json.keys()):
            if name not in self.g_json:
                return f"g.{name} is gone"
            if name not in before:
                return f"g.{name} is new"
            if name in self.g_inexact or before[name] != self.g_json[name]:
                return f"g.{name} changed"
        return None

    def keys_of(self, ref: TaskRef, branch: int | None) -> list[tuple[str, int | None]]:
        """The task runs whose values ``ref`` stands for (as :meth:`value_of` takes them)."""
        if (ref.task, branch) in self.records:
            return [(ref.task, branch)]
        if (ref.task, None) in self.records:
            return [(ref.task, None)]
        return [key for key in self.records if key[0] == ref.task]

    def reuse(self, task: Task, branch: int | None) -> TaskRecord:
        """Take the earlier run of ``task`` over: its record, its value, what it did to g."""
        assert self.source is not None
        old = self.earlier[task.name, branch]
        origin = old.reused_from or self.source.id
        record = TaskRecord.of(old, reused_from=origin, reuse=f"reused from {origin}")
        self.records[task.name, branch] = record
        self.values[task.name, branch] = _reused(self.source, old.return_,
                                                 f"the value of task {old.name!r}")
        self.reused.add((task.name, branch))
        for name in old.g_deleted:
            context.g.pop(name, None)
            self.g_json.pop(name, None)
            self.g_inexact.discard(name)
        for name, value in old.g_set.items():
            setattr(context.g, name, _reused(self.source, value, f"g[{name!r}]"))
            self.g_json[name] = value
            self.g_inexact.discard(name)
        return record

    def note_g(self, record: TaskRecord) -> None:
        """Record what the task just did to g (compared as JSON with g before it)."""
        if not context.g and not self.g_json:
            return
        now = {}
        for k in list(context.g):
            now[str(k)], note = to_json(context.g.get(k), self.writer)
            if note:
                self.g_inexact.add(str(k))
        record.g_set = {k: v for k, v in now.items()
                        if k not in self.g_json or self.g_json[k] != v}
        record.g_deleted = [k for k in self.g_json if k not in now]
        self.g_json = now

    def emit(self, event: TaskEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def resolve_functions(self) -> bool:
        for task in self.workflow.tasks:
            try:
                task.resolve()
            except ImportError as exc:
                error = ErrorRecord(type="ImportError", message=str(exc), task=task.name,
                                    traceback=f"ImportError: {exc}\n")
            except (Exception, SystemExit) as exc:  # the module itself is broken or exits
                module = task.function.partition(":")[0]
                error = ErrorRecord(
                    type=type(exc).__name__,
                    message=f"importing module {module!r} for {task.function} failed: {exc}",
                    traceback=_user_traceback(exc),
                    task=task.name,
                )
            else:
                continue
            self.errors.append(error)
            for (name, _), record in self.records.items():
                if name == task.name:  # it could not run: failed, not skipped
                    record.status = TaskStatus.FAILED
                    record.error = error
        return not self.errors

    def value_of(self, ref: TaskRef, branch: int | None) -> Any:
        if (ref.task, branch) in self.values:
            return self.values[ref.task, branch]
        if (ref.task, None) in self.values:
            return self.values[ref.task, None]
        return [v for (name, _), v in self.values.items() if name == ref.task]

    def substitute(self, value: Any, branch: int | None) -> Any:
        if isinstance(value, TaskRef):
            return self.value_of(value, branch)
        if isinstance(value, UpstreamResult):
            return self.upstream[value].value
        if isinstance(value, list):
            return [self.substitute(v, branch) for v in value]
        if isinstance(value, tuple):
            return tuple(self.substitute(v, branch) for v in value)
        if isinstance(value, dict):
            return {k: self.substitute(v, branch) for k, v in value.items()}
        return value

    def run_task(self, task: Task, branch: int | None) -> bool:
        if self.should_stop():  # cancelled: no further task runs, not even other branches
            self.interrupted = True
            self.stopped_before = self.stopped_before or task.name
            return False
        self.index += 1
        record = self.records[task.name, branch]
        self.emit(TaskEvent("start", self.index, self.total, task.name, branch,
                            timeout=task.timeout))
        if branch is None:
            args, kwargs = task.args, task.kwargs
        else:
            args, kwargs = task.args[branch], task.kwargs[branch]
        given = inputs(list(args), dict(kwargs), self.upstream)
        if self.source is not None:
            record.reuse = self.why_not_reused(task, branch, given)
            if record.reuse is None:
                record = self.reuse(task, branch)
                self.emit(TaskEvent("end", self.index, self.total, task.name, branch,
                                    TaskStatus.COMPLETED, record.duration, result=record))
                return True
        record.started_at = utcnow()
        start = time.perf_counter()
        try:
            with time_limit(task.name, task.timeout):
                value = task.resolve()(
                    *self.substitute(list(args), branch), **self.substitute(dict(kwargs), branch)
                )
        except (Exception, SystemExit, KeyboardInterrupt, TaskTimeout, TaskStopped) as exc:
            record.duration = time.perf_counter() - start
            record.status = TaskStatus.FAILED
            record.error = _error_info(exc, task.name, branch)
            if isinstance(exc, KeyboardInterrupt | TaskStopped):  # stopped: the run is cancelled
                self.interrupted = True  # nothing more runs, not even other branches
                if isinstance(exc, KeyboardInterrupt):
                    record.error = dataclasses.replace(record.error, message=CTRL_C)
                else:
                    record.error = dataclasses.replace(record.error, type=STOPPED)
                self.stopped = self.stopped or record.error
            else:  # sys.exit() too; a time limit (TaskTimeout) is a failure of the task
                self.errors.append(record.error)
            self.note_g(record)  # a later task's record must not take what this one did
            self.emit(TaskEvent("end", self.index, self.total, task.name, branch,
                                TaskStatus.FAILED, record.duration, record.error, record))
            return False
        record.duration = time.perf_counter() - start
        self.values[task.name, branch] = value
        record.return_, record.conversion = to_json(value, self.writer)
        record.status = TaskStatus.COMPLETED
        self.note_g(record)
        record.code_file, record.code_fingerprint = self.code[task.function]
        record.inputs_fingerprint = given
        self.emit(TaskEvent("end", self.index, self.total, task.name, branch,
                            TaskStatus.COMPLETED, record.duration, result=record))
        return True

    def run_node(self, node: Node) -> bool:
        if isinstance(node, Task):
            return self.run_task(node, None)
        if isinstance(node, Process):
            return all(self.run_node(item) for item in node.items)  # stops at the first failure
        return self.run_branches(node)

    def run_branches(self, node: BranchProcess) -> bool:
        if node.parallel is not None:  # each branch in a process of its own
            from caliber.workflow.branches import run_parallel

            return run_parallel(self, node)
        ok = True
        for branch in range(node.branches):
            if self.interrupted:
                return False
            for task in node.items:
                if not self.run_task(task, branch):
                    ok = False
                    self.index += sum(1 for _ in node.items[node.items.index(task) + 1:])
                    break
        return ok


def run_workflow(workflow: Workflow, **options: Any) -> Results:
    """:func:`run_workflow_plain` (the same options), its Results validated as
    :class:`Results`: a run in this process."""
    from caliber.results.model import Results

    return Results.model_validate(run_workflow_plain(workflow, **options))


def run_workflow_plain(
    workflow: Workflow,
    *,
    work_dir: Path | None = None,
    on_event: Callable[[TaskEvent], None] | None = None,
    workload_id: str | None = None,
    pinion: str | None = None,
    resume: Results | None = None,
    should_stop: Callable[[], bool] | None = None,
    known_code: dict[str, str] | None = None,
    values: ValueWriter | None = None,
    upstream: Mapping[UpstreamResult, UpstreamValue] | None = None,
) -> dict[str, Any]:
    """Run every task in order and return the Results; never raises for a task's exception.

    The Results are the plain dict :class:`Results` reads (JSON values, but for the dates):
    what a pinion's child sends without building a model (:func:`run_workflow` validates it).
    With ``resume``, the tasks that completed in those Results are reused, not run again,
    where the reuse rule allows (see the module's docstring; ResumeError, before anything
    runs, when they are Results of another workflow).
    ``should_stop`` is asked before each task: once it says True no further task runs and
    the Results are cancelled (``caliber queue cancel`` of a running workload).
    ``known_code``: code fingerprints by task function, known already (a pinion's, from an
    earlier run of the same attached files).
    ``values`` keeps big arrays and frames as binary, a reference in their place
    (:mod:`caliber.results.arrays`); without it they are stored as JSON lists.
    ``upstream``: the value of each upstream result its tasks take
    (:mod:`caliber.workflow.upstream`); UpstreamError, before anything runs, when one is
    missing. The Results name the upstream Results they came from (``upstream``).
    On failure the tracebacks are also written to ``caliber-traceback.txt`` in ``work_dir``.
    """
    run = _Run(workflow, on_event, values)
    run.upstream = upstream or {}
    missing = [ref for ref in upstream_results(workflow) if ref not in run.upstream]
    if missing:
        from caliber.workflow.upstream import without

        raise without(missing, f"workflow {workflow.name!r}")
    if should_stop is not None:
        run.should_stop = should_stop
    started = utcnow()
    context.g.clear()
    if resume is not None:
        run.take_over(resume)
    base = str(workflow.base_dir)
    added = base not in sys.path
    if added:
        sys.path.insert(0, base)
    try:
        with _fresh_imports(base):
            if run.resolve_functions():
                run.fingerprint_code(known_code)
                run.run_node(workflow.process)
    finally:
        if added and base in sys.path:
            sys.path.remove(base)
    g_values: dict[str, Any] = {}
    g_notes: dict[str, str] = {}
    for key in list(context.g):
        name = valid_unicode(str(key))
        g_values[name], note = to_json(context.g.get(key), values)
        if note:
            g_notes[name] = note
    stop = run.stopped or (None if run.stopped_before is None else ErrorRecord(
        type=STOPPED, message=f"cancelled: stopped before task {run.stopped_before!r}"))
    error = run.errors[0] if run.errors else stop
    results = {
        "id": new_id(),
        "workload_id": workload_id,
        "workflow": valid_unicode(workflow.name),
        "pinion": None if pinion is None else valid_unicode(pinion),
        "status": (RunStatus.FAILED if run.errors else RunStatus.CANCELLED if stop is not None
                   else RunStatus.COMPLETED).value,
        "started_at": started,
        "finished_at": utcnow(),
        "tasks": [run.records[s.task.name, s.branch].to_dict() for s in run.steps],
        "g": g_values,
        "g_conversions": g_notes,
        "error": None if error is None else error.to_dict(),
        "work_dir": None if work_dir is None else valid_unicode(
            str(work_dir if work_dir.is_absolute() else work_dir.resolve())),
        "resumed_from": resume.id if resume is not None else None,
        "upstream": _sources(run.upstream),
    }
    if run.errors and work_dir is not None:
        write_traceback_file(work_dir, results)
    elif work_dir is not None:  # an earlier failed run's file would tell of an old error
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(work_dir, TRACEBACK_FILE))
    return results


def _sources(upstream: Mapping[UpstreamResult, UpstreamValue]) -> list[dict[str, Any]]:
    """The upstream Results the run took values from (:func:`caliber.workflow.upstream.
    sources`): those given to this run, a resumed one's too (a task it reused took the same
    value then, or it would have run again)."""
    if not upstream:
        return []
    from caliber.workflow.upstream import sources

    return sources(upstream)


class _FreshSource(importlib.machinery.SourceFileLoader):
    """Loads a module of the workflow's own folder from its source, never from a cached
    ``.pyc``: Python trusts a cache whose source has the same size and modification second,
    so a fix made within the second of the last run (one digit changed) would not run."""

    def get_code(self, fullname: str) -> Any:
        path = self.get_filename(fullname)
        return self.source_to_code(self.get_data(path), path)


@contextlib.contextmanager
def _fresh_imports(base: str) -> Iterator[None]:
    """While the run lasts, the modules of the workflow's folder ``base`` and of every folder
    below it (a package's submodules, ``pkg/mod.py``) are loaded through :class:`_FreshSource`:
    the folder's finder and a path hook for the folders below it, their finders cached
    before set aside (and put back after, with the hook taken away)."""
    inside = os.path.join(base, "")

    def hook(path: str) -> importlib.machinery.FileFinder:
        if path.startswith(inside):
            return _fresh_finder(path)
        raise ImportError("not in the workflow's folder")  # the next hook's, then

    cache = sys.path_importer_cache
    kept = {path: cache.pop(path) for path in list(cache)
            if path == base or path.startswith(inside)}
    cache[base] = _fresh_finder(base)
    sys.path_hooks.insert(0, hook)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path_hooks.remove(hook)
        for path in [p for p in cache if p == base or p.startswith(inside)]:
            del cache[path]
        cache.update(kept)


def _fresh_finder(base: str) -> importlib.machinery.FileFinder:
    """The finder of the workflow's folder on ``sys.path``: its modules through
    :class:`_FreshSource` (the fingerprints of resume read the same source that runs)."""
    machinery = importlib.machinery
    return machinery.FileFinder(base, (machinery.ExtensionFileLoader,
                                       machinery.EXTENSION_SUFFIXES),
                                (_FreshSource, machinery.SOURCE_SUFFIXES))


def write_traceback_file(work_dir: Path, results: Results | dict[str, Any]) -> Path | None:
    """Write every error of the run to ``caliber-traceback.txt``, to hand to a colleague:
    ``results`` as :class:`Results` or as :func:`run_workflow_plain` returns them. The file
    is 0600 (errors may quote values): its owner hands it on."""
    plain = results if isinstance(results, dict) else results.model_dump(by_alias=True)
    finished = plain["finished_at"].strftime("%Y-%m-%d %H:%M:%S")
    lines = [f"Caliber: workflow {plain['workflow']!r} failed at {finished} UTC "
             f"(results {plain['id']})\n"]
    errors = [t["error"] for t in plain["tasks"] if t["error"]]
    if not errors and plain["error"]:
        errors = [plain["error"]]
    for error in errors:
        summary = error_summary(error["task"], error["branch"], error["type"], error["message"])
        lines.append(f"\n{summary}\n\n{error['traceback']}")
    path = work_dir / TRACEBACK_FILE
    try:
        write_private_file(path, "".join(lines).encode("utf-8"))
    except OSError:  # a read-only or full folder must not lose the Results
        return None
    return path
