"""Following a workload while it runs: its run folder, its progress and its output.

A pinion keeps ``caliber-progress.json`` in each run folder (:func:`write_progress`: which
task runs, k of n, since when) next to ``output.log``, and hands the last :data:`OUTPUT_KEPT`
bytes of ``output.log`` in with the Results (``Results.output``). The progress file is written
once a task has run for a tenth of a second and kept that close to the running task: a
workload whose tasks end sooner never gets one (its Results tell the rest).

``caliber queue view`` and ``caliber queue logs`` read them back (:func:`look`). On the local
queue the run folder is on this machine: the one the queue names once the run ended, or, while
it runs, the newest ``ID-N`` folder under the pinion's runs folder, so progress and output are
read as they are written. A workload run by a remote pinion has its folder on that machine:
its output arrives with its Results, and its progress is what the pinion wrote with its last
lease renewal (``Workload.progress``: task k of n as of then; the elapsed time is counted to
now).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caliber.platform import write_private_file

if TYPE_CHECKING:
    from caliber.queue.api import CheckedWorkload
    from caliber.queue.target import QueueTarget

PROGRESS_FILE = "caliber-progress.json"
OUTPUT_FILE = "output.log"
OUTPUT_KEPT = 64 * 1024  # bytes: the end of output.log handed in with the Results
FOLLOW_POLL = 0.5  # seconds between looks at a followed workload on the local queue
FOLLOW_POLL_REMOTE = 5.0  # seconds between looks on the remote queue (its requests are limited)


def pinion_runs(name: str, runs: Path | None = None) -> Path:
    """The folder of pinion ``name``'s run folders (``runs/NAME``, the name made safe)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "pinion"
    if runs is None:
        from caliber.paths import runs_dir  # not in a pinion's child, which needs only OUTPUT_FILE

        runs = runs_dir()
    return runs / safe


def write_progress(work_dir: Path, progress: dict[str, Any]) -> None:
    """Replace the run folder's progress file in one step (a reader never sees half of it);
    a folder that cannot be written only loses the progress, never the run. The file is
    0600."""
    path = work_dir / PROGRESS_FILE
    partial = path.with_name(PROGRESS_FILE + ".partial")
    try:
        write_private_file(partial, json.dumps(progress).encode("utf-8"))
        os.replace(partial, path)
    except OSError:
        pass


def output_tail(work_dir: Path, limit: int = OUTPUT_KEPT) -> str | None:
    """The last ``limit`` bytes of the run's ``output.log`` as text (None: no such file)."""
    path = os.path.join(work_dir, OUTPUT_FILE)
    try:
        if os.stat(path).st_size == 0:  # most workloads print nothing: no need to open it
            return ""
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(size - limit, 0))
            data = f.read()
    except OSError:
        return None
    cut = f"[the first {size - limit} bytes are left out]\n" if size > limit else ""
    return cut + data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Progress:
    """Where a running workload is: task ``index`` of ``total`` and since when."""

    index: int
    total: int
    name: str
    branch: int | None
    task_started_at: dt.datetime
    started_at: dt.datetime
    """When the run (this attempt) started."""

    def to_dict(self, now: dt.datetime) -> dict[str, Any]:
        return {
            "task": self.index, "tasks": self.total, "name": self.name, "branch": self.branch,
            "task_elapsed": round((now - self.task_started_at).total_seconds(), 1),
            "elapsed": round((now - self.started_at).total_seconds(), 1),
        }

    def line(self, now: dt.datetime) -> str:
        """``task 2 of 3: Moment (12.0 s), running 14.5 s``."""
        branch = f" [branch {self.branch}]" if self.branch is not None else ""
        task = (now - self.task_started_at).total_seconds()
        run = (now - self.started_at).total_seconds()
        return (f"task {self.index} of {self.total}: {self.name}{branch} ({task:.1f} s), "
                f"running {run:.1f} s")


def read_progress(work_dir: Path) -> Progress | None:
    """The run folder's progress, or None (no task started yet, or not a pinion's folder)."""
    try:
        data = json.loads((work_dir / PROGRESS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return parse_progress(data)


def parse_progress(data: Any) -> Progress | None:
    """The progress in the progress file's form (``started_at``, ``task``: index, total, name,
    branch, started_at), as the file holds it or a remote pinion's lease renewal carried it
    (``Workload.progress``); None when there is none, or it is not in that form."""
    try:
        task = data["task"]
        if task is None:
            return None
        branch = task.get("branch")
        return Progress(
            index=int(task["index"]), total=int(task["total"]), name=str(task["name"]),
            branch=branch if isinstance(branch, int) else None,
            task_started_at=_aware(dt.datetime.fromisoformat(task["started_at"])),
            started_at=_aware(dt.datetime.fromisoformat(data["started_at"])),
        )
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
        return None


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def newest_run_folder(pinion: str, workload_id: str, runs: Path | None = None) -> Path | None:
    """The newest ``ID-N`` run folder of the workload under pinion's runs folder."""
    numbered = []
    for path in pinion_runs(pinion, runs).glob(f"{workload_id}-*"):
        number = path.name[len(workload_id) + 1:]
        if number.isdigit() and path.is_dir():
            numbered.append((int(number), path))
    return max(numbered)[1] if numbered else None


@dataclass(frozen=True)
class Look:
    """A workload as ``queue view`` and ``queue logs`` show it: the queue's record, its run
    folder when this machine has it, and its progress while it runs."""

    item: CheckedWorkload
    work_dir: Path | None
    progress: Progress | None
    local: bool
    """Whether the queue is the local one (the pinion runs on this machine)."""

    @property
    def status(self) -> str:
        return self.item.workload.status.value

    def detail(self) -> dict[str, Any]:
        """``queue view --json``: the workload's detail with the real run folder and the
        progress (``task``, ``tasks``, ``name``, ``branch``, ``elapsed`` seconds...)."""
        now = dt.datetime.now(dt.UTC)
        return {
            **self.item.detail(),
            "work_dir": str(self.work_dir) if self.work_dir else self.item.workload.work_dir,
            "progress": self.progress.to_dict(now) if self.progress else None,
        }


def look(workload_id: str, target: QueueTarget) -> Look:
    """The workload (by id or unique prefix) with its run folder and progress."""
    from caliber.queue.api import view_workload

    item = view_workload(workload_id, target)
    workload = item.workload
    local = target.kind == "sqlite"
    work_dir: Path | None = None
    if workload.work_dir and Path(workload.work_dir).is_dir():
        work_dir = Path(workload.work_dir)  # the run ended; a remote pinion on this machine too
    elif local and workload.status.value != "queued":
        work_dir = newest_run_folder(workload.pinion, workload.id)
    running = workload.status.value == "running"
    progress = read_progress(work_dir) if work_dir is not None and running else None
    if progress is None and running and workload.progress is not None:
        progress = parse_progress(workload.progress)  # a remote pinion's, at its last renewal
    return Look(item=item, work_dir=work_dir, progress=progress, local=local)


def read_output(found: Look, target: QueueTarget) -> Iterator[bytes] | None:
    """What the workload printed, in batches (memory bounded whatever its size):
    ``output.log`` in its run folder on this machine, else the output kept with its Results;
    None when neither is there (yet)."""
    if found.work_dir is not None and (found.work_dir / OUTPUT_FILE).is_file():
        from caliber.pinion.outputlog import stream

        return stream(found.work_dir)
    text = _kept_output(found, target)
    return None if text is None else iter([text.encode("utf-8", errors="surrogateescape")])


def _kept_output(found: Look, target: QueueTarget) -> str | None:
    """The end of the output kept with the workload's Results (the last 64 KiB)."""
    results_id = found.item.workload.results_id
    if results_id is None:
        return None
    from caliber.results.api import get_results

    return get_results(results_id=results_id, target=target).output


def follow(workload_id: str, target: QueueTarget,
           notice: Callable[[str], None] | None = None) -> Iterator[bytes]:
    """The workload's output as it is written, until the workload has finished (or is
    removed): ``output.log`` read as it grows on the local queue; on the remote queue the
    output kept with its Results, once it has them. ``notice`` is told, in one line, when
    output was lost to the reader: cut from the log (its cap), the log truncated or replaced.
    """
    from caliber.errors import NotFoundError
    from caliber.pinion.outputlog import LogReader

    found = look(workload_id, target)
    poll = FOLLOW_POLL if found.local else FOLLOW_POLL_REMOTE
    reader: LogReader | None = None
    try:
        while True:
            if found.work_dir is not None and (reader is None or reader.folder != found.work_dir):
                if reader is not None:
                    reader.close()
                reader = LogReader(found.work_dir, notice)  # a new attempt writes a new folder
            if reader is not None:
                yield from reader.read()
            if found.status not in ("queued", "running"):  # finished: nothing more comes
                if reader is None or not reader.seen:
                    text = _kept_output(found, target)
                    if text:
                        yield text.encode("utf-8", errors="surrogateescape")
                return
            time.sleep(poll)
            try:
                found = look(found.item.workload.id, target)
            except NotFoundError:  # reset while followed
                if reader is not None:
                    yield from reader.read()
                return
    finally:
        if reader is not None:
            reader.close()
