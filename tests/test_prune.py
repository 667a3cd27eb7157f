"""``caliber results prune`` and run-folder clean-up on the local queue, as a user runs them
(the backend verb itself is in tests/contract/test_prune_contract.py)."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
from pathlib import Path

import pytest

import caliber
from caliber.errors import UsageError
from caliber.paths import database_path, runs_dir
from caliber.pinion.loop import Pinion, PinionConfig
from caliber.pinion.runs import keep_newest, remove_run_folders
from caliber.queue.registry import open_backend
from caliber.queue.sqlite.prune import file_size
from caliber.queue.target import local_target
from caliber.results.prune import parse_duration, prune
from tests.pinion_helpers import make_folder, queue
from tests.test_cli_results import Run, run_cli
from tests.test_pinion import run_pinion

LATER = dt.timedelta(hours=1)
__all__ = ["run_cli"]  # the fixture


def big() -> list[float]:
    """One task's 1e6-element array (what made a user's caliber.db 19.5 MB)."""
    rng = random.Random(7)
    return [rng.random() for _ in range(1_000_000)]


def in_an_hour() -> dt.datetime:
    return dt.datetime.now(dt.UTC) + LATER


@pytest.mark.parametrize(("text", "seconds"), [
    ("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("45s", 45), ("2w", 14 * 86400),
    ("0s", 0), (" 7D ", 7 * 86400),
])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "30", "d", "3x", "1.5h", "-1d", "30 days", "1e3s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(UsageError, match="is not a duration"):
        parse_duration(text)


def test_a_bad_duration_is_one_line_and_changes_nothing(run_cli: Run) -> None:
    caliber.Workflow(caliber.Process([caliber.Task(len, name="n", args=["abc"])]), "w").run()
    before = database_path().read_bytes()
    code, out, err = run_cli("results", "prune", "--older-than", "3x")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "'3x' is not a duration" in err
    assert database_path().read_bytes() == before


def test_pruning_a_big_result_gives_the_disk_back(tmp_path: Path, run_cli: Run,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    caliber.Workflow(caliber.Process([caliber.Task(big, name="big")]), "big").run()
    grown = file_size(database_path())
    assert grown > 15_000_000
    code, out, _ = run_cli("results", "prune", "--older-than", "0s", "--json")
    assert code == 0
    report = json.loads(out)
    assert len(report["results"]) == 1 and report["bytes"] > 15_000_000
    assert report["file_before"] == grown
    assert report["file_after"] == file_size(database_path()) < 1_000_000
    assert json.loads(run_cli("results", "list", "--json")[1]) == []


def test_dry_run_changes_nothing_and_says_what_would_go(tmp_path: Path, run_cli: Run) -> None:
    folder = make_folder(tmp_path / "wf")
    wid = queue(folder, [("add", [1])])
    run_pinion("p")
    work_dir = Path(caliber.get_results(wid).work_dir or "")
    assert work_dir.is_dir()
    before = database_path().read_bytes(), sorted(p.name for p in work_dir.iterdir())
    code, out, err = run_cli("results", "prune", "--older-than", "0s", "--dry-run")
    assert code == 0 and err == ""
    assert out.startswith("would remove 1 finished workloads and 1 results from before ")
    assert "would remove 1 run folders on this machine" in out
    assert (database_path().read_bytes(), sorted(p.name for p in work_dir.iterdir())) == before
    code, out, _ = run_cli("results", "prune", "--older-than", "0s")
    assert out.startswith("removed 1 finished workloads and 1 results")
    assert "queue database: " in out and "removed 1 run folders" in out
    assert not work_dir.exists() and work_dir.parent.is_dir()
    assert json.loads(run_cli("queue", "list", "--json")[1]) == []


def test_filters_and_live_work_through_the_command(tmp_path: Path, run_cli: Run) -> None:
    folder = make_folder(tmp_path / "wf")
    ran = queue(folder, [("add", [1])], name="pasta")
    other = queue(folder, [("add", [1])], pinion="q", name="soup")
    run_pinion("p")
    waiting = queue(folder, [("add", [2])], name="pasta")
    run_pinion("q")
    code, out, _ = run_cli("results", "prune", "--older-than", "0s", "--workflow", "pasta",
                           "--pinion", "p", "--json")
    assert code == 0 and json.loads(out)["workloads"] == [ran]
    with open_backend(local_target()) as backend:
        assert {w.id for w in backend.list_workloads()} == {other, waiting}
    code, out, _ = run_cli("results", "prune", "--older-than", "30d")
    assert code == 0 and out.startswith("removed 0 finished workloads and 0 results")


def test_run_folders_outside_the_runs_folder_are_never_removed(tmp_path: Path) -> None:
    inside = runs_dir() / "p" / "abc123-1"
    outside = tmp_path / "p" / "abc123-1"
    odd = runs_dir() / "p" / "not a run"
    for folder in (inside, outside, odd):
        folder.mkdir(parents=True)
        (folder / "out.txt").write_text("x" * 100)
    assert remove_run_folders([str(inside), str(outside), str(odd), str(tmp_path)],
                              dry_run=True) == (1, 100)
    assert inside.is_dir()
    assert remove_run_folders([str(inside), str(outside), str(odd), str(tmp_path)]) == (1, 100)
    assert not inside.exists() and outside.is_dir() and odd.is_dir()


def test_keep_newest_keeps_live_folders_and_the_newest_finished(tmp_path: Path) -> None:
    names = ["aaa-1", "bbb-1", "ccc-1", "ddd-1", "eee-2"]
    for age, name in enumerate(reversed(names)):  # eee-2 oldest ... aaa-1 newest
        folder = tmp_path / name
        folder.mkdir()
        (folder / "f").write_text("12345")
        os.utime(folder, (1_000_000 + age, 1_000_000 + age))
    asked: list[int] = []

    def busy() -> set[str]:
        asked.append(1)
        return {"eee", "bbb"}  # the oldest is running, one in the middle is queued again

    assert keep_newest(tmp_path, 2, busy) == (1, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aaa-1", "bbb-1", "ccc-1", "eee-2"]
    assert keep_newest(tmp_path, 10, busy) == (0, 0) and len(asked) == 1


def test_pinion_keep_runs(tmp_path: Path, run_cli: Run) -> None:
    folder = make_folder(tmp_path / "wf")
    ids = [queue(folder, [("add", [i])]) for i in range(3)]
    code, _, _ = run_cli("pinion", "init", "p", "-a", "1", "-w", "0", "--keep-runs", "1", "-q")
    assert code == 0
    left = sorted(p.name for p in (runs_dir() / "p").iterdir())
    assert len(left) == 1 and left[0].split("-")[0] in ids
    assert caliber.get_results(ids[2]).work_dir == str(runs_dir() / "p" / left[0])


def test_keep_runs_never_removes_a_queued_workloads_folder(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "wf")
    done = queue(folder, [("add", [1])])
    run_pinion("p")
    later = queue(folder, [("add", [2])])
    # a folder of a queued workload (a cold stop kept it), older than the finished run
    kept = runs_dir() / "p" / f"{later}-1"
    kept.mkdir()
    os.utime(kept, (1_000_000, 1_000_000))
    with open_backend(local_target()) as backend:
        Pinion(PinionConfig(name="p", attempts=1, wait=0, keep_runs=0), backend)._keep_runs()
    assert [p.name for p in (runs_dir() / "p").iterdir()] == [kept.name]
    assert not Path(caliber.get_results(done).work_dir or "").exists()


def test_library_prune_returns_the_same_report(tmp_path: Path) -> None:
    caliber.Workflow(caliber.Process([caliber.Task(len, name="n", args=["abc"])]), "w").run()
    seen = prune("0s", now=in_an_hour(), dry_run=True)
    done = prune(dt.timedelta(0), now=in_an_hour(), target=local_target())
    assert seen.results == done.results and len(done.results) == 1
    assert seen.to_dict()["dry_run"] is True and done.to_dict()["versions"] == 0
    with pytest.raises(UsageError):
        prune(dt.timedelta(seconds=-1))
    with pytest.raises(UsageError):
        prune("soon")
