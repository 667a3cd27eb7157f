"""The Huey instance the benchmark's ``huey_consumer`` loads: SQLite storage at $BENCH_HUEY_DB."""

from __future__ import annotations

import os

from huey import SqliteHuey

from bench import tasks

huey = SqliteHuey(name="bench", filename=os.environ.get("BENCH_HUEY_DB", "bench-huey.db"))
noop = huey.task(name="noop")(tasks.noop)
