"""``caliber workflow show|run|schema|queue``, ``--version``, ``--help`` and exit codes."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest

import caliber
from caliber.cli import cli, main
from caliber.queue.registry import open_backend
from caliber.queue.target import local_target
from caliber.workflow.fileformat import json_schema

FUNCTIONS = '''
from caliber.context import g


def make_dough(eggs):
    g.eggs = eggs
    return {"eggs": eggs}


def rest(minutes=30):
    return f"rested {minutes} min"


def shape(pasta_type="tagliatelle", dough=None):
    if pasta_type == "ravioli!":
        raise ValueError("the dough tore")
    return {"pasta_type": pasta_type, "eggs": g.eggs}
'''


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


Run = Callable[..., Result]


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Run:
    """``caliber ARGS`` in this process (main() with its exit code and error mapping)."""

    def run(*args: str) -> Result:
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            main(list(args))
        captured = capsys.readouterr()
        code = info.value.code
        return Result(code if isinstance(code, int) else 0, captured.out, captured.err)

    return run


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """A user's folder with a functions module and a way to write workflow files into it."""
    folder = tmp_path / "project"
    folder.mkdir()
    module = f"pasta_fn_{uuid.uuid4().hex[:8]}"  # each test imports its own module
    (folder / f"{module}.py").write_text(FUNCTIONS)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    def write(branched: bool = False, fail: bool = False, function: str | None = None) -> Path:
        def ref(f: str) -> str:
            return function or f"{module}:{f}"

        if branched:
            pt = ["tagliatelle", "ravioli!" if fail else "ravioli"]
            process: dict[str, Any] = {
                "type": "process", "name": "Party", "tasks": [
                    {"type": "branch", "name": "Batches", "branches": 2, "tasks": [
                        {"type": "task", "name": "Make dough", "function": ref("make_dough"),
                         "args": [[3], [6]]},
                        {"type": "task", "name": "Roll and shape", "function": ref("shape"),
                         "kwargs": [{"pasta_type": p} for p in pt]},
                    ]},
                    {"type": "task", "name": "Rest", "function": ref("rest"),
                     "args": [{"$result": "Make dough"}]},
                ]}
        else:
            process = {"type": "process", "name": "Pasta", "tasks": [
                {"type": "task", "name": "Make dough", "function": ref("make_dough"),
                 "args": [3]},
                {"type": "task", "name": "Rest", "function": ref("rest")},
                {"type": "task", "name": "Roll and shape", "function": ref("shape"),
                 "kwargs": {"pasta_type": "ravioli!" if fail else "tagliatelle",
                            "dough": {"$result": "Make dough"}}},
            ]}
        doc = {"caliber": 1, "name": "pasta", "description": "Fresh pasta",
               "attachments": [f"{module}.py"], "process": process}
        path = folder / ("branched.json" if branched else "pasta.json")
        path.write_text(json.dumps(doc, indent=2))
        return path

    return write


def one_error_line(result: Result) -> str:
    lines = result.err_lines
    assert lines, "expected an error line on stderr"
    assert lines[-1].startswith("caliber: error: ")
    assert "Traceback (most recent call last)" not in "\n".join(lines[-1:])
    return lines[-1]


# --- show --------------------------------------------------------------------------------


def test_show_draws_a_tree(run_cli: Run, project: Callable[..., Path]) -> None:
    result = run_cli("workflow", "show", str(project(branched=True)))
    assert result.code == 0, result.err
    out = result.out
    assert "workflow pasta" in out and "Fresh pasta" in out
    assert "branch process Batches (2 branches)" in out
    assert "branch 0" in out and "branch 1" in out
    assert ":make_dough(3)" in out and ":make_dough(6)" in out
    assert ':shape(pasta_type="ravioli")' in out
    assert "Rest" in out and "<result of 'Make dough'>)  <- Make dough" in out
    assert "attachments" in out
    assert "\x1b[" not in out  # no colour when not on a terminal


def test_show_mermaid_dot_and_json(run_cli: Run, project: Callable[..., Path]) -> None:
    path = project(branched=True)
    mermaid = run_cli("workflow", "show", str(path), "--format", "mermaid").out
    assert mermaid.startswith("---\ntitle: pasta\n---\nflowchart TD\n")
    assert 'subgraph b3["branch 0"]' in mermaid or "branch 0" in mermaid
    assert "-. result .->" in mermaid and "-->" in mermaid
    dot = run_cli("workflow", "show", str(path), "--format", "dot").out
    assert dot.startswith('digraph "pasta" {') and dot.rstrip().endswith("}")
    assert "subgraph cluster_" in dot and 'style=dashed, label="result"' in dot
    doc = json.loads(run_cli("workflow", "show", str(path), "--format", "json").out)
    assert doc == caliber.Workflow.load(path).to_document()
    assert doc["process"]["tasks"][0]["tasks"][0]["kwargs"] == [{}, {}]  # defaults per branch


def test_show_refuses_a_bad_format(run_cli: Run, project: Callable[..., Path]) -> None:
    result = run_cli("workflow", "show", str(project()), "--format", "svg")
    assert result.code == 2 and "'svg' is not one of" in one_error_line(result)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"caliber": 1,\n "name": ', "line 2, column 10: Expecting value (not valid JSON)"),
        ('{"caliber": 7}', "unknown format version 7"),
        ('{"caliber": 1, "name": "x"}', "missing field 'process'"),
        ('{"caliber": 1, "name": "x", "process": {"type": "process", "tasks": []}, "x": 1}',
         "unknown field 'x'"),
        ('{"caliber": 1, "name": "x", "attachments": ["gone.py"], '
         '"process": {"type": "process", "tasks": []}}', "attachment 'gone.py' not found"),
    ],
)
def test_bad_files_are_one_line_and_exit_2(
    run_cli: Run, tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    for command in ("show", "run"):
        result = run_cli("workflow", command, str(path))
        assert result.code == 2
        line = one_error_line(result)
        assert len(result.err_lines) == 1
        assert str(path) in line and expected in line
    assert not (Path.cwd() / "caliber-traceback.txt").exists()


def test_missing_file_is_exit_2(run_cli: Run) -> None:
    result = run_cli("workflow", "run", "nope.json")
    assert result.code == 2 and one_error_line(result) == "caliber: error: nope.json: no such file"


# --- run ---------------------------------------------------------------------------------


def test_run_prints_a_line_per_task_and_stores_results(
    run_cli: Run, project: Callable[..., Path]
) -> None:
    result = run_cli("workflow", "run", str(project()))
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].startswith("[1/3] Make dough  completed  ") and lines[0].endswith("s")
    assert lines[1].startswith("[2/3] Rest  completed")
    assert lines[2].startswith("[3/3] Roll and shape  completed")
    results_id = lines[-1].split()[1]
    assert lines[-1] == (f"results {results_id} (completed); "
                         f"see: caliber results show {results_id}")
    stored = caliber.get_results(results_id=results_id)
    assert stored["Roll and shape"] == {"pasta_type": "tagliatelle", "eggs": 3}
    folder = project().parent  # the tasks ran in the workflow's folder, not the current one
    assert stored.g == {"eggs": 3} and stored.work_dir == str(folder)
    assert not (folder / "caliber-traceback.txt").exists()


def test_run_json(run_cli: Run, project: Callable[..., Path]) -> None:
    result = run_cli("workflow", "run", str(project(branched=True)), "--json")
    assert result.code == 0
    doc = json.loads(result.out)
    assert doc["status"] == "completed" and doc["workflow"] == "pasta"
    assert [(t["name"], t["branch"]) for t in doc["tasks"]][:2] == [("Make dough", 0),
                                                                   ("Roll and shape", 0)]
    assert "[1/5] Make dough (branch 0)  completed" in result.err  # progress on stderr


def test_failed_run_exits_1_shows_the_user_traceback_and_saves_it(
    run_cli: Run, project: Callable[..., Path]
) -> None:
    result = run_cli("workflow", "run", str(project(fail=True)))
    assert result.code == 1
    assert "[3/3] Roll and shape  failed" in result.out
    assert "ValueError: the dough tore" in result.out
    line = one_error_line(result)
    assert line == ("caliber: error: workflow 'pasta' failed: task 'Roll and shape': ValueError: "
                    "the dough tore; traceback saved to ../project/caliber-traceback.txt")
    panel = "\n".join(result.err_lines[:-1])
    assert "Traceback (most recent call last)" in panel
    assert 'raise ValueError("the dough tore")' in panel
    assert "caliber/" not in panel  # the user's own frames only
    assert not (Path.cwd() / "caliber-traceback.txt").exists()
    saved = (Path.cwd().parent / "project" / "caliber-traceback.txt").read_text()
    assert "task 'Roll and shape': ValueError: the dough tore" in saved
    assert caliber.get_results(workflow="pasta").status == "failed"


def test_failed_branch_other_branches_run(run_cli: Run, project: Callable[..., Path]) -> None:
    result = run_cli("workflow", "run", str(project(branched=True, fail=True)))
    assert result.code == 1
    out = result.out
    assert "Roll and shape (branch 0)  completed" in out
    assert "Roll and shape (branch 1)  failed" in out
    assert "Rest  skipped" in out  # after the branch process: never ran
    assert "(branch 1): ValueError: the dough tore" in one_error_line(result)


def test_run_with_a_function_that_cannot_be_imported(
    run_cli: Run, project: Callable[..., Path]
) -> None:
    result = run_cli("workflow", "run", str(project(function="no_such_mod_q:f")))
    assert result.code == 1
    line = one_error_line(result)
    assert "ImportError: cannot import module 'no_such_mod_q'" in line
    assert len(result.err_lines) == 1
    result = run_cli("workflow", "run", str(project(function="json:no_such_attr")))
    assert "module 'json' has no attribute 'no_such_attr'" in one_error_line(result)


# --- schema, queue -----------------------------------------------------------------------


def test_schema_prints_the_json_schema(run_cli: Run) -> None:
    result = run_cli("workflow", "schema")
    assert result.code == 0 and json.loads(result.out) == json_schema()


def test_queue_puts_the_workflow_in_the_local_queue(
    run_cli: Run, project: Callable[..., Path]
) -> None:
    result = run_cli("workflow", "queue", str(project()), "-p", "mypinion", "--local")
    assert result.code == 0, result.err
    workload_id = result.out.strip()
    with open_backend(local_target()) as backend:
        workload = backend.get(workload_id)
    assert workload.pinion == "mypinion" and workload.id == workload_id


def test_queue_needs_a_pinion(run_cli: Run, project: Callable[..., Path]) -> None:
    result = run_cli("workflow", "queue", str(project()))
    assert result.code == 2 and "-p" in one_error_line(result)
    bad = run_cli("workflow", "queue", str(project()), "-p", "bad name!")
    assert bad.code == 2 and "pinion name" in one_error_line(bad)


# --- the command itself ------------------------------------------------------------------


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [path]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out += _commands(command, (*path, name))
        else:
            out.append((*path, name))
    return out


MINE = [p for p in _commands(cli) if not p or p[0] in ("workflow", "results")]


@pytest.mark.parametrize("path", MINE, ids=lambda p: " ".join(p) or "caliber")
def test_every_command_has_help_with_an_example(run_cli: Run, path: tuple[str, ...]) -> None:
    result = run_cli(*path, "--help")
    assert result.code == 0
    assert "Example" in result.out, f"caliber {' '.join(path)} --help has no example"


def test_version_and_unknown_command(run_cli: Run) -> None:
    result = run_cli("--version")
    assert result.code == 0 and result.out.strip() == f"caliber, version {caliber.__version__}"
    bad = run_cli("workflow", "explode")
    assert bad.code == 2 and "No such command 'explode'" in one_error_line(bad)


# --- a few end-to-end checks in real subprocesses ----------------------------------------


def test_subprocess_exit_codes(
    caliber_cmd: list[str], project: Callable[..., Path], tmp_path: Path
) -> None:
    def sh(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*caliber_cmd, *args], capture_output=True, text=True, timeout=60,
                              cwd=Path.cwd())

    version = sh("--version")
    assert version.returncode == 0 and caliber.__version__ in version.stdout
    good = sh("workflow", "run", str(project()))
    assert good.returncode == 0, good.stderr
    assert "[3/3] Roll and shape  completed" in good.stdout
    failed = sh("workflow", "run", str(project(fail=True)))
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-1].startswith("caliber: error: workflow 'pasta' failed")
    (tmp_path / "t.json").write_text('{"caliber": 1, "na')
    bad = sh("workflow", "run", str(tmp_path / "t.json"))
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "line 1, column 16" in bad.stderr
    assert "Traceback" not in bad.stderr


# --- rendering helpers (caliber.cli.render) ----------------------------------------------


class FakeTty:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_colour_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    from caliber.cli.render import use_color

    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_color(FakeTty(True)) is True  # type: ignore[arg-type]
    assert use_color(FakeTty(False)) is False  # type: ignore[arg-type]
    monkeypatch.setenv("NO_COLOR", "1")
    assert use_color(FakeTty(True)) is False  # type: ignore[arg-type]


def test_value_and_duration_text() -> None:
    from caliber.cli.render import format_duration, format_value
    from caliber.workflow.model import TaskRef

    assert format_value({"a": [1, None, TaskRef("X")]}) == '{"a": [1, null, <result of \'X\'>]}'
    assert format_value("x" * 100, width=10) == "\"xxxxxx..."
    assert format_value(object()).startswith("<object object")
    assert [format_duration(s) for s in (None, 0.012, 12.34, 245, 7380)] == [
        "-", "0.01s", "12.3s", "4m05s", "2h03m"]


def test_table_and_tree_render_without_colour(project: Callable[..., Path]) -> None:
    from rich.console import Console

    from caliber.cli.render import table, workflow_tree

    console = Console(width=120, no_color=True, file=None, record=True, force_terminal=False)
    with console.capture() as capture:
        console.print(table(["a", "b"], [[1, None], ["x", "[red]y[/]"]]))
        console.print(workflow_tree(caliber.Workflow.load(project())))
    text = capture.get()
    assert "a" in text and "x" in text
    assert "Make dough" in text and "Roll and shape" in text


def test_branches_side_by_side_when_they_fit(project: Callable[..., Path]) -> None:
    from rich.console import Console

    from caliber.cli.render import workflow_tree

    workflow = caliber.Workflow.load(project(branched=True))
    for width, side_by_side in ((250, True), (100, False)):
        console = Console(width=width, no_color=True, force_terminal=False)
        with console.capture() as capture:
            console.print(workflow_tree(workflow, width=width))
        lines = capture.get().splitlines()
        together = [line for line in lines if "branch 0" in line and "branch 1" in line]
        assert bool(together) is side_by_side
        assert sum(":make_dough(" in line for line in lines) == (1 if side_by_side else 2)


def test_ctrl_c_during_run_keeps_what_finished(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "slowmod.py").write_text(
        "import time\n\ndef quick():\n    return 'done'\n\n"
        "def slow():\n    open('started', 'w').close()\n    time.sleep(60)\n"
    )
    caliber.Workflow(
        caliber.Process([caliber.Task("slowmod:quick"), caliber.Task("slowmod:slow"),
                         caliber.Task("slowmod:quick", name="after")]),
        "interrupted", attachments=["slowmod.py"], base_dir=tmp_path,
    ).export(tmp_path / "slow.json")
    run = subprocess.Popen([sys.executable, "-m", "caliber", "workflow", "run", "slow.json"],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    _out, err = run.communicate(timeout=30)
    assert run.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("caliber: error: interrupted: results ")
    results = caliber.get_results(workflow="interrupted")
    assert results["quick"] == "done"
    assert [t.status for t in results.tasks] == ["completed", "failed", "skipped"]
    assert results.error is not None and results.error.type == "KeyboardInterrupt"


def test_the_lazy_command_list_says_what_each_group_says() -> None:
    from caliber.cli import GROUPS

    ctx = click.Context(cli)
    assert cli.list_commands(ctx) == sorted(GROUPS)
    for name, short in GROUPS.items():
        command = cli.get_command(ctx, name)
        assert command is not None
        assert command.get_short_help_str(limit=500) == short
    assert cli.get_command(ctx, "nope") is None
