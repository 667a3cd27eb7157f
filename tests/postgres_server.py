"""A private PostgreSQL server for the tests and the benchmarks, from the installed binaries.

``PostgresServer`` runs ``initdb`` in a temporary folder and starts ``postgres`` on a free port
of 127.0.0.1 (and a unix socket in that folder; nothing else listens), with settings for speed
and no durability (``fsync=off``: a crash of the machine may lose the data, fine for a test).
It is stopped, and its folder removed, at the end, also when the process that started it is
killed (a watchdog process sees it go); ``stop()``/``start()``/``restart()`` stop and start
the same server (same data, same port) in the middle of a test.

PostgreSQL refuses to run as root; as root (here and in CI) ``initdb`` and ``postgres`` run as
the user ``nobody`` (``setpriv``), their folder chowned to it. The binaries come from PATH, else
the newest ``/usr/lib/postgresql/*/bin`` (Debian's ``postgresql`` package).

The fixtures: ``postgres_server`` (one server for the session; skipped, with one reason, when
PostgreSQL is not installed) and ``postgres_url`` (a fresh database on it for each test, dropped
after). From the benchmarks: ``with PostgresServer() as server: server.url``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

USER = "caliber"  # the superuser initdb makes (trust authentication: tests only)
DATABASE = "caliber"
UNPRIVILEGED = "nobody"
START_TIMEOUT = 30.0  # seconds for the server to accept connections
STOP_TIMEOUT = 20.0  # seconds for a fast shutdown before an immediate one, then SIGKILL
FAST_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "100",
    "listen_addresses": "127.0.0.1",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",  # the tests provoke errors on purpose
    "max_wal_size": "256MB",
    "checkpoint_timeout": "30min",
}
WATCHDOG = """
import os, shutil, signal, sys, time
pid, folder = int(sys.argv[1]), sys.argv[2]
if sys.stdin.buffer.read(1):  # the server was stopped as planned: nothing to do
    sys.exit(0)
try:  # end of file without a word: the process that started the server died
    os.kill(pid, signal.SIGINT)
    for _ in range(200):
        time.sleep(0.1)
        os.kill(pid, 0)
    os.killpg(pid, signal.SIGKILL)
except ProcessLookupError:
    pass
shutil.rmtree(folder, ignore_errors=True)
"""
"""A process beside each server, holding the read end of a pipe only the starting process
writes to: when that process dies however it dies (SIGKILL, a test run's timeout), the pipe
closes unwritten and the watchdog stops the server and removes its folder."""
MISSING = ("PostgreSQL is not installed (no initdb and postgres on PATH or in "
           "/usr/lib/postgresql/*/bin): install Debian's postgresql package")


class PostgresUnavailable(Exception):
    """No PostgreSQL server can be started here; the message says why (one line)."""


def find_bin_dir(installed: Path = Path("/usr/lib/postgresql")) -> Path:
    """The folder holding ``initdb`` and ``postgres``: PATH first, then the newest
    ``/usr/lib/postgresql/<version>/bin`` (Debian's layout)."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("postgres"):
        folder = Path(on_path).resolve().parent
        if (folder / "postgres").exists():
            return folder
    versions = []
    for folder in installed.glob("*/bin"):
        if (folder / "initdb").exists() and (folder / "postgres").exists():
            number = re.match(r"\d+(\.\d+)?", folder.parent.name)
            versions.append((float(number.group()) if number else 0.0, folder))
    if not versions:
        raise PostgresUnavailable(MISSING)
    return max(versions)[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_unprivileged() -> tuple[list[str], int | None, int | None]:
    """The command prefix that drops root (and the uid/gid to chown to); nothing when not root."""
    if os.geteuid() != 0:
        return [], None, None
    import pwd

    setpriv = shutil.which("setpriv")
    try:
        entry = pwd.getpwnam(UNPRIVILEGED)
    except KeyError:
        entry = None
    if setpriv is None or entry is None:
        raise PostgresUnavailable(f"running as root without setpriv or a user {UNPRIVILEGED!r}"
                                  ": PostgreSQL refuses to run as root")
    prefix = [setpriv, f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups",
              "--"]
    return prefix, entry.pw_uid, entry.pw_gid


class PostgresServer:
    """One PostgreSQL server in a temporary folder; a context manager (stopped on exit)."""

    def __init__(self, *, settings: Mapping[str, str] | None = None,
                 database: str = DATABASE) -> None:
        self.bin = find_bin_dir()
        self.prefix, self._uid, self._gid = _as_unprivileged()
        self.settings = {**FAST_SETTINGS, **(settings or {})}
        self.database = database
        self.port = free_port()
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.watchdog: subprocess.Popen[bytes] | None = None
        self.version = ""

    # --- paths and addresses ---

    @property
    def folder(self) -> Path:
        if self.dir is None:
            raise RuntimeError("the PostgreSQL server was not set up (use it in a with block)")
        return self.dir

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def socket_dir(self) -> Path:
        return self.folder / "socket"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    def url_for(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        """``postgresql://caliber@127.0.0.1:PORT/caliber``: the database made at set-up."""
        return self.url_for(self.database)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    # --- life ---

    def __enter__(self) -> PostgresServer:
        self.setup()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def setup(self) -> PostgresServer:
        """initdb, start, create the database."""
        self.dir = Path(tempfile.mkdtemp(prefix="caliber-pg-"))
        atexit.register(self.close)
        try:
            self.socket_dir.mkdir()
            self._own(self.folder, self.socket_dir)
            self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", USER,
                       "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"],
                      "initdb")
            self.start()
            self.version = self.sql("postgres", "SHOW server_version").strip()
            self.create_database(self.database)
        except BaseException:
            self.close()
            raise
        return self

    def start(self) -> None:
        """Start the server on its port (again, after ``stop``), and wait until it is ready."""
        if self.pid is not None:
            return
        args = [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                "-k", str(self.socket_dir)]
        for name, value in self.settings.items():
            args += ["-c", f"{name}={value}"]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*self.prefix, *args], cwd=self.folder, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.watchdog = subprocess.Popen(
            [sys.executable, "-c", WATCHDOG, str(self.proc.pid), str(self.folder)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop(mode="immediate")
                raise PostgresUnavailable(f"postgres did not start: {tail}")
            time.sleep(0.02)

    def _ready(self) -> bool:
        """What ``pg_ctl`` checks: postmaster.pid names our process and says ``ready``."""
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        proc = self.proc
        return (proc is not None and len(lines) >= 8 and lines[0].strip() == str(proc.pid)
                and lines[7].strip() == "ready")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (clients disconnected, a clean shutdown) or ``immediate``
        (as a crash: recovery on the next start). Escalates, ends with SIGKILL of its group."""
        proc = self.proc
        if proc is None:
            return
        first = {"smart": signal.SIGTERM, "fast": signal.SIGINT,
                 "immediate": signal.SIGQUIT}[mode]
        for sig in (first, signal.SIGQUIT):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # any backend left in its group
        proc.wait()
        self.proc = None
        watchdog, self.watchdog = self.watchdog, None
        if watchdog is not None and watchdog.stdin is not None:
            with contextlib.suppress(OSError):
                watchdog.stdin.write(b"stopped")  # as planned: the watchdog just ends
                watchdog.stdin.close()
            watchdog.wait()

    def restart(self, mode: str = "fast") -> None:
        """Stop and start again: same data, same port (clients' connections are cut)."""
        self.stop(mode)
        self.start()

    def close(self) -> None:
        """Stop the server and remove its folder (safe to call twice)."""
        self.stop()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)

    # --- databases ---

    def sql(self, database: str, statement: str) -> str:
        """Run one statement with the server's own psql (no Python driver needed); its output."""
        return self._client(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                             "-d", database, "-c", statement], "psql")

    def create_database(self, name: str) -> str:
        """A new, empty database; its URL."""
        self._client(["createdb", "-T", "template0", name], "createdb")
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop it, cutting any connection still open to it."""
        self._client(["dropdb", "--force", "--if-exists", name], "dropdb")

    def connections(self) -> int:
        """Client connections open now (all databases)."""
        return int(self.sql("postgres", "SELECT count(*) FROM pg_stat_activity "
                                        "WHERE backend_type = 'client backend'").strip()) - 1

    # --- helpers ---

    def log_tail(self, lines: int = 10) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "(no log)"
        return " | ".join(text)

    def _client(self, args: Sequence[str], what: str) -> str:
        cmd = [str(self.bin / args[0]), "-h", str(self.socket_dir), "-p", str(self.port),
               "-U", USER, *args[1:]]
        done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              env={**os.environ, "PGCONNECT_TIMEOUT": "10"})
        if done.returncode != 0:
            raise RuntimeError(f"{what} failed: {done.stderr.strip()}")
        return done.stdout

    def _run(self, args: Sequence[str], what: str) -> None:
        done = subprocess.run([*self.prefix, *args], capture_output=True, text=True,
                              cwd=self.folder, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-5:])
            raise PostgresUnavailable(f"{what} failed: {tail}")

    def _own(self, *paths: Path) -> None:
        if self._uid is not None and self._gid is not None:
            for path in paths:
                os.chown(path, self._uid, self._gid)
                path.chmod(0o700)


def unavailable_reason() -> str | None:
    """Why no server can be started here (one line), or None."""
    try:
        find_bin_dir()
        _as_unprivileged()
    except PostgresUnavailable as exc:
        return str(exc)
    return None


# --- pytest fixtures (tests/conftest.py loads this module as a plugin) ----------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session; the test is skipped when there is none."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with PostgresServer() as server:
        yield server


_counter = iter(range(1, 1 << 30))


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database for this test on the session's server: its ``postgresql://`` URL."""
    if postgres_server.pid is None:  # a test stopped it and failed before starting it again
        postgres_server.start()
    name = f"test_{os.getpid()}_{next(_counter)}"
    url = postgres_server.create_database(name)
    yield url
    if postgres_server.pid is None:
        postgres_server.start()
    postgres_server.drop_database(name)
