"""``caliber queue ...``: Look at and manage the queue: list, view, reset, resetsecret."""

from __future__ import annotations

import click


@click.group()
def queue() -> None:
    """Look at and manage the queue: list, view, reset, resetsecret."""
