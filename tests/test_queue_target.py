"""The queue target: resolved once from options, environment and .caliber/.env, opened by kind
through the registry; the Python API's target= goes where it says."""

from __future__ import annotations

import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

import caliber
from caliber.errors import ConfigError, NotFoundError
from caliber.queue.api import list_workloads
from caliber.queue.registry import open_backend, open_results
from caliber.queue.target import QueueTarget, local_target, resolve_target
from tests.test_queue_api import make_workflow


def test_local_unless_a_project_is_set(caliber_home: Path, monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    target = resolve_target()
    assert (target.kind, target.settings) == ("sqlite", caliber_home / "caliber.db")
    assert target.location == str(caliber_home / "caliber.db") and target == local_target()
    monkeypatch.setenv("CALIBER_SPECKLE_PROJECT", "abc123")
    monkeypatch.setenv("CALIBER_SPECKLE_HOST", "speckle.example.org")
    remote = resolve_target(model="shapes")
    assert remote.kind == "speckle"
    assert (remote.settings.project, remote.settings.model) == ("abc123", "shapes")
    assert remote.location == "https://speckle.example.org project abc123 model shapes"
    assert resolve_target(local=True) == local_target()
    monkeypatch.delenv("CALIBER_SPECKLE_HOST")
    with pytest.raises(ConfigError, match="no server"):
        resolve_target()


def test_the_env_file_selects_the_remote_queue(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".caliber").mkdir()
    (tmp_path / ".caliber" / ".env").write_text(
        "CALIBER_SPECKLE_HOST=http://127.0.0.1:9\nCALIBER_SPECKLE_PROJECT=p1\n")
    target = resolve_target()
    assert (target.kind, target.settings.host, target.settings.project) == (
        "speckle", "http://127.0.0.1:9", "p1")


def test_an_unknown_kind_is_one_clear_error() -> None:
    with pytest.raises(ConfigError,
                       match="unknown queue kind 'ftp'; known: memory, postgres, speckle, sqlite"):
        open_backend(QueueTarget(kind="ftp", location="?", settings=None))


def test_target_goes_where_it_says(tmp_path: Path) -> None:
    """Workflow.queue, Workflow.run and get_results with target= use that queue and store,
    not the one the settings select."""
    elsewhere = QueueTarget(kind="sqlite", location="other", settings=tmp_path / "other.db")
    wf = make_workflow(tmp_path / "wf")
    wid = wf.queue("p1", target=elsewhere)
    assert [c.workload.id for c in list_workloads(elsewhere)] == [wid]
    assert list_workloads(local_target()) == []
    results = wf.run(work_dir=tmp_path, target=elsewhere)
    assert caliber.get_results(results_id=results.id, target=elsewhere).id == results.id
    with pytest.raises(NotFoundError):
        caliber.get_results(results_id=results.id)
    with closing(open_results(elsewhere)) as store:
        assert [r.id for r in store.list_results()] == [results.id]


def test_the_local_queue_never_imports_the_remote_backend(tmp_path: Path) -> None:
    """Choosing the local queue asks the remote one's light module (``select``) only."""
    make_workflow(tmp_path / "wf").queue("p1")
    script = (
        "import sys, caliber\n"
        "from caliber.queue.api import list_workloads\n"
        "from caliber.queue.target import resolve_target\n"
        "assert len(list_workloads(resolve_target())) == 1\n"
        "print(sorted(m for m in sys.modules if 'speckle' in m))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout
    assert out.strip() == "['caliber.queue.speckle', 'caliber.queue.speckle.select']"
