"""A heavy attachment on the remote queue (issue 21): sent to a Speckle server through Caliber
against specklepy's own send of the same bytes.

The Speckle test server of the test suite (``tests/speckle_server``) runs in this process on
127.0.0.1, a fresh one (and a fresh project on it) for each side of each round, so neither
side finds the other's objects there already.

- Caliber: ``caliber workflow queue`` of a workflow attaching one big file (256 MiB; quick:
  16 MiB), as a user types it: the file streamed through SHA-256 into chunk objects of 1 MiB,
  six a request, then the workload and its ``queued`` version.
- specklepy: a Python process that reads the same file and sends it with
  ``operations.send`` to a ``ServerTransport``, as specklepy's own large data goes: a ``Base``
  whose ``@(1)data`` member is the file's base64 text in pieces of 1 MiB of the file (so one
  detached chunk object each, the same size as Caliber's).

Both are fresh processes; time is wall time, memory the process's peak resident size
(``ru_maxrss``, through a small wrapper process). ``python -m bench.heavy_speckle [--quick]``
prints the figures alone.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from bench.common import BIN, REPO, worker_env
from bench.heavy_attachments import measured, spec_rows, workflow_file, write_file
from bench.report import Row

FULL_SIZE = 256 << 20
QUICK_SIZE = 16 << 20
SECTION = "Heavy attachments on Speckle"

SPECKLEPY_SEND = """
import base64, sys, warnings
warnings.simplefilter("ignore")
from specklepy.api import operations
from specklepy.api.client import SpeckleClient
from specklepy.logging import metrics
from specklepy.objects.base import Base
from specklepy.transports.server import ServerTransport

metrics.disable()  # no telemetry: this talks to 127.0.0.1 alone
host, token, project, path = sys.argv[1:]
client = SpeckleClient(host=host, use_ssl=False)
client.authenticate_with_token(token)
with open(path, "rb") as f:
    pieces = [base64.b64encode(p).decode("ascii") for p in iter(lambda: f.read(1 << 20), b"")]
obj = Base()
obj["@(1)data"] = pieces
operations.send(obj, [ServerTransport(project, client=client)], use_default_cache=False)
"""


def expected_ids() -> list[str]:
    return ["speckle-send-time", "speckle-send-memory"]


def _server() -> tuple[Any, str, str]:
    """A fresh test server, a user's token and a project of theirs."""
    sys.path.insert(0, str(REPO))
    from tests.speckle_server import SpeckleTestServer

    server = SpeckleTestServer().start()
    token = server.add_user("bench")
    with server.store.lock:
        user = server.store.user_for_token(token)
        assert user is not None
        project = server.store.create_project(user, "bench", None, None).id
    return server, token, project


def measure(size: int, reps: int, root: Path) -> dict[str, list[float]]:
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    big = data / "mesh.bin"
    write_file(big, size)
    wf = workflow_file(data, "mesh.bin")
    out: dict[str, list[float]] = {k: [] for k in ("caliber", "specklepy", "caliber_mib",
                                                   "specklepy_mib")}
    for rep in range(reps):
        server, token, project = _server()
        try:
            env = worker_env(CALIBER_HOME=str(root / f"home-{rep}"),
                             CALIBER_SPECKLE_HOST=server.url,
                             CALIBER_SPECKLE_TOKEN=token, CALIBER_SPECKLE_PROJECT=project,
                             SPECKLE_USERDATA_PATH=str(root / "userdata"))
            seconds, mib = measured([str(BIN / "caliber"), "workflow", "queue", str(wf),
                                     "-p", "bench"], env)
            out["caliber"].append(seconds)
            out["caliber_mib"].append(mib)
        finally:
            server.stop()
        server, token, project = _server()
        try:
            seconds, mib = measured([sys.executable, "-c", SPECKLEPY_SEND,
                                     server.host, token, project, str(big)],
                                    {**os.environ, "SPECKLE_USERDATA_PATH":
                                     str(root / "userdata")})
            out["specklepy"].append(seconds)
            out["specklepy_mib"].append(mib)
        finally:
            server.stop()
    big.unlink()
    return out


def rows(quick: bool, reps: int, root: Path) -> list[Row]:
    size = QUICK_SIZE if quick else FULL_SIZE
    label = f"{size >> 20:,} MiB"
    try:
        got = measure(size, reps, root / "heavy-speckle")
        error = None
    except Exception as exc:  # a figure that cannot be measured here says why
        got, error = {}, f"{type(exc).__name__}: {exc}"
    specs = [
        ("speckle-send-time", f"`caliber workflow queue` of a {label} attachment to the Speckle "
         "test server", "s", "specklepy's operations.send of the same bytes", "caliber",
         "specklepy", "<= 2", 2.0),
        ("speckle-send-memory", f"peak memory of that `caliber workflow queue` ({label})", "MiB",
         "specklepy's operations.send of the same bytes", "caliber_mib", "specklepy_mib",
         "<= 1", 1.0),
    ]
    return spec_rows(SECTION, specs, got, error)



def main(argv: list[str] | None = None) -> int:
    from bench.report import module_main

    return module_main("python -m bench.heavy_speckle", rows, argv, reps=1)


if __name__ == "__main__":
    sys.exit(main())
