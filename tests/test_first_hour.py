"""The README's "Your first hour", word for word, in one bash shell, in a temporary folder.

Every fenced block after a ``<!-- first-hour -->`` line is taken in order. A ``python`` block
whose first line is ``# name.py`` is saved as that file in the shell's current folder, as the
reader is told to. In a ``console`` block, a line starting with ``$ `` is a command; the lines
under it are what it prints: each must appear, in that order, inside a line of the command's
output (stdout and stderr, as on a terminal), with ``…`` standing for any text. Every command
must exit 0.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MARK = "<!-- first-hour -->"
EOF_WORD = "CALIBER_FIRST_HOUR_EOF"


@dataclass
class Command:
    line: str
    expected: list[str] = field(default_factory=list)


@dataclass
class File:
    name: str
    text: str


def walkthrough(readme: str) -> list[Command | File]:
    steps: list[Command | File] = []
    for lang, body in re.findall(rf"^{re.escape(MARK)}\n```(\w+)\n(.*?)^```$", readme,
                                 flags=re.M | re.S):
        if lang == "python":
            name = re.match(r"# ([\w.-]+\.py)\n", body)
            assert name, f"a first-hour python block starts with '# name.py': {body[:40]!r}"
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


def test_the_walkthrough_is_there() -> None:
    steps = walkthrough((REPO / "README.md").read_text(encoding="utf-8"))
    files = [s.name for s in steps if isinstance(s, File)]
    commands = [s.line for s in steps if isinstance(s, Command)]
    assert files == ["tasks.py", "define.py", "report.py"]
    assert commands[0] == "source .venv/bin/activate"
    for verb in ("workflow show", "workflow run", "workflow queue", "pinion init",
                 "results show"):
        assert any(c.startswith(f"caliber {verb}") for c in commands), verb
    assert all(s.expected for s in steps if isinstance(s, Command) and s.line.startswith(
        ("caliber", "python")))


def test_matches() -> None:
    assert matches(["a … c", "x"], "1 a b c 2\nnothing\nx")
    assert not matches(["x", "a … c"], "a b c\nx")  # order counts
    assert not matches(["a … c"], "a b\nc")


def test_a_newcomer_follows_the_first_hour(tmp_path: Path, caliber_home: Path) -> None:
    venv = Path(sys.prefix)
    if not (venv / "bin" / "activate").is_file():
        pytest.skip("needs the tests to run in a venv (make test makes .venv)")
    steps = walkthrough((REPO / "README.md").read_text(encoding="utf-8"))
    clone = tmp_path / "caliber"  # stands for the clone: the README starts there
    clone.mkdir()
    (clone / ".venv").symlink_to(venv)
    out = tmp_path / "out"
    out.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    path = [p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != venv / "bin"]
    env = {**os.environ, "HOME": str(home), "CALIBER_HOME": str(caliber_home),
           "PATH": os.pathsep.join(path), "COLUMNS": "100"}
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run(["bash", "-c", script(steps, out)], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    for i, step in enumerate(steps):
        if isinstance(step, Command):
            output = (out / str(i)).read_text()
            code = int((out / f"{i}.rc").read_text())
            assert code == 0, f"$ {step.line}\n{output}"
            assert matches(step.expected, output), (
                f"$ {step.line}\nexpected:\n" + "\n".join(step.expected) + f"\ngot:\n{output}")
    assert (tmp_path / "first-hour" / "floor.json").is_file()
    assert list(home.iterdir()) == []  # nothing in the user's home
