"""``caliber workflow ...``: Show, run, queue workflow files and print their JSON Schema."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from caliber.cli.common import error_line, json_option, print_json, target_options

if TYPE_CHECKING:
    from caliber.queue.target import QueueTarget
    from caliber.results.model import Results
    from caliber.workflow.model import Workflow
    from caliber.workflow.runner import TaskEvent

FILE = click.Path(dir_okay=False, path_type=Path)


def _load(path: Path) -> Workflow:
    from caliber.workflow.fileformat import load

    return load(path)


@click.group()
def workflow() -> None:
    """Show, run and queue workflow files (JSON files exported with Workflow.export).

    \b
    Example:
      python main.py               # defines the workflow, exports pasta.json
      caliber workflow show pasta.json
      caliber workflow run pasta.json
    """


@workflow.command(
    short_help="Draw the workflow: tree, Mermaid, DOT or JSON.",
    epilog="Example: caliber workflow show pasta.json --format mermaid > pasta.mmd",
)
@click.argument("file", type=FILE)
@click.option(
    "--format", "fmt", type=click.Choice(["tree", "mermaid", "dot", "json"]), default="tree",
    show_default=True,
    help="tree: in the terminal; mermaid/dot: diagram text; json: the validated document.",
)
@json_option
def show(file: Path, fmt: str, as_json: bool) -> None:
    """Draw the workflow in FILE: processes, branches side by side, every task's function and
    arguments, and the results tasks take from earlier tasks. --json (as --format json)
    prints the validated document."""
    wf = _load(file)
    if fmt == "json" or as_json:
        print_json(wf.to_document())
    elif fmt == "mermaid":
        from caliber.workflow.diagram import mermaid

        click.echo(mermaid(wf), nl=False)
    elif fmt == "dot":
        from caliber.workflow.diagram import dot

        click.echo(dot(wf), nl=False)
    else:
        from caliber.cli.render import print_renderable, workflow_tree

        print_renderable(workflow_tree(wf))


class _Progress:
    """One line per task as it ends; on a terminal a live line while it runs."""

    def __init__(self, *, stream_err: bool) -> None:
        from caliber.cli.render import console

        self.console = console(stderr=stream_err)
        self.live = self.console.is_terminal
        self.status: Any = None

    def __enter__(self) -> _Progress:
        if self.live:
            self.status = self.console.status("starting")
            self.status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.stop()

    def __call__(self, event: TaskEvent) -> None:
        from caliber.cli.render import progress_line

        if event.kind == "start":
            if self.status is not None:
                self.status.update(progress_line(event))
            return
        self.console.print(progress_line(event))


def _report(res: Results, *, as_json: bool) -> None:
    from caliber.cli.render import console, print_traceback, skipped_lines

    if as_json:
        print_json(res.to_json_dict())
    else:
        out = console()
        for line in skipped_lines(res):
            out.print(line)
        if res.reused:
            out.print(f"reused {len(res.reused)} task(s) of results {res.resumed_from}, "
                      "not run again")
        out.print(f"results {res.id} ({res.status.value}); see: caliber results show {res.id}")
        if res.files or res.files_skipped:
            out.print(f"kept {len(res.files)} result file(s), {len(res.files_skipped)} not kept;"
                      f" see: caliber results files {res.id}")
    if res.ok:
        return
    for task in res.tasks:
        if task.error is not None and task.error.traceback and task.error.type not in (
                "ImportError", "KeyboardInterrupt"):  # (Ctrl-C: the user knows where it was)
            title = f"{task.name}" + (f" (branch {task.branch})" if task.branch is not None else "")
            print_traceback(task.error.traceback, title, stderr=True)


@workflow.command(
    short_help="Run the workflow now and store its Results.",
    epilog="""\b
Examples:
  caliber workflow run pasta.json && caliber results show --workflow pasta
  caliber workflow run pasta.json --resume 7hq2  # only what did not complete
  caliber workflow run post.json --after-results k3v9  # upstream Results
  caliber workflow run pasta.json --json""",
)
@click.argument("file", type=FILE)
@click.option("--json", "as_json", is_flag=True,
              help="Print the Results as JSON (the progress lines then go to stderr).")
@click.option("--resume", "resume", metavar="ID",
              help="Reuse the tasks that completed in these earlier Results of the workflow "
                   "(a Results id, or a workload id: its last Results) and are unchanged: "
                   "their return values and what they put in g; the rest runs.")
@click.option("--after-results", "after_results", metavar="ID", multiple=True,
              help="The Results (an id, or a workload id: its last Results) of an upstream "
                   "workload whose task values the file takes ({\"$results\": ...}), as a "
                   "pinion gives them to a workload queued --after it. Repeatable.")
def run(file: Path, as_json: bool, resume: str | None, after_results: tuple[str, ...]) -> None:
    """Run the workflow in FILE here and now, with a line per task, store its Results in the
    local results store and print their id.

    The tasks run in FILE's folder, as a pinion runs them in its run folder: it is the current
    folder (the attached files are where the tasks look for them, files they write land there,
    caliber-traceback.txt too when a task fails) and first on the import path. The files the
    workflow's outputs= match there when it ends are kept with its Results (see: caliber
    results files ID). Exit code 0: completed, 1: a task failed, 2: bad input.
    """
    import contextlib

    from caliber.errors import CaliberError
    from caliber.queue.target import local_target
    from caliber.workflow.runner import TRACEBACK_FILE

    wf = _load(file)
    store = local_target()  # resolved here: .caliber/.env is read from the folder you are in
    with _Progress(stream_err=as_json) as progress, contextlib.chdir(wf.base_dir):
        res = wf.run(work_dir=wf.base_dir, store=True, on_event=progress, target=store,
                     resume=resume, after_results=after_results)
    _report(res, as_json=as_json)
    if res.error is not None and res.error.type == "KeyboardInterrupt":
        error_line(f"interrupted: results {res.id} keep what the finished tasks returned")
        raise SystemExit(130)
    if not res.ok:
        error = res.error
        what = error.summary() if error is not None else "a task failed"
        saved = f"; traceback saved to {_shown(wf.base_dir / TRACEBACK_FILE)}" if error else ""
        raise CaliberError(f"workflow {res.workflow!r} failed: {what}{saved}")  # exit code 1


def _shown(path: Path) -> str:
    """``path`` relative to the current folder (absolute when it is on another drive)."""
    try:
        return os.path.relpath(path)
    except ValueError:  # Windows: another drive
        return str(path)


@workflow.command(
    short_help="Print the JSON Schema of workflow files.",
    epilog="Example: caliber workflow schema > caliber-workflow.schema.json",
)
def schema() -> None:
    """Print the JSON Schema of workflow files, for editors that validate JSON.

    In VS Code, map it with "json.schemas" in settings.json, or add
    "$schema": "./caliber-workflow.schema.json" to a workflow file.
    """
    from caliber.workflow.fileformat import json_schema

    print_json(json_schema())


@workflow.command(
    "queue",
    short_help="Put the workflow in the queue for a pinion.",
    epilog="""\b
Examples:
  caliber workflow queue pasta.json -p mypinion
  caliber workflow queue pasta.json -p mypinion --resume k3v9  # after a fix
  caliber workflow queue analysis.json -p lab --not-before 22:00
  caliber workflow queue post.json -p lab --after k3v9 --priority 5
\b
WHEN: 22:00 (the next 22:00, local time), an ISO 8601 time with its offset
(2026-12-08T22:00+01:00, ...T21:00Z) or a time from now (+2h, +30m, +1h30m).
A time that has passed is taken: the workload may start at once.""",
)
@click.argument("file", type=FILE)
@click.option("-p", "--pinion", "pinion_name", required=True, metavar="NAME",
              help="Name of the pinion that should run the workflow.")
@click.option("--resume", "resume", metavar="ID",
              help="Reuse the tasks that completed in these Results (a Results id, or a "
                   "workload id: its last Results) and are unchanged; the rest runs, with "
                   "the files as they are now.")
@click.option("--after", "after", metavar="ID", multiple=True,
              help="Run only once this workload has completed (an id or unique prefix; "
                   "repeat for several). It waits meanwhile, also while that one has failed "
                   "(retried and completed, it goes on); cancelled or reset, it is cancelled "
                   "too.")
@click.option("--not-before", "not_before", metavar="WHEN",
              help="No pinion starts it before WHEN (see below).")
@click.option("--priority", type=int, default=0, metavar="N",
              help="Claim order among the workloads a pinion can start: higher first, then "
                   "oldest first (-1000 to 1000; default 0).")
@click.option("--notify", metavar="URL",
              help="When it ends, its pinion also POSTs the outcome to this http(s) address "
                   "(a Slack or Teams incoming webhook takes it), besides CALIBER_NOTIFY_URL.")
@target_options
@json_option
def queue_cmd(file: Path, pinion_name: str, resume: str | None, after: tuple[str, ...],
              not_before: str | None, priority: int, notify: str | None, target: QueueTarget,
              as_json: bool) -> None:
    """Put the workflow in FILE, with its attachments, in the queue for pinion NAME; print the
    workload id. Start the pinion with: caliber pinion init NAME.

    With --resume, a task that completed in those Results is not run again when its code
    (its function and what it uses in the attached modules), its arguments and what it
    takes from other tasks and g are unchanged; every task says in the Results why it was
    reused or ran.

    With --after, --not-before, --priority and --notify, the values are signed with the
    rest of the workload; a bad one is refused before anything is queued."""
    import datetime as dt

    from caliber.queue.api import put_workflow

    wf = _load(file)
    workload = put_workflow(wf, pinion_name, target, resume=resume, after=after,
                            not_before=not_before, priority=priority, notify=notify)
    start = workload.not_before
    if as_json:
        print_json({"id": workload.id, "workflow": wf.name, "pinion": pinion_name,
                    "status": workload.status.value, "queue": target.location,
                    "resume": resume, "after": workload.after,
                    "not_before": None if start is None else start.isoformat(),
                    "priority": workload.priority, "notify": workload.notify})
    else:
        click.echo(workload.id)
    if start is not None and start <= dt.datetime.now(dt.UTC):
        from caliber.cli.render import local_time

        click.echo(f"its start time, {local_time(start)}, has passed: it may start at once",
                   err=True)
    if not as_json and sys.stderr.isatty():
        from caliber.cli.render import plan_note

        click.echo(
            f"{workload.status.value} for pinion {pinion_name!r}"
            f"{plan_note(workload.after, start)}; run it with: caliber pinion init "
            f"{pinion_name}", err=True,
        )
