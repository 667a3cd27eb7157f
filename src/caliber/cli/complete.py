"""Shell completion of ids (click's ``shell_complete``): workload ids for ``queue view``,
``logs``, ``reset`` and ``resetsecret``, results ids for ``results show``.

They are read from the queue the command line points at (``--queue``, ``--project``,
``--model``, ``--local`` when typed before the id, else the settings): every workload (a
listing reads plain rows), the newest :data:`RESULTS_LIMIT` Results. Completion never fails
loudly: a queue that cannot be read completes nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import click
    from click.shell_completion import CompletionItem

    from caliber.queue.target import QueueTarget

RESULTS_LIMIT = 50  # results ids offered at most, the newest (each is read whole)
log = logging.getLogger(__name__)


def _target(ctx: click.Context) -> QueueTarget:
    from caliber.cli.common import given
    from caliber.queue.target import resolve_target

    def typed(name: str) -> str | None:
        value: str | None = given(name, ctx.params.get(name), ctx)
        return value

    return resolve_target(queue=typed("queue"), project=typed("project"), model=typed("model"),
                          local=bool(ctx.params.get("local")), queue_from="--queue")


def workload_ids(ctx: click.Context, param: click.Parameter,
                 incomplete: str) -> list[CompletionItem]:
    """The ids of the queue's workloads that start with what is typed."""
    from click.shell_completion import CompletionItem

    from caliber.queue.api import opened

    try:
        with opened(_target(ctx)) as backend:
            found = backend.list_summaries()  # as stored: whether it matches is not shown
    except Exception as exc:  # completion must never break the shell
        log.debug("no completion: %s", exc)
        return []
    return [CompletionItem(s.id, help=f"{s.name} {s.status}")
            for s in found if s.id.startswith(incomplete)]


def results_ids(ctx: click.Context, param: click.Parameter,
                incomplete: str) -> list[CompletionItem]:
    """The ids of the newest stored Results that start with what is typed."""
    from click.shell_completion import CompletionItem

    from caliber.results.api import list_results

    try:
        found = list_results(_target(ctx), limit=RESULTS_LIMIT)
    except Exception as exc:  # completion must never break the shell
        log.debug("no completion: %s", exc)
        return []
    return [CompletionItem(r.id, help=f"{r.workflow} {r.status.value}")
            for r in found if r.id.startswith(incomplete)]
