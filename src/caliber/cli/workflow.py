"""``caliber workflow ...``: Define, show, run and queue workflow files."""

from __future__ import annotations

import click


@click.group()
def workflow() -> None:
    """Define, show, run and queue workflow files."""
