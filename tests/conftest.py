"""Shared fixtures: every test gets its own Caliber home and secret key, never the user's, and
specklepy's data folder (accounts, its object cache ``Objects.db``) is a temporary one."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent

# pasta_exported: the example, exported in tmp; postgres_server/postgres_url: a PostgreSQL server
pytest_plugins = ["tests.examples_fixtures", "tests.postgres_server"]


@pytest.fixture(autouse=True, scope="session")
def speckle_userdata_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point specklepy's user data folder (``SPECKLE_USERDATA_PATH``, else ``~/.config``) at a
    temporary folder for the whole session, subprocesses included."""
    folder = tmp_path_factory.mktemp("speckle-userdata")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPECKLE_USERDATA_PATH", str(folder))
        yield folder


START = os.getcwd()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    """A test that moves to another folder and stays is an error (after every fixture, so
    after monkeypatch's own undo): later tests' pinions would read the settings
    (.caliber/.env) of its folder."""
    yield
    moved = os.getcwd()
    if moved != START:
        os.chdir(START)
        pytest.fail(f"{item.nodeid} left the current folder at {moved}; use monkeypatch.chdir")


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


@pytest.fixture
def speckle_target(request: pytest.FixtureRequest) -> Any:
    """The Speckle server of the remote-queue tests: a test server, or the real one named by
    ``CALIBER_TEST_SPECKLE_URL`` and ``CALIBER_TEST_SPECKLE_TOKEN`` (tests/speckle_fixtures.py)."""
    from tests.speckle_fixtures import target_for

    return target_for(request)
