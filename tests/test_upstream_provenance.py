"""Where a post-processing's ``$results`` values came from, end to end with real pinion
processes on the local queue: its Results name the upstream workload, the upstream Results it
took the values from (the completed ones of a retried analysis, not the failed ones) and
their signature as taken, in ``results show`` (text and --json) and ``caliber.get_results()``;
a resumed run names the upstream Results it was given, not those of the run it resumes; a
record changed in the store breaks the Results' signature (a pinion taking their values
refuses them, ``results show`` says so), and Results signed before there were records still
check. (The rules: tests/test_upstream.py; the chain: tests/test_upstream_chain.py.)"""

from __future__ import annotations

import json
import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import pytest

import caliber
from caliber.queue.secret import results_message, results_signed
from caliber.results.model import Results
from tests.remote_helpers import Remote, remote
from tests.speckle_fixtures import speckle_server, speckle_token
from tests.test_fuzz import run_cli
from tests.test_upstream_chain import KEY, cli, pinion, view

__all__ = ["remote", "speckle_server", "speckle_token"]  # fixtures of the Speckle tests

FUNCTIONS = '''
import os
from pathlib import Path

def solve(n, gate):
    if Path(gate).exists():
        raise RuntimeError("the mesh is broken")
    return {"n": n}

def field(n):
    import numpy
    return numpy.arange(n, dtype="float64")

def plot(solved, array):
    return {"n": solved["n"], "total": float(array.sum())}

def check(plotted, gate):
    how = Path(gate).read_text() if Path(gate).exists() else ""
    if how == "die":
        os._exit(3)
    if how:
        raise RuntimeError("the plot is off")
    return plotted["total"]
'''


@pytest.fixture
def owner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALIBER_SECRET_KEY", KEY)


class Night:
    """analysis.json (Solve fails while ``broken`` exists) and post.json (Plot takes Solve and
    Field of the analysis; Check fails while ``check`` holds "raise", the child dies while
    it holds "die")."""

    def __init__(self, tmp_path: Path) -> None:
        self.folder = tmp_path / "night"
        self.folder.mkdir()
        (self.folder / "night.py").write_text(textwrap.dedent(FUNCTIONS))
        self.broken = self.folder / "broken"
        self.check = self.folder / "check"
        analysis = caliber.Workflow(caliber.Process([
            caliber.Task("night:solve", name="Solve", args=[7, str(self.broken)]),
            caliber.Task("night:field", name="Field", args=[20_000])]),
            "analysis", attachments=["night.py"], base_dir=self.folder)
        plot = caliber.Task("night:plot", name="Plot", args=[
            caliber.upstream("analysis", "Solve"), caliber.upstream("analysis", "Field")])
        check = caliber.Task("night:check", name="Check", args=[plot.result, str(self.check)])
        post = caliber.Workflow(caliber.Process([plot, check]), "post",
                                attachments=["night.py"], base_dir=self.folder)
        self.analysis = analysis.export(self.folder / "analysis.json")
        self.post = post.export(self.folder / "post.json")

    def retried(self) -> tuple[str, str, str]:
        """Queue the analysis and the post-processing after it; the analysis fails, is
        fixed and retried, and both complete: (analysis id, post id, the failed Results'
        id)."""
        self.broken.touch()
        first = cli("workflow", "queue", str(self.analysis), "-p", "lab")
        second = cli("workflow", "queue", str(self.post), "-p", "lab", "--after", first)
        summary = pinion("lab")
        assert summary["failed"] == 1 and summary["completed"] == 0, summary
        failed_id = view(first)["results_id"]
        assert view(second)["status"] == "waiting"
        self.broken.unlink()
        cli("queue", "retry", first)
        assert pinion("lab")["completed"] == 2
        return first, second, failed_id


def shown(results_id: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(cli("results", "show", results_id, "--json"))
    return found


def record(upstream: dict[str, Any], workload: str, workflow: str = "analysis",
           tasks: tuple[str, ...] = ("Solve", "Field")) -> dict[str, Any]:
    """What a downstream's Results record of ``upstream`` (their JSON form) taken from
    ``workload``."""
    return {"workload": workload, "workflow": workflow, "results": upstream["id"],
            "signature": upstream["signature"], "tasks": list(tasks)}


def test_the_downstream_names_the_completed_results_of_a_retried_upstream(
        tmp_path: Path, owner: None) -> None:
    first, second, failed_id = Night(tmp_path).retried()
    completed = shown(view(first)["results_id"])
    assert completed["status"] == "completed" and completed["id"] != failed_id
    assert shown(failed_id)["status"] == "failed"  # both of the analysis's Results are kept

    post = shown(view(second)["results_id"])
    assert post["upstream"] == [record(completed, first)]
    assert results_signed(post, KEY.encode())  # the record is signed with the rest
    results = caliber.get_results(second)
    [source] = results.upstream
    assert (source.workload, source.results, source.tasks) == (
        first, completed["id"], ["Solve", "Field"])
    text = cli("results", "show", second)
    assert (f"inputs from: analysis 'Solve', 'Field' (workload {first}, results "
            f"{completed['id']})") in text
    assert "not vouched for" not in text
    assert "inputs from" not in cli("results", "show", first)  # it took nothing


def test_a_resumed_run_names_the_upstream_results_it_was_given(
        tmp_path: Path, owner: None) -> None:
    """The post-processing's child dies after Plot (the pinion makes its Results: they name
    the upstream as well); resumed after another analysis run, it reuses Plot (the same
    values) and names the Results of that run, not those the run it resumes took."""
    night = Night(tmp_path)
    night.check.write_text("die")
    first = cli("workflow", "queue", str(night.analysis), "-p", "lab")
    second = cli("workflow", "queue", str(night.post), "-p", "lab", "--after", first)
    summary = pinion("lab")
    assert summary["completed"] == 1 and summary["failed"] == 1, summary
    one = shown(view(first)["results_id"])
    died = shown(view(second)["results_id"])
    assert died["status"] == "failed" and "exit" in died["error"]["message"]
    assert died["upstream"] == [record(one, first)]
    assert results_signed(died, KEY.encode())

    again = cli("workflow", "queue", str(night.analysis), "-p", "lab")
    assert pinion("lab")["completed"] == 1
    two = shown(view(again)["results_id"])
    night.check.unlink()
    resumed = cli("workflow", "queue", str(night.post), "-p", "lab", "--after", again,
                  "--resume", died["id"])
    assert pinion("lab")["completed"] == 1
    post = shown(view(resumed)["results_id"])
    assert post["resumed_from"] == died["id"]
    plot = next(t for t in post["tasks"] if t["name"] == "Plot")
    assert plot["reused_from"] == died["id"]  # the same values: reused
    assert post["upstream"] == [record(two, again)]
    assert two["id"] != one["id"]


def test_a_changed_record_breaks_the_signature(tmp_path: Path, caliber_home: Path,
                                               owner: None) -> None:
    """The record of where the post-processing's values came from, changed in the database
    to name the analysis's failed Results: a report taking the post-processing's values is
    refused by its pinion, and ``results show`` says the Results are not vouched for."""
    night = Night(tmp_path)
    first, second, failed_id = night.retried()
    post_id = view(second)["results_id"]
    report = caliber.Workflow(caliber.Process([caliber.Task(
        "night:check", name="Report", args=[caliber.upstream("post", "Plot"),
                                            str(night.check)])]),
        "report", attachments=["night.py"], base_dir=night.folder)
    third = report.queue("reports", after=[second])
    with sqlite3.connect(caliber_home / "caliber.db") as conn:
        changed = conn.execute(
            "UPDATE results SET body = json_set(body, '$.upstream[0].results', ?) "
            "WHERE id = ?", (failed_id, post_id)).rowcount
    assert changed == 1
    assert shown(post_id)["upstream"][0]["results"] == failed_id

    text = cli("results", "show", second)
    assert (f"not vouched for: results {post_id} are not signed with your key (signed with "
            "another key, or changed since)") in text
    summary = pinion("reports")
    assert summary["failed"] == 1 and summary["completed"] == 0, summary
    assert view(third)["last_error"] == (
        f"not run: upstream workload {second} (post): results {post_id} are not signed with "
        "this pinion's key (signed with another key, or changed since); refused, as a "
        "tampered workload is")
    path = report.export(night.folder / "report.json")
    code, _out, err = run_cli("workflow", "run", str(path), "--after-results", post_id)
    assert code == 2 and (f"cannot take results {post_id}: results {post_id} are not signed "
                          "with your key") in err
    code, _out, err = run_cli("workflow", "run", str(night.post),
                              "--resume", post_id, "--after-results", first)
    assert code == 2 and f"results {post_id} are not signed with your key" in err


def test_the_record_on_the_remote_queue(remote: Remote, tmp_path: Path, owner: None) -> None:
    """The same on Speckle: the post-processing's Results, stored as Speckle objects, name
    the completed Results of the retried analysis, and still check."""
    night = Night(tmp_path)
    night.broken.touch()
    on = ("--project", remote.project)
    first = cli("workflow", "queue", str(night.analysis), "-p", "lab", *on)
    second = cli("workflow", "queue", str(night.post), "-p", "lab", "--after", first, *on)
    assert pinion("lab", *on)["failed"] == 1
    night.broken.unlink()
    cli("queue", "retry", first, *on)
    assert pinion("lab", *on)["completed"] == 2
    with remote.backend() as backend:
        completed = backend.get_results(backend.get(first).results_id).to_json_dict()
        post = backend.get_results(backend.get(second).results_id).to_json_dict()
    assert post["upstream"] == [record(completed, first)]
    assert results_signed(post, KEY.encode())
    assert (f"inputs from: analysis 'Solve', 'Field' (workload {first}, results "
            f"{completed['id']})") in cli("results", "show", second, *on)


# --- Results without the record ---------------------------------------------------------------

SIGNED_BEFORE = {
    "id": "0kq3x7m2ab", "workload_id": "w7k2m9q4xz", "workflow": "post", "pinion": "lab",
    "status": "completed", "started_at": "2024-05-01T10:00:00+00:00",
    "finished_at": "2024-05-01T10:00:01+00:00",
    "tasks": [{"name": "Plot", "path": ["post"], "branch": None, "status": "completed",
               "return": {"n": 7}, "g_set": {}, "g_deleted": [], "code_file": "night.py",
               "code_sha256": None, "reused_from": None,
               "code_fingerprint": "ab" * 32, "inputs_fingerprint": ["cd" * 32]}],
    "g": {}, "resumed_from": None,
    "files": [{"path": "plot.png", "size": 3, "sha256": "ef" * 32, "mode": 420}],
    "signature": "26e8240eae19150b233280037452877ea0458546e96df6bac80dcc0ab4798b82",
}
"""Results as a Caliber from before upstream records stored them (no ``upstream`` key), with
the signature it made (over its ``results_message``, with KEY)."""


def test_results_without_the_record_still_check() -> None:
    key = KEY.encode()
    assert results_signed(SIGNED_BEFORE, key)
    read = Results.model_validate(SIGNED_BEFORE).to_json_dict()  # as a store gives them now
    assert read["upstream"] == [] and results_signed(read, key)
    assert results_message(read) == results_message(SIGNED_BEFORE)
    named = {**read, "upstream": [{"workload": "w1", "workflow": "analysis", "results": "r1",
                                   "signature": "s1", "tasks": ["Solve"]}]}
    assert results_message(named) != results_message(read)
    assert not results_signed(named, key)  # a record added afterwards breaks it
