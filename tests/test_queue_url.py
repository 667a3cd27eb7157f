"""Queue URLs: ``--queue URL``, ``queue=`` and ``CALIBER_QUEUE_URL``; each backend selects
itself from them (its light module, asked in turn by the registry), in the documented order;
a bad URL or conflicting options is one line, and a password in a URL is never shown."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import caliber
from caliber.errors import ConfigError, UsageError
from caliber.queue import registry
from caliber.queue.api import list_workloads
from caliber.queue.target import QueueTarget, local_target, resolve_target
from tests.test_queue_api import make_workflow

SECRET = "s3cret-pw"
PG = f"postgresql://ann:{SECRET}@127.0.0.1:1/caliber"


def caliber_cli(*args: str, env: dict[str, str] | None = None,
                cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "caliber", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=cwd)


def test_sqlite_urls_absolute_and_relative(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    absolute = resolve_target(queue=f"sqlite://{tmp_path}/q.db")  # sqlite:///tmp/...
    assert (absolute.kind, absolute.settings) == ("sqlite", tmp_path / "q.db")
    assert absolute.location == str(tmp_path / "q.db")
    assert resolve_target(queue=f"sqlite:///{tmp_path}/q.db") == absolute  # sqlite:////tmp/
    relative = resolve_target(queue="sqlite:sub/q%20x.db")
    assert relative.settings == tmp_path / "sub" / "q x.db"
    for bad, why in (("sqlite://server/q.db", "is a host"), ("sqlite:", "names no file"),
                     ("sqlite:///tmp/", "names no file"), ("sqlite:///q.db?mode=ro", "query")):
        with pytest.raises(ConfigError, match=why) as info:
            resolve_target(queue=bad)
        assert repr(bad) in str(info.value)


def test_the_order_url_given_then_the_variable_then_speckle_then_local(
        tmp_path: Path, caliber_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CALIBER_SPECKLE_HOST", "http://127.0.0.1:9")
    monkeypatch.setenv("CALIBER_SPECKLE_PROJECT", "p1")
    assert resolve_target().kind == "speckle"
    monkeypatch.setenv("CALIBER_QUEUE_URL", f"sqlite://{tmp_path}/env.db")
    assert resolve_target().settings == tmp_path / "env.db"  # the variable beats Speckle's
    assert resolve_target(queue="memory://given").kind == "memory"  # given beats the variable
    assert resolve_target(local=True) == local_target()  # --local beats the variable
    assert resolve_target(project="p2").settings.project == "p2"  # so does --project
    monkeypatch.delenv("CALIBER_QUEUE_URL")
    monkeypatch.delenv("CALIBER_SPECKLE_PROJECT")
    assert resolve_target() == local_target()


def test_the_variable_is_read_from_the_env_file(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".caliber").mkdir(mode=0o700)
    (tmp_path / ".caliber" / ".env").write_text("CALIBER_QUEUE_URL=sqlite:team.db\n")
    assert resolve_target().settings == tmp_path / "team.db"


def test_a_url_and_project_or_local_is_a_usage_error() -> None:
    for extra in ({"project": "p1"}, {"local": True}, {"model": "m"}):
        with pytest.raises(UsageError, match="queue= names the queue: give it without"):
            resolve_target(queue="memory://x", **extra)  # type: ignore[arg-type]


def test_speckle_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALIBER_SPECKLE_TOKEN", "tok-from-the-setting")
    target = resolve_target(queue="speckle://speckle.example.org/abc123/shapes/beams")
    remote = target.settings
    assert target.kind == "speckle"
    assert (remote.host, remote.project, remote.model, remote.token) == (
        "https://speckle.example.org", "abc123", "shapes/beams", "tok-from-the-setting")
    local = resolve_target(queue="speckle+http://127.0.0.1:8080/abc123").settings
    assert (local.host, local.model) == ("http://127.0.0.1:8080", "main")
    with pytest.raises(ConfigError, match="CALIBER_SPECKLE_TOKEN, not in the URL") as info:
        resolve_target(queue=f"speckle://me:{SECRET}@speckle.example.org/abc123")
    assert SECRET not in str(info.value)
    with pytest.raises(ConfigError, match="names no project"):
        resolve_target(queue="speckle://speckle.example.org/")


def test_postgres_urls_never_show_the_password() -> None:
    target = resolve_target(queue=PG)
    assert (target.kind, target.settings) == ("postgres", PG)  # what the backend opens with
    assert target.location == "postgresql://ann:***@127.0.0.1:1/caliber"
    assert SECRET not in repr(target)
    assert resolve_target(queue="postgres://127.0.0.1/q").kind == "postgres"
    with pytest.raises(ConfigError, match="names no server or database"):
        resolve_target(queue="postgresql://")


def test_postgres_without_its_driver_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if psycopg were not installed
    monkeypatch.delitem(sys.modules, "caliber.queue.postgres.backend", raising=False)
    with pytest.raises(ConfigError, match=r"the PostgreSQL queue needs psycopg 3 \(the postgres "
                       r"extra\): pip install 'psycopg\[binary\]>=3\.1,<4'") as info:
        registry.open_backend(resolve_target(queue=PG))
    assert SECRET not in str(info.value)


def test_a_backend_whose_module_is_missing_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kind registered with its light module but no backend module (yet)."""
    monkeypatch.setitem(registry.BACKENDS, "ghost", "caliber.queue.memory.select_only")
    monkeypatch.setattr(registry, "selector", lambda kind: registry.import_module(
        "caliber.queue.memory.select"))
    with pytest.raises(ConfigError, match="the ghost queue backend is not available in this "
                       "installation"):
        registry.open_backend(QueueTarget("ghost", "?", None))


def test_unknown_schemes_name_the_url_and_the_forms() -> None:
    with pytest.raises(ConfigError) as info:
        resolve_target(queue=f"redis://ann:{SECRET}@127.0.0.1/0")
    message = str(info.value)
    assert "queue= 'redis://ann:***@127.0.0.1/0' is not a queue URL" in message
    assert "no queue backend takes the scheme 'redis'" in message
    assert "sqlite:///" in message and "postgresql://" in message and SECRET not in message
    with pytest.raises(ConfigError, match="it has no scheme"):
        resolve_target(queue="/just/a/path.db")


def test_memory_queues_of_one_name_are_one_queue(tmp_path: Path) -> None:
    wf = make_workflow(tmp_path / "wf")
    wid = wf.queue("p1", queue="memory://url-test")
    assert [c.workload.id for c in list_workloads(resolve_target(queue="memory://url-test"))] \
        == [wid]
    assert list_workloads(resolve_target(queue="memory://other")) == []
    assert list_workloads(local_target()) == []
    results = wf.run(work_dir=tmp_path, target=resolve_target(queue="memory://url-test"))
    assert caliber.get_results(results_id=results.id, queue="memory://url-test").id == results.id
    with pytest.raises(UsageError, match="target= names the queue"):
        caliber.get_results(results_id=results.id, queue="memory://url-test",
                            target=local_target())


def test_the_cli_takes_queue_urls(tmp_path: Path) -> None:
    db = tmp_path / "elsewhere.db"
    make_workflow(tmp_path / "wf").queue("p7", queue=f"sqlite://{db}")
    listed = caliber_cli("queue", "list", "--json", "--queue", f"sqlite://{db}")
    assert listed.returncode == 0, listed.stderr
    assert [w["pinion"] for w in json.loads(listed.stdout)] == ["p7"]
    env = {"CALIBER_QUEUE_URL": f"sqlite://{db}"}
    assert json.loads(caliber_cli("queue", "list", "--json", env=env).stdout)[0]["pinion"] \
        == "p7"
    assert json.loads(caliber_cli("queue", "list", "--json", "--local", env=env).stdout) == []
    help_text = caliber_cli("queue", "list", "--help").stdout
    assert "--queue URL" in help_text and "CALIBER_QUEUE_URL" in help_text


@pytest.mark.parametrize("args", [
    ["--queue", "sqlite:///x.db", "--local"],
    ["--queue", "sqlite:///x.db", "--project", "p1"],
])
def test_the_cli_refuses_a_url_with_other_queue_options(tmp_path: Path, args: list[str]) -> None:
    done = caliber_cli("queue", "list", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "caliber: error: --queue names the queue: give it without --project, --model or "
        "--local"]
    assert not (tmp_path / "x.db").exists()


def test_the_cli_says_one_line_for_a_bad_url_and_never_its_password(tmp_path: Path) -> None:
    bad = caliber_cli("queue", "list", "--queue", f"ftp://ann:{SECRET}@127.0.0.1/q")
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1
    assert "--queue 'ftp://ann:***@127.0.0.1/q' is not a queue URL" in bad.stderr
    env = {"CALIBER_QUEUE_URL": f"ftp://ann:{SECRET}@127.0.0.1/q"}
    from_env = caliber_cli("queue", "list", env=env)
    assert "CALIBER_QUEUE_URL 'ftp://ann:***@127.0.0.1/q'" in from_env.stderr
    postgres = caliber_cli("queue", "list", "--queue", PG)  # not there, or nothing listens
    assert postgres.returncode != 0 and len(postgres.stderr.splitlines()) == 1
    assert SECRET not in postgres.stderr + postgres.stdout


def test_listing_by_url_loads_neither_pydantic_nor_rich(tmp_path: Path) -> None:
    """The light modules that select a backend keep ``caliber queue list`` fast."""
    db = tmp_path / "q.db"
    make_workflow(tmp_path / "wf").queue("p", queue=f"sqlite://{db}")
    script = (
        "import sys\n"
        "from caliber.cli import main\n"
        "try:\n"
        f"    main(['queue', 'list', '--json', '--queue', 'sqlite://{db}'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print([m for m in ('pydantic', 'rich', 'specklepy') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout
    assert out.splitlines()[-1] == "[]"
