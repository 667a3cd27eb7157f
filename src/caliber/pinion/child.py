"""The child process that runs one workload, in its own working folder.

It rebuilds the workflow from the workload's document (the attachments are already written to
the working folder by the pinion), runs it with the in-process runner, and sends JSON lines to
the pinion: ``{"event": ...}`` per task start and end, then ``{"results": ...}``. Whatever the
workload prints goes to ``output.log`` in its working folder.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
from pathlib import Path
from typing import Any

from caliber.errors import CaliberError
from caliber.pinion.platform import receive_job, redirect_output
from caliber.results.model import ErrorInfo, Results, RunStatus, utcnow
from caliber.workflow.fileformat import from_document  # imported by the pinion, before forking
from caliber.workflow.runner import TaskEvent, run_workflow

OUTPUT_FILE = "output.log"


class _Sender:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]

    def event(self, event: TaskEvent) -> None:
        self.send({"event": {
            "kind": event.kind, "index": event.index, "total": event.total, "name": event.name,
            "branch": event.branch, "status": event.status.value if event.status else None,
            "duration": event.duration,
            "result": event.result.model_dump(mode="json", by_alias=True) if event.result else None,
        }})


def child_main(messages_fd: int, control_fd: int) -> None:
    """A child's life: wait for the job on the control pipe (then watched as the lifeline),
    run it, send the results."""
    run_job(receive_job(control_fd), messages_fd)


def run_job(job: dict[str, Any], messages_fd: int) -> None:
    """Run one workload; ``job`` has ``workload_id``, ``pinion``, ``work_dir``, ``workflow``."""
    sender = _Sender(messages_fd)
    work_dir = Path(job["work_dir"])
    redirect_output(str(work_dir / OUTPUT_FILE))
    faulthandler.enable(file=sys.stderr)  # a crash leaves its Python traceback in output.log
    os.chdir(work_dir)
    sys.dont_write_bytecode = True  # no __pycache__ in the run's folder
    started = utcnow()
    try:
        workflow = from_document(job["workflow"], work_dir, source=f"workload {job['workload_id']}")
    except CaliberError as exc:
        results = Results(
            workload_id=job["workload_id"], workflow=str(job["workflow"].get("name", "?")),
            pinion=job["pinion"], status=RunStatus.FAILED, started_at=started,
            finished_at=utcnow(), work_dir=str(work_dir),
            error=ErrorInfo(type=type(exc).__name__, message=str(exc)),
        )
    else:
        results = run_workflow(
            workflow, work_dir=work_dir, on_event=sender.event,
            workload_id=job["workload_id"], pinion=job["pinion"],
        )
    for stream in (sys.stdout, sys.stderr):  # the process ends with os._exit: flush first
        stream.flush()
    sender.send({"results": results.to_json_dict()})


def main() -> None:
    """``python -m caliber.pinion.child``: the spawn start method's entry point."""
    messages_fd = os.dup(1)
    child_main(messages_fd, sys.stdin.fileno())


if __name__ == "__main__":
    main()
