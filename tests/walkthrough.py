"""Guides tested word for word: the fenced blocks after a marker line, in one bash shell.

Every fenced block after a marker line (``<!-- first-hour -->`` in the README,
``<!-- overnight -->`` in docs/overnight.md) is taken in order. A ``python`` block whose first
line is ``# name.py`` is saved as that file in the shell's current folder, as the reader is
told to. In a ``console`` block, a line starting with ``$ `` is a command; the lines under it
are what it prints: each must appear, in that order, inside a line of the command's output
(stdout and stderr, as on a terminal), with ``…`` standing for any text. Every command must
exit 0. Commands run in one shell, so a variable one sets is there for the next.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

EOF_WORD = "CALIBER_WALKTHROUGH_EOF"


@dataclass
class Command:
    line: str
    expected: list[str] = field(default_factory=list)


@dataclass
class File:
    name: str
    text: str


def walkthrough(text: str, mark: str) -> list[Command | File]:
    steps: list[Command | File] = []
    for lang, body in re.findall(rf"^{re.escape(mark)}\n```(\w+)\n(.*?)^```$", text,
                                 flags=re.M | re.S):
        if lang == "python":
            name = re.match(r"# ([\w.-]+\.py)\n", body)
            assert name, f"a walkthrough python block starts with '# name.py': {body[:40]!r}"
            steps.append(File(name.group(1), body))
            continue
        assert lang == "console", lang
        for line in body.splitlines():
            if line.startswith("$ "):
                steps.append(Command(line[2:]))
            else:
                assert isinstance(steps[-1], Command), line
                steps[-1].expected.append(line)
    return steps


def script(steps: list[Command | File], out: Path) -> str:
    """One bash script: every command's output and exit code in files of its own."""
    lines = ["set -u"]
    for i, step in enumerate(steps):
        if isinstance(step, File):
            lines += [f"cat > '{step.name}' <<'{EOF_WORD}'", step.text.rstrip("\n"), EOF_WORD]
        else:
            lines += [f"{{ {step.line}\n}} > '{out}/{i}' 2>&1 < /dev/null",
                      f"echo $? > '{out}/{i}.rc'"]
    return "\n".join(lines) + "\n"


def matches(expected: list[str], output: str) -> bool:
    """Each expected line inside an output line, in order (``…``: any text)."""
    lines = iter(output.splitlines())
    for want in expected:
        pattern = re.compile(".*?".join(re.escape(part) for part in want.strip().split("…")))
        if not any(pattern.search(line) for line in lines):
            return False
    return True
