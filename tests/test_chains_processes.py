"""Chains end to end with real processes on the local queue (issue 24): ``caliber workflow
queue --after`` and ``caliber queue wait`` as a script runs them, a pinion process running
the chain in order, a cascade-cancelled downstream ending the wait with exit 1, and bad
input refused in one line with the queue as it was; a chain on the Speckle test server."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import caliber
from caliber.queue.registry import open_backend
from caliber.queue.target import local_target
from tests.pinion_helpers import FUNCTIONS, make_folder, workflow
from tests.remote_helpers import remote
from tests.speckle_fixtures import speckle_server, speckle_token, speckle_userdata

__all__ = ["remote", "speckle_server", "speckle_token", "speckle_userdata"]  # fixtures


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "caliber", *args], capture_output=True,
                          text=True, check=False, timeout=120, cwd=cwd)


def start_wait(*ids: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "caliber", "queue", "wait", *ids],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    made = make_folder(tmp_path / "wf")
    workflow(made, [("add", [1, 2])], name="analysis").export(made / "analysis.json")
    make_folder(made, "postfuncs", FUNCTIONS + "\n# its own file: its bytes are stored anew\n")
    workflow(made, [("add", [3, 4])], module="postfuncs", name="post").export(
        made / "post.json")
    return made


def queue(folder: Path, *args: str) -> str:
    done = cli("workflow", "queue", *args, cwd=folder)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_wait_on_the_downstream_ends_when_the_chain_has_run(folder: Path) -> None:
    analysis = queue(folder, "analysis.json", "-p", "lab")
    post = queue(folder, "post.json", "-p", "lab", "--after", analysis[:6])
    waiting = start_wait(post, cwd=folder)
    with pytest.raises(subprocess.TimeoutExpired):  # nothing ran: it waits
        waiting.wait(timeout=1)
    ran = cli("pinion", "init", "lab", "-a", "1", "-w", "0", "-q", cwd=folder)
    assert ran.returncode == 0, ran.stderr
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert out.startswith(f"{post} post completed (results ")
    first, second = caliber.get_results(analysis), caliber.get_results(post)
    assert second.started_at >= first.finished_at  # the chain's order, as the pinion ran it
    assert second["add-0"] == 7


def test_a_downstream_cancelled_with_its_upstream_ends_the_wait_with_exit_1(
        folder: Path) -> None:
    analysis = queue(folder, "analysis.json", "-p", "lab", "--not-before", "+2h")
    post = queue(folder, "post.json", "-p", "lab", "--after", analysis)
    waiting = start_wait(post, cwd=folder)
    with pytest.raises(subprocess.TimeoutExpired):
        waiting.wait(timeout=1)
    assert cli("queue", "cancel", analysis, cwd=folder).returncode == 0
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 1, err
    assert out == f"{post} post cancelled: upstream {analysis} was cancelled\n"


@pytest.mark.parametrize("options, message", [
    (["--not-before", "2031-05-06T22:00"], "has no UTC offset, so it is ambiguous"),
    (["--after", "zzzzzzzzzz"], "no workload in the queue has that id"),
    (["--after", "CANCELLED"], "it was cancelled, so this would never run"),
    (["--priority", "-1001"], "out of range"),
    (["--notify", "javascript:alert(1)"], "is not an http:// or https:// address"),
])
def test_bad_input_is_one_line_exit_2_and_the_queue_as_it_was(
        folder: Path, options: list[str], message: str) -> None:
    cancelled = queue(folder, "analysis.json", "-p", "lab")
    assert cli("queue", "cancel", cancelled, cwd=folder).returncode == 0
    before = exported(folder)
    options = [cancelled if o == "CANCELLED" else o for o in options]
    done = cli("workflow", "queue", "post.json", "-p", "lab", *options, cwd=folder)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("caliber: error: ") and done.stderr.count("\n") == 1
    assert message in done.stderr
    assert exported(folder) == before
    with open_backend(local_target()) as backend:  # its attachment was not stored either
        assert not backend.has_blob(hashlib.sha256(
            (folder / "postfuncs.py").read_bytes()).hexdigest())
    assert any(line.get("workload", {}).get("id") == cancelled  # type: ignore[attr-defined]
               for line in before)


def exported(folder: Path) -> list[dict[str, object]]:
    """The whole queue (workloads, results, stored files), as ``queue export`` writes it."""
    path = folder / "export.jsonl"
    path.unlink(missing_ok=True)
    done = cli("queue", "export", str(path), cwd=folder)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "exported_at"} for line in lines]


def test_a_chain_on_the_remote_queue(request: pytest.FixtureRequest, folder: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("specklepy")
    remote = request.getfixturevalue("remote")
    monkeypatch.setenv("CALIBER_SPECKLE_PROJECT", remote.project)
    analysis = queue(folder, "analysis.json", "-p", "lab", "--priority", "2")
    post = queue(folder, "post.json", "-p", "lab", "--after", analysis[:5])
    view = json.loads(cli("queue", "view", post, "--json", cwd=folder).stdout)
    assert (view["status"], view["after"]) == ("waiting", [analysis])
    assert [(u["id"], u["status"]) for u in view["upstreams"]] == [(analysis, "queued")]
    shown = cli("queue", "view", post, cwd=folder).stdout
    assert f"waits for   {analysis} (analysis): queued, not run yet" in shown
    ran = cli("pinion", "init", "lab", "-a", "1", "-w", "0", "-q", cwd=folder)
    assert ran.returncode == 0, ran.stderr
    done = cli("queue", "wait", post, "--timeout", "60", cwd=folder)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{post} post completed (results ")
