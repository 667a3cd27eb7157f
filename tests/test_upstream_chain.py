"""``$results`` end to end on the local queue, with real pinion processes: post.json, written
before the analysis is queued, takes the analysis's task values (a stored array among them)
through the chain (``--after``); Results changed after the analysis ran are refused and the
post-processing fails without running; a reference that picks no upstream is refused when it
is queued. (The file format and the rules: tests/test_upstream.py.)"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import caliber
from caliber.workflow.upstream import UpstreamError
from tests.test_fuzz import assert_clean_error, run_cli

KEY = "the-owners-key-0123456789abcdef"

FUNCTIONS = '''
from pathlib import Path

def solve(n):
    return {"n": n, "values": [n, n * 2]}

def field(n):
    import numpy
    return numpy.arange(n, dtype="float64")

def plot(solved, array, marker):
    Path(marker).write_text("ran")
    return {"n": solved["n"], "total": float(array.sum()), "kind": type(array).__name__}
'''


@pytest.fixture
def owner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALIBER_SECRET_KEY", KEY)


def files(tmp_path: Path) -> tuple[Path, Path]:
    """analysis.json and post.json, the second written without knowing the first's id."""
    folder = tmp_path / "night"
    folder.mkdir()
    (folder / "night.py").write_text(textwrap.dedent(FUNCTIONS))
    analysis = caliber.Workflow(caliber.Process([
        caliber.Task("night:solve", name="Solve", args=[7]),
        caliber.Task("night:field", name="Field", args=[20_000])]),
        "analysis", attachments=["night.py"], base_dir=folder)
    plot = caliber.Task("night:plot", name="Plot", args=[
        caliber.upstream("analysis", "Solve"), caliber.upstream("Field"),
        str(folder / "plotted")])
    post = caliber.Workflow(caliber.Process([plot]), "post", attachments=["night.py"],
                            base_dir=folder)
    return analysis.export(folder / "analysis.json"), post.export(folder / "post.json")


def cli(*argv: str) -> str:
    code, out, err = run_cli(*argv)
    assert code == 0, err
    return out.strip()


def pinion(name: str, *options: str) -> dict[str, Any]:
    """A real pinion process: it runs what it can claim, then stops at its first empty look
    (``options``: of ``pinion init``, ``--project P``)."""
    done = subprocess.run([sys.executable, "-m", "caliber", "pinion", "init", name, "-a", "1",
                           "-w", "0", "--json", *options], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def view(workload_id: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(cli("queue", "view", workload_id, "--json"))
    return found


def test_the_upstream_value_reaches_the_downstream(tmp_path: Path, owner: None) -> None:
    analysis, post = files(tmp_path)
    first = cli("workflow", "queue", str(analysis), "-p", "lab")
    second = cli("workflow", "queue", str(post), "-p", "lab", "--after", first[:6])
    assert view(second)["status"] == "waiting"
    summary = pinion("lab")
    assert summary["completed"] == 2, json.dumps(summary)
    results = json.loads(cli("results", "show", view(second)["results_id"], "--json"))
    [plot] = results["tasks"]
    assert plot["return"] == {"n": 7, "total": float(sum(range(20_000))), "kind": "ndarray"}
    upstream = json.loads(cli("results", "show", view(first)["results_id"], "--json"))
    assert upstream["tasks"][1]["return"]["$caliber"] == "ndarray"  # kept as a stored array


def test_changed_upstream_results_are_refused(tmp_path: Path, caliber_home: Path,
                                              owner: None) -> None:
    """The analysis's Results, changed in the database after it ran (its value, not its
    signature): the post-processing fails without running, saying why."""
    analysis, post = files(tmp_path)
    first = cli("workflow", "queue", str(analysis), "-p", "lab")
    second = caliber.Workflow.load(post).queue("night", after=first)
    assert pinion("lab")["completed"] == 1
    results_id = view(first)["results_id"]
    with sqlite3.connect(caliber_home / "caliber.db") as conn:
        changed = conn.execute(
            "UPDATE results SET body = json_set(body, '$.tasks[0].return.n', 1000) "
            "WHERE id = ?", (results_id,)).rowcount
    assert changed == 1
    summary = pinion("night")
    assert summary["failed"] == 1 and summary["completed"] == 0, summary
    shown = view(second)
    assert shown["status"] == "failed" and shown["results_id"] is None
    assert shown["last_error"] == (
        f"not run: upstream workload {first} (analysis): results {results_id} are not signed "
        "with this pinion's key (signed with another key, or changed since); refused, as a "
        "tampered workload is")
    assert not (analysis.parent / "plotted").exists()  # Plot never ran


@pytest.mark.parametrize(("reference", "message"), [
    ({"workflow": "mesh", "task": "Solve"}, "it runs after no workload of workflow 'mesh' "
                                            "(it runs after"),
    ({"workflow": "analysis", "task": "Slove"}, "has no task 'Slove' (its tasks: 'Field', "
                                                "'Solve')"),
])
def test_a_reference_that_picks_no_upstream_is_refused_when_queued(
        tmp_path: Path, owner: None, reference: dict[str, str], message: str) -> None:
    analysis, post = files(tmp_path)
    document = json.loads(post.read_text())
    document["process"]["tasks"][0]["args"][0] = {"$results": reference}
    post.write_text(json.dumps(document))
    first = cli("workflow", "queue", str(analysis), "-p", "lab")
    code, _out, err = run_cli("workflow", "queue", str(post), "-p", "lab", "--after", first)
    assert_clean_error(code, err)
    assert message in err
    with pytest.raises(UpstreamError, match=r"no task|no workload of workflow"):
        caliber.Workflow.load(post).queue("lab", after=[first])
    code, _out, err = run_cli("workflow", "queue", str(post), "-p", "lab")
    assert_clean_error(code, err)
    assert "it runs after no workload (queue it with --after ID)" in err
    assert [w["id"] for w in json.loads(cli("queue", "list", "--json"))] == [first]


def test_a_prune_keeps_the_upstream_until_the_downstream_ran(tmp_path: Path,
                                                               owner: None) -> None:
    """The analysis completed and the post-processing is queued (its pinion not started
    yet): a prune of everything finished keeps the analysis and its Results, which the
    post-processing takes its values from when it runs; afterwards both go."""
    analysis, post = files(tmp_path)
    first = cli("workflow", "queue", str(analysis), "-p", "lab")
    second = cli("workflow", "queue", str(post), "-p", "night", "--after", first)
    assert pinion("lab")["completed"] == 1
    assert view(second)["status"] == "queued"
    for dry in (["--dry-run"], []):
        kept = json.loads(cli("results", "prune", "--older-than", "0s", "--json", *dry))
        assert kept["workloads"] == [] and kept["results"] == [], kept
    summary = pinion("night")
    assert summary["completed"] == 1, json.dumps(summary)
    gone = json.loads(cli("results", "prune", "--older-than", "0s", "--json"))
    assert set(gone["workloads"]) == {first, second}
