"""Whether a queue choice is an in-memory queue's (:mod:`caliber.queue.registry`): a
``memory://NAME`` URL. Every queue of one name is the same queue within one process (and
none is shared with another process: a pinion started as a command sees its own).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from caliber.queue import url as urls

if TYPE_CHECKING:
    from caliber.queue.target import Choice, QueueTarget

KIND = "memory"
SCHEMES = ("memory",)
INSTALL = None


def select(choice: Choice) -> QueueTarget | None:
    from caliber.queue.target import QueueTarget

    if choice.url is None or urls.scheme(choice.url) not in SCHEMES:
        return None
    parts = urls.split(choice.url, choice.url_from)
    name = (parts.netloc + parts.path).strip("/")
    if not name or parts.query or parts.fragment or "@" in parts.netloc:
        raise urls.bad(choice.url, choice.url_from, "use memory://NAME (letters, digits)")
    return QueueTarget(kind=KIND, location=f"memory://{name}", settings=name)
