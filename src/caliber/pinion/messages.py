"""The messages a workload's child sends its pinion (:mod:`caliber.pinion.child` writes them),
read and checked by the pinion: a line the child's own code wrote to the pipe is not taken for
one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from caliber.results.model import Results, TaskResult


class _EventMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["start", "end"]
    index: int
    total: int
    name: str
    branch: int | None
    status: str | None
    duration: float | None
    timeout: float | None = None
    result: TaskResult | None


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event: _EventMessage | None = None
    results: Results | None = None


class ForeignMessageError(Exception):
    """A line on the message pipe that is not a message of Caliber's child: the workload wrote
    to the pipe itself."""


@dataclass(frozen=True)
class ChildMessage:
    """One message from the child, checked: a task event (and the ended task's record), or
    the Results."""

    event: dict[str, Any] | None = None
    record: TaskResult | None = None
    results: Results | None = None


def read_message(line: bytes) -> ChildMessage:
    """The message in ``line``, or ForeignMessageError saying what was wrong with it."""
    try:
        message = _Message.model_validate_json(line)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ForeignMessageError(
            f"the workload wrote {_preview(line)} to the pinion's message pipe "
            f"({where + ': ' if where else ''}{error['msg']})"
        ) from exc
    if (message.event is None) == (message.results is None):
        raise ForeignMessageError(
            f"the workload wrote {_preview(line)} to the pinion's message pipe")
    if message.results is not None:
        return ChildMessage(results=message.results)
    event = message.event
    assert event is not None
    shown = event.model_dump(exclude={"result"})
    if event.result is not None and event.result.reuse is not None:  # a resumed run's task
        shown["reused_from"], shown["reuse"] = event.result.reused_from, event.result.reuse
    return ChildMessage(event=shown, record=event.result)


def _preview(line: bytes, width: int = 60) -> str:
    text = repr(line[:width])[1:]  # b'...' -> '...'
    return text + ("..." if len(line) > width else "")
