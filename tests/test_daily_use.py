"""An engineer's day (issue 13): attachments seen alike by ``workflow run`` and a pinion,
where a failed workload's traceback is, which pinion names have work waiting, an idle
pinion's stop, no stale traceback file, ``--json`` on ``workflow show``/``queue``, and shell
completion of ids."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import caliber
from tests.pinion_helpers import make_folder, queue, start_pinion, wait_for

BEAM = '''
from pathlib import Path

def load(name):
    return float(Path(name).read_text())

def check(load, limit):
    if load > limit:
        raise ValueError(f"{load} kN is over the limit of {limit} kN")
    return "ok"
'''


def caliber_run(*args: str, cwd: Path | None = None,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "caliber", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd,
                          env={**os.environ, "COLUMNS": "300", **(env or {})})


def beam(tmp_path: Path, limit: float = 50.0) -> Path:
    """``beam/beam.json``: a module and a data file, both attached; the task reads the data
    file by its relative path, as a user's code does."""
    folder = make_folder(tmp_path / "beam", module="beam_functions", source=BEAM)
    (folder / "data").mkdir()
    (folder / "data" / "load.txt").write_text("42.5")
    first = caliber.Task("beam_functions:load", name="Load", args=["data/load.txt"])
    second = caliber.Task("beam_functions:check", name="Check", args=[first.result, limit])
    workflow = caliber.Workflow(caliber.Process([first, second]), "beam",
                                attachments=["beam_functions.py", "data/load.txt"],
                                base_dir=folder)
    return workflow.export(folder / "beam.json")


def test_workflow_run_from_elsewhere_sees_the_attachments_as_a_pinion_does(
    tmp_path: Path,
) -> None:
    path = beam(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    here = caliber_run("workflow", "run", "../beam/beam.json", "--json", cwd=elsewhere)
    assert here.returncode == 0, here.stderr
    ran = json.loads(here.stdout)
    assert ran["tasks"][0]["return"] == 42.5 and ran["work_dir"] == str(path.parent)
    assert list(elsewhere.iterdir()) == []  # nothing written where it was started from

    workload = caliber_run("workflow", "queue", str(path), "-p", "p", "--json")
    assert workload.returncode == 0, workload.stderr
    queued = json.loads(workload.stdout)
    assert queued["pinion"] == "p" and queued["status"] == "queued"
    assert queued["workflow"] == "beam" and queued["queue"].endswith("caliber.db")
    pinion = caliber_run("pinion", "init", "p", "-a", "1", "-w", "0")
    assert pinion.returncode == 0, pinion.stderr
    there = caliber.get_results(queued["id"])
    assert there.ok and there["Load"] == 42.5  # the same attachments in the pinion's folder


def test_a_failed_workload_says_where_its_traceback_is(tmp_path: Path) -> None:
    path = beam(tmp_path, limit=10.0)
    wid = caliber_run("workflow", "queue", str(path), "-p", "p").stdout.strip()
    pinion = caliber_run("pinion", "init", "p", "-a", "1", "-w", "0")
    work_dir = caliber.get_results(wid).work_dir
    assert work_dir is not None
    traceback = Path(work_dir) / "caliber-traceback.txt"
    assert "ValueError: 42.5 kN is over the limit" in traceback.read_text()
    failed = [line for line in pinion.stderr.splitlines()
              if f"workload {wid} (beam) failed" in line]
    assert len(failed) == 1 and failed[0].endswith(f"; traceback in {traceback}")

    shown = caliber_run("results", "show", wid)
    assert shown.returncode == 0, shown.stderr
    assert f"run folder: {work_dir} (traceback in {traceback})" in shown.stdout


def test_a_later_successful_run_removes_the_stale_traceback_file(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "wf")
    failing = tmp_path / "failing.json"
    working = tmp_path / "working.json"
    for name, function in ((failing, "boom"), (working, "add")):
        document = {"caliber": 1, "name": name.stem, "attachments": ["pinfuncs.py"],
                    "process": {"type": "process", "name": "p", "tasks": [
                        {"type": "task", "name": "T", "function": f"pinfuncs:{function}",
                         "args": [1] if function == "add" else []}]}}
        (folder / name.name).write_text(json.dumps(document))
    assert caliber_run("workflow", "run", str(folder / failing.name)).returncode == 1
    assert (folder / "caliber-traceback.txt").is_file()
    assert caliber_run("workflow", "run", str(folder / working.name)).returncode == 0
    assert not (folder / "caliber-traceback.txt").exists()


def test_a_pinion_without_work_names_the_pinions_that_have_some(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "wf")
    for pinion in ("MyPinion", "MyPinion", "laptop"):
        queue(folder, [("add", [1])], pinion=pinion)
    done = caliber_run("pinion", "init", "mypinion", "-a", "1", "-w", "0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "pinion mypinion: ran 0 (0 completed, 0 failed)",
        "no work for mypinion; waiting work: MyPinion (2), laptop (1) (pinion names are "
        "case-sensitive)",
    ]
    as_json = json.loads(caliber_run("pinion", "init", "mypinion", "-a", "1", "-w", "0",
                                     "--json").stdout)
    assert as_json["waiting"] == {"MyPinion": 2, "laptop": 1}
    busy = caliber_run("pinion", "init", "laptop", "-a", "1", "-w", "0")
    assert busy.stdout.splitlines() == ["pinion laptop: ran 1 (1 completed, 0 failed)"]


def test_sigterm_to_an_idle_pinion_does_not_speak_of_a_running_workload() -> None:
    pinion = start_pinion("idle", "--forever", "-w", "0.1")
    assert pinion.stderr is not None
    wait_for(lambda: "no work found" in pinion.stderr.readline(), what="an empty look")
    pinion.send_signal(signal.SIGTERM)
    _, err = pinion.communicate(timeout=30)
    assert pinion.returncode == 0
    assert "pinion idle: stopping (no workload is running)" in err
    assert "after the running workload" not in err


def test_workflow_show_json_is_the_validated_document(tmp_path: Path) -> None:
    path = beam(tmp_path)
    shown = caliber_run("workflow", "show", str(path), "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == json.loads(
        caliber_run("workflow", "show", str(path), "--format", "json").stdout)
    assert json.loads(shown.stdout)["attachments"] == ["beam_functions.py", "data/load.txt"]


def complete(words: str, env: dict[str, str] | None = None) -> list[str]:
    """What bash completion offers after ``words`` (click's ``bash_complete`` protocol)."""
    done = caliber_run(env={"_CALIBER_COMPLETE": "bash_complete", "COMP_WORDS": words,
                            "COMP_CWORD": str(len(words.split(" ")) - 1), **(env or {})})
    assert done.returncode == 0 and done.stderr == ""
    return [line.split(",", 1)[1] for line in done.stdout.splitlines() if line]


def test_completion_offers_workload_and_results_ids(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "wf")
    first, second = queue(folder, [("add", [1])]), queue(folder, [("add", [2])])
    for verb in ("view", "logs", "reset", "resetsecret"):
        assert sorted(complete(f"caliber queue {verb} ")) == sorted([first, second])
    assert complete(f"caliber queue view {first[:3]}") == [first]
    assert caliber_run("pinion", "init", "p", "-a", "1", "-w", "0").returncode == 0
    results_id = caliber.get_results(first).id
    assert results_id in complete("caliber results show ")
    assert complete(f"caliber results show {results_id}") == [results_id]
    # A queue that cannot be read completes nothing, without a word.
    broken = tmp_path / "not-a-folder"
    broken.write_text("")
    assert complete("caliber queue view ", env={"CALIBER_HOME": str(broken)}) == []
    assert complete("caliber results show ", env={"CALIBER_HOME": str(broken)}) == []

