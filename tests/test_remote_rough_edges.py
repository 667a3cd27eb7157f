"""Rough edges of the remote queue a newcomer hit (issue 23): the "model does not exist yet"
notice only where it tells something, once; a second cancel writes no second version;
``queue cancel --json`` says whether the run-secret matches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("specklepy")

from tests.remote_helpers import Remote, caliber, pasta_folder, remote
from tests.speckle_fixtures import speckle_server, speckle_token, speckle_userdata

pytestmark = pytest.mark.speckle
__all__ = ["remote", "speckle_server", "speckle_token", "speckle_userdata"]  # fixtures

NOTICE = "does not exist yet"


def test_the_notice_of_a_missing_model_is_given_once_and_not_by_its_maker(
    remote: Remote, tmp_path: Path
) -> None:
    folder = pasta_folder(tmp_path / "pasta")
    env = {"CALIBER_SPECKLE_PROJECT": remote.project, "CALIBER_SPECKLE_MODEL": "nightly"}
    for args in (["results", "show", "k3v9"], ["pinion", "init", "p", "-a", "1", "-w", "0"]):
        done = caliber(*args, cwd=folder, env=env)
        assert done.stderr.count(NOTICE) == 1, (args, done.stderr)
    queued = caliber("workflow", "queue", "pasta.json", "-p", "p", cwd=folder, env=env)
    assert queued.returncode == 0, queued.stderr
    assert NOTICE not in queued.stderr, queued.stderr  # it made the model


def test_a_second_cancel_writes_nothing_and_json_says_whether_the_secret_matches(
    remote: Remote, tmp_path: Path
) -> None:
    folder = pasta_folder(tmp_path / "pasta")
    env = {"CALIBER_SPECKLE_PROJECT": remote.project}
    queued = caliber("workflow", "queue", "pasta.json", "-p", "p", "--json", cwd=folder,
                     env=env)
    workload_id = json.loads(queued.stdout)["id"]
    with remote.backend() as backend:
        assert backend.claim("p", "pin@box", 600, "k") is not None
    first = caliber("queue", "cancel", workload_id, "--json", cwd=folder, env=env)
    assert first.returncode == 0, first.stderr
    shown = json.loads(first.stdout)
    assert shown["cancel_asked"] is True and shown["secret_ok"] is True
    versions = len(remote.versions())
    again = caliber("queue", "cancel", workload_id, cwd=folder, env=env)
    assert again.returncode == 0, again.stderr
    assert len(remote.versions()) == versions  # asked already: no second version
    now = caliber("queue", "cancel", workload_id, "--now", cwd=folder, env=env)
    assert now.returncode == 0, now.stderr
    assert len(remote.versions()) == versions + 1  # --now asks for more: one version


def test_versions_listed_through_graphql_carry_their_time(remote: Remote,
                                                          tmp_path: Path) -> None:
    folder = pasta_folder(tmp_path / "pasta")
    env = {"CALIBER_SPECKLE_PROJECT": remote.project}
    assert caliber("workflow", "queue", "pasta.json", "-p", "p", cwd=folder,
                   env=env).returncode == 0
    stored = remote.versions()
    listed = remote._listed_versions("main")  # the path taken on a real server
    assert [(v.id, v.object_id, v.message, v.created_at) for v in listed] == [
        (v.id, v.object_id, v.message, v.created_at) for v in stored]
