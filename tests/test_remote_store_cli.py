"""Attachments on the remote queue as a user meets them: queued through the command line,
stored once on the server, listed without their bytes, run by a real pinion (its memory
bounded however big the file), and a blob changed on the server never run."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("specklepy")

import caliber
from tests.remote_helpers import Remote, remote
from tests.speckle_fixtures import speckle_server, speckle_token, speckle_userdata

pytestmark = pytest.mark.speckle
__all__ = ["remote", "speckle_server", "speckle_token", "speckle_userdata"]  # fixtures

TASKS = '''
import hashlib

def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
'''
MIB = 1 << 20


def folder_with(tmp_path: Path, size: int) -> tuple[Path, str]:
    """A workflow file ``wf.json`` attaching ``data/mesh.bin`` (``size`` random bytes) and
    a task that hashes it; the file's SHA-256."""
    folder = tmp_path / "wf"
    (folder / "data").mkdir(parents=True)
    (folder / "tasks.py").write_text(textwrap.dedent(TASKS))
    digest = hashlib.sha256()
    with open(folder / "data" / "mesh.bin", "wb") as f:
        for _ in range(0, size, 8 * MIB):
            block = os.urandom(min(8 * MIB, size - f.tell()))
            digest.update(block)
            f.write(block)
    task = caliber.Task("tasks:digest", name="digest", args=["data/mesh.bin"])
    caliber.Workflow(caliber.Process([task]), "hash the mesh",
                     attachments=["tasks.py", "data/mesh.bin"],
                     base_dir=folder).export(folder / "wf.json")
    return folder, digest.hexdigest()


def measured(*args: str, cwd: Path, env: dict[str, str], timeout: float = 600,
             ) -> tuple[subprocess.CompletedProcess[str], int]:
    """``caliber ARGS`` in a subprocess, and the peak resident memory (bytes) of it and of
    every process it started (the high-water mark the kernel kept, ``ru_maxrss``)."""
    wrapper = ("import resource, subprocess, sys\n"
               "done = subprocess.run(sys.argv[1:])\n"
               "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
               "sys.stderr.write(f'\\nPEAK {peak}\\n')\n"
               "sys.exit(done.returncode)\n")
    done = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "caliber",
                           *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, **env})
    head, _, peak = done.stderr.rpartition("\nPEAK ")
    done.stderr = head
    return done, int(peak) * 1024


def sent(remote: Remote, start: int) -> int:
    """Bytes the server answered with since the ``start``-th request."""
    return sum(e.sent for e in remote.server.log[start:])


def chunks(remote: Remote) -> int:
    return sum(1 for o in remote.objects().values() if o.get("caliber") == "blob chunk")


def test_queued_twice_stored_once_listed_without_bytes_and_run(
        remote: Remote, tmp_path: Path) -> None:
    folder, digest = folder_with(tmp_path, 5 * MIB + 3)
    env = {"CALIBER_SPECKLE_PROJECT": remote.project}
    ids = []
    for _ in range(2):
        queued, _ = measured("workflow", "queue", "wf.json", "-p", "p", cwd=folder, env=env)
        assert queued.returncode == 0, queued.stderr
        ids.append(queued.stdout.split()[0])
    assert chunks(remote) == 6 + 1  # the mesh's six chunks once, and tasks.py's one
    start = len(remote.server.log)
    listed, _ = measured("queue", "list", "--json", cwd=tmp_path, env=env)
    viewed, _ = measured("queue", "view", ids[0], "--json", cwd=tmp_path, env=env)
    assert listed.returncode == viewed.returncode == 0, listed.stderr + viewed.stderr
    assert [w["secret_ok"] for w in json.loads(listed.stdout)] == [True, True]
    [mesh] = [a for a in json.loads(viewed.stdout)["attachments"] if a["path"] != "tasks.py"]
    assert (mesh["sha256"], mesh["size"]) == (digest, 5 * MIB + 3)
    assert sent(remote, start) < 200_000  # the listing read no attachment bytes
    ran, _ = measured("pinion", "init", "p", "-a", "2", "-w", "0", cwd=tmp_path, env=env)
    assert ran.returncode == 0 and "2 completed" in ran.stdout, ran.stderr
    for wid in ids:
        assert caliber.get_results(wid, project=remote.project)["digest"] == digest


def test_a_blob_changed_on_the_server_is_never_run(remote: Remote, tmp_path: Path) -> None:
    folder, _ = folder_with(tmp_path, 2 * MIB)
    (folder / "tasks.py").write_text(textwrap.dedent(TASKS) + "\nopen('ran', 'w').close()\n")
    env = {"CALIBER_SPECKLE_PROJECT": remote.project}
    queued, _ = measured("workflow", "queue", "wf.json", "-p", "p", cwd=folder, env=env)
    assert queued.returncode == 0, queued.stderr
    wid = queued.stdout.split()[0]
    with remote.server.store.lock:  # the database changed under the server
        objects = remote.server.store.objects[remote.project]
        chunk = next(o for o in objects.values() if o.get("caliber") == "blob chunk"
                     and len(o["data"]) > 1000)
        chunk["data"] = chunk["data"][:100] + ("A" if chunk["data"][100] != "A" else "B") + \
            chunk["data"][101:]
    ran, _ = measured("pinion", "init", "p", "-a", "1", "-w", "0", cwd=tmp_path, env=env)
    assert ran.returncode == 0, ran.stderr
    assert not list((tmp_path / ".caliber").rglob("ran")) and not list(tmp_path.rglob("ran"))
    viewed, _ = measured("queue", "view", wid, "--json", cwd=tmp_path, env=env)
    state = json.loads(viewed.stdout)
    assert state["status"] != "completed"
    assert "does not match its id" in json.dumps(state["history"])


def test_an_old_workload_with_inline_content_still_runs(remote: Remote, tmp_path: Path) -> None:
    """As an earlier Caliber queued it: the bytes in the attachment objects."""
    from caliber.queue.secret import load_key, sign
    from caliber.queue.workload import Attachment, Workload, queued_by

    folder, digest = folder_with(tmp_path, 300_000)
    document = json.loads((folder / "wf.json").read_text())
    workload = Workload(pinion="p", workflow=document, queued_by=queued_by(), attachments=[
        Attachment.from_bytes(name, (folder / name).read_bytes())
        for name in ("tasks.py", "data/mesh.bin")])
    workload.secret = sign(workload, load_key())
    with remote.backend() as backend:
        backend.put(workload)
    children = [o for o in remote.objects().values() if o.get("path") == "data/mesh.bin"]
    assert [c["encoding"] for c in children] == ["base64"]
    env = {"CALIBER_SPECKLE_PROJECT": remote.project}
    ran, _ = measured("pinion", "init", "p", "-a", "1", "-w", "0", cwd=tmp_path, env=env)
    assert ran.returncode == 0 and "1 completed" in ran.stdout, ran.stderr
    assert caliber.get_results(workload.id, project=remote.project)["digest"] == digest


@pytest.mark.slow
def test_a_few_hundred_mb_attachment_in_bounded_memory(remote: Remote, tmp_path: Path) -> None:
    """Queued and run through a real pinion: neither the sender nor the pinion holds the
    file (peak memory far below its size), and the task sees exactly its bytes."""
    size = 300 * MIB
    folder, digest = folder_with(tmp_path, size)
    env = {"CALIBER_SPECKLE_PROJECT": remote.project}
    queued, sender = measured("workflow", "queue", "wf.json", "-p", "p", cwd=folder, env=env)
    assert queued.returncode == 0, queued.stderr
    ran, pinion = measured("pinion", "init", "p", "-a", "1", "-w", "0", cwd=tmp_path, env=env)
    assert ran.returncode == 0 and "1 completed" in ran.stdout, ran.stderr
    assert caliber.get_results(queued.stdout.split()[0],
                               project=remote.project)["digest"] == digest
    print(f"peak memory: sender {sender / MIB:.0f} MiB, pinion {pinion / MIB:.0f} MiB "
          f"for a {size / MIB:.0f} MiB attachment")
    assert sender < 160 * MIB
    assert pinion < 160 * MIB
