"""Remote-queue commands leave nothing in the user's home folder (specklepy's data folder is
``SPECKLE_USERDATA_PATH``, else ``~/.config`` or ``XDG_DATA_HOME``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.remote_helpers import Remote, caliber, pasta_folder, remote
from tests.speckle_fixtures import speckle_server, speckle_token

__all__ = ["remote", "speckle_server", "speckle_token"]  # fixtures

pytestmark = pytest.mark.speckle


def home_env(home: Path) -> dict[str, str]:
    """The environment of a user whose home is ``home`` and who set no data-folder override."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("SPECKLE_USERDATA_PATH", "XDG_DATA_HOME", "XDG_CONFIG_HOME")}
    return {**env, "HOME": str(home)}


def run_with_home(home: Path, *args: str, cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "caliber", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=60, env=home_env(home))
    assert done.returncode == 0, done.stderr


def test_remote_commands_with_a_token_write_nothing_in_home(remote: Remote,
                                                             tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    here = pasta_folder(tmp_path / "pasta")
    p = remote.project
    run_with_home(home, "workflow", "queue", "pasta.json", "-p", "mypinion", "--project", p,
                  cwd=here)
    run_with_home(home, "queue", "list", "--project", p, cwd=here)
    run_with_home(home, "pinion", "init", "mypinion", "-a", "1", "-w", "0", "--project", p,
                  cwd=here)
    run_with_home(home, "results", "list", "--project", p, cwd=here)
    assert sorted(str(f.relative_to(home)) for f in home.rglob("*")) == []


def test_looking_for_a_speckle_manager_account_writes_nothing_in_home(
    remote: Remote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.delenv("CALIBER_SPECKLE_TOKEN")
    for name, value in home_env(home).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SPECKLE_USERDATA_PATH")
    done = caliber("queue", "list", "--project", remote.project, cwd=tmp_path)
    assert done.returncode != 0 and "no token for" in done.stderr
    assert sorted(str(f.relative_to(home)) for f in home.rglob("*")) == []
