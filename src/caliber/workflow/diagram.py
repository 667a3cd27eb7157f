"""Diagrams of a workflow as text: Mermaid (``flowchart``) and Graphviz DOT.

Processes and branches become boxes (subgraphs, clusters), tasks become nodes labelled with
their name and call, solid arrows give the order of execution and dotted arrows the results
a task takes from an earlier task (``args=[dough.result]``).

>>> print(mermaid(workflow))        # paste into a Markdown file, GitHub renders it
>>> print(dot(workflow))            # dot -Tsvg -o pasta.svg
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from caliber.text import for_terminal
from caliber.workflow.model import (
    BranchProcess,
    Node,
    Process,
    Task,
    TaskRef,
    UpstreamResult,
    Workflow,
    iter_refs,
    iter_steps,
)

VALUE_WIDTH = 60  # characters of one argument shown before "..."


def value_text(value: Any, width: int = VALUE_WIDTH) -> str:
    """A value as short text: JSON where it fits, task references as ``<result of 'X'>``."""
    text = _value_text(value)
    return text if len(text) <= width else text[: max(width - 3, 1)] + "..."


def _value_text(value: Any) -> str:
    if isinstance(value, TaskRef | UpstreamResult):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (
            f"{json.dumps(str(k), ensure_ascii=False)}: {_value_text(v)}"
            for k, v in value.items()
        )
        return "{" + ", ".join(items) + "}"
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)


def task_arguments(task: Task, branch: int | None = None) -> tuple[list[Any], dict[str, Any]]:
    """The args and kwargs of a task (of one branch, for a branched task)."""
    if branch is None:
        kwargs = task.kwargs if isinstance(task.kwargs, dict) else {}
        return list(task.args), dict(kwargs)
    return list(task.args[branch]), dict(task.kwargs[branch])


def call_text(task: Task, branch: int | None = None, width: int = VALUE_WIDTH) -> str:
    """``module:function(3, pasta_type="ravioli")`` for a task (of one branch)."""
    args, kwargs = task_arguments(task, branch)
    parts = [value_text(a, width) for a in args]
    parts += [f"{k}={value_text(v, width)}" for k, v in kwargs.items()]
    return f"{task.function}({', '.join(parts)})"


def task_refs(task: Task, branch: int | None = None) -> list[str]:
    """Names of the tasks whose results this task (of one branch) takes, in order, once."""
    args, kwargs = task_arguments(task, branch)
    return list(dict.fromkeys(ref.task for ref in iter_refs([args, kwargs])))


# --- the graph, independent of the output language ----------------------------------------


@dataclass
class _Box:
    id: str
    label: str
    items: list[_Box | _Dot] = field(default_factory=list)


@dataclass
class _Dot:
    id: str
    name: str
    call: str


@dataclass
class _Graph:
    root: _Box
    order: list[tuple[str, str]]
    refs: list[tuple[str, str]]


class _Builder:
    def __init__(self) -> None:
        self.count = 0
        self.ids: dict[tuple[str, int | None], str] = {}
        self.order: list[tuple[str, str]] = []

    def new_id(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def task(self, box: _Box, task: Task, branch: int | None) -> tuple[list[str], list[str]]:
        dot = _Dot(self.new_id("t"), task.name, call_text(task, branch))
        self.ids[task.name, branch] = dot.id
        box.items.append(dot)
        return [dot.id], [dot.id]

    def chain(self, parts: list[tuple[list[str], list[str]]]) -> tuple[list[str], list[str]]:
        parts = [p for p in parts if p[0]]
        for (_, exits), (entries, _) in itertools.pairwise(parts):
            self.order += [(a, b) for a in exits for b in entries]
        if not parts:
            return [], []
        return parts[0][0], parts[-1][1]

    def node(self, box: _Box, node: Node) -> tuple[list[str], list[str]]:
        if isinstance(node, Task):
            return self.task(box, node, None)
        if isinstance(node, Process):
            sub = _Box(self.new_id("p"), f"process {node.name}" if node.name else "process")
            box.items.append(sub)
            return self.chain([self.node(sub, item) for item in node.items])
        return self.branches(box, node)

    def branches(self, box: _Box, node: BranchProcess) -> tuple[list[str], list[str]]:
        name = f"branch process {node.name}" if node.name else "branch process"
        sub = _Box(self.new_id("b"), f"{name} ({node.how()})")
        box.items.append(sub)
        entries: list[str] = []
        exits: list[str] = []
        for branch in range(node.branches):
            lane = _Box(self.new_id("b"), f"branch {branch}")
            sub.items.append(lane)
            first, last = self.chain([self.task(lane, t, branch) for t in node.items])
            entries += first
            exits += last
        return entries, exits


def _graph(workflow: Workflow) -> _Graph:
    builder = _Builder()
    root = _Box("root", workflow.name)
    builder.node(root, workflow.process)
    refs: list[tuple[str, str]] = []
    for step in iter_steps(workflow.process):
        target = builder.ids[step.task.name, step.branch]
        for name in task_refs(step.task, step.branch):
            if (name, step.branch) in builder.ids:
                sources = [builder.ids[name, step.branch]]
            elif (name, None) in builder.ids:
                sources = [builder.ids[name, None]]
            else:  # a branched task's results, all branches, used after its branch process
                sources = [i for (n, _), i in builder.ids.items() if n == name]
            refs += [(s, target) for s in sources]
    return _Graph(root, builder.order, refs)


# --- Mermaid ------------------------------------------------------------------------------


def _mermaid_text(text: str) -> str:
    text = for_terminal(text)  # a line break or an escape sequence would forge diagram lines
    for raw, code in (("&", "#amp;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;")):
        text = text.replace(raw, code)
    return text


def _mermaid_box(box: _Box, lines: list[str], indent: str) -> None:
    for item in box.items:
        if isinstance(item, _Dot):
            label = f"<b>{_mermaid_text(item.name)}</b><br/>{_mermaid_text(item.call)}"
            lines.append(f'{indent}{item.id}["{label}"]')
        else:
            lines.append(f'{indent}subgraph {item.id}["{_mermaid_text(item.label)}"]')
            _mermaid_box(item, lines, indent + "  ")
            lines.append(f"{indent}end")


def mermaid(workflow: Workflow) -> str:
    """The workflow as a Mermaid flowchart (text)."""
    graph = _graph(workflow)
    lines = ["---", f"title: {_mermaid_text(workflow.name)}", "---", "flowchart TD"]
    _mermaid_box(graph.root, lines, "  ")
    lines += [f"  {a} --> {b}" for a, b in graph.order]
    lines += [f"  {a} -. result .-> {b}" for a, b in graph.refs]
    return "\n".join(lines) + "\n"


# --- Graphviz DOT -------------------------------------------------------------------------


def _dot_text(text: str) -> str:
    return for_terminal(text.replace("\\", "\\\\").replace('"', '\\"'))  # "\n" -> "\\n"


def _dot_box(box: _Box, lines: list[str], indent: str) -> None:
    for item in box.items:
        if isinstance(item, _Dot):
            label = _dot_text(f"{item.name}\n{item.call}")
            lines.append(f'{indent}{item.id} [label="{label}"];')
        else:
            lines.append(f"{indent}subgraph cluster_{item.id} {{")
            lines.append(f'{indent}  label="{_dot_text(item.label)}";')
            _dot_box(item, lines, indent + "  ")
            lines.append(f"{indent}}}")


def dot(workflow: Workflow) -> str:
    """The workflow as a Graphviz DOT digraph (text)."""
    graph = _graph(workflow)
    lines = [
        f'digraph "{_dot_text(workflow.name)}" {{',
        f'  label="{_dot_text(workflow.name)}";',
        "  labelloc=t;",
        '  node [shape=box, style=rounded, fontname="Helvetica"];',
    ]
    _dot_box(graph.root, lines, "  ")
    lines += [f"  {a} -> {b};" for a, b in graph.order]
    lines += [f'  {a} -> {b} [style=dashed, label="result"];' for a, b in graph.refs]
    lines.append("}")
    return "\n".join(lines) + "\n"
