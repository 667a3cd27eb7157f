"""Issue 21, fix and resume with result files: a resumed run does not run the tasks it reuses,
so the files they wrote are written back into its folder from the Results it resumes (a mesh
written by a reused ``mesh`` task, read by the ``solve`` that runs again), and its Results
keep them (the same blobs) beside the files it writes, the newer winning on the same path.
Through a real pinion (``workflow queue --resume``, ``queue retry --resume``) and through
``workflow run --resume`` in a fresh process, as from a shell."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

import caliber
from caliber.queue.blobs import BlobRef, FolderBlobStore, Hold
from tests.pinion_helpers import make_folder
from tests.test_lifecycle import run_caliber, runs
from tests.test_resume_signatures import (
    cli,
    owner,  # noqa: F401 (a fixture)
    run_pinion,
)

TASKS = '''
import hashlib, os
from pathlib import Path


def _count(folder, name):
    with open(Path(folder) / name, "a") as f:
        f.write("x")


def mesh(folder):
    _count(folder, "mesh")
    data = bytes(range(256)) * 800 + os.urandom(1000)  # about 200 kB, new every run
    with open("mesh.msh", "wb") as f:
        f.write(data)
    os.chmod("mesh.msh", 0o640)
    os.makedirs("fields", exist_ok=True)
    with open("fields/grid.vtu", "wb") as f:
        f.write(b"grid " + os.urandom(100))
    return hashlib.sha256(data).hexdigest()


def solve(mesh_sha, folder):
    _count(folder, "solve")
    with open("fields/u.vtu", "wb") as f:
        f.write(b"partial")
    if not (Path(folder) / "fixed").exists():
        raise RuntimeError("diverged at step 3")
    data = Path("mesh.msh").read_bytes()
    if hashlib.sha256(data).hexdigest() != mesh_sha:
        raise RuntimeError("mesh.msh is not the mesh the mesh task wrote")
    with open("fields/u.vtu", "wb") as f:
        f.write(b"u " + data[:100])
    return len(data)
'''
OUTPUTS = ["*.msh", "fields/**"]


def study(folder: Path) -> caliber.Workflow:
    make_folder(folder, "meshtasks", TASKS)
    mesh = caliber.Task("meshtasks:mesh", name="mesh", args=[str(folder)])
    solve = caliber.Task("meshtasks:solve", name="solve", args=[mesh.result, str(folder)])
    return caliber.Workflow(caliber.Process([mesh, solve]), "bracket",
                            attachments=["meshtasks.py"], base_dir=folder, outputs=OUTPUTS)


def exported(folder: Path) -> Path:
    file = folder / "bracket.json"
    study(folder).export(file)
    return file


def counts(folder: Path) -> tuple[int, int]:
    return runs(folder, "mesh"), runs(folder, "solve")


def by_path(results: caliber.Results) -> dict[str, caliber.results.model.ResultFile]:
    return {f.path: f for f in results.files}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_resumed(first: caliber.Results, second: caliber.Results) -> None:
    """The resumed run completed with the mesh the reused task wrote: its Results keep that
    file and the grid (the earlier records, the same blobs) and the newer u.vtu."""
    assert second.ok, second.error
    assert second.resumed_from == first.id and second.tasks[0].reused_from == first.id
    old, new = by_path(first), by_path(second)
    assert sorted(old) == sorted(new) == ["fields/grid.vtu", "fields/u.vtu", "mesh.msh"]
    assert new["mesh.msh"] == old["mesh.msh"] and new["mesh.msh"].mode == 0o640
    assert new["fields/grid.vtu"] == old["fields/grid.vtu"]
    assert old["fields/u.vtu"].sha256 == sha(b"partial")  # the failed solve's
    assert new["fields/u.vtu"].sha256 != old["fields/u.vtu"].sha256  # the newer wins
    assert second["mesh"] == first["mesh"] == new["mesh.msh"].sha256


def check_brought_back(second: caliber.Results, first: caliber.Results, out: Path) -> None:
    """``caliber results files ID --to DIR`` of the resumed run writes every file, the
    reused mesh byte for byte as the first run's mesh task wrote it."""
    cli("results", "files", second.id, "--to", str(out))
    mesh = (out / "mesh.msh").read_bytes()
    assert sha(mesh) == by_path(first)["mesh.msh"].sha256
    assert (out / "fields" / "u.vtu").read_bytes() == b"u " + mesh[:100]
    assert sha((out / "fields" / "grid.vtu").read_bytes()) == by_path(second)[
        "fields/grid.vtu"].sha256


@pytest.mark.parametrize("how", ["workflow queue --resume", "queue retry --resume"])
def test_a_resumed_pinion_run_starts_with_the_files_its_reused_tasks_wrote(
        tmp_path: Path, caliber_home: Path, owner: None, how: str) -> None:  # noqa: F811
    folder = tmp_path / "wf"
    file = exported(folder)
    wid = cli("workflow", "queue", str(file), "-p", "p").strip()
    assert run_pinion()["failed"] == 1
    first = caliber.get_results(wid)
    assert first.status.value == "failed" and counts(folder) == (1, 1)

    (folder / "fixed").touch()  # the fix: outside the code, so retry (as queued) sees it too
    if how == "workflow queue --resume":
        new = cli("workflow", "queue", str(file), "-p", "p", "--resume", wid).strip()
    else:
        cli("queue", "retry", wid, "--resume")
        new = wid
    assert run_pinion()["completed"] == 1
    second = caliber.get_results(new)
    assert counts(folder) == (1, 2)  # mesh reused, not run again: solve read its mesh
    check_resumed(first, second)
    assert second.work_dir is not None and first.work_dir is not None
    run_folder = Path(second.work_dir)
    assert run_folder != Path(first.work_dir)
    assert (run_folder / "mesh.msh").read_bytes() == (Path(first.work_dir) / "mesh.msh"
                                                      ).read_bytes()
    check_brought_back(second, first, tmp_path / "laptop")


def test_a_resume_whose_earlier_file_is_damaged_never_runs_a_task(
        tmp_path: Path, caliber_home: Path, owner: None) -> None:  # noqa: F811
    """A reused file changed in the store: the resumed workload fails before any task runs,
    naming what, and nothing is written under the file's name."""
    folder = tmp_path / "wf"
    file = exported(folder)
    wid = cli("workflow", "queue", str(file), "-p", "p").strip()
    run_pinion()
    first = caliber.get_results(wid)
    blob = by_path(first)["mesh.msh"].sha256
    stored = caliber_home / "caliber.db-blobs" / blob[:2] / blob
    stored.chmod(0o600)
    stored.write_bytes(b"not the mesh")
    (folder / "fixed").touch()
    new = cli("workflow", "queue", str(file), "-p", "p", "--resume", wid).strip()
    assert run_pinion()["failed"] == 1
    second = caliber.get_results(new)
    assert second.error is not None and second.error.type == "BlobMismatchError"
    assert blob[:12] in second.error.message
    assert counts(folder) == (1, 1)  # nothing ran
    assert second.work_dir is not None and not (Path(second.work_dir) / "mesh.msh").exists()


def test_workflow_run_resume_writes_back_what_the_reused_tasks_wrote(tmp_path: Path) -> None:
    """``workflow run --resume`` in the workflow's folder: the engineer cleaned the mesh away
    (it is in the Results) and edited the grid by hand; the resume writes the mesh back and
    leaves the grid as they made it (a file there wins), and keeps both in its Results."""
    folder = tmp_path / "wf"
    file = exported(folder)
    done = run_caliber("workflow", "run", str(file), "--json", ok=False)
    assert done.returncode == 1, done.stderr
    first = caliber.get_results(results_id=json.loads(done.stdout)["id"])
    os.unlink(folder / "mesh.msh")
    (folder / "fields" / "grid.vtu").write_bytes(b"mine")
    (folder / "fixed").touch()

    done = run_caliber("workflow", "run", str(file), "--resume", first.id, "--json")
    second = caliber.get_results(results_id=json.loads(done.stdout)["id"])
    assert second.ok, second.error
    assert counts(folder) == (1, 2)
    assert sha((folder / "mesh.msh").read_bytes()) == by_path(first)["mesh.msh"].sha256
    assert (folder / "fields" / "grid.vtu").read_bytes() == b"mine"
    new = by_path(second)
    assert new["mesh.msh"] == by_path(first)["mesh.msh"]
    assert new["fields/grid.vtu"].sha256 == sha(b"mine")
    assert sorted(new) == ["fields/grid.vtu", "fields/u.vtu", "mesh.msh"]
    check_brought_back(second, first, tmp_path / "out")


def test_workflow_run_resume_into_a_fresh_folder(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """In Python, each run in a folder of its own: the resumed run's folder starts with the
    first run's files."""
    folder = tmp_path / "wf"
    wf = study(folder)
    for run in ("run1", "run2"):
        (tmp_path / run).mkdir()
    monkeypatch.chdir(tmp_path / "run1")
    first = wf.run(work_dir=tmp_path / "run1")
    assert first.status.value == "failed"
    (folder / "fixed").touch()
    monkeypatch.chdir(tmp_path / "run2")
    second = wf.run(work_dir=tmp_path / "run2", resume=first)
    assert counts(folder) == (1, 2)
    check_resumed(first, second)
    assert (tmp_path / "run2" / "mesh.msh").read_bytes() == (tmp_path / "run1" / "mesh.msh"
                                                             ).read_bytes()


class CountingStore(FolderBlobStore):
    """The local content store, counting what is put in it."""

    puts: list[Path]

    def put_blob(self, source: Path, hold: Hold | None = None) -> BlobRef:
        self.puts.append(source)
        return super().put_blob(source, hold)


def test_files_written_back_are_kept_by_reference_until_the_run_changes_them(
        tmp_path: Path) -> None:
    """A written-back file still as it was is listed as the earlier Results list it, without
    being read or stored again; one the run touched, or replaced, is collected anew."""
    from caliber.results.files import OutputLimits, keep_outputs, write_back

    store = CountingStore(tmp_path / "blobs")
    store.puts = []
    first = tmp_path / "first"
    (first / "fields").mkdir(parents=True)
    (first / "mesh.msh").write_bytes(b"m" * 5000)
    (first / "fields" / "a.vtu").write_bytes(b"a" * 300)
    (first / "fields" / "b.vtu").write_bytes(b"b" * 300)
    limits = OutputLimits(0, 0)
    kept = keep_outputs(store, first, OUTPUTS, limits)["files"]
    assert len(store.puts) == 3

    second = tmp_path / "second"
    second.mkdir()
    back = write_back(store, kept, second)
    assert sorted(back) == ["fields/a.vtu", "fields/b.vtu", "mesh.msh"]
    store.puts.clear()
    again = keep_outputs(store, second, OUTPUTS, limits, written_back=back)["files"]
    assert again == kept and store.puts == []

    os.utime(second / "fields" / "a.vtu")  # touched: its times changed
    (second / "mesh.msh").unlink()
    (second / "mesh.msh").write_bytes(b"m" * 5000)  # replaced, the same bytes
    third = keep_outputs(store, second, OUTPUTS, limits, written_back=back)["files"]
    assert third == kept and len(store.puts) == 2
