"""Workflows of processes nested deep: up to the documented limit they are exported, queued,
run and kept; deeper, export and load refuse them in one line naming the limit (before, 127 to
290 levels ended in "Maximum serialization depth exceeded" when queued)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import caliber
from caliber.errors import ExportError
from caliber.workflow.fileformat import MAX_DEPTH, document_depth
from tests.pinion_helpers import make_folder


def nested(folder: Path, processes: int, args: list[Any] | None = None) -> caliber.Workflow:
    node: Any = caliber.Task("pinfuncs:add", name="deepest", args=args or [1])
    for i in range(processes):
        node = caliber.Process([node], name=f"level {i}")
    return caliber.Workflow(node, "deep", attachments=["pinfuncs.py"], base_dir=folder)


def deepest_that_fits(folder: Path) -> int:
    processes = 1
    while True:
        try:
            document = nested(folder, processes + 1).to_document()
        except ExportError:
            return processes
        assert document_depth(document) <= MAX_DEPTH
        processes += 1


def test_the_deepest_workflow_allowed_is_queued_run_and_kept(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "wf")
    processes = deepest_that_fits(folder)
    assert processes >= 95  # what docs/workflows.md promises
    path = nested(folder, processes).export(folder / "deep.json")
    done = subprocess.run([sys.executable, "-m", "caliber", "workflow", "queue", str(path),
                           "-p", "p"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    subprocess.run([sys.executable, "-m", "caliber", "pinion", "init", "p", "-a", "1", "-w",
                    "0"], check=True, capture_output=True)
    results = caliber.get_results(done.stdout.split()[0])
    assert results.ok and results["deepest"] == 2
    assert len(results.tasks[0].path) == processes


@pytest.mark.parametrize("processes", [127, 290, 500])
def test_deeper_is_refused_at_export_in_one_line(tmp_path: Path, processes: int) -> None:
    folder = make_folder(tmp_path / "wf")
    with pytest.raises(ExportError, match=f"at most {MAX_DEPTH}"):
        nested(folder, processes).export(folder / "deep.json")
    assert not (folder / "deep.json").exists()


def test_deep_arguments_are_refused_at_export(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "wf")
    value: Any = 1
    for _ in range(300):
        value = [value]
    with pytest.raises(ExportError, match=f"at most {MAX_DEPTH}"):
        nested(folder, 1, args=[value]).to_document()


def test_a_deep_file_written_by_hand_is_refused_in_one_line(tmp_path: Path) -> None:
    node: dict[str, Any] = {"type": "task", "name": "t", "function": "m:f"}
    for _ in range(290):
        node = {"type": "process", "tasks": [node]}
    path = tmp_path / "deep.json"
    path.write_text(json.dumps({"caliber": 1, "name": "deep", "process": node}))
    for command in (["workflow", "show"], ["workflow", "queue", "-p", "p"]):
        done = subprocess.run([sys.executable, "-m", "caliber", *command, str(path)],
                              capture_output=True, text=True, check=False)
        assert done.returncode != 0 and done.stdout == ""
        assert done.stderr.count("\n") == 1, done.stderr
        assert f"at most {MAX_DEPTH}" in done.stderr
