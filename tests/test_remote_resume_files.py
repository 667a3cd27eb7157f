"""Fix and resume with result files on the remote queue: a pinion working from the Speckle
test server writes the files of the Results it resumes back into the new run folder (fetched
from the server, checked), the task that runs again reads them, and the new Results keep them
(the same blobs on the server) beside the newer ones; ``caliber results files ID --to DIR``
brings them all back."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("specklepy")

import caliber
from tests.remote_helpers import Remote, remote
from tests.remote_helpers import caliber as caliber_cli
from tests.speckle_fixtures import speckle_server, speckle_token, speckle_userdata
from tests.test_remote_result_files import remote_store
from tests.test_resume_files import by_path, check_resumed, counts, exported, sha

pytestmark = pytest.mark.speckle
__all__ = ["remote", "speckle_server", "speckle_token", "speckle_userdata"]  # fixtures


def cli(*args: str) -> str:
    done = caliber_cli(*args, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return done.stdout


@pytest.mark.skipif(not remote_store(), reason="the remote queue keeps no blobs on this branch")
def test_a_remote_resume_starts_with_the_files_its_reused_tasks_wrote(
        remote: Remote, tmp_path: Path) -> None:
    folder = tmp_path / "wf"
    file = exported(folder)
    project = ("--project", remote.project)
    pinion = ("pinion", "init", "rp", "-a", "1", "-w", "0.1", *project)
    wid = cli("workflow", "queue", str(file), "-p", "rp", *project).strip()
    cli(*pinion)
    first = caliber.get_results(wid, project=remote.project)
    assert first.status.value == "failed" and counts(folder) == (1, 1)

    (folder / "fixed").touch()
    new = cli("workflow", "queue", str(file), "-p", "rp", "--resume", wid, *project).strip()
    cli(*pinion)
    second = caliber.get_results(new, project=remote.project)
    assert counts(folder) == (1, 2)  # mesh reused: solve read the mesh written back
    check_resumed(first, second)

    out = tmp_path / "laptop"
    cli("results", "files", new, "--to", str(out), *project)
    mesh = (out / "mesh.msh").read_bytes()
    assert sha(mesh) == by_path(first)["mesh.msh"].sha256
    assert (out / "fields" / "u.vtu").read_bytes() == b"u " + mesh[:100]


@pytest.mark.skipif(not remote_store(), reason="the remote queue keeps no blobs on this branch")
def test_a_run_here_resumed_from_results_on_the_server(
        remote: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``Workflow.run(target=..., resume=...)`` with the Results on the server: the files come
    from there into the new folder, and the new Results on the server name the same blobs."""
    from caliber.queue.target import resolve_target
    from tests.test_resume_files import study

    target = resolve_target(project=remote.project)
    wf = study(tmp_path / "wf")
    for run in ("run1", "run2"):
        (tmp_path / run).mkdir()
    monkeypatch.chdir(tmp_path / "run1")
    first = wf.run(work_dir=tmp_path / "run1", target=target)
    (tmp_path / "wf" / "fixed").touch()
    monkeypatch.chdir(tmp_path / "run2")
    second = wf.run(work_dir=tmp_path / "run2", target=target, resume=first.id)
    check_resumed(first, second)
    again = caliber.get_results(results_id=second.id, project=remote.project)
    assert by_path(again) == by_path(second)
    second.save_files(tmp_path / "back")
    assert (tmp_path / "back" / "mesh.msh").read_bytes() == (tmp_path / "run1" / "mesh.msh"
                                                             ).read_bytes()
