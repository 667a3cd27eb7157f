"""``run_pinion()``: what ``caliber pinion init`` calls."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from caliber.errors import CaliberError
from caliber.pinion.loop import Pinion, PinionConfig, Summary
from caliber.pinion.progress import Reporter
from caliber.queue.api import check_pinion_name, list_summaries, opened

if TYPE_CHECKING:
    from caliber.pinion.platform import ForkServer
    from caliber.queue.target import QueueTarget

log = logging.getLogger(__name__)


def run_pinion(config: PinionConfig, target: QueueTarget, *, quiet: bool = False,
               server: ForkServer | None = None) -> Summary:
    """Run a pinion on the queue ``target``, until it stops; return its summary. ``server``:
    a fork server started early (:func:`~caliber.pinion.platform.start_fork_server`), given
    to the pinion (stopped here if the pinion never starts)."""
    try:
        check_pinion_name(config.name)
        with opened(target) as backend:
            pinion = Pinion(config, backend, reporter=Reporter(config.name, quiet=quiet),
                            server=server)
            server = None  # the pinion's: it stops it when it closes
            summary = pinion.run()
    finally:
        if server is not None:
            server.close()
    if summary.ran == 0 and not (summary.skipped or summary.errors or summary.cold):
        try:
            summary.waiting = waiting_work(target, besides=config.name)
        except CaliberError as exc:  # only a hint: the pinion's own work went well
            log.debug("could not list the waiting work: %s", exc)
    return summary


def waiting_work(target: QueueTarget, *, besides: str) -> dict[str, int]:
    """How many workloads are queued for each pinion name other than ``besides``: what a
    pinion that found no work tells (a name spelled differently, say ``MyPinion``)."""
    queued, _ = list_summaries(target, status="queued", limit=None)
    waiting: dict[str, int] = {}
    for summary in queued:
        if summary.pinion != besides:
            waiting[summary.pinion] = waiting.get(summary.pinion, 0) + 1
    return waiting
