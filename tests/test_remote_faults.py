"""The remote queue under faults and attack: pinions killed and the Speckle test server stopped
and restarted mid-batch; workloads tampered with on the Speckle model; the token never shown."""

from __future__ import annotations

import collections
import json
import random
import signal
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("specklepy")

import caliber
from tests.pinion_helpers import start_pinion, stop, wait_for
from tests.reliability_figures import record
from tests.remote_helpers import Remote, remote
from tests.remote_helpers import caliber as run
from tests.speckle_fixtures import speckle_server, speckle_token

pytestmark = pytest.mark.speckle
__all__ = ["remote", "speckle_server", "speckle_token"]  # fixtures

STEP = '''
import os, time

def step(log, tag, seconds):
    time.sleep(seconds)
    with open(log, "a") as f:
        f.write(f"{tag} {os.path.basename(os.getcwd())}\\n")
    return tag
'''


def queue_steps(remote: Remote, folder: Path, log: Path, tags: list[int], seconds: float,
                pinion: str = "p") -> list[str]:
    folder.mkdir(exist_ok=True)
    (folder / "remotestep.py").write_text(textwrap.dedent(STEP))
    ids = []
    for tag in tags:
        task = caliber.Task("remotestep:step", name="step", args=[str(log), tag, seconds])
        workflow = caliber.Workflow(caliber.Process([task]), f"remote-{tag}",
                                    attachments=["remotestep.py"], base_dir=folder)
        ids.append(workflow.queue(pinion=pinion, project=remote.project))
    return ids


def remote_state(remote: Remote) -> tuple[dict[str, str], collections.Counter[str]]:
    with remote.backend() as backend:
        workloads = {w.id: w.status.value for w in backend.list_workloads()}
        results = collections.Counter(r.workload_id or "" for r in backend.list_results())
    return workloads, results


@pytest.mark.slow
def test_a_remote_batch_rides_out_server_restarts_and_killed_pinions(
    remote: Remote, tmp_path: Path
) -> None:
    rng = random.Random(20261128)
    log = tmp_path / "ran.log"
    ids = queue_steps(remote, tmp_path / "wf", log, list(range(12)), 0.3)
    env = {"CALIBER_SPECKLE_PROJECT": remote.project}
    args = ("--forever", "-w", "0.2", "--lease", "3", "--max-attempts", "20", "-q")
    pinions = [start_pinion("p", *args, env=env) for _ in range(2)]
    restarts = kills = 0
    started = time.monotonic()
    try:
        for fault in ["server", "kill", "server", "kill", "server"]:
            time.sleep(rng.uniform(0.5, 1.5))
            if fault == "server":  # gone for a while, back on the same port with its data
                remote.server.stop()
                time.sleep(rng.uniform(0.5, 2.0))
                remote.server.start()
                restarts += 1
            else:
                victim = rng.randrange(len(pinions))
                stop(pinions[victim], signal.SIGKILL)
                pinions[victim] = start_pinion("p", *args, env=env)
                kills += 1
        wait_for(lambda: set(remote_state(remote)[0].values()) == {"completed"}, timeout=90,
                 what="the remote batch to complete")
        seconds = time.monotonic() - started
    finally:
        for pinion in pinions:
            stop(pinion, signal.SIGKILL)
    workloads, results = remote_state(remote)
    assert sorted(workloads) == sorted(ids)  # none lost
    assert results == collections.Counter(ids)  # one Results each, none doubled
    for wid in ids:
        assert caliber.get_results(wid, project=remote.project).status == "completed"
    record("remote.faults", workloads=len(ids), pinions=2, server_restarts=restarts,
           kills=kills, duplicates=0, losses=0, seconds=round(seconds, 1))


# --- tampering on the Speckle model ------------------------------------------------------


def stored_objects(remote: Remote, wid: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The workload's root object on the server, and its attachments' objects."""
    objects = remote.server.store.objects[remote.project]
    root = next(o for o in objects.values()
                if o.get("caliber") == "workload" and o.get("workload_id") == wid)
    children = [objects[r["referencedId"]] for r in root.get("@attachments") or []]
    return root, children


def edit_workload_json(remote: Remote, wid: str, change: Any) -> None:
    with remote.server.store.lock:
        root, _ = stored_objects(remote, wid)
        doc = json.loads(root["workload_json"])
        change(doc)
        root["workload_json"] = json.dumps(doc)


def edit_attachment(remote: Remote, wid: str) -> None:
    """Point the attachment at other bytes (stored on the server as a blob of their own)."""
    evil = STEP.replace("return tag", "return 'tampered'")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "evil.py"
        path.write_text(evil)
        with remote.backend() as backend:
            ref = backend.put_blob(path)
            blob = backend.blob_object(ref.sha256)
    with remote.server.store.lock:
        _, [child] = stored_objects(remote, wid)
        child.update(sha256=ref.sha256, size=ref.size, blob=blob)


def edit_pinion_in_the_version_message(remote: Remote, wid: str) -> None:
    """What a colleague can do in the web app: edit the message of the 'queued' version."""
    with remote.server.store.lock:
        [version] = [v for v in remote.versions() if wid in v.message and "queued" in v.message]
        version.message = version.message.replace('"p":"other"', '"p":"p"')


TAMPERING = {
    "an argument": lambda r, w: edit_workload_json(
        r, w, lambda d: d["workflow"]["process"]["tasks"][0]["args"].__setitem__(1, 666)),
    "the function name": lambda r, w: edit_workload_json(
        r, w, lambda d: d["workflow"]["process"]["tasks"][0].__setitem__(
            "function", "remotestep:evil")),
    "an attached file": edit_attachment,
    "the pinion name": edit_pinion_in_the_version_message,
}


@pytest.mark.parametrize("what", list(TAMPERING))
def test_a_workload_tampered_with_on_the_model_never_runs_until_signed_again(
    remote: Remote, tmp_path: Path, what: str
) -> None:
    log = tmp_path / "ran.log"
    pinion = "other" if what == "the pinion name" else "p"
    [wid] = queue_steps(remote, tmp_path / "wf", log, [7], 0.0, pinion=pinion)
    TAMPERING[what](remote, wid)
    env = {"CALIBER_SPECKLE_PROJECT": remote.project}
    listed = run("queue", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [(w["id"], w["secret_ok"]) for w in json.loads(listed.stdout)] == [(wid, False)]
    first = run("pinion", "init", "p", "-a", "1", "-w", "0", env=env)
    assert first.returncode == 0 and "ran 0" in first.stdout, first.stderr
    assert f"skipped {wid}" in first.stdout
    assert not log.exists()
    signed = run("queue", "resetsecret", wid, env=env)
    assert signed.returncode == 0, signed.stderr
    again = run("pinion", "init", "p", "-a", "1", "-w", "0", env=env)
    assert again.returncode == 0 and "ran 1" in again.stdout, again.stderr
    record(f"remote.tampering.{what}", ran_before_resign=0, ran_after_resign=1)


def test_a_damaged_entry_on_the_model_is_shown_and_skipped_not_fatal(
    remote: Remote, tmp_path: Path
) -> None:
    log = tmp_path / "ran.log"
    damaged, fine = queue_steps(remote, tmp_path / "wf", log, [1, 2], 0.0)
    with remote.server.store.lock:
        root, _ = stored_objects(remote, damaged)
        root["workload_json"] = "{not json"
    env = {"CALIBER_SPECKLE_PROJECT": remote.project}
    listed = run("queue", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {w["id"]: w for w in json.loads(listed.stdout)}
    assert "damaged" in (rows[damaged]["last_error"] or "") and rows[fine]["secret_ok"]
    pinion = run("pinion", "init", "p", "-a", "1", "-w", "0", env=env)
    assert pinion.returncode == 0, pinion.stderr
    assert "ran 1" in pinion.stdout and f"skipped {damaged}" in pinion.stdout
    assert log.read_text().split()[0] == "2"
    assert run("queue", "reset", damaged, env=env).returncode == 0


# --- the token ---------------------------------------------------------------------------


def test_the_speckle_token_never_shows(remote: Remote, tmp_path: Path,
                                       caliber_home: Path) -> None:
    token = remote.token
    [wid] = queue_steps(remote, tmp_path / "wf", tmp_path / "ran.log", [1], 0.0)
    env = {"CALIBER_SPECKLE_PROJECT": remote.project}
    seen = []
    commands = [
        ["queue", "list"], ["queue", "list", "--json"], ["queue", "view", wid],
        ["queue", "view", wid, "--json"], ["pinion", "init", "p", "-a", "1", "-w", "0"],
        ["pinion", "init", "p", "-a", "1", "-w", "0", "--json"], ["results", "list", "--json"],
        ["results", "show", "--json"], ["queue", "resetsecret", wid, "--json"],
        ["queue", "view", "nosuchid"], ["queue", "list", "--project", "nosuchproject"],
        ["queue", "list", "--model", "bad//name"],
    ]
    for argv in commands:
        done = run(*argv, env=env)
        seen.append(done.stdout + done.stderr)
    remote.server.stop()
    try:
        done = run("queue", "list", env=env)
        assert done.returncode == 1
        seen.append(done.stdout + done.stderr)
    finally:
        remote.server.start()
    bad = run("queue", "list", env={**env, "CALIBER_SPECKLE_TOKEN": token[:-4] + "zzzz"})
    seen.append(bad.stdout + bad.stderr)
    assert all(token not in text for text in seen)
    assert token[:-4] not in seen[-1]
    with remote.server.store.lock:
        stored = json.dumps(remote.server.store.objects[remote.project], default=str)
        messages = " ".join(v.message for v in remote.versions())
    assert token not in stored and token not in messages
    for path in caliber_home.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    record("remote.token", commands=len(seen), token_seen=0)


def test_a_workload_whose_objects_stay_missing_is_failed_not_claimed_for_ever(
    remote: Remote
) -> None:
    from caliber.errors import ClaimReturnedError
    from caliber.pinion.loop import Pinion, PinionConfig
    from caliber.queue.speckle.backend import MISSING_LOOKS
    from tests.test_remote_queue import workload as make_workload

    workload = make_workload("p")
    with remote.backend() as backend:
        backend.put(workload)
        store = remote.server.store
        with store.lock:  # the workload's object is deleted on the server, for good
            objects = store.objects[remote.project]
            [object_id] = [i for i, o in objects.items() if "workload_json" in o]
            del objects[object_id]
        pinion = Pinion(PinionConfig(name="p"), backend)
        for _ in range(MISSING_LOOKS):
            with pytest.raises(ClaimReturnedError, match="missing on the server"):
                pinion.run_once()
        versions = len(remote.versions())
        assert pinion.run_once() is False  # failed: never claimed again
        assert backend.claim("p", "p@here", 60, "key") is None
        pinion.close()
        assert len(remote.versions()) == versions
        outcomes = [outcome for _, _, outcome in pinion.summary.errors]
        assert outcomes == ["put back in the queue"] * (MISSING_LOOKS - 1) + ["failed"]
        failed = backend.refresh().workloads[workload.id]  # (get() reads the lost object)
    assert failed.status == "failed" and failed.attempts == 1  # (given back: uncounted)
    assert f"object {object_id} is missing on the server" in (failed.last_error or "")
    assert f"(at {MISSING_LOOKS} claims)" in failed.history[-1][2]
