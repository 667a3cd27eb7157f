"""``caliber pinion ...``: Start a pinion, the worker that runs queued workloads."""

from __future__ import annotations

import click


@click.group()
def pinion() -> None:
    """Start a pinion, the worker that runs queued workloads."""
