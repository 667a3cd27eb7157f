"""The PostgreSQL test server itself (tests/postgres_server.py): it starts on 127.0.0.1 with a
database of its own, survives a restart with its data, and leaves no process behind."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.postgres_server import PostgresServer, unavailable_reason


def psql(server: PostgresServer, url: str, statement: str) -> str:
    """Through the URL (TCP on 127.0.0.1), as a client of the tests would connect."""
    done = subprocess.run([str(server.bin / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                           url, "-c", statement], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def processes_under(folder: Path) -> list[str]:
    lines = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    return [line for line in lines if str(folder) in line]


def test_url_database_and_listening_address(postgres_server: PostgresServer,
                                            postgres_url: str) -> None:
    assert postgres_url.startswith(f"postgresql://caliber@127.0.0.1:{postgres_server.port}/")
    name = postgres_url.rsplit("/", 1)[1]
    assert psql(postgres_server, postgres_url, "SELECT current_database()") == name
    assert psql(postgres_server, postgres_url, "SHOW listen_addresses") == "127.0.0.1"
    assert psql(postgres_server, postgres_url, "SHOW fsync") == "off"
    assert psql(postgres_server, postgres_server.url, "SELECT current_database()") == "caliber"


def test_restart_keeps_data_and_close_leaves_nothing() -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with PostgresServer() as server:
        folder = server.folder
        psql(server, server.url, "CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
        first = server.pid
        assert processes_under(folder)
        server.stop()
        assert server.pid is None
        assert not processes_under(folder)  # stopped means no postgres process at all
        server.start()
        assert server.pid not in (None, first)
        assert psql(server, server.url, "SELECT x FROM t") == "42"
        server.restart(mode="immediate")  # as a crash: recovery on start, data kept
        assert psql(server, server.url, "SELECT x FROM t") == "42"
    assert not folder.exists()
    assert not processes_under(folder)


def test_binaries_from_path_else_newest_debian_folder(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.postgres_server import MISSING, PostgresUnavailable, find_bin_dir

    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(PostgresUnavailable) as caught:
        find_bin_dir(tmp_path)
    assert str(caught.value) == MISSING
    for version in ("9.6", "15", "16", "17"):
        folder = tmp_path / version / "bin"
        folder.mkdir(parents=True)
        for name in ("initdb", "postgres") if version != "17" else ("initdb",):
            (folder / name).write_text("")
    assert find_bin_dir(tmp_path) == tmp_path / "16" / "bin"  # 17 has no postgres
    on_path = tmp_path / "path"
    on_path.mkdir()
    for name in ("initdb", "postgres"):
        (on_path / name).write_text("#!/bin/sh\n")
        (on_path / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(on_path))
    assert find_bin_dir(tmp_path) == on_path


def test_a_killed_owner_leaves_no_server_behind() -> None:
    """The process that started a server dies by SIGKILL (a test run's timeout does that):
    the server stops and its folder goes all the same."""
    import os
    import signal
    import sys
    import time

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    owner = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom tests.postgres_server import "
         "PostgresServer\ns = PostgresServer().setup()\nprint(s.folder, flush=True)\n"
         "time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert owner.stdout is not None
    folder = Path(owner.stdout.readline().strip())
    assert processes_under(folder)
    os.kill(owner.pid, signal.SIGKILL)
    owner.communicate()  # also closes its pipe
    deadline = time.monotonic() + 60
    while processes_under(folder) or folder.exists():
        assert time.monotonic() < deadline, processes_under(folder)
        time.sleep(0.1)
