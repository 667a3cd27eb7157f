"""``caliber queue ...``: Look at and manage the queue: list, view, cancel, retry, reset,
resetsecret, export, import."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from caliber.cli.common import OFFSET, PAGE, Bounded, json_option, print_json, target_options
from caliber.cli.complete import workload_ids
from caliber.cli.render import Fit
from caliber.queue.api import DEFAULT_LIMIT
from caliber.queue.status import STATUSES

if TYPE_CHECKING:
    from collections.abc import Iterator

    from rich.console import RenderableType

    from caliber.pinion.follow import Look
    from caliber.queue.api import Downstream, Upstream
    from caliber.queue.target import QueueTarget
    from caliber.queue.workload import Attachment, Workload

WORKLOAD_ID = "WORKLOAD_ID"


@click.group()
def queue() -> None:
    """Look at and manage the queue: list, view, wait, cancel, retry, reset, resetsecret.

    \b
    Example:
      caliber queue list --pinion mypinion
      caliber queue view k3v9           # any unique prefix of an id
      caliber queue cancel k3v9
      caliber queue retry k3v9 --resume # run again from the task that failed
      caliber queue logs k3v9 -f        # what it prints, as it runs
      caliber queue reset k3v9
      caliber queue export q.jsonl      # all of it, for caliber queue import
    """


def _when(moment: dt.datetime | str) -> str:
    if isinstance(moment, str):
        moment = dt.datetime.fromisoformat(moment)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _counts(counts: dict[str, int]) -> str:
    """The footer of ``queue list``: how many workloads have each status, in life order."""
    total = sum(counts.values())
    parts = [f"{counts[s]} {s}" for s in STATUSES if counts.get(s)]
    return f"{total} workload{'' if total == 1 else 's'}: {', '.join(parts)}"


def _nothing_listed(pinion: str | None, status: str | None, offset: int,
                    workflow: str | None = None) -> str:
    """What an empty listing says: the queue is empty, or no workloads match these filters."""
    if not (pinion or status or offset or workflow):
        return "the queue is empty"
    return " ".join([
        "no workloads",
        *([f"of workflow {workflow}"] if workflow else []),
        *([f"for pinion {pinion}"] if pinion else []),
        *([f"with status {status}"] if status else []),
        *([f"after the first {offset}"] if offset else []),
    ])


@queue.command("list", epilog="""\b
Examples:
  caliber queue list --pinion mypinion --status queued
  caliber queue list --status waiting   # what runs after others (--after)""")
@click.option("--pinion", "pinion_name", metavar="NAME", help="Only workloads for this pinion.")
@click.option("--status", type=click.Choice(STATUSES), help="Only workloads with this status.")
@click.option("--workflow", "workflow_name", metavar="NAME",
              help="Only workloads of the workflow of this name.")
@click.option("-n", "--limit", type=Bounded(PAGE), default=DEFAULT_LIMIT,
              show_default=True, help="Show at most this many (a page).")
@click.option("--offset", type=Bounded(OFFSET), default=0,
              help="Skip this many first (the next page).")
@click.option("--all", "show_all", is_flag=True, help="Show every workload, however many.")
@target_options
@json_option
def list_cmd(
    pinion_name: str | None,
    status: str | None,
    workflow_name: str | None,
    limit: int,
    offset: int,
    show_all: bool,
    target: QueueTarget,
    as_json: bool,
) -> None:
    """List the workloads in the queue, oldest first, and whether each one's run-secret
    matches your key (a pinion with your key runs only those that match). A workload queued
    to run after others is 'waiting' until they have completed; 'starts' shows a start time
    still ahead (--not-before, local time) and 'prio' a priority other than 0, when a
    workload listed has one."""
    from caliber.queue.api import list_page

    page = list_page(
        target, pinion=pinion_name, status=status, limit=None if show_all else limit,
        offset=offset, counts=not as_json, workflow=workflow_name,
    )
    more = page.more
    items = [s.to_dict() for s in page.summaries]
    if as_json:
        print_json(items)
        return
    from caliber.cli.render import print_table, use_color

    if not items:
        click.echo(_nothing_listed(pinion_name, status, offset, workflow_name))
        return
    color = use_color(sys.stdout)
    columns, rows = _list_rows(items)
    print_table(columns, rows, color=color, fit=LIST_FIT)
    if more:
        click.echo(f"... more after these {len(items)}: --offset {offset + len(items)} for the "
                   "next page, --all for every one, or filter with --pinion/--status")
    click.echo(_counts(page.counts))
    unsigned = [i["id"] for i in items
                if not i["secret_ok"] and i["status"] in ("queued", "waiting", "running")]
    if unsigned:
        click.echo(
            f"{len(unsigned)} workload(s) are not signed with your key, so your pinions skip "
            "them: check with 'caliber queue view ID', then sign with "
            "'caliber queue resetsecret ID'"
        )
    unvouched = [i["id"] for i in items if i["secret_ok"] and i["resume_ok"] is False
                 and i["status"] in ("queued", "waiting", "running")]
    if unvouched:
        click.echo(
            f"{len(unvouched)} workload(s) resume from results your key does not vouch for, "
            "so your pinions skip them: see why with 'caliber queue view ID'; run one from "
            "the start with 'caliber queue cancel ID' then 'caliber queue retry ID'"
        )


LIST_FIT = Fit(shrink=("workflow", "pinion"),
               drop=("attempts", "results", "pinion", "prio", "starts"))
"""How ``queue list`` gives way on a narrow terminal: the start times and priorities last."""


def _list_rows(items: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """The columns and rows of ``queue list``: ``starts`` (a start time still ahead, local)
    and ``prio`` (a priority other than 0) only when a workload listed has one."""
    from caliber.cli.render import priority_cell, start_cell

    now = dt.datetime.now(dt.UTC)
    starts = [start_cell(i["not_before"], now) for i in items]
    columns = ["id", "workflow", "pinion", "status"]
    plan: list[list[str]] = []
    if any(cell != "-" for cell in starts):
        columns.append("starts")
        plan.append(starts)
    if any(i["priority"] for i in items):
        columns.append("prio")
        plan.append([priority_cell(i["priority"]) for i in items])
    columns += ["created", "attempts", "results", "secret"]
    rows = [
        [i["id"], i["workflow"], i["pinion"], i["status"], *(cells[n] for cells in plan),
         _when(i["created_at"]), i["attempts"], i["results_id"] or "-", _secret_cell(i)]
        for n, i in enumerate(items)
    ]
    return columns, rows


def _secret_cell(item: dict[str, Any]) -> str:
    """The ``secret`` column: whether your pinions run it as it is (run-secret, and the
    grant of a resumed workload: ``ok, resumes``, ``resume mismatch``)."""
    if not item["secret_ok"]:
        return "mismatch"
    if item["resume_ok"] is None:
        return "ok"
    return "ok, resumes" if item["resume_ok"] else "resume mismatch"


@queue.command("view", epilog="Example: caliber queue view k3v9 --json")
@click.argument("workload_id", metavar=WORKLOAD_ID, shell_complete=workload_ids)
@target_options
@json_option
def view_cmd(workload_id: str, target: QueueTarget, as_json: bool) -> None:
    """Show one workload in full: metadata, what it waits for and why (--after), when it may
    start, progress while it runs (task k of n, elapsed), its run folder, status history,
    attachments (sizes and hashes), the workflow tree, the last error and the results id.
    WORKLOAD_ID may be a unique prefix."""
    from caliber.pinion.follow import look
    from caliber.queue.api import upstreams

    found = look(workload_id, target)
    after = upstreams(found.item.workload.after, target) if found.item.workload.after else []
    if as_json:
        print_json({**found.detail(), "upstreams": [u.to_dict() for u in after]})
        return
    from caliber.cli.render import console

    out = console()
    for renderable in _view(found, after):
        out.print(renderable)


_UPSTREAM_WHY = {
    "completed": "completed",
    "queued": "queued, not run yet",
    "waiting": "waiting for the workloads it runs after",
    "running": "running",
    "cancelled": "cancelled, so this one never runs",
}


def _upstream_line(u: Upstream) -> str:
    """What one workload a workload runs after is doing, and what that means for it: ``1a2b3c
    (analysis): failed - retry it to go on`` (rich markup)."""
    from caliber.cli.render import escape, format_duration, local_time, status_text

    if u.status is None:
        return f"{escape(u.id)}: [red]no longer in the queue (reset), so this one never runs[/]"
    head = f"{escape(u.id)} ({escape(u.workflow or '?')}): "
    if u.status == "failed":
        return (head + f"{status_text('failed')} - retry it to go on: caliber queue retry "
                       f"{escape(u.id)}")
    why = _UPSTREAM_WHY.get(u.status, u.status)
    if u.status == "queued" and u.not_before is not None:
        left = (u.not_before - dt.datetime.now(dt.UTC)).total_seconds()
        if left > 0:
            why = f"queued, not before {local_time(u.not_before)} (in {format_duration(left)})"
    return head + why.replace(u.status, status_text(u.status), 1)


def _plan_facts(w: Workload, after: list[Upstream]) -> list[tuple[str, str]]:
    """The rows of ``queue view`` for a workload's plan: what it waits for (or ran after) and
    why, its start time (local and UTC), its priority and its own notify address."""
    from caliber.cli.render import escape, start_text

    facts = []
    label = "waits for" if w.status.value == "waiting" else "after"
    for n, upstream in enumerate(after):
        facts.append((label if n == 0 else "", _upstream_line(upstream)))
    if w.status.value == "waiting" and any(u.status == "failed" for u in after):
        facts.append(("", f"or give this one up: caliber queue cancel {escape(w.id)}"))
    if w.not_before is not None:
        facts.append(("not before", escape(start_text(w.not_before))))
    if w.priority:
        facts.append(("priority", f"{w.priority:+d} (claimed before those with a lower one, "
                                  "then oldest first)"))
    if w.notify is not None:
        facts.append(("notify", escape(_address_shown(w.notify))))
    return facts


def _address_shown(url: str) -> str:
    """A notify address without its path, query or user (a webhook's path is its token):
    ``https://hooks.slack.com/...``; --json shows it whole."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    hidden = (parts.path not in ("", "/") or parts.query or parts.username or parts.fragment)
    return (f"{parts.scheme}://{parts.hostname}{port}/"
            + ("... (the rest hidden: it may be a token; --json shows it)" if hidden else ""))


def _view(found: Look, after: list[Upstream] | None = None) -> list[RenderableType]:
    from caliber.cli.render import Fit, console, escape, status_text, table

    item = found.item
    w = item.workload
    secret = "matches your key" if item.secret_ok else "[red]does not match your key[/]"
    if w.secret_mismatch:
        why = ("its resume not vouched for by" if item.secret_ok and w.resume_from
               else "it not signed with")
        secret += f" (a pinion found {why} key {escape(w.secret_mismatch)})"
    facts = [
        ("id", escape(w.id)), ("workflow", escape(w.workflow_name)), ("pinion", escape(w.pinion)),
        ("status", status_text(w.status.value)), ("completed", "yes" if w.completed else "no"),
        ("created", _when(w.created_at)), ("queued by", escape(w.queued_by or "-")),
        ("attempts", str(w.attempts)), ("results id", escape(w.results_id or "-")),
        ("run-secret", secret),
        *_plan_facts(w, after or []),
    ]
    if w.resume_from:
        vouched = ("granted with your key" if item.resume_ok else
                   "[red]not vouched for by your key: a pinion with it does not run it "
                   "(see the history)[/]")
        facts.append(("resumes", f"reusing the completed tasks of results "
                                 f"{escape(w.resume_from)}, {vouched}"))
    if w.lease is not None:
        facts.append(("lease", f"{escape(w.lease.owner)} until {_when(w.lease.expires_at)}"))
    if found.progress is not None:
        now = dt.datetime.now(dt.UTC)
        facts.append(("progress", escape(found.progress.line(now))))
    elif w.status.value == "running" and not found.local:
        facts.append(("progress", "not known yet: its pinion sends it with the lease "
                                  "renewals it writes"))
    work_dir = str(found.work_dir) if found.work_dir else w.work_dir
    if work_dir:
        facts.append(("run folder", escape(work_dir)))
    if w.last_error:
        facts.append(("last error", f"[red]{escape(w.last_error)}[/]"))
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")  # a long run folder wraps whole, never cut with "…"
    for name, value in facts:
        grid.add_row(name, value)
    parts: list[RenderableType] = [grid]
    if w.attachments:
        parts.append(table(  # on a narrow terminal the hash gives way first (--json: whole)
            ["attachment", "size", "sha256", "mode", ""],
            [[escape(a.path), _size(a.size), a.sha256,
              "-" if a.mode is None else f"{a.mode:o}", _attachment_note(a)]
             for a in w.attachments],
            fit=Fit(shrink=("sha256", "attachment")), width=console().width,
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

    from rich.text import Text

    from caliber.cli.render import escape, workflow_tree
    from caliber.errors import CaliberError
    from caliber.workflow.attachments import Reference
    from caliber.workflow.fileformat import from_document

    # Attachments travel in the workload, not on this disk: build the tree without them.
    document = {**w.workflow, "attachments": []}
    try:
        workflow = from_document(document, Path.cwd(), source=f"workload {w.id}")
    except CaliberError as exc:
        return Text.from_markup(f"[red]the workflow cannot be drawn:[/] {escape(str(exc))}")
    workflow.attachments = [
        a.path if a.reference is None else Reference(a.reference, sha256=a.sha256, size=a.size,
                                                     name=a.path)
        for a in w.attachments]
    return workflow_tree(workflow)


def _attachment_note(a: Attachment) -> str:
    """How an attachment travels, when not as usual (stored once in the queue's store)."""
    from caliber.cli.render import escape

    if a.reference is not None:
        return f"[magenta]by reference: {escape(a.reference)}[/]"
    if a.inline:
        return "inline" if a.content_matches() else "[red]inline, content changed[/]"
    return ""


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


@queue.command("cancel", epilog="""\b
Examples:
  caliber queue cancel k3v9
  caliber queue cancel k3v9 --now       # stop the running task at once
  caliber queue cancel k3v9 --json
  {"id": "k3v9q2mxa7", ..., "status": "cancelled", ..., "cancel_asked": false}""")
@click.argument("workload_id", metavar=WORKLOAD_ID, shell_complete=workload_ids)
@click.option("--now", is_flag=True,
              help="Stop the running task too (SIGTERM to its processes, SIGKILL after the "
                   "pinion's --cancel-grace), instead of letting it finish.")
@target_options
@json_option
def cancel_cmd(workload_id: str, now: bool, target: QueueTarget, as_json: bool) -> None:
    """Cancel a workload. A queued one becomes cancelled and never runs. A running one is
    stopped by its pinion after the task it is running (--now: that task is stopped too), and
    kept as cancelled with the results of the tasks that finished (cancel_asked: true until
    then). The pinion learns it within about a second on the local queue, at its next lease
    renewal on a remote one. WORKLOAD_ID may be a unique prefix."""
    from caliber.queue.api import cancel, waiting_after

    below = waiting_after(workload_id, target)
    checked = cancel(workload_id, target, now=now)
    workload = checked.workload
    asked = workload.status.value == "running"
    gone = [] if asked else _chain_cancelled(below, target)
    if as_json:
        print_json({**checked.summary(), "cancel_asked": asked, "now": now,
                    "cancelled_with": [d.id for d in gone],
                    "waiting_after": [d.id for d in below] if asked else []})
        return
    if asked and now:
        click.echo(f"asked to cancel workload {workload.id} now: its pinion stops the running "
                   "task within about a second (a remote queue's: at its next lease renewal; "
                   "see 'caliber queue view')")
    elif asked:
        click.echo(f"asked to cancel workload {workload.id}: its pinion stops it after the "
                   "current task (see 'caliber queue view')")
    else:
        click.echo(f"cancelled workload {workload.id}; it will not run "
                   f"(queue it again with 'caliber queue retry {workload.id}')")
    if asked and below:
        who = ("the workload waiting after it is" if len(below) == 1
               else f"the {len(below)} workloads waiting after it are")
        click.echo(f"{who} cancelled too when it ends cancelled: {_named(below)}")
    elif gone:
        click.echo(f"cancelled with it, as they waited after it: {_named(gone)}")


def _chain_cancelled(below: list[Downstream], target: QueueTarget) -> list[Downstream]:
    """Those of ``below`` (waiting after a workload before its cancel or reset) that are
    cancelled now: down the chain with it."""
    if not below:
        return []
    from caliber.queue.api import upstreams

    now = {u.id: u.status for u in upstreams([d.id for d in below], target)}
    return [d for d in below if now.get(d.id) == "cancelled"]


def _named(workloads: list[Downstream]) -> str:
    """``k3v9q2mxa7 (post), ...`` (at most 10 named)."""
    from caliber.text import for_terminal

    named = ", ".join(f"{d.id} ({for_terminal(d.workflow)})" for d in workloads[:10])
    return named + (f" and {len(workloads) - 10} more" if len(workloads) > 10 else "")


@queue.command("retry", epilog="""\b
Examples:
  caliber queue retry k3v9
  caliber queue retry k3v9 --resume     # completed tasks are not run again
  caliber queue retry k3v9 --json
  {"id": "k3v9q2mxa7", ..., "status": "queued", ..., "resume_from": null}""")
@click.argument("workload_id", metavar=WORKLOAD_ID, shell_complete=workload_ids)
@click.option("--resume", is_flag=True,
              help="Reuse the tasks that completed in its last run and are unchanged: their "
                   "return values and what they put in g; the rest runs, as queued (to run "
                   "fixed files: caliber workflow queue FILE -p P --resume ID).")
@target_options
@json_option
def retry_cmd(workload_id: str, resume: bool, target: QueueTarget, as_json: bool) -> None:
    """Queue a failed or cancelled workload again: the same workload, a new series of
    attempts, its history kept. Its run-secret is not renewed: pinions check it as before.
    WORKLOAD_ID may be a unique prefix."""
    from caliber.queue.api import retry

    item = retry(workload_id, target, resume=resume)
    w = item.workload
    if resume:  # the engineer's loop is fix, then resume: say where the fix goes
        click.echo("retry runs the workflow as it was queued; to run your fixed files, use "
                   f"caliber workflow queue FILE -p {w.pinion} --resume {w.id}", err=True)
    if as_json:
        print_json({**item.summary(), "resume_from": w.resume_from})
        return
    how = f", reusing the completed tasks of results {w.resume_from}" if w.resume_from else ""
    click.echo(f"queued workload {w.id} again for pinion {w.pinion}{how}")
    if not item.secret_ok:
        click.echo(f"its run-secret does not match your key, so your pinions skip it: check "
                   f"with 'caliber queue view {w.id}', then 'caliber queue resetsecret {w.id}'")


@queue.command("wait", epilog="""\b
Examples:
  caliber queue wait k3v9 && echo "the analysis completed"
  caliber queue wait k3v9 p2m8 --timeout 3600 --json""")
@click.argument("workload_ids", metavar="WORKLOAD_ID...", nargs=-1, required=True,
                shell_complete=workload_ids)
@click.option("--timeout", type=click.FloatRange(0, 10**7), metavar="SECONDS",
              help="Stop waiting after this long: exit 124 (as 'timeout' does).")
@target_options
@json_option
def wait_cmd(workload_ids: tuple[str, ...], timeout: float | None, target: QueueTarget,
             as_json: bool) -> None:
    """Wait until each workload has ended. Exit 0 when all completed, 1 when any failed, was
    cancelled or was reset meanwhile, 124 when --timeout ran out first. Each one's line is
    printed as it ends (--json: their rows at the end). A waiting workload (--after) has not
    ended: it is waited for while its chain runs; when one it waits for fails, a line on
    stderr says so (it goes on once that is retried and completes)."""
    from caliber.queue.wait import wait
    from caliber.text import for_terminal

    def ended(item: Any) -> None:
        if not as_json:
            w = item.workload
            error = w.last_error or ""
            error = error.removeprefix(f"{w.status.value}: ")  # "cancelled: cancelled: ..."
            why = f": {error}" if error and w.status.value != "completed" else ""
            results = f" (results {w.results_id})" if w.results_id else ""
            click.echo(for_terminal(f"{w.id} {w.workflow_name} {w.status.value}{results}{why}"))

    def stuck(w: Workload, upstream: Workload) -> None:
        click.echo(f"{w.id} waits for {upstream.id} ({for_terminal(upstream.workflow_name)}), "
                   "which failed: it goes on once that is retried and completes (caliber "
                   f"queue retry {upstream.id})", err=True)

    waited = wait(list(workload_ids), target, timeout=timeout, ended=ended, stuck=stuck)
    if as_json:
        print_json([{**r.summary(), "last_error": r.workload.last_error} for r in waited.rows])
    for gone in waited.removed:
        click.echo(f"{gone} was reset (deleted) while waited for", err=True)
    if waited.timed_out:
        left = [r.workload.id for r in waited.rows if r.workload.status.value not in
                ("completed", "failed", "cancelled")]
        click.echo(f"timed out after {timeout:g} s; still not ended: {', '.join(left)}",
                   err=True)
        raise SystemExit(124)
    if not waited.ok:
        raise SystemExit(1)


@queue.command("reset", epilog="Example: caliber queue reset k3v9")
@click.argument("workload_id", metavar=WORKLOAD_ID, shell_complete=workload_ids)
@click.option("--force", is_flag=True, help="Delete it even while a pinion is running it.")
@target_options
@json_option
def reset_cmd(
    workload_id: str,
    force: bool,
    target: QueueTarget,
    as_json: bool,
) -> None:
    """Delete a workload from the queue (its stored results stay). A running workload is
    refused unless --force. WORKLOAD_ID may be a unique prefix."""
    from caliber.queue.api import reset, waiting_after

    below = waiting_after(workload_id, target)
    removed = reset(workload_id, target, force=force)
    gone = _chain_cancelled(below, target)
    if as_json:
        print_json({**removed.summary(None), "deleted": True,
                    "cancelled_with": [d.id for d in gone]})
        return
    from caliber.text import for_terminal

    click.echo(f"deleted workload {removed.id} ({for_terminal(removed.workflow_name)}, "
               f"{removed.status.value}, pinion {removed.pinion})")
    if gone:
        click.echo(f"cancelled, as they waited after it: {_named(gone)}")


@queue.command("resetsecret", epilog="Example: caliber queue resetsecret k3v9")
@click.argument("workload_id", metavar=WORKLOAD_ID, shell_complete=workload_ids)
@target_options
@json_option
def resetsecret_cmd(workload_id: str, target: QueueTarget, as_json: bool) -> None:
    """Sign a workload again with your key, so your pinions run it: after you reviewed a
    workload someone else queued, or after you changed your key. WORKLOAD_ID may be a unique
    prefix."""
    from caliber.queue.api import resetsecret

    item = resetsecret(workload_id, target)
    if as_json:
        print_json(item.summary())
        return
    w = item.workload
    again = f", and its resume from results {w.resume_from}" if w.resume_from else ""
    click.echo(f"signed workload {w.id} again with your key{again}")


@queue.command("logs", epilog="Example: caliber queue logs k3v9 -f")
@click.argument("workload_id", metavar=WORKLOAD_ID, shell_complete=workload_ids)
@click.option("-f", "--follow", "follow_output", is_flag=True,
              help="Keep printing what it writes until it finishes (Ctrl-C stops).")
@target_options
def logs_cmd(workload_id: str, follow_output: bool, target: QueueTarget) -> None:
    """Print what a workload wrote (its stdout and stderr, output.log in its run folder).
    On the remote queue, the output of a pinion on another machine arrives with its results
    (the last 64 KiB). WORKLOAD_ID may be a unique prefix."""
    from caliber.pinion.follow import follow, look, read_output

    if follow_output:
        try:
            _write_output(follow(workload_id, target, notice=_notice))
        except KeyboardInterrupt:
            raise SystemExit(130) from None
        return
    found = look(workload_id, target)
    chunks = read_output(found, target)
    if chunks is None:
        click.echo(_no_output(found), err=True)
        return
    _write_output(chunks)


def _write_output(chunks: Iterator[bytes]) -> None:
    """Output as it was written, a batch at a time; on a terminal decoded, with its control
    characters as escapes. A reader that goes away (``| head``) ends it quietly."""
    try:
        _write_chunks(chunks)
    except BrokenPipeError:
        from caliber.cli.common import quiet_stdout

        quiet_stdout()
        raise SystemExit(0) from None


def _write_chunks(chunks: Iterator[bytes]) -> None:
    if not sys.stdout.isatty():
        out = sys.stdout.buffer
        for chunk in chunks:
            out.write(chunk)
            out.flush()
        return
    import codecs

    from caliber.text import for_terminal

    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for chunk in chunks:
        sys.stdout.write(for_terminal(decoder.decode(chunk), multiline=True))
        sys.stdout.flush()
    sys.stdout.write(for_terminal(decoder.decode(b"", final=True), multiline=True))
    sys.stdout.flush()


def _notice(message: str) -> None:
    """``queue logs -f``: one line on stderr when output was lost to it (cut, truncated)."""
    from caliber.text import for_terminal

    click.echo(f"caliber: {for_terminal(message)}", err=True)


def _no_output(found: Look) -> str:
    w = found.item.workload
    if w.status.value in ("queued", "waiting"):
        why = "it has not started yet"
    elif w.status.value == "running" and not found.local:
        why = ("it runs on a remote pinion: its output arrives with its results "
               f"('caliber queue logs {w.id} -f' waits for them)")
    else:
        why = "it printed nothing that this machine can read"
    return f"no output from workload {w.id}: {why}"


@queue.command("export", epilog="""\b
Example (move the local queue to PostgreSQL, pinions stopped):
  caliber queue export queue.jsonl --local
  caliber queue import queue.jsonl --queue postgresql://caliber@db.lan/caliber""")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@target_options
@json_option
def export_cmd(file: Path, target: QueueTarget, as_json: bool) -> None:
    """Write the whole queue to FILE (a new file): every workload with its history, every
    Results and the stored files and arrays they name, as JSON lines, for 'caliber queue
    import' into another queue. Stop the pinions first: a workload running meanwhile is
    exported as running."""
    from caliber.queue.archive import export_to

    counts = export_to(target, file)
    if as_json:
        print_json({**counts.as_dict(), "skipped_damaged": counts.skipped, "file": str(file)})
        return
    skipped = f"; {counts.skipped} damaged workloads left out" if counts.skipped else ""
    click.echo(f"exported {counts.workloads} workloads, {counts.results} results and "
               f"{counts.blobs} stored files to {file}{skipped}")


@queue.command("import", epilog="""\b
Example:
  caliber queue import queue.jsonl --queue postgresql://caliber@db.lan/caliber""")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@target_options
@json_option
def import_cmd(file: Path, target: QueueTarget, as_json: bool) -> None:
    """Add the workloads, Results and stored files of FILE (made by 'caliber queue export')
    to the queue, as they were: same ids, statuses, history and signatures. The whole file
    is checked first: a damaged file, an id the queue holds already, or a waiting workload
    whose upstream is neither in the file nor in the queue, imports nothing."""
    from caliber.queue.archive import import_from

    counts = import_from(target, file)
    if as_json:
        print_json({**counts.as_dict(), "file": str(file)})
        return
    click.echo(f"imported {counts.workloads} workloads, {counts.results} results and "
               f"{counts.blobs} stored files into {target.location}")
