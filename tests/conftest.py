"""Shared fixtures: every test gets its own Caliber home and secret key, never the user's."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytest_plugins = ["tests.examples_fixtures"]  # pasta_exported: the example, exported in tmp


@pytest.fixture(autouse=True)
def caliber_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh CALIBER_HOME (database, runs, key file) and no remote queue settings."""
    home = tmp_path / "caliber-home"
    monkeypatch.setenv("CALIBER_HOME", str(home))
    for name in list(os.environ):
        if name.startswith("CALIBER_SPECKLE_") or name == "CALIBER_SECRET_KEY":
            monkeypatch.delenv(name)
    monkeypatch.setenv("NO_COLOR", "1")
    yield home


@pytest.fixture
def caliber_cmd() -> list[str]:
    """The command line that runs the installed caliber in a subprocess."""
    return [sys.executable, "-m", "caliber"]
