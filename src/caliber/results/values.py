"""What Results are made of that needs no pydantic: ids, timestamps, the statuses and an
error's one-line summary.

A pinion's child imports this, not :mod:`caliber.results.model`: the child is forked from a
process that has neither pydantic nor threading loaded (every module the forking process holds
makes each fork dearer, see :mod:`caliber.pinion.platform`).
"""

from __future__ import annotations

import datetime as dt
import os
from enum import StrEnum

ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford's base 32, lower case
ID_LENGTH = 10


def new_id() -> str:
    """A short, readable random id (50 bits): ``k3v9q2mxa7``."""
    bits = int.from_bytes(os.urandom(7), "big")  # 56 random bits, 50 used (secrets.token_bytes
    # is os.urandom; the secrets module would load random, whose fork hook a child pays for)
    return "".join(ID_ALPHABET[(bits >> (5 * i)) & 31] for i in range(ID_LENGTH))


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class RunStatus(StrEnum):
    """How a workflow run ended."""

    COMPLETED = "completed"
    """Every task returned."""
    FAILED = "failed"
    """A task raised, a function could not be imported, or the run was stopped."""
    CANCELLED = "cancelled"
    """Cancelled while it ran (``caliber queue cancel``): the tasks that finished are kept."""


class TaskStatus(StrEnum):
    """How one task run ended."""

    COMPLETED = "completed"
    """The function returned; its value is kept."""
    FAILED = "failed"
    """The function raised; the error is kept."""
    SKIPPED = "skipped"
    """It never ran, because an earlier task of its process failed."""


def error_summary(task: str | None, branch: int | None, type_: str, message: str) -> str:
    """An error in one line: ``task 'Boil' (branch 1): ValueError: too salty``; a cancel in
    words: ``cancelled: stopped before task 'Drain'``."""
    if type_ == "Cancelled" and not task and message.startswith("cancelled"):
        return message  # (the runner's and the pinion's stop: no exception was raised)
    where = f"task {task!r}" if task else "workflow"
    if branch is not None:
        where += f" (branch {branch})"
    return f"{where}: {type_}: {message}"
