"""Rendering for people: tables, trees, progress lines. Rich is imported only here, lazily.

Helpers other command groups reuse:

- :func:`console` a rich Console that respects ``NO_COLOR`` and plain output when not a tty;
- :func:`workflow_tree` the process tree of a workflow (``workflow show``, ``queue view``);
- :func:`table` a small table from rows;
- :func:`results_view` / :func:`results_table` stored Results for people;
- :func:`print_traceback` a task's traceback, whole when the output is a file or a pipe;
- :func:`format_value` / :func:`format_duration` short text for values and durations.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from caliber.text import for_terminal

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import Console, RenderableType
    from rich.table import Table
    from rich.tree import Tree

    from caliber.results.model import Results
    from caliber.results.pruned import Pruned
    from caliber.workflow.attachments import AttachmentSpec
    from caliber.workflow.model import BranchProcess, Node, Process, Task, Workflow
    from caliber.workflow.runner import TaskEvent

VALUE_WIDTH = 60  # characters of an argument or return value shown inline before "..."
TREE_GUIDE = 4  # characters of a tree guide ("├── ") per level
BRANCH_GAP = 3  # spaces between branches drawn side by side
MAX_SIDE_BY_SIDE = 6  # more branches than this are always drawn one below the other


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream if stream is not None else sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def use_color(stream: TextIO | None = None) -> bool:
    """Colour only on a terminal and only when ``NO_COLOR`` is not set."""
    return "NO_COLOR" not in os.environ and is_terminal(stream)


PIPE_WIDTH = 100
"""The width a layout decision takes (side-by-side branches of ``workflow show``) when the
output is a file or a pipe. Text itself is never wrapped there: a value stays on its line."""
_UNWRAPPED = 100_000  # a pipe's console width: wide enough that rich wraps nothing


class _TrimmedLines:
    """A text stream that writes each line without its trailing spaces (rich pads every table
    cell to its column's width: fine on a screen, noise in a file or for ``grep``)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._open = ""  # the last line, until its newline comes

    def write(self, text: str) -> int:
        *done, self._open = (self._open + text).split("\n")
        if done:
            self._stream.write("".join(line.rstrip(" ") + "\n" for line in done))
        return len(text)

    def flush(self) -> None:  # rich flushes after each print: a line without its end yet
        self._stream.write(self._open)  # goes out as it is
        self._open = ""
        self._stream.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._stream.fileno()


def console(*, stderr: bool = False, width: int | None = None) -> Console:
    """A rich Console for stdout (or stderr): colour on a terminal unless ``NO_COLOR``; to a
    file or a pipe, plain, unwrapped lines without trailing spaces. A reader that goes away
    (``| head``) ends the command quietly (:func:`caliber.cli.main`, exit 0)."""
    from rich.console import Console

    class QuietConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError  # rich's own way exits 1

    stream = sys.stderr if stderr else sys.stdout
    color = use_color(stream)
    terminal = is_terminal(stream)
    return QuietConsole(
        file=stream if terminal else _TrimmedLines(stream),  # type: ignore[arg-type]
        stderr=stderr,
        no_color=not color,
        color_system="auto" if color else None,
        highlight=False,
        emoji=False,
        soft_wrap=not color,
        width=width if width is not None else (None if terminal else _UNWRAPPED),
        force_terminal=False if not color else None,
    )


def escape(text: str) -> str:
    """``text`` for rich markup: its control characters written as escapes (a name cannot move
    the cursor, colour the terminal or forge a line) and its ``[`` not taken as markup."""
    from rich.markup import escape as markup_escape

    return markup_escape(for_terminal(text))


def print_renderable(renderable: RenderableType, *, stderr: bool = False) -> None:
    console(stderr=stderr).print(renderable)


# --- short text for values ----------------------------------------------------------------


def format_value(value: Any, width: int = VALUE_WIDTH) -> str:
    """A value as short text: JSON where it fits, task references as ``<result of 'X'>``."""
    from caliber.workflow.diagram import value_text

    return value_text(value, width)


def format_duration(seconds: float | None) -> str:
    """``0.01s``, ``12.3s``, ``4m05s``, ``2h03m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


# --- workflow tree ------------------------------------------------------------------------


def _task_label(task: Task, branch: int | None = None) -> str:

    from caliber.workflow.diagram import call_text, task_refs

    refs = task_refs(task, branch)
    ref_text = f"  [magenta]<- {escape(', '.join(refs))}[/]" if refs else ""
    limit = f"  [yellow]time limit {task.timeout:g} s[/]" if task.timeout is not None else ""
    return (f"[bold]{escape(task.name)}[/]  [dim]{escape(call_text(task, branch))}[/]"
            f"{ref_text}{limit}")


def _add_node(tree: Tree, node: Node, width: int, depth: int) -> None:

    from caliber.workflow.model import BranchProcess, Process, Task

    if isinstance(node, Task):
        tree.add(_task_label(node))
    elif isinstance(node, Process):
        sub = tree.add(f"[cyan]process[/] {escape(node.name or '')}".rstrip())
        for item in node.items:
            _add_node(sub, item, width, depth + 1)
    elif isinstance(node, BranchProcess):
        _add_branches(tree, node, width, depth)


def _add_branches(tree: Tree, node: BranchProcess, width: int, depth: int) -> None:
    """Branches next to each other when the width allows, else one below the other."""
    from rich.table import Table
    from rich.text import Text
    from rich.tree import Tree

    label = f"[cyan]branch process[/] {escape(node.name or '')}".rstrip()
    sub = tree.add(f"{label} [dim]({escape(node.how())})[/]")
    lanes: list[Tree] = []
    lane_widths: list[int] = []
    for branch in range(node.branches):
        lane = Tree(f"[yellow]branch {branch}[/]")
        labels = [_task_label(task, branch) for task in node.items]
        for text in labels:
            lane.add(text)
        lanes.append(lane)
        lane_widths.append(TREE_GUIDE + max(Text.from_markup(t).cell_len for t in labels))
    indent = TREE_GUIDE * (depth + 2)
    needed = indent + sum(lane_widths) + BRANCH_GAP * (len(lanes) - 1)
    if 1 < len(lanes) <= MAX_SIDE_BY_SIDE and needed <= width:
        grid = Table.grid(padding=(0, BRANCH_GAP, 0, 0))
        for lane_width in lane_widths:
            grid.add_column(width=lane_width, no_wrap=True)
        grid.add_row(*lanes)
        sub.add(grid)
    else:
        for lane in lanes:
            sub.children.append(lane)


def workflow_tree(workflow: Workflow, *, width: int | None = None) -> Tree:
    """The workflow as a rich Tree: processes, branches (side by side when they fit in
    ``width``, by default the terminal's), each task's function and arguments, and the tasks
    whose results it uses (``<- Make dough``)."""
    from rich.tree import Tree

    if width is None:
        width = console().width if is_terminal() else PIPE_WIDTH

    root = Tree(f"[bold green]workflow[/] [bold]{escape(workflow.name)}[/]")
    if workflow.description:
        root.add(f"[dim]{escape(workflow.description)}[/]")
    process: Process | BranchProcess = workflow.process
    _add_node(root, process, width, 0)
    if workflow.attachments:
        att = root.add("[cyan]attachments[/]")
        for name in workflow.attachments:
            att.add(attachment_label(name, workflow.base_dir))
    if workflow.outputs:
        out = root.add("[cyan]outputs[/] [dim](files kept with the Results)[/]")
        for pattern in workflow.outputs:
            out.add(escape(pattern))
    return root


def attachment_label(name: AttachmentSpec, base_dir: Path | None) -> str:
    """An attachment as ``workflow show`` lists it: a path (``name/`` and the number of
    files for a folder), or one by reference marked so, with where it is and its hash."""
    from caliber.workflow.attachments import Reference

    if isinstance(name, Reference):
        sha = f", sha256 {name.sha256[:12]}…" if name.sha256 else ""
        size = f", {format_bytes(name.size)}" if name.size is not None else ""
        return (f"{escape(name.name)} [magenta](by reference: {escape(name.path)}{sha}{size}"
                ", not copied)[/]")
    if base_dir is not None:
        folder = base_dir / name
        if folder.is_dir() and not folder.is_symlink():
            count = sum(len(files) for _, _, files in os.walk(folder))
            return f"{escape(name.rstrip('/'))}/ [dim](folder, {count} files)[/]"
    return escape(name)


# --- tables -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fit:
    """How a table gives way in a terminal too narrow for it: ``drop`` columns are left out,
    first named first, while ``shrink`` columns (free text, such as names: load-case variants
    differ at their end) would be cut below :data:`NAME_WIDTH`; then those are shortened with
    an ellipsis, down to :data:`SHRUNK_WIDTH`. Other columns (ids, times, statuses) are never
    shortened or wrapped."""

    shrink: Sequence[str] = ()
    drop: Sequence[str] = ()


SHRUNK_WIDTH = 8  # characters a shrinkable column keeps, at least
NAME_WIDTH = 24  # characters of a name kept before any column is dropped to make room
COLUMN_GAP = 3  # characters between two columns of a table


def _fit(columns: Sequence[str], rows: Sequence[Sequence[str]], fit: Fit,
         width: int) -> dict[str, int | None]:
    """The columns kept, each with its width (None: its natural width)."""
    from rich.text import Text

    natural = {c: max([len(c)] + [Text.from_markup(r[i]).cell_len for r in rows])
               for i, c in enumerate(columns)}
    kept = list(columns)
    drops = [c for c in fit.drop if c in natural]

    def least(c: str) -> int:  # names keep NAME_WIDTH while something less useful can go
        return min(natural[c], NAME_WIDTH) if c in fit.shrink else natural[c]

    while sum(least(c) for c in kept) + COLUMN_GAP * (len(kept) - 1) > width and drops:
        kept.remove(drops.pop(0))
    spare = width - sum(natural[c] for c in kept) - COLUMN_GAP * (len(kept) - 1)
    widths: dict[str, int | None] = {c: None for c in kept}
    if spare < 0:  # shorten the shrinkable columns, the widest first
        shrinkable = [c for c in kept if c in fit.shrink]
        sizes = {c: natural[c] for c in shrinkable}
        while spare < 0 and any(sizes[c] > SHRUNK_WIDTH for c in shrinkable):
            widest = max(shrinkable, key=lambda c: sizes[c])
            sizes[widest] -= 1
            spare += 1
        widths.update(sizes)
    return widths


def table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    title: str | None = None,
    fit: Fit | None = None,
    width: int | None = None,
) -> Table:
    """A plain table with a header row; every cell is shown with ``str``. With ``fit`` and a
    ``width`` (a terminal's), one line per row, laid out to fit in ``width`` (see :class:`Fit`)."""
    from rich import box
    from rich.table import Table

    cells = [["" if cell is None else for_terminal(str(cell)) for cell in row] for row in rows]
    out = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    if fit is None or width is None:
        for column in columns:
            out.add_column(column, overflow="fold")
        for row in cells:  # markup already; control characters are escaped here too
            out.add_row(*row)
        return out
    widths = _fit(columns, cells, fit, width)
    for column in widths:
        out.add_column(column, no_wrap=True, overflow="ellipsis", width=widths[column])
    keep = [i for i, c in enumerate(columns) if c in widths]
    for row in cells:
        out.add_row(*(row[i] for i in keep))
    return out


def plain_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """The same table as :func:`table` as plain text, without importing rich (for pipes and
    scripts: no colour, no wrapping, no trailing spaces)."""
    cells = [[str(c) for c in columns]]
    cells += [["" if c is None else for_terminal(str(c)) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "\u2500" * len(lines[0]))
    return "\n".join(lines)


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, color: bool,
                fit: Fit | None = None) -> None:
    """A table on stdout: on a terminal laid out to fit it (``fit``), statuses coloured when
    ``color``; to a file or a pipe as plain text, whole."""
    if not is_terminal(sys.stdout):
        sys.stdout.write(plain_table(columns, rows) + "\n")
        return
    out = console()
    styled = [[status_text(c) if color and c in STATUS_STYLE else escape(str(c)) for c in row]
              for row in rows]
    out.print(table(columns, styled, fit=fit or Fit(), width=out.width))


# --- start times, priorities, chains (no rich: ``queue list`` shows them) -----------------


def _moment(moment: dt.datetime | str) -> dt.datetime:
    return dt.datetime.fromisoformat(moment) if isinstance(moment, str) else moment


def local_time(moment: dt.datetime | str) -> str:
    """``2026-12-08 22:00:00 CET``: the local time, with the zone's short name (or offset)."""
    local = _moment(moment).astimezone()
    zone = local.strftime("%Z")
    if not zone or len(zone) > 5 or " " in zone:
        zone = local.strftime("%z")
    return f"{local:%Y-%m-%d %H:%M:%S} {zone}"


def start_text(moment: dt.datetime | str, now: dt.datetime | None = None) -> str:
    """When a workload may start, for ``queue view``: local time, UTC, and how long until
    then (``2026-12-08 22:00:00 CET (21:00:00 UTC), in 3h12m``)."""
    start = _moment(moment)
    now = now if now is not None else dt.datetime.now(dt.UTC)
    utc = start.astimezone(dt.UTC)
    local = start.astimezone()
    left = (start - now).total_seconds()
    when = f"in {format_duration(left)}" if left > 0 else "passed: it may start"
    if local.utcoffset() == dt.timedelta(0):  # local time is UTC: once is enough
        return f"{local_time(start)}, {when}"
    shown = f"{utc:%H:%M:%S}" if utc.date() == local.date() else f"{utc:%Y-%m-%d %H:%M:%S}"
    return f"{local_time(start)} ({shown} UTC), {when}"


def start_cell(moment: str | None, now: dt.datetime | None = None) -> str:
    """A start time still ahead, short, for ``queue list`` (local time): ``22:00`` within a
    day (the next 22:00), ``Tue 22:00`` within a week, else ``2026-12-24``; ``-`` for none
    or one that has passed."""
    if moment is None:
        return "-"
    start = _moment(moment)
    now = now if now is not None else dt.datetime.now(dt.UTC)
    ahead = start - now
    local = start.astimezone()
    if ahead <= dt.timedelta(0):
        return "-"
    if ahead < dt.timedelta(days=1):
        return f"{local:%H:%M}"
    if ahead < dt.timedelta(days=6):
        return f"{local:%a %H:%M}"
    return f"{local:%Y-%m-%d}"


def priority_cell(priority: int) -> str:
    """A priority for ``queue list``: ``+5``, ``-3``, ``0``."""
    return f"{priority:+d}" if priority else "0"


def plan_note(after: Sequence[str], start: dt.datetime | None) -> str:
    """What ``workflow queue`` tells a person of a workload's plan: ``, after X and Y,
    not before 2026-12-08 22:00:00 CET (in 3h12m)`` (empty without one)."""
    note = f", after {' and '.join(after)}" if after else ""
    if start is not None:
        now = dt.datetime.now(dt.UTC)
        left = (start - now).total_seconds()
        note += f", not before {local_time(start)}" + (
            f" (in {format_duration(left)})" if left > 0 else "")
    return note


# --- results ------------------------------------------------------------------------------

STATUS_STYLE = {
    "completed": "green",
    "failed": "red",
    "skipped": "dim",
    "queued": "yellow",
    "waiting": "magenta",
    "running": "cyan",
    "cancelled": "dim",
}


def status_text(status: str) -> str:
    """A status word coloured by its meaning (rich markup)."""
    style = STATUS_STYLE.get(status, "")
    return f"[{style}]{status}[/]" if style else status


RESULTS_COLUMNS = ["id", "workflow", "pinion", "status", "finished", "workload"]
RESULTS_FIT = Fit(shrink=("workflow", "pinion"), drop=("workload", "pinion"))


def results_table(items: Iterable[Results]) -> RenderableType:
    """Stored results, one row each (``caliber results list``): on a terminal fitted to its
    width, to a file or a pipe as plain text, whole."""
    from rich.text import Text

    rows = [[r.id, r.workflow, r.pinion or "-", r.status.value,
             r.finished_at.astimezone().strftime("%Y-%m-%d %H:%M:%S"), r.workload_id or "-"]
            for r in items]
    if not is_terminal(sys.stdout):
        return Text(plain_table(RESULTS_COLUMNS, rows))
    styled = [[status_text(c) if i == 3 else escape(c) for i, c in enumerate(row)]
              for row in rows]
    return table(RESULTS_COLUMNS, styled, fit=RESULTS_FIT, width=console().width)


def results_view(results: Results, *, value_width: int | None = None,
                 unsigned: str | None = None) -> RenderableType:
    """One Results in full: header, the upstream Results its values came from, every task's
    status, duration and return value, the global data and the error (``caliber results
    show``); ``unsigned``: why their signature does not check with your key, if it does
    not."""
    from rich.console import Group
    from rich.text import Text

    width = value_width or 10_000
    head = Text.from_markup(
        f"[bold]{escape(results.workflow)}[/]  results {escape(results.id)}  "
        f"{status_text(results.status.value)}\n"
        f"[dim]workload {escape(results.workload_id or '-')}  "
        f"pinion {escape(results.pinion or '-')}  "
        f"started {results.started_at.astimezone():%Y-%m-%d %H:%M:%S}  "
        f"took {format_duration((results.finished_at - results.started_at).total_seconds())}"
        + (f"  resumed from results {escape(results.resumed_from)}" if results.resumed_from
           else "") + "[/]"
    )
    rows = []
    for t in results.tasks:
        shown = _summarised(results, t.return_, f"the value of task {t.name!r}")
        value = "" if t.status != "completed" else escape(format_value(shown, width))
        if t.conversion:
            value += f" [dim]({escape(t.conversion)})[/]"
        if t.error is not None:
            value = f"[red]{escape(t.error.type)}: {escape(t.error.message)}[/]"
        rows.append([
            escape(t.name),
            "-" if t.branch is None else str(t.branch),
            status_text(t.status.value) + _reuse_note(t.reused_from, t.reuse),
            format_duration(t.duration),
            value,
        ])
    parts: list[RenderableType] = [head]
    parts.extend(Text.from_markup(line) for line in inputs_lines(results))
    if unsigned is not None:
        parts.append(Text.from_markup(f"[yellow]not vouched for: {escape(unsigned)}[/]"))
    parts.append(table(["task", "branch", "status", "time", "return"], rows))
    if results.g_json:
        g_rows = []
        for key, val in results.g_json.items():
            note = results.g_conversions.get(key)
            text = escape(format_value(_summarised(results, val, f"g[{key!r}]"), width))
            g_rows.append([escape(key), text + (f" [dim]({escape(note)})[/]" if note else "")])
        parts.append(table(["g", "value"], g_rows))
    if results.error is not None:
        parts.append(Text.from_markup(f"[red]error:[/] {escape(results.error.summary())}"))
    if results.files or results.files_skipped or results.files_unmatched:
        parts.append(Text.from_markup(_files_line(results)))
    if results.work_dir:
        parts.append(Text.from_markup(_run_folder_line(results)))
    return Group(*parts)


def inputs_lines(results: Results) -> list[str]:
    """``inputs from: analysis 'Solve', 'Field' (workload k3v9, results 5mz0)``: one line per
    upstream Results the run took values from (rich markup)."""
    lines = []
    for source in results.upstream:
        tasks = ", ".join(repr(task) for task in source.tasks)
        which = (f"workload {escape(source.workload)}, results {escape(source.results)}"
                 if source.workload is not None else
                 f"results {escape(source.results)} of a workflow run")
        lines.append(f"inputs from: {escape(source.workflow)} {escape(tasks)} [dim]({which})[/]")
    return lines


def _reuse_note(reused_from: str | None, reuse: str | None) -> str:
    """`` (reused from R)``, or, for a task of a resumed run that ran, `` (ran again: why)``
    (rich markup)."""
    if reused_from is not None:
        return f" [dim](reused from {escape(reused_from)})[/]"
    return f" [dim](ran again: {escape(reuse)})[/]" if reuse else ""


class _Summary:
    """A stored array in a value shown: its one-line summary, not its numbers."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"<{self.text}>"


def _summarised(results: Results, stored: Any, what: str) -> Any:
    """``stored`` (a value as the Results keep it) with each stored array as its summary
    (shape, dtype, min, max, mean), read from the store one at a time and let go."""
    from caliber.results.arrays import describe, describe_ref, restore, value_refs

    if next(value_refs(stored), None) is None:
        return stored

    def summary(ref: dict[str, Any]) -> _Summary:
        value = results.value_of(ref, what, keep=False)
        return _Summary(describe_ref(value) if value is ref else describe(value))

    return restore(stored, summary)


def _files_line(results: Results) -> str:
    """``files: 3 kept (1.2 MB), 1 not kept; see: caliber results files ID`` (rich markup)."""
    count = len(results.files)
    line = (f"files: {count} kept ({format_bytes(sum(f.size for f in results.files))})"
            if count else "files: none kept")
    if results.files_skipped:
        line += f", [yellow]{len(results.files_skipped)} not kept[/]"
    if results.files_unmatched:
        line += f", {len(results.files_unmatched)} pattern(s) matched nothing"
    return line + f"; see: caliber results files {escape(results.id)}"


def _run_folder_line(results: Results) -> str:
    """Where the run's files are: its folder, and the traceback file of a failed run."""
    from pathlib import Path

    from caliber.workflow.runner import TRACEBACK_FILE

    folder = results.work_dir or ""
    if results.status.value != "failed":  # (a cancelled run raised nothing: no file)
        return f"run folder: {escape(folder)}"
    return (f"run folder: {escape(folder)} "
            f"(traceback in {escape(str(Path(folder) / TRACEBACK_FILE))})")


def print_traceback(text: str, title: str, *, stderr: bool = False) -> None:
    """A failing task's traceback as plain lines, whole, its title in red on a terminal: never
    cut or wrapped at a width (the terminal wraps a long line itself, so a file name is never
    broken in the middle, and copying it gives the whole name)."""
    stream = sys.stderr if stderr else sys.stdout
    lines = for_terminal(text.rstrip(), multiline=True).split("\n")
    # Indented, so no line of it (an exception message may span lines) passes for a log line.
    body = "".join(f"  {line}\n" for line in lines)
    head = f"traceback of {for_terminal(title)}:"
    if use_color(stream):
        head = f"\x1b[1;31m{head}\x1b[0m"
    stream.write(f"{head}\n{body}")
    stream.flush()


# --- progress of a run --------------------------------------------------------------------


def _task_title(name: str, branch: int | None) -> str:

    return escape(name) + (f" [dim](branch {branch})[/]" if branch is not None else "")


def progress_line(event: TaskEvent) -> str:
    """``[2/3] Rest  completed  0.10s`` (rich markup) for a task event; ``running`` at start."""

    width = len(str(event.total))
    count = escape(f"[{event.index:>{width}}/{event.total}]")
    head = f"{count} {_task_title(event.name, event.branch)}"
    if event.kind == "start":
        return f"{head}  running"
    status = event.status.value if event.status is not None else "done"
    reused = event.result.reused_from if event.result is not None else None
    if reused is not None:  # a resumed run: not run again
        return f"{head}  {status_text(status)}  [dim]reused from {escape(reused)}[/]"
    line = f"{head}  {status_text(status)}  {format_duration(event.duration)}"
    if event.error is not None:
        line += f"  [red]{escape(event.error.type)}: {escape(event.error.message)}[/]"
    why = event.result.reuse if event.result is not None else None
    return line + (f"  [dim]ran again: {escape(why)}[/]" if why else "")


def skipped_lines(results: Results) -> list[str]:
    """One line per task that never ran because an earlier task of its process failed."""
    return [
        f"      {_task_title(t.name, t.branch)}  {status_text(t.status.value)}"
        for t in results.tasks
        if t.status.value == "skipped"
    ]


def format_bytes(count: int) -> str:
    """``512 B``, ``61.4 kB``, ``19.3 MB`` (powers of 1000, as file managers show)."""
    size = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def result_files_lines(results: Results, dest: Path | None = None,
                       written: Sequence[Path] = ()) -> list[str]:
    """The result files of ``results`` (``caliber results files``): a table of name and
    size, or what was copied into ``dest``; then what was not kept and the patterns that
    matched nothing. Plain text, names made safe for a terminal."""
    lines = []
    files = results.files
    if dest is not None:
        total = sum(f.size for f in files)
        lines.append(f"copied {len(written)} file{'s' if len(written) != 1 else ''} "
                     f"({format_bytes(total)}) of results {results.id} into {dest}")
    elif files:
        lines.append(plain_table(["file", "size"],
                                 [[f.path, format_bytes(f.size)] for f in files]))
    else:
        lines.append(f"results {results.id} kept no files" + (
            "" if results.files_skipped or results.files_unmatched
            else " (the workflow names none with outputs=)"))
    for skipped in results.files_skipped:
        lines.append(f"not kept: {for_terminal(skipped.path)}: {for_terminal(skipped.reason)}")
    for pattern in results.files_unmatched:
        lines.append(f"matched nothing: {for_terminal(pattern)}")
    return lines


def prune_lines(pruned: Pruned) -> list[str]:
    """What ``results prune`` removed (or would), for people."""
    did = "would remove" if pruned.dry_run else "removed"
    cut = pruned.before.strftime("%Y-%m-%d %H:%M UTC")
    size = "" if pruned.bytes is None else f": {format_bytes(pruned.bytes)} of records"
    lines = [f"{did} {len(pruned.workloads)} finished workloads and {len(pruned.results)} "
             f"results from before {cut}{size}"]
    if pruned.versions:
        lines.append(f"{did} {pruned.versions} versions of the remote queue")
    if pruned.file_before is not None and pruned.file_after is not None and not pruned.dry_run:
        lines.append(f"queue database: {format_bytes(pruned.file_before)} -> "
                     f"{format_bytes(pruned.file_after)}")
    if pruned.blobs:
        lines.append(f"{did} {pruned.blobs} stored files nothing refers to any more "
                     f"({format_bytes(pruned.blob_bytes)})")
    if pruned.run_folders:
        lines.append(f"{did} {pruned.run_folders} run folders on this machine "
                     f"({format_bytes(pruned.run_bytes)})")
    return lines
