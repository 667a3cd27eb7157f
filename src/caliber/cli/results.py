"""``caliber results ...``: Read stored Results."""

from __future__ import annotations

import click


@click.group()
def results() -> None:
    """Read stored Results."""
