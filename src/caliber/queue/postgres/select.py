"""Whether a queue choice is the PostgreSQL queue's (:mod:`caliber.queue.registry`): a
``postgresql://`` (or ``postgres://``) URL, libpq's own form, e.g.
``postgresql://caliber@db.example:5432/caliber`` (a password in it is used, never shown; the
usual ``PGPASSWORD`` or ``~/.pgpass`` serve too). Light: no psycopg here; the backend module
imports it when the queue is opened.

The target's ``settings`` is the URL as given; its ``location`` the URL without a password.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from caliber.queue import url as urls

if TYPE_CHECKING:
    from caliber.queue.target import Choice, QueueTarget

KIND = "postgres"
SCHEMES = ("postgresql", "postgres")
INSTALL = ("Caliber's postgres extra (psycopg 3): '.[postgres]' from its clone, or its wheel "
           "with [postgres]")


def select(choice: Choice) -> QueueTarget | None:
    from caliber.queue.target import QueueTarget

    if choice.url is None or urls.scheme(choice.url) not in SCHEMES:
        return None
    parts = urls.split(choice.url, choice.url_from)
    if not parts.path.strip("/") and not parts.hostname and not parts.query:
        raise urls.bad(choice.url, choice.url_from,
                       "it names no server or database: postgresql://user@host:5432/db")
    return QueueTarget(kind=KIND, location=urls.shown(choice.url), settings=choice.url)
