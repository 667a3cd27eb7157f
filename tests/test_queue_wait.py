"""``caliber queue wait``: blocks until workloads end; exit 0 all completed, 1 any failed or
cancelled, 124 on --timeout; on the local queue and the Speckle test server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pinion_helpers import make_folder, queue
from tests.remote_helpers import remote
from tests.speckle_fixtures import speckle_server, speckle_token, speckle_userdata

__all__ = ["remote", "speckle_server", "speckle_token", "speckle_userdata"]  # fixtures


def caliber(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "caliber", *args], capture_output=True,
                          text=True, check=False, timeout=120, cwd=cwd)


def run_pinion(name: str = "p") -> None:
    done = caliber("pinion", "init", name, "-a", "5", "-w", "0", "-q")
    assert done.returncode in (0, 1), done.stderr


def test_it_blocks_until_a_pinion_has_run_the_workload(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "wf")
    workload = queue(folder, [("add", [1, 2])], name="analysis")
    waiting = subprocess.Popen([sys.executable, "-m", "caliber", "queue", "wait",
                                workload[:5]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    with pytest.raises(subprocess.TimeoutExpired):  # nothing ran yet: it waits
        waiting.wait(timeout=1)
    run_pinion()
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert out.startswith(f"{workload} analysis completed (results ")


def test_a_failed_one_is_exit_1_and_the_rows_in_json(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "wf")
    good = queue(folder, [("add", [1, 2])], name="analysis")
    bad = queue(folder, [("boom", [])], name="post")
    run_pinion()
    done = caliber("queue", "wait", good, bad, "--json")
    assert done.returncode == 1, done.stderr
    rows = json.loads(done.stdout)
    assert [(r["id"], r["status"]) for r in rows] == [(good, "completed"), (bad, "failed")]
    assert "burnt" in rows[1]["last_error"]
    assert caliber("queue", "wait", good).returncode == 0


def test_the_timeout_is_exit_124_and_names_what_did_not_end(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "wf")
    workload = queue(folder, [("add", [1, 2])], name="analysis")
    done = caliber("queue", "wait", workload, "--timeout", "0.5")
    assert done.returncode == 124
    assert done.stderr.strip() == f"timed out after 0.5 s; still not ended: {workload}"


def test_a_cancelled_one_is_exit_1(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "wf")
    workload = queue(folder, [("add", [1, 2])], name="analysis")
    assert caliber("queue", "cancel", workload).returncode == 0
    done = caliber("queue", "wait", workload)
    assert done.returncode == 1
    assert f"{workload} analysis cancelled" in done.stdout


@pytest.mark.parametrize("args", [["nope"], [], ["x", "--timeout", "-1"]])
def test_bad_input_is_one_line_and_exit_2(args: list[str]) -> None:
    done = caliber("queue", "wait", *args)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("caliber: error: ")


@pytest.mark.speckle
def test_on_the_remote_queue(request: pytest.FixtureRequest, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("specklepy")
    from tests.remote_helpers import pasta_folder

    remote = request.getfixturevalue("remote")
    monkeypatch.setenv("CALIBER_SPECKLE_PROJECT", remote.project)
    folder = pasta_folder(tmp_path / "pasta")
    queued = caliber("workflow", "queue", "pasta.json", "-p", "p", "--json", cwd=folder)
    workload = json.loads(queued.stdout)["id"]
    assert caliber("queue", "wait", workload, "--timeout", "1").returncode == 124
    assert caliber("pinion", "init", "p", "-a", "1", "-w", "0", cwd=folder).returncode == 0
    done = caliber("queue", "wait", workload)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{workload} pasta completed")


def test_ctrl_c_while_waiting_says_interrupted(tmp_path: Path) -> None:
    import signal

    folder = make_folder(tmp_path / "wf")
    workload = queue(folder, [("add", [1, 2])], name="analysis")
    waiting = subprocess.Popen([sys.executable, "-m", "caliber", "queue", "wait", workload],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with pytest.raises(subprocess.TimeoutExpired):
        waiting.wait(timeout=1)
    waiting.send_signal(signal.SIGINT)
    _out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 130
    assert err.strip() == "caliber: error: interrupted"
