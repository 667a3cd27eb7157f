"""The remote queue's event codec: every kind of event written in a version message, typed,
with one meaning per key and a format version.

A version's message is a line for people followed by the machine part::

    claimed k3v9q2mxa7 (pasta) by mypinion@host:4242 · caliber/2 {"e":"claim","w":"k3v9q2mxa7",...}

``caliber/N`` names the format. This Caliber writes format :data:`FORMAT` and reads every
format up to it. A message of a newer format, or of an event kind this Caliber does not know,
decodes to :class:`Unknown`: the fold cannot apply it, so a pinion refuses to claim (a newer
Caliber wrote it: upgrade) and a listing says that it shows only what it understands.

The keys (format 2; each key means one thing in every event):

=====  ========================================  =====  ====================================
``e``  the event kind                            ``q``  a failed attempt is queued again
``w``  workload id                               ``x``  the error of a failed run
``p``  pinion name                               ``d``  the run folder on the pinion
``n``  workflow name                             ``r``  results id
``c``  when the workload was queued (ISO)        ``s``  run status: completed or failed
``b``  who queued it (user@host)                 ``f``  when the run finished (ISO)
``t``  claim token                               ``g``  delete even if running (force)
``o``  owner of a claim (pinion@host:pid)        ``z``  a new run-secret (re-signed)
``l``  lease in seconds                          ``u``  a checkpoint's cutoff time (ISO)
``k``  id of the key a pinion runs with          ``i``  a checkpoint's cutoff version id
``y``  a reason                                  ``h``  workloads in a checkpoint
``m``  key id found not to match (release)       ``a``  the maximum attempts (expire)
``v``  who asked (cancel, retry: user@host)   ``j``  ids a prune removes (a list)
``rs`` the Results signature a grant covers      ``rg`` a resume grant (retry, resign)
``cn`` a cancel that stops the running task now  ``pg`` where the run is (renew: task k of
                                                        n, since when)
``af`` ids of the workloads it runs after        ``nb`` no claim before this time (ISO, as
                                                        signed)
``pr`` its claim priority (higher first)         ``nt`` its own notification address
``te`` the ends it makes with no pinion there    ``tl`` ids of ended workloads a pinion
       are told by one that takes them                  takes to tell of them (``tell``)
=====  ========================================  =====  ====================================

``cancel`` and ``retry`` (a workload's life after it ends, ``caliber queue cancel/retry``)
came later in format 2: a Caliber from before them reads them as events of a newer Caliber
(:class:`Unknown`), so its pinions stop claiming from that queue until upgraded.

``prune`` (``caliber results prune``) came later in format 2 too, read the same way by a
Caliber from before it.

``rs`` and ``rg`` (``retry --resume`` and ``resetsecret`` of a resumed workload: the grant
that lets it reuse its Results, see :mod:`caliber.queue.resume`) came later in format 2: a
Caliber from before them ignores them (it would resume without checking; upgrade pinions).
``r``, ``rs`` and ``rg`` on ``put`` (``workflow queue --resume``) came later still: a Caliber
from before them ignores them and runs such a workload from the start.

``cn`` (``queue cancel --now``) and ``pg`` (the progress a pinion writes with the renewals
it writes anyway, for ``queue view``) came later in format 2: a Caliber from before them
ignores them (its pinions stop a cancelled workload after the current task, and its
``queue view`` shows no progress).

``af``, ``nb``, ``pr`` and ``nt`` on ``put`` (``workflow queue --after, --not-before,
--priority, --notify``) came later in format 2, each written only when set: a ``put``
without them is the one earlier Caliber wrote, and folds as it did. A Caliber from before
them ignores them, so its pinions would take such a workload as queued; but the four are
signed with the run-secret (:func:`caliber.queue.secret.plan_fields`), so its run-secret does
not check there and those pinions never run it (upgrade them).

``te`` and ``tell`` (every end of a workload is told once: ``QueueBackend.take_ended``) came
later in format 2. ``te`` is written on ``cancel``, ``expire`` and ``delete``, and on a
``done`` with status cancelled and a ``release`` or ``fail`` of a workload someone asked to
cancel: the ends such an event makes with no pinion there (the workload cancelled while
queued or waiting, failed by expire, the workloads down its chain) are *untold* in the fold
until a ``tell`` of a pinion of their name takes them. Events without it (every one an
earlier Caliber wrote) leave nothing untold: a log from before folds as it did, and no
pinion tells of an end it already had. A Caliber from before ignores ``te`` and reads
``tell`` as a newer Caliber's event (:class:`Unknown`; ``tell`` is written only by a pinion
that has something to tell): its pinions stop claiming from that queue until upgraded.

Format 1 (the first remote queues) differs only in ``expire`` (``m``: the maximum attempts),
``resign`` (``s``: the new run-secret) and ``delete`` (``f``: force); it is still read.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

FORMAT = 2
"""The event format this Caliber writes, and the newest it reads."""
SEPARATOR = " · "
MAX_TEXT = 300  # characters of a reason or error kept in a message
MAX_HUMAN = 200  # characters of the readable part of a message
_MARK = re.compile(r"caliber/(\d{1,6}) \{")
_FORMAT_1 = {"expire": {"a": "m"}, "resign": {"z": "s"}, "delete": {"g": "f"}}


@dataclass(frozen=True)
class Body:
    """The machine part of one event; subclasses name their kind and keys."""

    kind: ClassVar[str] = ""
    keys: ClassVar[dict[str, str]] = {}
    """field name -> message key"""


@dataclass(frozen=True)
class Put(Body):
    """Queue a workload; with ``results`` (``workflow queue --resume``), reusing their tasks
    as the grant (made with the user's key over the workload, ``results`` and
    ``signature``) allows. ``after``, ``not_before``, ``priority`` and ``notify`` are its
    signed scheduling fields (:func:`caliber.queue.secret.plan_fields`), as signed, each
    only when set."""

    kind = "put"
    keys: ClassVar[dict[str, str]] = {
        "workload": "w", "pinion": "p", "workflow": "n", "created_at": "c",
        "queued_by": "b", "results": "r", "signature": "rs", "grant": "rg", "after": "af",
        "not_before": "nb", "priority": "pr", "notify": "nt"}
    workload: str
    pinion: str = ""
    workflow: str = "?"
    created_at: str | None = None
    queued_by: str = ""
    results: str | None = None
    signature: str | None = None
    grant: str | None = None
    after: list[str] | None = None
    not_before: str | None = None
    """In its signed form (:func:`caliber.queue.secret.signed_time`)."""
    priority: int | None = None
    notify: str | None = None


@dataclass(frozen=True)
class Claim(Body):
    kind = "claim"
    keys: ClassVar[dict[str, str]] = {
        "workload": "w", "token": "t", "owner": "o", "lease": "l", "key": "k"}
    workload: str
    token: str
    owner: str = "?"
    lease: float = 0.0
    key: str | None = None


@dataclass(frozen=True)
class Renew(Body):
    kind = "renew"
    keys: ClassVar[dict[str, str]] = {"workload": "w", "token": "t", "lease": "l",
                                      "progress": "pg"}
    workload: str
    token: str
    lease: float = 0.0
    progress: dict[str, Any] | None = None
    """Where the run is, as the pinion's progress file says (:mod:`caliber.pinion.follow`)."""


@dataclass(frozen=True)
class Release(Body):
    kind = "release"
    keys: ClassVar[dict[str, str]] = {"workload": "w", "token": "t", "reason": "y", "mismatch": "m",
                                      "tell": "te"}
    workload: str
    token: str
    reason: str = ""
    mismatch: str | None = None
    tell: bool | None = None
    """As :attr:`Cancel.tell`."""


@dataclass(frozen=True)
class Done(Body):
    """A run finished and its results are the version's object (completed or failed)."""

    kind = "done"
    keys: ClassVar[dict[str, str]] = {
        "workload": "w", "token": "t", "results": "r", "workflow": "n", "pinion": "p",
        "status": "s", "finished_at": "f", "error": "x", "work_dir": "d", "tell": "te"}
    workload: str
    token: str
    results: str | None = None
    workflow: str = "?"
    pinion: str | None = None
    status: str = ""
    finished_at: str | None = None
    error: str | None = None
    work_dir: str | None = None
    tell: bool | None = None
    """As :attr:`Cancel.tell`."""


@dataclass(frozen=True)
class Fail(Body):
    kind = "fail"
    keys: ClassVar[dict[str, str]] = {"workload": "w", "token": "t", "reason": "y", "retry": "q",
                                      "tell": "te"}
    workload: str
    token: str
    reason: str | None = None
    retry: bool = False
    tell: bool | None = None
    """As :attr:`Cancel.tell`."""


@dataclass(frozen=True)
class Expire(Body):
    kind = "expire"
    keys: ClassVar[dict[str, str]] = {"workload": "w", "token": "t", "max_attempts": "a",
                                      "tell": "te"}
    workload: str
    token: str
    max_attempts: int = 1
    tell: bool | None = None
    """As :attr:`Cancel.tell`."""


@dataclass(frozen=True)
class Delete(Body):
    kind = "delete"
    keys: ClassVar[dict[str, str]] = {"workload": "w", "force": "g", "tell": "te"}
    workload: str
    force: bool = False
    tell: bool | None = None
    """As :attr:`Cancel.tell`."""


@dataclass(frozen=True)
class Resign(Body):
    kind = "resign"
    keys: ClassVar[dict[str, str]] = {"workload": "w", "secret": "z", "key": "k",
                                      "results": "r", "signature": "rs", "grant": "rg"}
    workload: str
    secret: str
    key: str = "?"
    results: str | None = None
    """With a grant: the Results it lets the workload reuse (still its ``resume_from``)."""
    signature: str | None = None
    grant: str | None = None


@dataclass(frozen=True)
class Cancel(Body):
    """Cancel a workload: a queued one at once, a running one when its pinion next renews."""

    kind = "cancel"
    keys: ClassVar[dict[str, str]] = {"workload": "w", "by": "v", "now": "cn", "tell": "te"}
    workload: str
    by: str = "?"
    now: bool | None = None
    """``--now``: the pinion stops the running task at once (None: after it)."""
    tell: bool | None = None
    """The ends it makes with no pinion there are untold until a pinion takes them
    (:class:`Tell`); None in a log from before that mark: told."""


@dataclass(frozen=True)
class Retry(Body):
    """Queue a failed or cancelled workload again; with ``results``, reusing their tasks as
    the grant (made with the user's key over the workload, ``results`` and ``signature``)
    allows."""

    kind = "retry"
    keys: ClassVar[dict[str, str]] = {"workload": "w", "by": "v", "results": "r",
                                      "signature": "rs", "grant": "rg"}
    workload: str
    by: str = "?"
    results: str | None = None
    signature: str | None = None
    grant: str | None = None


@dataclass(frozen=True)
class Prune(Body):
    """Remove finished workloads (with their Results) and Results of no workload, by id: a
    workload that is not finished at this point of the log stays (``caliber results
    prune``; :mod:`caliber.queue.speckle.prune`)."""

    kind = "prune"
    keys: ClassVar[dict[str, str]] = {"ids": "j"}
    ids: list[str]


@dataclass(frozen=True)
class Tell(Body):
    """A pinion takes ended workloads of its name to tell of their end (``take_ended``):
    each id whose end is untold at this point of the log is told by this ``tell`` (the
    first in the log wins, as claims do); its writer sends the events of those it won."""

    kind = "tell"
    keys: ClassVar[dict[str, str]] = {"pinion": "p", "token": "t", "ids": "tl"}
    pinion: str
    token: str
    ids: list[str]


@dataclass(frozen=True)
class SavedResults(Body):
    """Results stored without a queue run (``Workflow.run`` to the remote store)."""

    kind = "results"
    keys: ClassVar[dict[str, str]] = {
        "results": "r", "workload": "w", "workflow": "n", "pinion": "p", "status": "s",
        "finished_at": "f"}
    results: str
    workload: str | None = None
    workflow: str = "?"
    pinion: str | None = None
    status: str = ""
    finished_at: str | None = None


@dataclass(frozen=True)
class Checkpoint(Body):
    """The folded state of every event up to (``cutoff_at``, ``cutoff_version``) is the
    version's object (see :mod:`caliber.queue.speckle.checkpoint`)."""

    kind = "checkpoint"
    keys: ClassVar[dict[str, str]] = {"cutoff_at": "u", "cutoff_version": "i", "workloads": "h"}
    cutoff_at: str
    cutoff_version: str
    workloads: int = 0


@dataclass(frozen=True)
class Unknown(Body):
    """An event this Caliber cannot read: a newer format, or a kind it does not know."""

    kind = "unknown"
    name: str = "?"
    format: int = FORMAT

    def describe(self) -> str:
        return (f"the remote queue holds events written by a newer Caliber (format "
                f"{self.format}, event {self.name!r}); upgrade Caliber")


KINDS: dict[str, type[Body]] = {c.kind: c for c in (
    Put, Claim, Renew, Release, Done, Fail, Expire, Delete, Resign, SavedResults, Checkpoint,
    Cancel, Retry, Prune, Tell)}


@dataclass(frozen=True)
class Event:
    """One queue version: what happened (``body``), which version, its object, its time."""

    body: Body
    version_id: str
    object_id: str
    at: dt.datetime
    """The version's createdAt: server time."""

    @property
    def order(self) -> tuple[dt.datetime, str]:
        return (self.at, self.version_id)


def clip(text: str | None, limit: int = MAX_TEXT) -> str | None:
    if text is None:
        return None
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def encode(body: Body) -> dict[str, Any]:
    """The machine part of ``body`` (format :data:`FORMAT`), without empty values."""
    values = asdict(body)
    data = {key: values[name] for name, key in body.keys.items() if values[name] is not None}
    return {"e": body.kind, **data}


def message(human: str, body: Body) -> str:
    """The version message: the readable part, then the machine part."""
    readable = _MARK.sub(lambda m: f"caliber/ {m.group(1)} {{", clip(human, MAX_HUMAN) or "")
    machine = json.dumps(encode(body), separators=(",", ":"), ensure_ascii=False,
                         sort_keys=True)
    return f"{readable}{SEPARATOR}caliber/{FORMAT} {machine}"


def decode(data: Any, version: int = FORMAT) -> Body | None:
    """The event in a message's machine part; None when it is not one this format can
    hold (damaged); :class:`Unknown` when it was written by a newer Caliber."""
    if not isinstance(data, dict) or not isinstance(data.get("e"), str):
        return None
    name = data["e"]
    cls = KINDS.get(name)
    if version > FORMAT or cls is None:
        return Unknown(name=name, format=version)
    renamed = _FORMAT_1.get(name, {}) if version == 1 else {}
    values: dict[str, Any] = {}
    for f in fields(cls):
        key = renamed.get(cls.keys[f.name], cls.keys[f.name])
        if key in data and data[key] is not None:
            values[f.name] = data[key]
    try:
        body = cls(**values)
    except TypeError:  # a required value is missing
        return None
    return body if _typed(body) else None


def _typed(body: Body) -> bool:
    """Whether every value has the type its field says (a hand-edited message may lie)."""
    return all(_fits(getattr(body, f.name), str(f.type)) for f in fields(body))


def _fits(value: Any, kind: str) -> bool:
    if value is None:
        return "None" in kind
    kind = kind.removesuffix(" | None")
    if kind.startswith("dict"):
        return isinstance(value, dict)
    if kind.startswith("str"):
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind in ("int", "float"):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "list[str]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return True


def parse(version_id: str, object_id: str, text: str, at: dt.datetime) -> Event | None:
    """The event in a version message, or None (a version that is not a queue event)."""
    found = _MARK.search(text)
    if found is None:
        return None
    try:
        data = json.loads(text[found.end() - 1:])
    except ValueError:
        return None
    body = decode(data, int(found.group(1)))
    if body is None:
        return None
    return Event(body=body, version_id=version_id, object_id=object_id, at=at)
