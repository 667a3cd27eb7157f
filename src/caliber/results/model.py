"""The Results of one workflow run: every task's return value, the global data, the error.

>>> results = caliber.get_results(workload_id)
>>> results["Make dough"]          # a task's return value
>>> results["Make dough", 1]       # a branched task's value in branch 1
>>> results.status, results.error  # 'completed' or 'failed', and why
>>> results.files                  # the result files kept (outputs=): path, size, sha256, mode
>>> results.upstream               # the upstream Results its $results values came from
>>> results.save_files("here")     # written under ./here, relative paths kept
>>> with results.open_file("report.pdf") as f: data = f.read()

Values are kept as JSON (:meth:`Results.to_json_dict`); a big numpy array or pandas frame as a
reference to its binary form in the queue's store (:mod:`caliber.results.arrays`). Reading a
value (``results[...]``, :attr:`Results.returns`, :attr:`Results.g`) gives the array back,
read from the store the first time it is asked for.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr

from caliber.results.arrays import ValueSource, restore, results_refs
from caliber.results.values import RunStatus as RunStatus  # callers have these from here too
from caliber.results.values import TaskStatus as TaskStatus
from caliber.results.values import error_summary
from caliber.results.values import new_id as new_id
from caliber.results.values import utcnow as utcnow
from caliber.text import valid_unicode

if TYPE_CHECKING:
    from caliber.queue.target import QueueTarget

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


class ResultFile(BaseModel):
    """A file the run made that a pattern of the workflow's ``outputs`` matched, kept in the
    queue's content store (its bytes are the blob ``sha256``)."""

    path: Text = Field(description="relative to the run folder, folders separated by '/'")
    size: int = Field(ge=0, description="bytes")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    mode: int = Field(default=0o644, ge=0, le=0o7777,
                      description="its permission bits in the run folder (0o644 is 420)")


class SkippedFile(BaseModel):
    """A file (or link, or FIFO) an output pattern matched that was not kept, and why."""

    path: Text
    reason: Text


class UpstreamSource(BaseModel):
    """The Results of an upstream workload a run took ``$results`` values from (a workload
    queued ``--after`` it, or Results given with ``--after-results``), as they were when it
    took them: which analysis run a post-processing's values came from."""

    workload: str | None = Field(
        description="the upstream workload's id (null: Results of a workflow run, given "
        "with --after-results)")
    workflow: Text = Field(description="its workflow's name")
    results: str = Field(description="the id of the Results the values were taken from")
    signature: str | None = Field(
        description="those Results' signature when they were taken: they are the same "
        "Results only while their signature is this one")
    tasks: list[Text] = Field(description="the upstream tasks whose values were taken")


class Results(BaseModel):
    """Everything a workflow run produced."""

    model_config = ConfigDict(populate_by_name=True)

    id: str = Field(default_factory=new_id)
    workload_id: str | None = None
    workflow: Text
    pinion: Text | None = None
    status: RunStatus
    started_at: dt.datetime
    finished_at: dt.datetime
    tasks: list[TaskResult] = Field(default_factory=list)
    g_json: dict[Text, Any] = Field(
        default_factory=dict, alias="g", description="the global data at the end, as stored "
        "(JSON; a big array as a reference): :attr:`g` gives the values")
    g_conversions: dict[Text, Text] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    work_dir: Text | None = None
    output: Text | None = Field(
        default=None, description="the end of what a pinion's run printed (its output.log, "
        "the last 64 KiB), kept with the Results so it reaches any machine")
    resumed_from: str | None = Field(
        default=None, description="id of the Results this run resumed (reusing its tasks)")
    files: list[ResultFile] = Field(
        default_factory=list, description="the result files kept (the workflow's outputs=), "
        "sorted by path: caliber results files, Results.save_files, Results.open_file")
    files_skipped: list[SkippedFile] = Field(
        default_factory=list, description="what an output pattern matched but was not kept: "
        "over a size limit, a link, not a regular file, unreadable")
    files_unmatched: list[Text] = Field(
        default_factory=list, description="the output patterns that matched nothing")
    upstream: list[UpstreamSource] = Field(
        default_factory=list, description="the upstream Results the run took its $results "
        "values from, one record each, in the order the workflow first takes them (empty "
        "when it takes none); signed with the rest")
    signature: str | None = Field(
        default=None, description="HMAC-SHA256 with the key of whoever stored them (a pinion, "
        "workflow run) over what a resume reuses (caliber.queue.secret.results_message): a "
        "resume reuses only Results whose signature checks with its key")

    _values: ValueSource | None = PrivateAttr(default=None)
    _loaded: dict[str, Any] = PrivateAttr(default_factory=dict)

    def reading_values(self, source: ValueSource | None) -> Results:
        """These Results, reading their stored arrays and frames from ``source`` (as
        ``caliber.get_results()`` returns them); returns ``self``."""
        self._values = source
        return self

    def value_of(self, stored: Any, what: str = "a value", *, keep: bool = True) -> Any:
        """A value as stored in these Results (JSON) as it was returned: each reference to a
        stored array or frame read back (once: kept for the next time, unless not ``keep``).
        QueueError when it cannot be read (never other numbers: a damaged one is refused,
        BlobMismatchError naming ``what``); without a source to read from, the references
        are given as they are stored."""
        source = self._values
        if source is None:
            return stored

        def load(ref: dict[str, Any]) -> Any:
            sha = ref["sha256"]
            if sha in self._loaded:
                return self._loaded[sha]
            value = source.load(ref, what)
            if keep:
                self._loaded[sha] = value
            return value

        return restore(stored, load)

    def stored_values(self) -> dict[str, dict[str, Any]]:
        """Every reference to a stored array or frame in these Results, by SHA-256."""
        return results_refs({
            "tasks": [{"return": t.return_, "g_set": t.g_set} for t in self.tasks],
            "g": self.g_json})

    @property
    def value_blobs(self) -> list[str]:
        """The SHA-256 of each blob in the queue's store these Results' values refer to
        (their big arrays and frames): a store keeps each while Results refer to it."""
        return list(self.stored_values())

    def __eq__(self, other: object) -> bool:
        """Equal when what they hold is (where their arrays are read from does not count)."""
        if not isinstance(other, Results):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    @property
    def g(self) -> dict[str, Any]:
        """The global data at the end of the run, as it was (big arrays read back)."""
        return {key: self.value_of(value, f"g[{key!r}]") for key, value in self.g_json.items()}

    _target: Any = PrivateAttr(default=None)
    """The queue whose store these Results were read from or saved to (its files are there)."""

    def save_files(self, dest: str | Path, *, names: Sequence[str] | None = None,
                   force: bool = False, target: QueueTarget | None = None) -> list[Path]:
        """Write the result files (all, or those named) under the folder ``dest``, made when
        missing, keeping their relative paths; returns the paths written. A file there
        already is refused before anything is written (UsageError), unless ``force``. Each
        file's bytes are checked against its SHA-256, and the list against the Results'
        signature, with your key (CaliberError when it does not check). ``target``: the
        queue whose store holds them (default: the one these Results came from)."""
        from caliber.results.api import save_files

        return save_files(self, Path(dest), names=names, force=force,
                          target=target or self._store())

    def open_file(self, name: str, *, target: QueueTarget | None = None) -> BinaryIO:
        """A binary stream of result file ``name`` (a path as in :attr:`files`), to use in a
        ``with``; its bytes are checked against their SHA-256 as it is read to the end."""
        from caliber.results.api import open_file

        return open_file(self, name, target=target or self._store())

    def _store(self) -> QueueTarget:
        if self._target is None:
            from caliber.errors import UsageError

            raise UsageError(f"results {self.id} were not read from a store: give target=, "
                             "or read them with caliber.get_results()")
        target: QueueTarget = self._target
        return target

    @property
    def blobs(self) -> list[str]:
        """The SHA-256 of every blob in the queue's store these Results refer to (their big
        arrays and frames, their files): a store keeps each while Results refer to it
        (``results prune``)."""
        return list(dict.fromkeys([*self.value_blobs, *(f.sha256 for f in self.files)]))

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
                    return self.value_of(run.return_, _what(run))
            raise KeyError(f"task {name!r} has no branch {branch}")
        runs = self._runs(key)
        if runs[0].branch is None:
            return self.value_of(runs[0].return_, _what(runs[0]))
        return [self.value_of(r.return_, _what(r))
                for r in sorted(runs, key=lambda r: r.branch or 0)]

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


def _what(run: TaskResult) -> str:
    """``the value of task 'solve'`` (``(branch 2)``): a value, for messages."""
    where = f" (branch {run.branch})" if run.branch is not None else ""
    return f"the value of task {run.name!r}{where}"
