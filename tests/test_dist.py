"""`make dist`'s wheel installs on its own: a fresh venv, `pip install` the wheel, `caliber --help`.

This is what docs/security.md tells the owner of a second machine (the one that runs a pinion)
to do, since caliber-workflows is not on a package index.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run(*args: str | Path, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_make_dist_recipe_builds_with_build() -> None:
    recipe = re.search(r"^dist:.*\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), flags=re.M)
    assert recipe is not None
    assert "-m build --outdir dist ." in recipe.group(1)


@pytest.mark.slow
def test_the_wheel_installs_in_a_fresh_venv(tmp_path: Path) -> None:
    # pip's cache goes to tmp, never the user's home
    env = {**os.environ, "PIP_CACHE_DIR": str(tmp_path / "pip-cache"),
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    env.pop("VIRTUAL_ENV", None)
    # The command `make dist` runs, with the output in tmp instead of dist/
    run(sys.executable, "-m", "build", "--outdir", tmp_path / "dist", ".", cwd=REPO, env=env)
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    wheels = list((tmp_path / "dist").glob("*.whl"))
    sdists = list((tmp_path / "dist").glob("*.tar.gz"))
    # the names the README and docs/remote-queue.md give
    assert [w.name for w in wheels] == [f"caliber_workflows-{version}-py3-none-any.whl"]
    assert [s.name for s in sdists] == [f"caliber_workflows-{version}.tar.gz"]

    venv.create(tmp_path / "venv", with_pip=True)
    bin_dir = tmp_path / "venv" / "bin"
    run(bin_dir / "pip", "install", "--quiet", wheels[0], cwd=tmp_path, env=env)
    out = run(bin_dir / "caliber", "--help", cwd=tmp_path, env=env)
    assert "Usage: caliber" in out and "pinion" in out
    where = run(bin_dir / "python", "-c", "import caliber; print(caliber.__file__)",
                cwd=tmp_path, env=env)
    assert Path(where.strip()).is_relative_to(tmp_path / "venv")
