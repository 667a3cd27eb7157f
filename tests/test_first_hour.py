"""The README's "Your first hour", word for word, in one bash shell, in a temporary folder
(every fenced block after a ``<!-- first-hour -->`` line: the rules are in
:mod:`tests.walkthrough`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.walkthrough import Command, File, matches, script, walkthrough

REPO = Path(__file__).resolve().parent.parent
MARK = "<!-- first-hour -->"


def test_the_walkthrough_is_there() -> None:
    steps = walkthrough((REPO / "README.md").read_text(encoding="utf-8"), MARK)
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
    steps = walkthrough((REPO / "README.md").read_text(encoding="utf-8"), MARK)
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
