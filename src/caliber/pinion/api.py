"""``run_pinion()``: what ``caliber pinion init`` calls."""

from __future__ import annotations

from caliber.pinion.loop import Pinion, PinionConfig, Summary
from caliber.pinion.progress import Reporter
from caliber.queue.api import check_pinion_name
from caliber.queue.select import open_backend


def run_pinion(
    config: PinionConfig,
    *,
    project: str | None = None,
    model: str | None = None,
    local: bool = False,
    quiet: bool = False,
) -> Summary:
    """Run a pinion on the queue the settings select, until it stops; return its summary."""
    check_pinion_name(config.name)
    backend = open_backend(project=project, model=model, local=local)
    try:
        pinion = Pinion(config, backend, reporter=Reporter(config.name, quiet=quiet))
        return pinion.run()
    finally:
        backend.close()
