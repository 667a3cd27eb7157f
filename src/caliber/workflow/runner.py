"""Running a workflow in this process and collecting its Results.

Failure rule: when a task raises, nothing after it in execution order runs (its process stops,
and so do the processes around it), except the other branches of the same branch process,
which still run to the end. Returns of tasks that ran are kept either way.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caliber import context
from caliber.results.convert import to_json
from caliber.results.model import (
    ErrorInfo,
    Results,
    RunStatus,
    TaskResult,
    TaskStatus,
    utcnow,
)
from caliber.workflow.model import BranchProcess, Node, Process, Step, Task, TaskRef, Workflow

TRACEBACK_FILE = "caliber-traceback.txt"


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
    error: ErrorInfo | None = None
    result: TaskResult | None = None
    """On ``end``: the task's full record, return value included."""


def _error_info(exc: BaseException, task: str | None, branch: int | None) -> ErrorInfo:
    tb = exc.__traceback__
    # Drop the runner's own frame, so the traceback starts in the user's function.
    if tb is not None and tb.tb_frame.f_code.co_filename == __file__ and tb.tb_next is not None:
        tb = tb.tb_next
    try:
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    except Exception as failed:  # the exception's own objects may be what is broken
        text = f"(the traceback could not be formatted: {type(failed).__name__})\n"
    return ErrorInfo(
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


class _Run:
    def __init__(self, workflow: Workflow, on_event: Callable[[TaskEvent], None] | None) -> None:
        self.workflow = workflow
        self.on_event = on_event
        self.steps: list[Step] = workflow.steps()
        self.total = len(self.steps)
        self.index = 0
        self.records: dict[tuple[str, int | None], TaskResult] = {}
        self.values: dict[tuple[str, int | None], Any] = {}
        self.errors: list[ErrorInfo] = []
        self.interrupted = False
        for step in self.steps:
            self.records[step.task.name, step.branch] = TaskResult(
                name=step.task.name, path=list(step.path), branch=step.branch,
                status=TaskStatus.SKIPPED,
            )

    def emit(self, event: TaskEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def resolve_functions(self) -> bool:
        for task in self.workflow.tasks:
            try:
                task.resolve()
            except ImportError as exc:
                error = ErrorInfo(type="ImportError", message=str(exc), task=task.name,
                                  traceback=f"ImportError: {exc}\n")
            except (Exception, SystemExit) as exc:  # the module itself is broken or exits
                module = task.function.partition(":")[0]
                error = ErrorInfo(
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
        if isinstance(value, list):
            return [self.substitute(v, branch) for v in value]
        if isinstance(value, tuple):
            return tuple(self.substitute(v, branch) for v in value)
        if isinstance(value, dict):
            return {k: self.substitute(v, branch) for k, v in value.items()}
        return value

    def run_task(self, task: Task, branch: int | None) -> bool:
        self.index += 1
        record = self.records[task.name, branch]
        self.emit(TaskEvent("start", self.index, self.total, task.name, branch))
        if branch is None:
            args, kwargs = task.args, task.kwargs
        else:
            args, kwargs = task.args[branch], task.kwargs[branch]
        record.started_at = utcnow()
        start = time.perf_counter()
        try:
            value = task.resolve()(
                *self.substitute(list(args), branch), **self.substitute(dict(kwargs), branch)
            )
        except (Exception, SystemExit, KeyboardInterrupt) as exc:  # sys.exit(), Ctrl-C too
            if isinstance(exc, KeyboardInterrupt):
                self.interrupted = True  # nothing more runs, not even other branches
            record.duration = time.perf_counter() - start
            record.status = TaskStatus.FAILED
            record.error = _error_info(exc, task.name, branch)
            self.errors.append(record.error)
            self.emit(TaskEvent("end", self.index, self.total, task.name, branch,
                                TaskStatus.FAILED, record.duration, record.error, record))
            return False
        record.duration = time.perf_counter() - start
        self.values[task.name, branch] = value
        record.return_, record.conversion = to_json(value)
        record.status = TaskStatus.COMPLETED
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


def run_workflow(
    workflow: Workflow,
    *,
    work_dir: Path | None = None,
    on_event: Callable[[TaskEvent], None] | None = None,
    workload_id: str | None = None,
    pinion: str | None = None,
) -> Results:
    """Run every task in order and return the Results; never raises for a task's exception.

    On failure the tracebacks are also written to ``caliber-traceback.txt`` in ``work_dir``.
    """
    run = _Run(workflow, on_event)
    started = utcnow()
    context.g.clear()
    base = str(workflow.base_dir)
    added = base not in sys.path
    if added:
        sys.path.insert(0, base)
    try:
        if run.resolve_functions():
            run.run_node(workflow.process)
    finally:
        if added and base in sys.path:
            sys.path.remove(base)
    g_values: dict[str, Any] = {}
    g_notes: dict[str, str] = {}
    for key in list(context.g):
        g_values[str(key)], note = to_json(context.g.get(key))
        if note:
            g_notes[str(key)] = note
    results = Results(
        workload_id=workload_id,
        workflow=workflow.name,
        pinion=pinion,
        status=RunStatus.FAILED if run.errors else RunStatus.COMPLETED,
        started_at=started,
        finished_at=utcnow(),
        tasks=[run.records[s.task.name, s.branch] for s in run.steps],
        g=g_values,
        g_conversions=g_notes,
        error=run.errors[0] if run.errors else None,
        work_dir=str(work_dir.resolve()) if work_dir else None,
    )
    if run.errors and work_dir is not None:
        write_traceback_file(work_dir, results)
    return results


def write_traceback_file(work_dir: Path, results: Results) -> Path | None:
    """Write every error of the run to ``caliber-traceback.txt``, to hand to a colleague."""
    finished = results.finished_at.strftime("%Y-%m-%d %H:%M:%S")
    lines = [f"Caliber: workflow {results.workflow!r} failed at {finished} UTC "
             f"(results {results.id})\n"]
    errors = [t.error for t in results.tasks if t.error]
    if not errors and results.error:
        errors = [results.error]
    for error in errors:
        lines.append(f"\n{error.summary()}\n\n{error.traceback}")
    path = work_dir / TRACEBACK_FILE
    try:
        path.write_text("".join(lines), encoding="utf-8")
    except OSError:  # a read-only or full folder must not lose the Results
        return None
    return path
