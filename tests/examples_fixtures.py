"""The pasta example's workflow files, made by the tests themselves (never `make demo`'s output).

examples/pasta/pasta.json and branched.json are git-ignored: on a fresh clone they exist only
after `make demo`. A test that needs them gets a copy of the example's scripts in a temporary
folder where ``main.py`` has exported them, as a user would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pasta"


def export_pasta(folder: Path) -> Path:
    """The example's scripts in ``folder``, with pasta.json and branched.json exported there."""
    folder.mkdir(parents=True, exist_ok=True)
    for source in EXAMPLE.glob("*.py"):
        shutil.copy(source, folder)
    env = {**os.environ, "CALIBER_HOME": str(folder / ".caliber-home")}
    done = subprocess.run([sys.executable, "main.py"], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (folder / "pasta.json").is_file() and (folder / "branched.json").is_file()
    shutil.rmtree(folder / ".caliber-home", ignore_errors=True)
    return folder


@pytest.fixture(scope="session")
def pasta_exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The exported example, made once per test session; copy it before changing it."""
    return export_pasta(tmp_path_factory.mktemp("pasta-example"))
