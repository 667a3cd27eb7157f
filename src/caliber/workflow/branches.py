"""Parallel branches: ``BranchProcess(tasks, branches, parallel=N)``.

Each branch runs in a process of its own, forked from the workflow's process when the run
reaches the branch process, at most N at a time, lowest branch first (where there is no
``fork``, Windows, the branches run one after the other in the workflow's process, by the
same rules). The Results are those the branches give run one after the other: the same task
records in the same order, the same values. The rules that make that so:

* **g.** Each branch starts from ``g`` as it was when the branch process began and sees only
  what its own tasks do to it. When every branch has ended, their changes (each name set or
  deleted, compared as the Results store it: JSON) are merged in branch order. Two branches
  that leave one name different (set it to different values, or one sets and one deletes it)
  fail the run with ``GlobalDataConflict``, naming the branch process, both branches, their
  tasks and the name; ``g`` keeps the lower branch's value and nothing after the branch
  process runs. A task's record of what it did to ``g`` (``g_set``, ``g_deleted``) is what it
  did to ``g`` as its branch saw it: the same as a run one after the other gives, but where
  two branches set one name to the same value (there the later one's record names it too).
* **A failed task** stops its branch, as always, and the other branches start no further
  task: the tasks running then finish (their records kept), branches not started yet do not
  start; what did not run is ``skipped``. (Without ``parallel`` the other branches still run.)
* **Stops.** Ctrl-C reaches every branch's process (they are in the workflow's process
  group; the workflow's process passes it on too): each running task fails with
  ``KeyboardInterrupt``, nothing further starts, the Results are cancelled. ``queue cancel``
  (a pinion's child is asked, :func:`run_parallel` asks the branches) lets the running tasks
  finish; ``--now`` sends SIGTERM to the workload's process group, every branch's process in
  it. A pinion that kills a workload (its timeout, a lost lease, a second Ctrl-C) kills the
  whole group. A task's time limit applies to each branch's run of it, in its process.
* **Values** come back to the workflow's process as they were returned: pickled over a pipe,
  a big numpy array or frame by way of the run's values folder, the file the Results keep it
  in (:class:`~caliber.results.arrays.ValueWriter`) instead of through the pipe; a value
  pickle cannot carry comes back as the Results store it. Progress events come back as they
  happen, numbered in the order the tasks start.
* **Resume** reuses tasks inside parallel branches by the runner's rule, ``g`` being what
  the task's branch saw (:meth:`caliber.workflow.runner._Run.take_over`).

The branches' processes: :mod:`caliber.workflow.forked`. No pydantic, no threading: a
pinion's child runs this.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from caliber import context

if TYPE_CHECKING:
    from caliber.workflow.model import BranchProcess
    from caliber.workflow.runner import ErrorRecord, TaskRecord, _Run

CONFLICT = "GlobalDataConflict"
"""The error type of two parallel branches that leave one name in ``g`` different."""
_GONE: Any = object()  # a name a branch deleted from g


@dataclass
class Outcome:
    """What one branch did, as the workflow's process takes it over."""

    branch: int
    records: dict[str, TaskRecord]
    values: dict[str, Any] = field(default_factory=dict)
    g_set: dict[str, Any] = field(default_factory=dict)
    """Names the branch left different from ``g`` as it began, as JSON..."""
    g_deleted: list[str] = field(default_factory=list)
    g_live: dict[str, Any] = field(default_factory=dict)
    """... and the values of those names themselves."""
    g_inexact: set[str] = field(default_factory=set)
    errors: list[ErrorRecord] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    interrupted: bool = False
    stopped: ErrorRecord | None = None
    stopped_before: str | None = None
    written: dict[str, dict[str, Any]] = field(default_factory=dict)
    kept: dict[str, Any] = field(default_factory=dict)


def run_parallel(run: _Run, node: BranchProcess) -> bool:
    """Run the branches of ``node`` as its ``parallel`` says (see the module's docstring);
    False when one failed, the merge of ``g`` failed or the run was stopped."""
    first = run.index
    interrupted = False
    if hasattr(os, "fork"):
        from caliber.workflow.forked import Forked

        forked = Forked(run, node)
        outcomes = forked.run()
        interrupted = bool(forked.interrupts)
    else:  # pragma: no cover - Windows
        outcomes = _run_here(run, node)
    ok = _absorb(run, node, outcomes)
    run.index = first + node.branches * len(node.items)
    if interrupted and run.stopped is None:  # Ctrl-C while no task ran
        from caliber.workflow.runner import CTRL_C, ErrorRecord

        run.interrupted = True
        run.stopped = ErrorRecord("KeyboardInterrupt", CTRL_C, f"KeyboardInterrupt: {CTRL_C}\n")
    return ok and not run.interrupted


# --- one branch, in whatever process runs it ----------------------------------------------

def run_branch(run: _Run, node: BranchProcess, branch: int, quit_: Callable[[], bool],
               on_stop: Callable[[str], None]) -> Outcome:
    """Run the tasks of ``branch`` from ``g`` as it is, until one fails or ``quit_()`` says
    another branch did; its outcome."""
    start = dict(run.g_json)
    errors = len(run.errors)
    for task in node.items:
        if quit_():
            break
        if not run.run_task(task, branch):
            on_stop("interrupted" if run.interrupted else "failed")
            break
    g_set = {k: v for k, v in run.g_json.items() if k not in start or start[k] != v}
    outcome = Outcome(
        branch=branch,
        records={t.name: run.records[t.name, branch] for t in node.items},
        values={t.name: run.values[t.name, branch] for t in node.items
                if (t.name, branch) in run.values},
        g_set=g_set, g_deleted=[k for k in start if k not in run.g_json],
        g_live={k: context.g.get(k) for k in g_set}, g_inexact=run.g_inexact & set(g_set),
        errors=run.errors[errors:], reused=[t.name for t in node.items
                                            if (t.name, branch) in run.reused],
        interrupted=run.interrupted, stopped=run.stopped, stopped_before=run.stopped_before)
    del run.errors[errors:]  # taken over again, in branch order, by _absorb
    return outcome


def _run_here(run: _Run, node: BranchProcess) -> list[Outcome]:  # pragma: no cover - Windows
    """The branches one after the other in this process, by the rules of parallel ones."""
    g_start = dict(context.g._data)
    json_start, inexact_start = dict(run.g_json), set(run.g_inexact)
    outcomes: list[Outcome] = []
    for branch in range(node.branches):
        if run.interrupted or any(o.errors for o in outcomes):
            break
        outcomes.append(run_branch(run, node, branch, lambda: False, lambda _kind: None))
        context.g.clear()
        context.g._data.update(g_start)
        run.g_json, run.g_inexact = dict(json_start), set(inexact_start)
    return outcomes


# --- the merge ------------------------------------------------------------------------------

def _absorb(run: _Run, node: BranchProcess, outcomes: list[Outcome]) -> bool:
    """Take the branches' outcomes over, in branch order: records, values, errors, stops, and
    their changes to ``g``, merged (a conflict is an error of the run)."""
    ok = True
    changed: dict[str, tuple[int, Any]] = {}  # name -> (branch, JSON value or _GONE)
    conflicts: dict[str, str] = {}  # name -> what is wrong, for the first two branches
    for outcome in sorted(outcomes, key=lambda o: o.branch):
        branch = outcome.branch
        for name, record in outcome.records.items():
            run.records[name, branch] = record
        for name, value in outcome.values.items():
            run.values[name, branch] = value
        run.reused.update((name, branch) for name in outcome.reused)
        run.errors.extend(outcome.errors)
        ok = ok and not outcome.errors
        if outcome.interrupted:
            run.interrupted = True
            run.stopped = run.stopped or outcome.stopped
            run.stopped_before = run.stopped_before or outcome.stopped_before
        changes = [(name, _GONE) for name in outcome.g_deleted] + list(outcome.g_set.items())
        for name, value in changes:
            if name in changed and not _same(changed[name][1], value):
                conflicts.setdefault(name, _conflict(node, outcomes, name, changed[name],
                                                     (branch, value)))
                continue
            changed[name] = (branch, value)
            if value is _GONE:
                context.g.pop(name, None)
                run.g_json.pop(name, None)
                run.g_inexact.discard(name)
            else:
                setattr(context.g, name, outcome.g_live.get(name, value))
                run.g_json[name] = value
                if name in outcome.g_inexact:
                    run.g_inexact.add(name)
                else:
                    run.g_inexact.discard(name)
    if conflicts:
        from caliber.workflow.runner import ErrorRecord

        others = sorted(conflicts)[1:]
        more = f" (so do other branches with g.{', g.'.join(others)})" if others else ""
        message = conflicts[min(conflicts)] + more
        run.errors.append(ErrorRecord(CONFLICT, message, f"{CONFLICT}: {message}\n"))
        ok = False
    return ok


def _same(a: Any, b: Any) -> bool:
    if a is _GONE or b is _GONE:
        return a is b
    return bool(a == b)


def _conflict(node: BranchProcess, outcomes: list[Outcome], name: str,
              first: tuple[int, Any], second: tuple[int, Any]) -> str:
    """``branch process 'Cases': branches 0 and 2 leave g.limit different: 0.4 (task
    'Check' of branch 0), 0.7 (task 'Check' of branch 2); ...``."""
    label = repr(node.name) if node.name else "(unnamed)"

    def what(branch: int, value: Any) -> str:
        task = _setter(next(o for o in outcomes if o.branch == branch), name)
        by = f"task {task!r} of branch {branch}" if task else f"branch {branch}"
        if value is _GONE:
            return f"deleted ({by})"
        shown = json.dumps(value, ensure_ascii=False, default=str)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        return f"{shown} ({by})"

    return (f"branch process {label}: branches {first[0]} and {second[0]} leave g.{name} "
            f"different: {what(*first)}, {what(*second)}; parallel branches each start from g "
            "as it was when the branch process began, and may not leave one name different")


def _setter(outcome: Outcome, name: str) -> str | None:
    """The last task of the branch that set or deleted ``name`` in g."""
    found = None
    for task, record in outcome.records.items():
        if name in record.g_set or name in record.g_deleted:
            found = task
    return found
