"""``caliber results ...``: List, show and prune stored Results (every task's return value)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from caliber.cli.common import PAGE, Bounded, json_option, print_json, target_options
from caliber.cli.complete import results_ids

if TYPE_CHECKING:
    import datetime as dt

    from caliber.queue.target import QueueTarget
    from caliber.results.model import Results


@click.group()
def results() -> None:
    """List and show stored Results: every task's return value, the global data g, the error.

    \b
    Example:
      caliber results list --workflow pasta
      caliber results show k3v9q2mxa7
      caliber results prune --older-than 30d --dry-run
    """


@results.command(
    "list",
    short_help="List stored results, newest first.",
    epilog="Example: caliber results list --workflow pasta --json",
)
@click.option("--workflow", "workflow_name", metavar="NAME", help="Only results of this workflow.")
@click.option("--pinion", "pinion_name", metavar="NAME", help="Only results from this pinion.")
@click.option("-n", "--limit", type=Bounded(PAGE), default=50, show_default=True,
              help="Show at most this many (newest first).")
@target_options
@json_option
def list_cmd(
    workflow_name: str | None,
    pinion_name: str | None,
    limit: int,
    target: QueueTarget,
    as_json: bool,
) -> None:
    """List stored results, newest first."""
    from caliber.results.api import list_results

    found = list_results(target, workflow=workflow_name, pinion=pinion_name, limit=limit)
    if as_json:
        print_json([r.summary() for r in found])
        return
    from caliber.cli.render import console, results_table

    out = console()
    if not found:
        out.print("no results stored yet; run a workflow with: caliber workflow run FILE")
        return
    out.print(results_table(found))


def _find(
    id_: str | None, workflow_name: str | None, pinion_name: str | None, target: QueueTarget
) -> Results:
    """Results by results id (or prefix); failing that, by workload id; or the latest."""
    from caliber.errors import NotFoundError
    from caliber.results.api import get_results

    def fetch(workload_id: str | None = None, results_id: str | None = None) -> Results:
        return get_results(
            workload_id, results_id=results_id, workflow=workflow_name, pinion=pinion_name,
            target=target,
        )

    if id_ is None:
        return fetch()
    try:
        return fetch(results_id=id_)
    except NotFoundError as first:
        try:
            return fetch(workload_id=id_)
        except NotFoundError:
            raise first from None


F = TypeVar("F", bound=Callable[..., Any])


def latest_options(command: F) -> F:
    """``--workflow`` and ``--pinion``: which latest Results a command without ID takes."""
    command = click.option("--pinion", "pinion_name", metavar="NAME",
                           help="Without ID: the latest results from this pinion.")(command)
    return click.option("--workflow", "workflow_name", metavar="NAME",
                        help="Without ID: the latest results of this workflow.")(command)


@results.command(
    "show",
    short_help="Show one Results: every task's return value.",
    epilog="Example: caliber results show k3v9   (or: caliber results show --workflow pasta)",
)
@click.argument("id_", metavar="[ID]", required=False, shell_complete=results_ids)
@latest_options
@target_options
@json_option
def show_cmd(
    id_: str | None,
    workflow_name: str | None,
    pinion_name: str | None,
    target: QueueTarget,
    as_json: bool,
) -> None:
    """Show one Results in full: every task's status, duration and return value, the global
    data g and the error with its traceback; the upstream Results their $results values came
    from, and whether their signature checks with your key.

    ID is a results id or a workload id, or any unique prefix of one; without ID, the latest
    results (of --workflow / --pinion when given)."""
    found = _find(id_, workflow_name, pinion_name, target)
    if as_json:
        print_json(found.to_json_dict())
        return
    from caliber.cli.render import print_renderable, print_traceback, results_view
    from caliber.results.api import signature_problem

    print_renderable(results_view(found, unsigned=signature_problem(found)))
    for task in found.tasks:
        if task.error is not None and task.error.traceback:
            title = task.name + (f" (branch {task.branch})" if task.branch is not None else "")
            print_traceback(task.error.traceback, title)


@results.command(
    "files",
    short_help="List the result files of one Results, or copy them into a folder.",
    epilog="""\b
Examples:
  caliber results files k3v9            # name and size of each file
  caliber results files k3v9 --to out/  # out/report.pdf, out/a.vtu, ...
  caliber results files --workflow beam --to out/ --force --json""",
)
@click.argument("id_", metavar="[ID]", required=False, shell_complete=results_ids)
@click.option("--to", "dest", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
              help="Copy the files into DIR (made when missing), keeping their relative "
              "paths.")
@click.option("--force", is_flag=True, help="With --to: overwrite files that are there.")
@latest_options
@target_options
@json_option
def files_cmd(
    id_: str | None,
    dest: Path | None,
    force: bool,
    workflow_name: str | None,
    pinion_name: str | None,
    target: QueueTarget,
    as_json: bool,
) -> None:
    """List the files a run kept (the workflow's outputs=): name and size, and those a
    pattern matched but that were not kept, with why. With --to, copy them into DIR: each is
    checked against its SHA-256 on the way, and a file that is there already is refused
    before anything is written, unless --force.

    ID is a results id or a workload id, or any unique prefix of one; without ID, the latest
    results (of --workflow / --pinion when given)."""
    if force and dest is None:
        from caliber.errors import UsageError

        raise UsageError("--force goes with --to DIR")
    found = _find(id_, workflow_name, pinion_name, target)
    written: list[Path] = []
    if dest is not None:
        written = found.save_files(dest, force=force, target=target)
    if as_json:
        print_json({
            "results": found.id, "workload_id": found.workload_id,
            "files": [f.model_dump() for f in found.files],
            "skipped": [f.model_dump() for f in found.files_skipped],
            "unmatched": found.files_unmatched,
            **({"saved_to": str(dest), "written": [str(p) for p in written]}
               if dest is not None else {}),
        })
        return
    from caliber.cli.render import result_files_lines

    for line in result_files_lines(found, dest, written):
        click.echo(line)


class Duration(click.ParamType[Any, Any]):
    """An age such as 30d, 12h, 90m, 45s or 2w."""

    name = "AGE"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        from caliber.errors import UsageError
        from caliber.results.prune import parse_duration

        if not isinstance(value, str):
            return value
        try:
            return parse_duration(value)
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


@results.command(
    "prune",
    short_help="Remove finished workloads and results older than an age.",
    epilog="Examples: caliber results prune --older-than 30d --dry-run | caliber results prune "
    "--older-than 12h --workflow pasta --json",
)
@click.option("--older-than", "older_than", type=Duration(), required=True, metavar="AGE",
              help="Remove what finished longer ago than this: a whole number and a unit, "
              "s, m, h, d or w (30d, 12h, 90m).")
@click.option("--workflow", "workflow_name", metavar="NAME", help="Only this workflow's.")
@click.option("--pinion", "pinion_name", metavar="NAME", help="Only this pinion's.")
@click.option("--dry-run", is_flag=True, help="Change nothing; say what would be removed.")
@target_options
@json_option
def prune_cmd(
    older_than: dt.timedelta,
    workflow_name: str | None,
    pinion_name: str | None,
    dry_run: bool,
    target: QueueTarget,
    as_json: bool,
) -> None:
    """Remove finished work older than AGE: each completed, failed or cancelled workload whose
    last change is older, with its history, all its results and its run folder on this
    machine; and results of no workload in the queue (workflow run) older than AGE.

    Queued and running workloads, and every result of a workload that stays in the queue
    (a later `queue retry --resume` needs them), are never touched. The local queue's file
    is compacted after a big prune; on Speckle the versions of the pruned workloads are
    deleted."""
    from caliber.results.prune import prune

    pruned = prune(older_than, workflow=workflow_name, pinion=pinion_name, dry_run=dry_run,
                   target=target)
    if as_json:
        print_json(pruned.to_dict())
        return
    from caliber.cli.render import prune_lines

    for line in prune_lines(pruned):
        click.echo(line)
