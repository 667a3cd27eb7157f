"""``caliber queue ...``: Look at and manage the queue: list, view, reset, resetsecret."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from caliber.cli.common import json_option, print_json, remote_options

if TYPE_CHECKING:
    import datetime as dt

    from rich.console import RenderableType

    from caliber.queue.api import CheckedWorkload
    from caliber.queue.workload import Workload

STATUSES = ["queued", "running", "completed", "failed", "cancelled"]
WORKLOAD_ID = "WORKLOAD_ID"


@click.group()
def queue() -> None:
    """Look at and manage the queue: list, view, reset, resetsecret.

    \b
    Example:
      caliber queue list --pinion mypinion
      caliber queue view k3v9           # any unique prefix of an id
      caliber queue reset k3v9
    """


def _when(moment: dt.datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _secret_cell(item: CheckedWorkload) -> str:
    if item.secret_ok:
        return "[green]ok[/]"
    return "[red]mismatch[/]"


@queue.command("list", epilog="Example: caliber queue list --pinion mypinion --status queued")
@click.option("--pinion", "pinion_name", metavar="NAME", help="Only workloads for this pinion.")
@click.option("--status", type=click.Choice(STATUSES), help="Only workloads with this status.")
@click.option("-n", "--limit", type=click.IntRange(min=1), help="Show at most this many.")
@remote_options
@json_option
def list_cmd(
    pinion_name: str | None,
    status: str | None,
    limit: int | None,
    project: str | None,
    model: str | None,
    local: bool,
    as_json: bool,
) -> None:
    """List the workloads in the queue, oldest first, and whether each one's run-secret
    matches your key (a pinion with your key runs only those that match)."""
    from caliber.queue.api import list_workloads

    items = list_workloads(pinion=pinion_name, status=status, limit=limit, project=project,
                           model=model, local=local)
    if as_json:
        print_json([item.summary() for item in items])
        return
    from rich.markup import escape

    from caliber.cli.render import console, status_text, table

    out = console()
    if not items:
        out.print("the queue is empty" if not (pinion_name or status) else "no such workloads")
        return
    rows = []
    for item in items:
        w = item.workload
        rows.append([
            w.id, escape(w.workflow_name), escape(w.pinion), status_text(w.status.value),
            _when(w.created_at), w.attempts, w.results_id or "-", _secret_cell(item),
        ])
    out.print(table(
        ["id", "workflow", "pinion", "status", "created", "attempts", "results", "secret"], rows
    ))
    waiting = [i.workload.id for i in items
               if not i.secret_ok and i.workload.status.value in ("queued", "running")]
    if waiting:
        out.print(
            f"{len(waiting)} workload(s) are not signed with your key, so your pinions skip "
            "them: check with 'caliber queue view ID', then sign with "
            "'caliber queue resetsecret ID'"
        )


@queue.command("view", epilog="Example: caliber queue view k3v9 --json")
@click.argument("workload_id", metavar=WORKLOAD_ID)
@remote_options
@json_option
def view_cmd(
    workload_id: str, project: str | None, model: str | None, local: bool, as_json: bool
) -> None:
    """Show one workload in full: metadata, status history, attachments (sizes and hashes),
    the workflow tree, the last error and the results id. WORKLOAD_ID may be a unique prefix."""
    from caliber.queue.api import view_workload

    item = view_workload(workload_id, project=project, model=model, local=local)
    if as_json:
        print_json(item.detail())
        return
    from caliber.cli.render import console

    out = console()
    for renderable in _view(item):
        out.print(renderable)


def _view(item: CheckedWorkload) -> list[RenderableType]:
    from rich.markup import escape

    from caliber.cli.render import status_text, table

    w = item.workload
    secret = "matches your key" if item.secret_ok else "[red]does not match your key[/]"
    if w.secret_mismatch:
        secret += f" (a pinion found it not signed with key {w.secret_mismatch})"
    facts = [
        ("id", w.id), ("workflow", escape(w.workflow_name)), ("pinion", escape(w.pinion)),
        ("status", status_text(w.status.value)), ("completed", "yes" if w.completed else "no"),
        ("created", _when(w.created_at)), ("queued by", escape(w.queued_by or "-")),
        ("attempts", str(w.attempts)), ("results id", w.results_id or "-"),
        ("run-secret", secret),
    ]
    if w.lease is not None:
        facts.append(("lease", f"{escape(w.lease.owner)} until {_when(w.lease.expires_at)}"))
    if w.work_dir:
        facts.append(("work folder", escape(w.work_dir)))
    if w.last_error:
        facts.append(("last error", f"[red]{escape(w.last_error)}[/]"))
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for name, value in facts:
        grid.add_row(name, value)
    parts: list[RenderableType] = [grid]
    if w.attachments:
        parts.append(table(
            ["attachment", "size", "sha256", ""],
            [[escape(a.path), _size(a.size), a.sha256,
              "" if a.content_matches() else "[red]content changed[/]"]
             for a in w.attachments],
        ))
    parts.append(_tree(w))
    parts.append(table(
        ["when", "status", "what happened"],
        [[_when(h.at), status_text(h.status.value), escape(h.message)] for h in w.history],
        title="history",
    ))
    return parts


def _tree(w: Workload) -> RenderableType:
    from pathlib import Path

    from rich.markup import escape
    from rich.text import Text

    from caliber.cli.render import workflow_tree
    from caliber.errors import CaliberError
    from caliber.workflow.fileformat import from_document

    # Attachments travel in the workload, not on this disk: build the tree without them.
    document = {**w.workflow, "attachments": []}
    try:
        workflow = from_document(document, Path.cwd(), source=f"workload {w.id}")
    except CaliberError as exc:
        return Text.from_markup(f"[red]the workflow cannot be drawn:[/] {escape(str(exc))}")
    workflow.attachments = [a.path for a in w.attachments]
    return workflow_tree(workflow)


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


@queue.command("reset", epilog="Example: caliber queue reset k3v9")
@click.argument("workload_id", metavar=WORKLOAD_ID)
@click.option("--force", is_flag=True, help="Delete it even while a pinion is running it.")
@remote_options
@json_option
def reset_cmd(
    workload_id: str,
    force: bool,
    project: str | None,
    model: str | None,
    local: bool,
    as_json: bool,
) -> None:
    """Delete a workload from the queue (its stored results stay). A running workload is
    refused unless --force. WORKLOAD_ID may be a unique prefix."""
    from caliber.queue.api import reset_workload

    removed = reset_workload(workload_id, force=force, project=project, model=model,
                             local=local)
    if as_json:
        print_json({**removed.summary(None), "deleted": True})
        return
    click.echo(f"deleted workload {removed.id} ({removed.workflow_name}, "
               f"{removed.status.value}, pinion {removed.pinion})")


@queue.command("resetsecret", epilog="Example: caliber queue resetsecret k3v9")
@click.argument("workload_id", metavar=WORKLOAD_ID)
@remote_options
@json_option
def resetsecret_cmd(
    workload_id: str, project: str | None, model: str | None, local: bool, as_json: bool
) -> None:
    """Sign a workload again with your key, so your pinions run it: after you reviewed a
    workload someone else queued, or after you changed your key. WORKLOAD_ID may be a unique
    prefix."""
    from caliber.queue.api import resetsecret_workload

    item = resetsecret_workload(workload_id, project=project, model=model, local=local)
    if as_json:
        print_json(item.summary())
        return
    click.echo(f"signed workload {item.workload.id} again with your key")
