"""The mission page's remote commands, verbatim, and pinions racing on one remote model; every
command a real subprocess against the Speckle test server."""

from __future__ import annotations

import collections
import hashlib
import os
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("specklepy")

import caliber
from caliber.errors import NotFoundError
from tests.pinion_helpers import start_pinion, stop, wait_for
from tests.remote_helpers import SETTLE, Remote, pasta_folder, remote
from tests.remote_helpers import caliber as run
from tests.speckle_fixtures import speckle_server, speckle_token, speckle_userdata
from tests.speckle_server import RateLimit

pytestmark = pytest.mark.speckle
__all__ = ["remote", "speckle_server", "speckle_token", "speckle_userdata"]  # fixtures


def ok(*args: str, cwd: Path) -> str:
    done = run(*args, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_mission_pages_remote_commands(
    remote: Remote, speckle_userdata: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Set up as the README says: the host in .caliber/.env, the token from Speckle Manager.
    for name in ("CALIBER_SPECKLE_HOST", "CALIBER_SPECKLE_TOKEN", "CALIBER_SPECKLE_SETTLE",
                 "CALIBER_SPECKLE_MIN_LEASE"):
        monkeypatch.delenv(name)
    here = pasta_folder(tmp_path / "pasta")
    (here / ".caliber").mkdir()
    (here / ".caliber" / ".env").write_text(
        f"CALIBER_SPECKLE_HOST={remote.url}\nCALIBER_SPECKLE_MODEL=caliber\n"
        f"CALIBER_SPECKLE_SETTLE={SETTLE}\n")
    p = remote.project

    workload_id = ok("workflow", "queue", "pasta.json", "-p", "mypinion", "--project", p,
                     cwd=here).strip()
    spare = ok("workflow", "queue", "pasta.json", "-p", "mypinion", "--project", p,
               cwd=here).strip()
    monkeypatch.setenv("CALIBER_SPECKLE_PROJECT", p)  # from here on, as an environment variable
    listed = ok("queue", "list", cwd=here)
    assert workload_id in listed and spare in listed and "queued" in listed
    view = ok("queue", "view", workload_id, cwd=here)
    assert "pasta_functions.py" in view and "queued by" in view and "Make dough" in view
    assert "deleted workload " + spare in ok("queue", "reset", spare, cwd=here)
    assert "signed workload " + workload_id in ok("queue", "resetsecret", workload_id, cwd=here)
    summary = ok("pinion", "init", "mypinion", "-a", "2", "-w", "0.2", cwd=here)
    assert "ran 1 (1 completed, 0 failed)" in summary

    monkeypatch.delenv("CALIBER_SPECKLE_PROJECT")
    monkeypatch.chdir(here)  # for .caliber/.env
    results = caliber.get_results(workload_id, project=p)
    assert results.status == "completed"
    assert results["Make dough"] == {"eggs": 3, "flour_g": 300, "weight_g": 465}
    with pytest.raises(NotFoundError):
        caliber.get_results(workload_id, local=True)  # nothing went to the local store
    from caliber.queue.api import list_workloads
    from caliber.queue.target import resolve_target

    [item] = list_workloads(resolve_target(project=p))
    assert (item.workload.id, item.workload.status.value, item.secret_ok) == (
        workload_id, "completed", True)
    assert item.workload.results_id == results.id
    messages = [v.message.split(" · ")[0].split(" ")[0] for v in remote.versions("caliber")]
    assert messages == ["queued", "queued", "deleted", "re-signed", "claimed", "completed"]


GEOMETRY = '''
import hashlib
from pathlib import Path
from specklepy.objects.geometry import Line, Point

def point():
    return Point(x=1.0, y=2.0, z=3.0, units="m")

def line():
    return Line(start=Point(x=0.0, y=0.0, z=0.0, units="m"),
                end=Point(x=1.0, y=1.0, z=1.0, units="m"), units="m")

def digest():
    return hashlib.sha256(Path("data/blob.bin").read_bytes()).hexdigest()
'''


def test_speckle_geometry_and_binary_attachments_through_a_pinion(
    remote: Remote, tmp_path: Path
) -> None:
    folder = tmp_path / "geo"
    (folder / "data").mkdir(parents=True)
    (folder / "geo.py").write_text(textwrap.dedent(GEOMETRY))
    blob = os.urandom(5000) + b"\x00\xff"
    (folder / "data" / "blob.bin").write_bytes(blob)
    tasks = [caliber.Task(f"geo:{name}", name=name) for name in ("point", "line", "digest")]
    workflow = caliber.Workflow(caliber.Process(tasks), "geometry",
                                attachments=["geo.py", "data/blob.bin"], base_dir=folder)
    workload_id = workflow.queue(pinion="geo", project=remote.project, model="shapes")
    out = ok("pinion", "init", "geo", "-a", "1", "-w", "0.1", "--project", remote.project,
             "--model", "shapes", cwd=tmp_path)
    assert "1 completed" in out

    results = caliber.get_results(workload_id, project=remote.project, model="shapes")
    assert results["point"]["speckle_type"] == "Objects.Geometry.Point"
    assert results["digest"] == hashlib.sha256(blob).hexdigest()
    assert "Speckle object Objects.Geometry.Point" in (results.tasks[0].conversion or "")
    done = remote.versions("shapes")[-1]
    assert remote.versions("shapes/results/geometry")[-1].object_id == done.object_id
    received = receive(remote, done.object_id)
    values = {t["name"]: t["@objects"][0] for t in received["@tasks"] if t["name"] != "digest"}
    assert values["point"].speckle_type == "Objects.Geometry.Point"
    assert (values["point"].x, values["point"].y, values["point"].z) == (1.0, 2.0, 3.0)
    assert values["line"].speckle_type == "Objects.Geometry.Line"
    assert values["line"].end.z == 1.0


def receive(remote: Remote, object_id: str) -> Any:
    """The object as the unmodified specklepy client receives it."""
    from specklepy.api import operations
    from specklepy.transports.memory import MemoryTransport
    from specklepy.transports.server import ServerTransport

    client = remote.target.client()
    with pytest.warns(DeprecationWarning):
        transport = ServerTransport(remote.project, client=client)
        return operations.receive(object_id, transport, MemoryTransport())


RECORDER = '''
import os

def record(log, tag):
    with open(log, "a") as f:
        f.write(f"{tag} {os.getpid()}\\n")
    return tag
'''


@pytest.mark.parametrize("pinions", [2, 3])
def test_pinions_share_one_remote_queue_and_run_nothing_twice(
    remote: Remote, tmp_path: Path, pinions: int
) -> None:
    if pinions == 3 and remote.target.test_server:  # a real server has its limits already
        remote.server.set_rate_limit(RateLimit.speckle_defaults())
    folder = tmp_path / "wf"
    folder.mkdir()
    (folder / "recorder.py").write_text(textwrap.dedent(RECORDER))
    log = tmp_path / "runs.log"
    ids = []
    for tag in range(12):
        task = caliber.Task("recorder:record", name="record", args=[str(log), tag])
        workflow = caliber.Workflow(caliber.Process([task]), "race", attachments=["recorder.py"],
                                    base_dir=folder)
        ids.append(workflow.queue(pinion="racer", project=remote.project))
    env = {"CALIBER_SPECKLE_PROJECT": remote.project}
    started = [start_pinion("racer", "-a", "3", "-w", "0.2", env=env) for _ in range(pinions)]
    outputs = [p.communicate(timeout=120) for p in started]
    assert all(p.returncode == 0 for p in started), outputs

    runs = collections.Counter(line.split()[0] for line in log.read_text().splitlines())
    assert runs == collections.Counter(str(tag) for tag in range(12))  # each once, none twice
    ran = sum(int(out.split("ran ")[1].split()[0]) for out, _ in outputs)
    assert ran == 12
    from caliber.queue.registry import open_backend
    from caliber.queue.target import resolve_target

    with open_backend(resolve_target(project=remote.project)) as backend:
        workloads = backend.list_workloads()
        assert [w.id for w in workloads] == ids
        assert {(w.status.value, w.attempts) for w in workloads} == {("completed", 1)}
        results = backend.list_results()
        assert sorted(r.workload_id for r in results) == sorted(ids)


SLOW = '''
import os, time

def slow(marker, seconds):
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(seconds)
    return "done"
'''


def test_a_killed_pinions_workload_is_taken_again_after_its_lease(
    remote: Remote, tmp_path: Path
) -> None:
    folder = tmp_path / "wf"
    folder.mkdir()
    (folder / "slow.py").write_text(textwrap.dedent(SLOW))
    marker = tmp_path / "started"
    task = caliber.Task("slow:slow", name="slow", args=[str(marker), 1.5])
    workflow = caliber.Workflow(caliber.Process([task]), "slow", attachments=["slow.py"],
                                base_dir=folder)
    workload_id = workflow.queue(pinion="p", project=remote.project)
    env = {"CALIBER_SPECKLE_PROJECT": remote.project}
    first = start_pinion("p", "-a", "1", "-w", "0.1", "--lease", "1", env=env)
    wait_for(lambda: marker.exists(), what="the first run to start")
    stop(first, signal.SIGKILL)
    second = start_pinion("p", "-a", "4", "-w", "0.5", "--lease", "1", env=env)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert "ran 1 (1 completed" in out
    results = caliber.get_results(workload_id, project=remote.project)
    assert results["slow"] == "done"
    from caliber.queue.registry import open_backend
    from caliber.queue.target import resolve_target

    with open_backend(resolve_target(project=remote.project)) as backend:
        workload = backend.get(workload_id)
    assert (workload.status.value, workload.attempts) == ("completed", 2)
    assert any("ran out" in h.message for h in workload.history)
    assert len(marker.read_text().split()) == 2  # the dead pinion's run, then the new one
