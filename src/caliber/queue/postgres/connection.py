"""Connecting to the PostgreSQL queue, errors as Caliber's, and reconnecting.

psycopg 3 is the ``postgres`` extra: it is imported here, and a missing one says which extra
to install. Connections are in autocommit mode, their ``search_path`` the schema ``caliber``
(:mod:`caliber.queue.postgres.schema`); transactions are begun and ended by the backend.

A lost connection (the server restarted, the network dropped) raises :class:`ConnectionLost`,
a :class:`caliber.errors.QueueError`: the verbs a pinion lives by try again
(:func:`retrying`), reconnecting with a capped back-off and saying so in one line on stderr;
any other verb reconnects when it is next called.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from caliber.errors import ConfigError, QueueError
from caliber.queue.postgres.schema import SCHEMA

if TYPE_CHECKING:
    import psycopg

T = TypeVar("T")

CONNECT_TIMEOUT = 10  # seconds a connection attempt may take
RECONNECT_FIRST = 0.2  # seconds before the first attempt again ...
RECONNECT_CAP = 5.0  # ... doubling up to this many seconds between attempts ...
RECONNECT_FOR = 300.0  # ... for at most this many seconds, then the verb raises QueueError
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
             "keepalives_count": 3}  # a dead server or network is found within ~1 minute


INSTALL_HINT = "pip install 'psycopg[binary]>=3.1,<4'"  # the postgres extra's range


class ConnectionLost(QueueError):
    """The connection to the PostgreSQL server was lost (trying again may help)."""


def driver() -> Any:
    """The psycopg module; ConfigError naming the extra when it is not installed."""
    try:
        import psycopg
    except ImportError as exc:
        raise ConfigError(
            f"the PostgreSQL queue needs psycopg 3 (the postgres extra): {INSTALL_HINT} "
            f"({exc})") from None
    return psycopg


def display(url: str) -> str:
    """``url`` for people: ``postgresql://user@host:port/database``, never the password."""
    psycopg = driver()
    try:
        parts = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"not a PostgreSQL URL ({_line(exc)})") from None
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{parts.get('host', '')}{port}/{parts.get('dbname', '')}"


def connect(url: str, where: str, name: str = "caliber") -> psycopg.Connection[Any]:
    """A new autocommit connection to the queue's database, named ``name`` (the server's
    ``pg_stat_activity`` shows it); ConnectionLost when the server cannot be reached,
    QueueError when it refuses."""
    pg = driver()
    try:
        conn: psycopg.Connection[Any] = pg.connect(
            url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
            application_name=name, options=f"-c search_path={SCHEMA}", **KEEPALIVE)
    except pg.OperationalError as exc:
        raise ConnectionLost(f"cannot connect to the PostgreSQL queue {where}: "
                             f"{_line(exc)}") from exc
    except pg.Error as exc:
        raise QueueError(f"cannot open the PostgreSQL queue {where}: {_line(exc)}") from exc
    return conn


def error(exc: Exception, conn: Any, doing: str, where: str) -> QueueError:
    """A psycopg error as Caliber's: ConnectionLost when the connection is gone."""
    if conn is None or conn.closed or conn.broken:
        return ConnectionLost(f"lost the connection to the PostgreSQL queue {where} "
                              f"({_line(exc)})")
    return QueueError(f"{doing} the PostgreSQL queue {where}: {_line(exc)}")


class Outage:
    """Whether a backend's connection is lost now: said once per outage, not per attempt."""

    def __init__(self) -> None:
        self.since: float | None = None


def retrying(call: Callable[[], T], outage: Outage, *, patience: float = RECONNECT_FOR,
             again: Callable[[ConnectionLost], None] | None = None) -> T:
    """``call()``, called again after a lost connection (each call reconnects) with a back-off
    of :data:`RECONNECT_FIRST` doubling to :data:`RECONNECT_CAP` seconds, for at most
    ``patience`` seconds (then the QueueError is raised); the first loss of an ``outage``
    is said in one line on stderr. ``again`` is told each loss before the next call."""
    started = time.monotonic()
    wait = RECONNECT_FIRST
    while True:
        try:
            result = call()
        except ConnectionLost as exc:
            if outage.since is None:
                outage.since = time.monotonic()
                say(f"{exc}; reconnecting (trying for up to {RECONNECT_FOR:g} s)")
            if time.monotonic() + wait - started > patience:
                raise
            if again is not None:
                again(exc)
            time.sleep(wait)
            wait = min(wait * 2, RECONNECT_CAP)
            continue
        outage.since = None
        return result


def say(line: str) -> None:
    """One line on stderr (a pinion's own output goes there too)."""
    print(f"caliber: {line}", file=sys.stderr, flush=True)


def _line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
