"""The pinion run in this process (its children are real forked processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import caliber
from caliber.paths import runs_dir
from caliber.pinion.loop import Pinion, PinionConfig
from caliber.queue.registry import open_backend
from caliber.queue.target import local_target
from tests.pinion_helpers import alive, make_folder, queue, workflow


def run_pinion(name: str = "p", **overrides: object) -> Pinion:
    config = PinionConfig(name=name, attempts=1, wait=0, **overrides)  # type: ignore[arg-type]
    with open_backend(local_target()) as backend:
        pinion = Pinion(config, backend)
        pinion.run()
    return pinion


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "wf")


def test_runs_a_queued_workload_and_keeps_its_results(folder: Path) -> None:
    wid = queue(folder, [("add", [1]), ("add", [2, 5])])
    pinion = run_pinion()
    assert pinion.summary.completed == 1
    results = caliber.get_results(wid)
    assert results.status == "completed"
    assert results["add-0"] == 2
    assert results["add-1"] == 7
    assert results.g == {"last": 7}
    with open_backend(local_target()) as backend:
        workload = backend.get(wid)
    assert workload.status == "completed"
    assert workload.completed
    assert workload.results_id == results.id
    work_dir = Path(results.work_dir or "")
    assert (work_dir / "pinfuncs.py").is_file()  # the attachment was written there
    assert work_dir.parent.parent == runs_dir()


def test_oldest_first_and_only_its_own_pinion(folder: Path) -> None:
    first = queue(folder, [("add", [1])])
    other = queue(folder, [("add", [1])], pinion="someone-else")
    second = queue(folder, [("add", [2])])
    run_pinion()
    a, b = caliber.get_results(first), caliber.get_results(second)
    assert a.started_at <= b.started_at
    with open_backend(local_target()) as backend:
        assert backend.get(other).status == "queued"


def test_a_failing_workload_does_not_stop_the_next(folder: Path) -> None:
    bad = queue(folder, [("add", [1]), ("boom", ["no flour"]), ("add", [3])])
    good = queue(folder, [("add", [10])])
    pinion = run_pinion()
    assert (pinion.summary.completed, pinion.summary.failed) == (1, 1)
    failed = caliber.get_results(bad)
    assert failed.status == "failed"
    assert failed["add-0"] == 2
    assert [t.status for t in failed.tasks] == ["completed", "failed", "skipped"]
    assert failed.error is not None and "no flour" in failed.error.message
    assert "ValueError: no flour" in failed.error.traceback
    assert "no flour" in (Path(failed.work_dir or "") / "caliber-traceback.txt").read_text()
    with open_backend(local_target()) as backend:
        assert "no flour" in (backend.get(bad).last_error or "")
    assert caliber.get_results(good)["add-0"] == 11


def test_values_json_cannot_carry_are_kept_as_text(folder: Path) -> None:
    wid = queue(folder, [("unjsonable", [])])
    run_pinion()
    results = caliber.get_results(wid)
    assert results["unjsonable-0"] == {"thing": "<a thing>", "set": [1, 2, 3]}
    assert "string representation" in (results.tasks[0].conversion or "")


def test_same_named_modules_never_leak_between_workloads(tmp_path: Path) -> None:
    one = make_folder(tmp_path / "one", "shared", "def value():\n    return 'one'\n")
    two = make_folder(tmp_path / "two", "shared", "def value():\n    return 'two'\n")
    a = queue(one, [("value", [])], module="shared")
    b = queue(two, [("value", [])], module="shared")
    run_pinion()
    assert caliber.get_results(a)["value-0"] == "one"
    assert caliber.get_results(b)["value-0"] == "two"


def test_every_workload_runs_in_a_fresh_process(folder: Path) -> None:
    ids = [queue(folder, [("pid", [])]) for _ in range(3)]
    run_pinion()
    pids = {caliber.get_results(i)["pid-0"] for i in ids}
    assert len(pids) == 3


def test_a_workload_signed_with_another_key_never_runs(folder: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALIBER_SECRET_KEY", "the-key-of-somebody-else-0123456789")
    wid = queue(folder, [("add", [1])])
    monkeypatch.delenv("CALIBER_SECRET_KEY")
    pinion = run_pinion()
    assert pinion.summary.ran == 0
    assert [i for i, _ in pinion.summary.skipped] == [wid]
    with open_backend(local_target()) as backend:
        workload = backend.get(wid)
        assert workload.status == "queued"
        assert workload.attempts == 0
        assert workload.secret_mismatch
        # A second look passes over it instead of claiming it again.
        assert backend.claim("p", "me", 60, pinion.key_id) is None


def test_timeout_fails_the_workload_and_kills_its_process(folder: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    wid = queue(folder, [("slow", [60, str(marker)])])
    run_pinion(timeout=1.0)
    results = caliber.get_results(wid)
    assert results.status == "failed"
    assert results.error is not None and "timed out" in results.error.message
    assert not alive(int(marker.read_text()))


@pytest.mark.parametrize(
    ("how", "status", "expected"),
    [
        ("exit", "failed", "exited with status 3"),
        ("segv", "failed", "SIGSEGV"),
        ("print", "completed", None),
        ("fork", "completed", None),
        ("memory", "failed", "MemoryError"),
    ],
)
def test_the_pinion_survives_what_a_workload_does(folder: Path, how: str, status: str,
                                                  expected: str | None) -> None:
    wid = queue(folder, [("add", [1]), ("crash", [how])])
    after = queue(folder, [("add", [5])])
    run_pinion()
    results = caliber.get_results(wid)
    assert results.status == status
    assert results["add-0"] == 2  # what ran before the crash is kept
    if expected:
        assert results.error is not None
        assert expected in f"{results.error.type}: {results.error.message}"
    assert caliber.get_results(after)["add-0"] == 6
    if how == "print":
        log = Path(results.work_dir or "") / "output.log"
        assert log.stat().st_size >= 2_000_000


def test_spawn_start_method_runs_the_same(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALIBER_CHILD_START", "spawn")
    wid = queue(folder, [("add", [1]), ("boom", [])])
    run_pinion()
    results = caliber.get_results(wid)
    assert results["add-0"] == 2
    assert results.status == "failed"


def test_lease_is_renewed_while_a_long_workload_runs(folder: Path) -> None:
    wid = queue(folder, [("slow", [1.5])])
    run_pinion(lease=0.4)
    assert caliber.get_results(wid).status == "completed"
    with open_backend(local_target()) as backend:
        assert backend.get(wid).attempts == 1



def test_run_folders_are_made_ahead_and_nothing_is_left_over(folder: Path) -> None:
    """The pinion makes the next run folder while a workload runs and renames it; when it
    stops, no staged folder is left, nor one of a pinion that was killed."""
    runs = runs_dir() / "p"
    runs.mkdir(parents=True)
    killed = runs / ".next-999999999"  # a pinion's that is gone (no such process)
    killed.mkdir()
    (killed / "output.log").write_text("")
    ids = [queue(folder, [("add", [i])]) for i in range(3)]
    assert run_pinion().summary.completed == 3
    folders = sorted(p.name for p in runs.iterdir())
    assert folders == sorted(f"{wid}-1" for wid in ids)
    for wid in ids:
        work_dir = Path(caliber.get_results(wid).work_dir or "")
        assert work_dir.parent == runs.resolve()
        assert (work_dir / "output.log").read_text() == ""
        assert (work_dir / "pinfuncs.py").is_file()


def test_a_staged_folder_never_takes_the_place_of_an_earlier_attempt(folder: Path) -> None:
    """An earlier attempt's folder (ID-1) is kept as it was: the run gets the next number."""
    first = queue(folder, [("add", [1])])
    second = queue(folder, [("add", [2])])
    earlier = runs_dir() / "p" / f"{second}-1"
    earlier.mkdir(parents=True)
    (earlier / "output.log").write_text("the first attempt's output\n")
    run_pinion()
    assert (earlier / "output.log").read_text() == "the first attempt's output\n"
    assert Path(caliber.get_results(second).work_dir or "").name == f"{second}-2"
    assert Path(caliber.get_results(first).work_dir or "").name == f"{first}-1"


def test_the_progress_file_is_written_only_for_a_task_that_runs_a_moment(folder: Path) -> None:
    quick = queue(folder, [("add", [1])])
    slow = queue(folder, [("slow", [1.5])])  # long enough on a loaded machine too
    run_pinion()
    quick_dir = Path(caliber.get_results(quick).work_dir or "")
    slow_dir = Path(caliber.get_results(slow).work_dir or "")
    assert not (quick_dir / "caliber-progress.json").exists()
    saved = json.loads((slow_dir / "caliber-progress.json").read_text())
    assert saved["workload"] == slow and saved["task"]["name"] == "slow-0"


def test_a_document_the_pinion_cannot_read_fails_without_a_child(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pinion checks the workflow document before a child starts: a signed document this
    Caliber cannot read fails the workload with the reason, and no process is started."""
    from caliber.errors import WorkflowFileError
    from caliber.pinion import loop

    wid = queue(folder, [("add", [1])])

    def unreadable(document: object, *, source: str) -> dict[str, object]:
        raise WorkflowFileError(source, ["unknown field 'process.colour'"])

    def no_child(*args: object) -> None:
        raise AssertionError("a child was started")

    monkeypatch.setattr(loop, "check_document", unreadable)
    monkeypatch.setattr(loop.Pinion, "_start", no_child)
    pinion = run_pinion()
    assert pinion.summary.failed == 1 and not pinion.summary.errors
    results = caliber.get_results(wid)
    assert results.status == "failed" and results.error is not None
    assert results.error.type == "WorkflowFileError"
    assert "unknown field 'process.colour'" in results.error.message


def test_a_signed_document_with_a_task_name_used_twice_fails_with_the_reason(
        folder: Path) -> None:
    """The pinion's check covers the workflow's rules, not only the file format: the child
    builds the workflow without checking again."""
    from caliber.queue.api import make_workload
    from caliber.queue.secret import load_key, sign

    with open_backend(local_target()) as backend:
        workload = make_workload(workflow(folder, [("add", [1]), ("add", [2])]), "p", backend)
        tasks = workload.workflow["process"]["tasks"]
        tasks[1]["name"] = tasks[0]["name"]
        workload.secret = sign(workload, load_key())  # signed as it is: the key holder wrote it
        backend.put(workload)
    assert run_pinion().summary.failed == 1
    results = caliber.get_results(workload.id)
    assert results.error is not None and results.error.type == "WorkflowFileError"
    assert "is used twice" in results.error.message
