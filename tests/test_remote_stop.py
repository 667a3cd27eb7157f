"""The progress of a long run on the remote queue (Speckle test server), and ``queue cancel
--now`` of its running task: a real pinion, a task whose subprocess sleeps 600 s."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("specklepy")

import caliber
from tests.pinion_helpers import start_pinion, stop, wait_for
from tests.remote_helpers import Remote, remote
from tests.speckle_fixtures import speckle_server, speckle_token, speckle_userdata
from tests.test_stop import WAIT, make, needs_proc, new_marker, processes_with, solve_workflow

__all__ = ["remote", "speckle_server", "speckle_token", "speckle_userdata"]  # fixtures


def view(wid: str, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "caliber", "queue", "view", wid, "--json"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stderr
    shown: dict[str, Any] = json.loads(done.stdout)
    return shown


@needs_proc
def test_a_remote_running_workload_shows_its_progress_and_cancel_now_stops_it(
        remote: Remote, tmp_path: Path) -> None:
    folder = make(tmp_path)
    marker = new_marker()
    wid = solve_workflow(folder, "subprocess", marker).queue(pinion="p", project=remote.project)
    env = {"CALIBER_SPECKLE_PROJECT": remote.project}
    pinion = start_pinion("p", "-a", "1", "-w", "0", "--lease", "1", env=env)
    try:
        wait_for(lambda: processes_with(marker), what="the solver's process")
        # Carried on a lease renewal the pinion writes anyway (every ~2/3 of its lease here).
        shown = wait_for(lambda: (v := view(wid, env))["progress"] and v, timeout=WAIT,
                         what="the progress on a renewal")
        assert (shown["progress"]["task"], shown["progress"]["tasks"]) == (2, 3)
        assert shown["progress"]["name"] == "solve" and shown["progress"]["elapsed"] >= 0
        text = subprocess.run([sys.executable, "-m", "caliber", "queue", "view", wid],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, **env}).stdout
        assert re.search(r"task 2 of 3: solve \(\d+\.\d s\), running \d+\.\d s",
                         " ".join(text.split())), text
        renewals = [v for v in remote.versions() if "renewed" in v.message]
        assert any('"pg":' in v.message for v in renewals)  # no version of its own
        versions = len(remote.versions())
        done = subprocess.run([sys.executable, "-m", "caliber", "queue", "cancel", wid, "--now"],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, **env})
        assert done.returncode == 0, done.stderr
        assert "its pinion stops the running task" in done.stdout
        pinion.communicate(timeout=WAIT)
    finally:
        stop(pinion)
    assert len(remote.versions()) > versions
    results = caliber.get_results(wid, project=remote.project)
    assert results.status.value == "cancelled" and results["first"] == {"nodes": 90000}
    assert processes_with(marker) == []
    assert view(wid, env)["progress"] is None
