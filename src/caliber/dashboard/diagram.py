"""A workflow drawn as SVG for the dashboard: the tree ``caliber workflow show`` prints, as
boxes. A process stacks its items top to bottom; a branch process puts its branches side by
side (the first :data:`MAX_LANES`, then a note of how many more), each box coloured by its
task's status when the run's statuses are known. Every name is escaped."""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from caliber.workflow.model import BranchProcess, Node, Process

MAX_LANES = 8
"""Branches drawn side by side at most; more are summed up in a note."""
BOX_H, GAP, PAD, HEAD = 26, 8, 8, 18
CHAR_W = 7.0
STATUS_FILL = {
    "completed": "#d8f3dc", "failed": "#ffd6d6", "running": "#d6ecff", "skipped": "#eeeeee",
    "cancelled": "#eeeeee", "queued": "#fff4cc",
}


@dataclass
class Box:
    """A laid-out part of the drawing: its size and the SVG elements at its own origin."""

    width: float
    height: float
    parts: list[str] = field(default_factory=list)

    def placed(self, x: float, y: float) -> str:
        return f'<g transform="translate({x:.1f},{y:.1f})">{"".join(self.parts)}</g>'


def _task_box(name: str, status: str | None) -> Box:
    label = name if len(name) <= 40 else name[:39] + "\u2026"
    width = max(120.0, CHAR_W * len(label) + 20)
    fill = STATUS_FILL.get(status or "", "#ffffff")
    title = escape(name) + (f" ({escape(status)})" if status else "")
    return Box(width, BOX_H, [
        f'<rect class="task" data-status="{escape(status or "")}" width="{width:.1f}" '
        f'height="{BOX_H}" rx="4" fill="{fill}" stroke="#555"><title>{title}</title></rect>',
        f'<text x="10" y="17" font-size="12">{escape(label)}</text>',
    ])


def _stack(head: str, boxes: list[Box], dashed: bool = False) -> Box:
    width = max([b.width for b in boxes] + [CHAR_W * len(head) + 2 * PAD]) + 2 * PAD
    y = float(HEAD + PAD)
    parts = []
    for b in boxes:
        parts.append(b.placed(PAD, y))
        y += b.height + GAP
    height = y - GAP + PAD
    dash = ' stroke-dasharray="4 3"' if dashed else ""
    return Box(width, height, [
        f'<rect width="{width:.1f}" height="{height:.1f}" rx="6" fill="none" '
        f'stroke="#999"{dash}/>',
        f'<text x="{PAD}" y="14" font-size="11" fill="#555">{escape(head)}</text>',
        *parts,
    ])


Statuses = dict[tuple[str, int | None], str]


def _node(node: Node, statuses: Statuses, branch: int | None = None) -> Box:
    from caliber.workflow.model import BranchProcess, Process, Task

    if isinstance(node, Task):
        return _task_box(node.name, statuses.get((node.name, branch)))
    if isinstance(node, BranchProcess):
        return _branches(node, statuses)
    assert isinstance(node, Process)
    return _process(node, statuses, branch)


def _process(process: Process, statuses: Statuses, branch: int | None = None) -> Box:
    return _stack(f"process {process.name or ''}".rstrip(),
                  [_node(item, statuses, branch) for item in process.items])


def _branches(bp: BranchProcess, statuses: Statuses) -> Box:
    shown = min(bp.branches, MAX_LANES)
    lanes = [_stack(f"branch {b}", [_task_box(t.name, statuses.get((t.name, b)))
                                    for t in bp.items], dashed=True)
             for b in range(shown)]
    head = f"branch process {bp.name or ''}".rstrip() + f" ({bp.branches} branches)"
    width = sum(lane.width for lane in lanes) + GAP * (len(lanes) - 1) + 2 * PAD
    width = max(width, CHAR_W * len(head) + 2 * PAD)
    height = HEAD + PAD + max(lane.height for lane in lanes) + PAD
    parts = [f'<rect width="{width:.1f}" height="{height + (18 if shown < bp.branches else 0)}" '
             'rx="6" fill="#fafafa" stroke="#999"/>',
             f'<text x="{PAD}" y="14" font-size="11" fill="#555">{escape(head)}</text>']
    x = float(PAD)
    for lane in lanes:
        parts.append(lane.placed(x, HEAD + PAD))
        x += lane.width + GAP
    if shown < bp.branches:
        parts.append(f'<text x="{PAD}" y="{height + 10:.1f}" font-size="11" fill="#555">'
                     f"and {bp.branches - shown} more branches</text>")
        height += 18
    return Box(width, height, parts)


def workflow_svg(process: Process | BranchProcess, statuses: Statuses | None = None) -> str:
    """The drawing of a workflow's process, boxes coloured by ``statuses`` (task name and
    branch -> status)."""
    box = _node(process, statuses or {})
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="diagram" '
            f'viewBox="0 0 {box.width + 2:.0f} {box.height + 2:.0f}" '
            f'width="{box.width + 2:.0f}" height="{box.height + 2:.0f}" '
            f'font-family="sans-serif">{box.placed(1, 1)}</svg>')


def timeline_svg(rows: list[tuple[str, float, float, str]], total: float) -> str:
    """The tasks of a run on a time axis: ``(label, start, duration, status)`` each, seconds
    from the run's start; ``total`` the run's length."""
    width, left, bar = 640.0, 180.0, 16
    span = total or 1.0
    height = bar * len(rows) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" '
             f'viewBox="0 0 {width:.0f} {height}" width="{width:.0f}" height="{height}" '
             'font-family="sans-serif">']
    for i, (label, start, duration, status) in enumerate(rows):
        y = 4 + i * bar
        x = left + start / span * (width - left - 10)
        w = max(duration / span * (width - left - 10), 1.5)
        fill = STATUS_FILL.get(status, "#ffffff")
        text = label if len(label) <= 24 else label[:23] + "\u2026"
        parts.append(f'<text x="{left - 6}" y="{y + 12}" font-size="11" text-anchor="end">'
                     f"{escape(text)}</text>")
        parts.append(f'<rect class="span" data-status="{escape(status)}" x="{x:.1f}" y="{y}" '
                     f'width="{w:.1f}" height="{bar - 3}" fill="{fill}" stroke="#555">'
                     f"<title>{escape(label)}: {duration:.2f} s</title></rect>")
    parts.append(f'<text x="{width - 10}" y="{height - 6}" font-size="11" text-anchor="end">'
                 f"{total:.2f} s</text></svg>")
    return "".join(parts)
