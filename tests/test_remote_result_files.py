"""Result files on the remote queue: a pinion working from the Speckle test server collects a
run's files into the server's content store, and ``caliber results files ID --to DIR`` brings
them back to another folder, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("specklepy")

import caliber
from tests.remote_helpers import Remote, remote
from tests.remote_helpers import caliber as caliber_cli
from tests.speckle_fixtures import speckle_server, speckle_token, speckle_userdata
from tests.test_result_files import files_under, solver_workflow

pytestmark = pytest.mark.speckle
__all__ = ["remote", "speckle_server", "speckle_token", "speckle_userdata"]  # fixtures


def remote_store() -> bool:
    """Whether the remote queue keeps blobs on this branch (the Speckle content store)."""
    from caliber.queue.speckle import blobs as speckle_blobs
    from caliber.queue.speckle.backend import SpeckleBackend

    stopgap = getattr(speckle_blobs, "InlineBlobs", None)  # holds blobs in memory only
    return stopgap is None or not issubclass(SpeckleBackend, stopgap)


@pytest.mark.skipif(not remote_store(), reason="the remote queue keeps no blobs on this branch")
def test_files_a_remote_pinion_collected_come_back(remote: Remote, tmp_path: Path) -> None:
    wid = solver_workflow(tmp_path / "wf", ["report.pdf", "fields/**/*.vtu", "*.odb"]).queue(
        pinion="rp", project=remote.project)
    ran = caliber_cli("pinion", "init", "rp", "-a", "1", "-w", "0.1", "--project",
                      remote.project, timeout=120)
    assert ran.returncode == 0, ran.stderr
    results = caliber.get_results(wid, project=remote.project)
    assert results.status.value == "failed" and len(results.files) == 7
    assert results.files_unmatched == ["*.odb"]
    assert results.work_dir is not None
    source = Path(results.work_dir)

    out = tmp_path / "laptop"
    back = caliber_cli("results", "files", wid, "--to", str(out), "--project", remote.project,
                       timeout=120)
    assert back.returncode == 0, back.stderr
    expected = {k: v for k, v in files_under(source).items()
                if k == "report.pdf" or k.endswith(".vtu")}
    assert files_under(out) == expected
    listed = caliber_cli("results", "files", wid, "--project", remote.project)
    assert "fields/step2/u5.vtu" in listed.stdout and "matched nothing: *.odb" in listed.stdout
