"""A private Redis server for the RQ figures: 127.0.0.1, a free port, no persistence, a temp dir."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import Unavailable, log_tail, start, stop

PACKAGE = "redis-server"
MISSING = (
    "redis-server is not installed; install Debian's redis-server package "
    "(apt-get update && apt-get install -y redis-server) or run with --skip-rq"
)


def find_redis_server(*, install: bool) -> str:
    """The redis-server executable; installs Debian's package first when root and ``install``."""
    found = shutil.which("redis-server")
    if found:
        return found
    if install and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"bench: redis-server is missing, installing Debian's {PACKAGE} package ...",
              flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", PACKAGE]):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                why = done.stderr.strip()[-300:]
                raise Unavailable(f"{' '.join(cmd)} failed: {why}; {MISSING}")
        found = shutil.which("redis-server")
        if found:
            return found
    raise Unavailable(MISSING)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """``with RedisServer() as server: server.url``; stopped (and its folder removed) on exit."""

    def __init__(self, *, install: bool = True) -> None:
        self.executable = find_redis_server(install=install)
        self.dir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.version = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RedisServer:
        import redis

        log = self.dir / "redis.log"
        self.proc = start(
            [self.executable, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no"],
            env=dict(os.environ), cwd=self.dir, log=log,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.perf_counter() + 10
        while True:
            try:
                client.ping()
                self.version = str(client.info("server").get("redis_version", ""))
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.perf_counter() > deadline:
                    self.__exit__()
                    raise Unavailable(f"redis-server did not start: {log_tail(log)}") from None
                time.sleep(0.02)
        client.close()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop(self.proc, grace=5)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
