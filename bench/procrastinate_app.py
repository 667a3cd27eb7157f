"""The procrastinate app the benchmark's ``procrastinate worker`` loads: the PostgreSQL database
at $BENCH_PG_URL, the benchmark's tasks on the queue ``bench``."""

from __future__ import annotations

import os
from typing import Any

from procrastinate import App, PsycopgConnector

from bench import tasks


def make_app(url: str) -> tuple[App, Any, Any]:
    """An app on the database at ``url``, and its two tasks (noop, stamp)."""
    app = App(connector=PsycopgConnector(conninfo=url, min_size=1, max_size=4))
    noop = app.task(name="noop", queue="bench")(tasks.noop)
    stamp = app.task(name="stamp", queue="bench")(tasks.stamp)
    return app, noop, stamp


app, noop, stamp = make_app(os.environ.get("BENCH_PG_URL", ""))
