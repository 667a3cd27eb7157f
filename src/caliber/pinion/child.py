"""The child process that runs one workload, in its own working folder.

It rebuilds the workflow from the workload's document (the attachments are already written to
the working folder by the pinion), runs it with the in-process runner, and sends JSON lines to
the pinion: ``{"event": ...}`` per task start and end, then ``{"results": ...}``, once the
processes the workload left running are killed (on Linux even those in other sessions: the
child is a subreaper, see :mod:`caliber.pinion.platform`). Whatever the
workload prints goes to ``output.log`` in its working folder; its standard input is
``/dev/null`` (a task calling ``input()`` gets end-of-file instead of stopping the child with
SIGTTIN). The workload runs in this process and could write to the message pipe itself:
:func:`caliber.pinion.messages.read_message` is how the pinion reads a line, and anything that
is not one of these messages fails the workload instead of the pinion.

Nothing this module imports loads pydantic or threading: a fork server forks children from a
process holding only these modules (see :mod:`caliber.pinion.platform`).
"""

from __future__ import annotations

import datetime as dt
import faulthandler
import io
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caliber.errors import CaliberError
from caliber.pinion.follow import OUTPUT_FILE
from caliber.pinion.platform import (
    become_subreaper,
    end_descendants,
    receive_job,
    redirect_output,
)
from caliber.results.arrays import VALUES_DIR, FolderValues, ValueWriter, restore
from caliber.results.values import RunStatus, new_id, utcnow
from caliber.workflow.document import build_workflow
from caliber.workflow.limits import stop_running_task
from caliber.workflow.model import UpstreamResult
from caliber.workflow.runner import ErrorRecord, TaskEvent, run_workflow_plain

if TYPE_CHECKING:
    from caliber.results.model import Results
    from caliber.workflow.upstream import UpstreamValue


class _Sender:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message, separators=(",", ":"), default=_date) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]

    def event(self, event: TaskEvent) -> None:
        self.send({"event": {
            "kind": event.kind, "index": event.index, "total": event.total, "name": event.name,
            "branch": event.branch, "status": event.status.value if event.status else None,
            "duration": event.duration, "timeout": event.timeout,
            "result": event.result.to_dict() if event.result else None,
        }})


def _date(value: Any) -> str:
    """The one kind of value in a message that JSON has no form for: a date."""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} in a child's message")


def child_main(messages_fd: int, control_fd: int) -> None:
    """A child's life: get ready for a workload (:func:`ready_for_work`, while a spare child
    waits), wait for the job on the control pipe (see :func:`receive_job` for its lifeline),
    run it, send the results."""
    stopping = ready_for_work()
    job = receive_job(control_fd)
    try:
        run_job(job, messages_fd, stopping)
    except BaseException:  # Caliber's own failure: leave its traceback in output.log
        end_descendants()
        traceback.print_exc()
        sys.stderr.flush()
        raise


def ready_for_work() -> list[int]:
    """What a child does before its job is known, off the critical path: standard input
    becomes ``/dev/null`` (a workload reading it gets end-of-file at once); ``sys.stdout``
    and ``sys.stderr`` become text files on fds 1 and 2 (UTF-8, a character they cannot
    encode written as an escape), so whatever a workload prints follows those fds once the
    job points them at ``output.log`` (whatever ``sys.stdout`` was before, a test runner's
    capture say); a crash's Python traceback goes to fd 2 too; no bytecode is written (no
    ``__pycache__`` in a run's folder). Returns the list a SIGUSR1 from the pinion (a
    cancelled workload) appends to: the running task finishes, no further one starts."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    if not _text_on(sys.stdin, 0):
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
    stopping: list[int] = []  # a plain list: a fresh process pays for every object it touches
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, lambda *_: stopping.append(1))
    for fd, name in ((1, "stdout"), (2, "stderr")):
        stream = getattr(sys, name)
        stream.flush()
        if _text_on(stream, fd):  # the usual case: the same file object, told what to do
            stream.reconfigure(encoding="utf-8", errors="backslashreplace", line_buffering=fd == 2)
        else:  # a test runner's capture, say: a new one on the fd
            setattr(sys, name, open(fd, "w", encoding="utf-8", errors="backslashreplace",  # noqa: SIM115
                                    closefd=False, buffering=1 if fd == 2 else -1))
    faulthandler.enable(file=sys.stderr)
    sys.dont_write_bytecode = True
    return stopping


def _text_on(stream: object, fd: int) -> bool:
    """Whether ``stream`` is a plain text file on ``fd`` (not a capture, not closed)."""
    try:
        return isinstance(stream, io.TextIOWrapper) and stream.fileno() == fd
    except (OSError, ValueError):
        return False


def run_job(job: dict[str, Any], messages_fd: int, stopping: list[int]) -> None:
    """Run one workload; ``job`` has ``workload_id``, ``pinion``, ``work_dir``, ``workflow``
    (the document as :func:`caliber.workflow.fileformat.check_document` returned it: the
    pinion checked it), ``resume`` (the earlier Results a resumed workload reuses, their
    stored arrays put in the run's values folder by the pinion), ``code`` (code fingerprints
    by task function its pinion learnt from an earlier run of the same attached files) and
    ``array_inline_max`` (bytes above which an array is written there as ``.npy``, not sent
    as JSON; None: never) and ``upstream`` (the upstream values its tasks take, as stored,
    checked by the pinion, which put their stored arrays in the values folder:
    :func:`caliber.pinion.upstream.resolve`).
    ``stopping`` becomes true when the workload is cancelled (see :func:`ready_for_work`).
    Nothing on the way of a workload that runs builds a pydantic model: the pinion
    validates the messages."""
    sender = _Sender(messages_fd)
    _stop_on_sigterm(stopping)
    work_dir = Path(job["work_dir"])
    redirect_output(os.path.join(job["work_dir"], OUTPUT_FILE))
    os.chdir(work_dir)
    started = utcnow()
    try:
        workflow = build_workflow(job["workflow"], work_dir, trusted=True,
                                  source=f"workload {job['workload_id']}")
        resume = _resume(job)
        limit = job.get("array_inline_max")
        results = run_workflow_plain(
            workflow, work_dir=work_dir, on_event=sender.event,
            workload_id=job["workload_id"], pinion=job["pinion"], resume=resume,
            should_stop=lambda: bool(stopping), known_code=job.get("code"),
            values=None if limit is None else ValueWriter(work_dir / VALUES_DIR, limit),
            upstream=_upstream(job),
        )
    except CaliberError as exc:  # a missing attachment, or a resume that cannot be done
        results = {
            "id": new_id(), "workload_id": job["workload_id"],
            "workflow": str(job["workflow"].get("name", "?")), "pinion": job["pinion"],
            "status": RunStatus.FAILED.value, "started_at": started, "finished_at": utcnow(),
            "work_dir": str(work_dir),
            "error": ErrorRecord(type=type(exc).__name__, message=str(exc)).to_dict(),
        }
    end_descendants()  # what the workload left running ends with it, before its verdict
    for stream in (sys.stdout, sys.stderr):  # the process ends with os._exit: flush first
        stream.flush()
    sender.send({"results": results})


STOPPED = "stopped while it ran (queue cancel --now)"
"""Why a task stopped by SIGTERM failed; its pinion says who cancelled the workload."""


def _stop_on_sigterm(stopping: list[int]) -> None:
    """SIGTERM (sent by the pinion to the workload's processes, ``queue cancel --now``) stops
    the running task (:func:`caliber.workflow.limits.stop_running_task`), and no further one
    starts: the Results say cancelled, with what the finished tasks returned."""

    def stop(_signum: int, _frame: object) -> None:
        stopping.append(2)
        stop_running_task(STOPPED)

    signal.signal(signal.SIGTERM, stop)


def _resume(job: dict[str, Any]) -> Results | None:
    """The earlier Results a resumed workload reuses tasks of (``retry --resume``, ``workflow
    queue --resume``): its own or another workload's of the same workflow, as the grant its
    pinion checked allows (the runner refuses another workflow's)."""
    if job.get("resume") is None:
        return None
    from caliber.results.model import Results  # only here: a child of a resumed workload

    earlier = Results.model_validate(job["resume"])
    return earlier.reading_values(FolderValues(Path(job["work_dir"]) / VALUES_DIR))


def _upstream(job: dict[str, Any]) -> dict[UpstreamResult, UpstreamValue] | None:
    """The upstream values the workload's tasks take (``$results``), each stored array read
    from the run's values folder (NotFoundError, BlobMismatchError: the run fails)."""
    if not job.get("upstream"):
        return None
    from caliber.workflow.upstream import UpstreamValue

    source = FolderValues(Path(job["work_dir"]) / VALUES_DIR)
    found: dict[UpstreamResult, UpstreamValue] = {}
    for entry in job["upstream"]:
        ref = UpstreamResult(**entry["ref"])
        value = restore(entry["stored"], _loader(source, f"the result of {ref.describe()}"))
        found[ref] = UpstreamValue(entry["stored"], value, entry["results"], entry["workload"],
                                   entry["workflow"], entry["signature"])
    return found


def _loader(source: FolderValues, what: str) -> Callable[[dict[str, Any]], Any]:
    return lambda ref: source.load(ref, what)


def main() -> None:
    """``python -m caliber.pinion.child``: the spawn start method's entry point."""
    messages_fd = os.dup(1)
    control_fd = os.dup(0)  # stdin becomes /dev/null once the job has arrived
    become_subreaper()
    child_main(messages_fd, control_fd)


if __name__ == "__main__":
    main()
