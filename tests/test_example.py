"""examples/pasta and the guide in docs/workflows.md work as written, end to end.

The guide's Python blocks that start with ``# name.py`` are written into a new folder and run
like a new user would: define and export, show, run with the CLI, read back from a second
script with ``caliber.get_results()``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import caliber
from caliber.cli import main

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "pasta"
GUIDE = REPO / "docs" / "workflows.md"


def python(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(list(args))
    code = info.value.code
    return (code if isinstance(code, int) else 0), capsys.readouterr().out


@pytest.fixture
def pasta(tmp_path: Path) -> Path:
    folder = tmp_path / "pasta"
    folder.mkdir()
    for source in EXAMPLE.glob("*.py"):
        shutil.copy(source, folder)
    return folder


def test_pasta_example_end_to_end(
    pasta: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = python("main.py", cwd=pasta).stdout
    assert "exported 'pasta'" in out and "exported 'pasta-branched'" in out
    doc = json.loads((pasta / "pasta.json").read_text())
    assert doc["attachments"] == ["pasta_functions.py"]
    assert [t["function"] for t in doc["process"]["tasks"]] == [
        "pasta_functions:make_dough", "pasta_functions:rest", "pasta_functions:roll_and_shape"]
    branched = json.loads((pasta / "branched.json").read_text())
    batch = branched["process"]["tasks"][0]
    assert batch["type"] == "branch" and batch["branches"] == 2
    assert batch["tasks"][0]["args"] == [[3], [6]]
    assert batch["tasks"][2]["kwargs"] == [{"pasta_type": "tagliatelle"},
                                           {"pasta_type": "ravioli"}]

    monkeypatch.chdir(pasta)
    code, out = cli(capsys, "workflow", "run", "branched.json")
    assert code == 0 and "[7/7] Serve  completed" in out
    results = caliber.get_results(workflow="pasta-branched")
    assert results["Roll and shape"] == [
        {"pasta_type": "tagliatelle", "portions": 4, "weight_g": 465},
        {"pasta_type": "ravioli", "portions": 7, "weight_g": 930},
    ]
    assert results["Serve"] == 11
    assert results.g["log"][-1] == "7 portions of ravioli"

    # The CLI in a real process, then a second script reads the results back.
    run = subprocess.run([sys.executable, "-m", "caliber", "workflow", "run", "pasta.json"],
                         cwd=pasta, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "[3/3] Roll and shape  completed" in run.stdout
    read = python("read_results.py", cwd=pasta).stdout
    assert "dough: {'eggs': 3, 'flour_g': 300, 'weight_g': 465}" in read
    assert "pasta: {'pasta_type': 'tagliatelle', 'portions': 4, 'weight_g': 465}" in read


def test_the_example_exports_only_under_main_guard(pasta: Path) -> None:
    python("-c", "import main", cwd=pasta)
    assert not (pasta / "pasta.json").exists()


def guide_files() -> dict[str, str]:
    text = GUIDE.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(# ([\w.]+\.py)\n.*?)```", text, flags=re.S)
    return {name: body for body, name in blocks}


def test_guide_blocks_exist() -> None:
    assert set(guide_files()) == {"beam_functions.py", "define.py", "define_branches.py",
                                  "report.py"}


def test_a_new_user_follows_the_guide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "beam"
    folder.mkdir()
    for name, body in guide_files().items():
        (folder / name).write_text(body)
    python("define.py", cwd=folder)
    python("define_branches.py", cwd=folder)
    monkeypatch.chdir(folder)

    # `caliber workflow show` prints exactly the tree the guide shows
    guide = GUIDE.read_text(encoding="utf-8")
    shown = guide.split("$ caliber workflow show beam.json\n", 1)[1].split("```", 1)[0]
    code, out = cli(capsys, "workflow", "show", "beam.json")
    assert code == 0
    assert [line.rstrip() for line in out.splitlines()] == shown.rstrip().splitlines()

    code, out = cli(capsys, "workflow", "run", "beam.json")
    assert code == 0 and "[3/3] Check  completed" in out
    code, out = cli(capsys, "workflow", "run", "beam_cases.json")
    assert code == 0
    cases = caliber.get_results(workflow="beam-cases")
    assert cases["Moment"] == [30.0, 52.5, 120.0]
    assert cases["Check", 2] == {"ok": False, "utilisation": 2.4}

    report = python("report.py", cwd=folder).stdout.splitlines()
    expected = re.findall(r"print\(.*?\)\s+# (.*)", guide_files()["report.py"])
    assert report == expected
