"""The Results of one workflow run: every task's return value, the global data, the error.

>>> results = caliber.get_results(workload_id)
>>> results["Make dough"]          # a task's return value
>>> results["Make dough", 1]       # a branched task's value in branch 1
>>> results.status, results.error  # 'completed' or 'failed', and why
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from caliber.results.values import RunStatus as RunStatus  # callers have these from here too
from caliber.results.values import TaskStatus as TaskStatus
from caliber.results.values import error_summary
from caliber.results.values import new_id as new_id
from caliber.results.values import utcnow as utcnow
from caliber.text import valid_unicode

Text = Annotated[str, AfterValidator(valid_unicode)]
"""A string that encodes as UTF-8 (a task's exception message may hold lone surrogates)."""


class ErrorInfo(BaseModel):
    """An exception: its type, message and the full traceback, and where it happened."""

    type: Text
    message: Text
    traceback: Text = ""
    task: Text | None = None
    branch: int | None = None

    def summary(self) -> str:
        return error_summary(self.task, self.branch, self.type, self.message)


class TaskResult(BaseModel):
    """One task run: its place, status, duration and return value (as JSON)."""

    model_config = ConfigDict(populate_by_name=True)

    name: Text
    path: list[Text] = Field(default_factory=list, description="processes from the root")
    branch: int | None = None
    status: TaskStatus
    started_at: dt.datetime | None = None
    duration: float | None = Field(default=None, description="seconds")
    return_: Any = Field(default=None, alias="return")
    conversion: Text | None = Field(
        default=None,
        description="what was converted to store the return value as JSON, if anything",
    )
    error: ErrorInfo | None = None
    reused_from: str | None = Field(
        default=None,
        description="id of the Results whose run of this task was reused (a resumed run)",
    )
    g_set: dict[Text, Any] = Field(
        default_factory=dict, description="global data the task set or changed (as JSON)")
    g_deleted: list[Text] = Field(
        default_factory=list, description="global data names the task removed")
    code_file: Text | None = Field(
        default=None, description="the file of the task's function, when it completed")
    code_sha256: str | None = Field(
        default=None, description="SHA-256 of that file then (Results of a Caliber from "
        "before code fingerprints; a resume no longer reuses such a task)")
    code_fingerprint: str | None = Field(
        default=None, description="SHA-256 of the normalised code of the task's function and "
        "of what it reaches in the workflow's own modules, when it completed (a resume "
        "compares it: caliber.workflow.fingerprint)")
    inputs_fingerprint: list[str] | None = Field(
        default=None, description="a SHA-256 per argument as stored (positional, then "
        "name=SHA-256 per keyword), when it completed (a resume compares it)")
    reuse: Text | None = Field(
        default=None, description="in a resumed run: 'reused from R', or why the task ran "
        "again ('code of solve changed', 'argument 2 changed', ...)")


class Results(BaseModel):
    """Everything a workflow run produced."""

    id: str = Field(default_factory=new_id)
    workload_id: str | None = None
    workflow: Text
    pinion: Text | None = None
    status: RunStatus
    started_at: dt.datetime
    finished_at: dt.datetime
    tasks: list[TaskResult] = Field(default_factory=list)
    g: dict[Text, Any] = Field(default_factory=dict)
    g_conversions: dict[Text, Text] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    work_dir: Text | None = None
    output: Text | None = Field(
        default=None, description="the end of what a pinion's run printed (its output.log, "
        "the last 64 KiB), kept with the Results so it reaches any machine")
    resumed_from: str | None = Field(
        default=None, description="id of the Results this run resumed (reusing its tasks)")
    signature: str | None = Field(
        default=None, description="HMAC-SHA256 with the key of whoever stored them (a pinion, "
        "workflow run) over what a resume reuses (caliber.queue.secret.results_message): a "
        "resume reuses only Results whose signature checks with its key")

    @property
    def reused(self) -> list[TaskResult]:
        """The task runs taken over from earlier Results instead of run again."""
        return [t for t in self.tasks if t.reused_from is not None]

    def _runs(self, name: str) -> list[TaskResult]:
        runs = [t for t in self.tasks if t.name == name]
        if not runs:
            known = ", ".join(repr(t) for t in dict.fromkeys(t.name for t in self.tasks))
            raise KeyError(f"no task {name!r} in these results (tasks: {known})")
        return runs

    def __getitem__(self, key: str | tuple[str, int]) -> Any:
        """A task's return value; a branched task's list of values, or ``[name, branch]``."""
        if isinstance(key, tuple):
            name, branch = key
            for run in self._runs(name):
                if run.branch == branch:
                    return run.return_
            raise KeyError(f"task {name!r} has no branch {branch}")
        runs = self._runs(key)
        if runs[0].branch is None:
            return runs[0].return_
        return [r.return_ for r in sorted(runs, key=lambda r: r.branch or 0)]

    def __contains__(self, name: object) -> bool:
        return any(t.name == name for t in self.tasks)

    def get(self, name: str, default: Any = None, *, branch: int | None = None) -> Any:
        try:
            return self[name] if branch is None else self[name, branch]
        except KeyError:
            return default

    @property
    def ok(self) -> bool:
        return self.status == RunStatus.COMPLETED

    @property
    def returns(self) -> dict[str, Any]:
        """Every task's return value by name (branched tasks as lists)."""
        return {name: self[name] for name in dict.fromkeys(t.name for t in self.tasks)}

    def to_json_dict(self) -> dict[str, Any]:
        """The stable JSON form (what ``caliber results show --json`` prints)."""
        return self.model_dump(mode="json", by_alias=True)

    def summary(self) -> dict[str, Any]:
        """The short form listed by ``caliber results list --json``."""
        return {
            "id": self.id,
            "workload_id": self.workload_id,
            "workflow": self.workflow,
            "pinion": self.pinion,
            "status": self.status.value,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "resumed_from": self.resumed_from,
        }

    def __repr__(self) -> str:
        return f"Results(id={self.id!r}, workflow={self.workflow!r}, status={self.status.value!r})"
