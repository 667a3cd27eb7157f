"""Whether a queue choice is the local queue's (:mod:`caliber.queue.registry`): a
``sqlite:`` URL, or any choice without a URL that no other backend took (the default, asked
last). Light: no pydantic, nothing of the backend.

URLs: ``sqlite:///abs/path/caliber.db`` (an absolute path: three slashes, as ``file:///``;
four, as SQLAlchemy writes it, serve too),
``sqlite:relative/path.db`` or ``sqlite:~/caliber.db`` (relative to the current folder, or
to your home; made absolute when the target is resolved). A host (``sqlite://host/...``) is
refused: the file must be on this machine.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

from caliber.queue import url as urls

if TYPE_CHECKING:
    from caliber.queue.target import Choice, QueueTarget

KIND = "sqlite"
SCHEMES = ("sqlite",)
INSTALL = None  # Python's own sqlite3
_DRIVE = re.compile(r"/[A-Za-z]:[/\\]")  # sqlite:///C:/... on Windows


def select(choice: Choice) -> QueueTarget | None:
    from caliber.queue.target import QueueTarget, local_target

    if choice.url is None:
        return local_target()
    if urls.scheme(choice.url) not in SCHEMES:
        return None
    path = database(choice.url, choice.url_from)
    return QueueTarget(kind=KIND, location=str(path), settings=path)


def database(url: str, url_from: str) -> Path:
    """The database file a ``sqlite:`` URL names, absolute (ConfigError naming the URL)."""
    parts = urls.split(url, url_from)
    if parts.netloc:
        raise urls.bad(url, url_from, f"{parts.netloc!r} is a host; a sqlite URL names a file "
                       "on this machine: sqlite:///abs/path/caliber.db or sqlite:relative/path")
    if parts.query or parts.fragment:
        raise urls.bad(url, url_from, "a sqlite URL takes no ?query or #fragment")
    text = unquote(parts.path)
    if text.startswith("//"):  # sqlite:////abs/path, as SQLAlchemy writes an absolute one
        text = "/" + text.lstrip("/")
    if os.name == "nt" and _DRIVE.match(text):
        text = text[1:]
    if not text.strip() or text.endswith(("/", "\\")):
        raise urls.bad(url, url_from, "it names no file: sqlite:///abs/path/caliber.db or "
                       "sqlite:relative/path")
    return Path(text).expanduser().absolute()
