"""``run_pinion()``: what ``caliber pinion init`` calls."""

from __future__ import annotations

from typing import TYPE_CHECKING

from caliber.pinion.loop import Pinion, PinionConfig, Summary
from caliber.pinion.progress import Reporter
from caliber.queue.api import check_pinion_name, opened

if TYPE_CHECKING:
    from caliber.queue.target import QueueTarget


def run_pinion(config: PinionConfig, target: QueueTarget, *, quiet: bool = False) -> Summary:
    """Run a pinion on the queue ``target``, until it stops; return its summary."""
    check_pinion_name(config.name)
    with opened(target) as backend:
        pinion = Pinion(config, backend, reporter=Reporter(config.name, quiet=quiet))
        return pinion.run()
