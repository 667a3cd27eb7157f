"""The queue backend protocol: the domain verbs every queue (SQLite, Speckle, ...) implements.

A backend stores workloads and never imports user code. The pinion and the CLI talk to the
queue only through these verbs; one contract test suite
(``tests/contract/test_backend_contract.py``) runs against every backend. Every backend is also
a :class:`caliber.results.store.ResultsStore`: ``complete`` stores the Results in it in the
same step that finishes the workload. Backends are opened by kind through
:mod:`caliber.queue.registry`.


Life of a workload::

    put -> queued --claim--> running --complete--> completed | failed | cancelled
              |       |          |--release------> queued   (warm stop, secret mismatch)
              |       |          |--lease expires-> claimable again (attempts counted)
              |       |          '--cancel: asked; the pinion stops after the current task
              |       |                     (--now: it stops the running task at once);
              |       |                     it learns it at renew, or sooner at peek_cancel
              |       '--reset removes it; resetsecret replaces its run-secret
              '--cancel--> cancelled
    failed | cancelled --retry [resume]--> queued (a new attempt series, history kept)

Every end is told once (``CALIBER_NOTIFY_URL``, ``--notify``): by the pinion that ended it,
or, for a workload that ended with no pinion there (cancelled while queued or waiting, down a
chain, or failed by :meth:`QueueBackend.expire`), by a pinion of its name that takes it with
:meth:`QueueBackend.take_ended`.

Chains and start times (``workflow queue --after ID --not-before WHEN --priority N``; the
fields are signed with the run-secret, :func:`caliber.queue.secret.plan_fields`)::

    put (after A, B) -> waiting --A and B completed--> queued -> ...
                           |--A (or B) cancelled, or reset--> cancelled ("upstream A was
                           |      cancelled" / "... was reset"), and so on down the chain
                           '--A failed: stays waiting (A retried and completed lets it go on)

A queued workload whose ``not_before`` is in the future is not claimable until then
(:meth:`QueueBackend.next_start` says when the next one becomes so); claimable ones are taken
highest ``priority`` first, then oldest first. Cycles cannot form: a workload can only be put
after workloads already in the queue.

Errors: backends raise only :mod:`caliber.errors` exceptions (NotFoundError,
AmbiguousIdError, LeaseLostError, QueueStateError, QueueError).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from caliber.queue.summary import StoredSummary, WorkloadSummary

__all__ = ["Claim", "IdleWait", "QueueBackend", "StoredSummary", "WorkloadSummary"]

if TYPE_CHECKING:
    import datetime as dt

    from caliber.queue.lifecycle import ResumeGrant
    from caliber.queue.status import WorkloadStatus
    from caliber.queue.workload import Workload
    from caliber.results.model import Results
    from caliber.results.pruned import Pruned


@dataclass(frozen=True)
class Claim:
    """A pinion's hold on a running workload until ``expires_at``.

    ``token`` is new for every claim: verbs that take a Claim refuse with LeaseLostError when
    the workload is no longer held with this token (its lease ran out and another pinion took
    it, or it was reset), so a pinion that lost its lease can never complete it.
    """

    workload: Workload
    owner: str
    token: str
    expires_at: dt.datetime
    cancel_requested: str | None = None
    """Set by :meth:`QueueBackend.renew` when someone cancelled the workload (who): the
    pinion stops it after its current task and completes it with cancelled Results."""
    cancel_now: bool = False
    """With ``cancel_requested``: the cancel was ``--now``: the pinion stops the running task
    at once (SIGTERM, then SIGKILL after its grace) instead of after it."""


@runtime_checkable
class QueueBackend(Protocol):
    """What a queue must do. All times are UTC."""

    location: str
    """Where the queue is, for people: a file path or ``host project/model``."""

    # --- workloads ------------------------------------------------------------------------

    def put(self, workload: Workload) -> None:
        """Add a new workload: queued, or waiting when it runs after (``workload.after``)
        workloads of which one has not completed. NotFoundError (nothing stored) when one of
        those is not in the queue; QueueStateError when one is cancelled (it never would
        run)."""

    def restore(self, workload: Workload) -> None:
        """Add a workload exactly as another queue held it (status, attempts, lease, history,
        run-secret and marks, results id): ``caliber queue import``
        (:mod:`caliber.queue.archive`). Its stored attachments' blobs are stored first.
        Then the chains go on as this queue stands, in the same step, whichever of a chain's
        workloads comes first: a waiting one is queued when every workload it runs after
        has completed here, cancelled when one is cancelled (it waits on while one has not
        ended, or is not here yet); a completed one queues those waiting after it whose
        upstreams have all completed, a cancelled one cancels them, down the chain.
        QueueError when the id is taken; ConfigError from a queue that cannot take them."""

    def get(self, id_or_prefix: str) -> Workload:
        """One workload by id or unique id prefix (NotFoundError, AmbiguousIdError)."""

    def list_workloads(
        self,
        *,
        pinion: str | None = None,
        status: WorkloadStatus | None = None,
        limit: int | None = None,
        offset: int = 0,
        workflow: str | None = None,
    ) -> list[Workload]:
        """Workloads, oldest first, optionally filtered (by pinion, status and workflow name);
        pages with ``limit``/``offset``."""

    def list_summaries(
        self,
        *,
        pinion: str | None = None,
        status: WorkloadStatus | None = None,
        limit: int | None = None,
        offset: int = 0,
        workflow: str | None = None,
    ) -> list[StoredSummary]:
        """What :meth:`list_workloads` lists, as :class:`StoredSummary` records: the plain
        fields as stored, the signed ones untouched, the fast way to list (``caliber queue
        list``), each backend its own. The backend checks no run-secret: the queue API does
        (:func:`caliber.queue.api.check_summary`)."""

    def list_ended(self, limit: int) -> list[Workload]:
        """The workloads that ended last (completed, failed or cancelled, as they are now),
        latest end first, at most ``limit``: by the time of each one's last history entry
        (the end :func:`caliber.pinion.notify.ended_event` tells), however long ago each was
        queued, with or without Results. Bounded whatever the queue's size (the dashboard's
        list of ended workloads asks it at every look)."""

    def claim(self, pinion: str, owner: str, lease_seconds: float, key_id: str) -> Claim | None:
        """Atomically take the claimable workload for ``pinion`` with the highest priority,
        the oldest among equals, or None.

        Claimable: queued (never waiting) and its ``not_before``, if any, passed; or running
        with a lease that has run out (then the attempt of the dead pinion is recorded in its
        history). Workloads already found to be signed with a
        key other than ``key_id`` (see :meth:`release`) are passed over. The claim sets the
        status to running, counts one attempt and holds the workload for ``lease_seconds``.
        Never do two claims hold one workload at the same time.
        """

    def renew(self, claim: Claim, lease_seconds: float, *,
              progress: dict[str, Any] | None = None) -> Claim:
        """Extend the lease from now; LeaseLostError when the claim no longer holds.
        ``progress``: where the run is (the pinion's progress file's form, see
        :mod:`caliber.pinion.follow`): a backend whose readers are on other machines keeps
        it with the renewal when it writes one (``Workload.progress``); the local queue has
        the file."""

    def peek_cancel(self, claim: Claim) -> Claim:
        """The claim with the cancel the queue holds now (``cancel_requested``,
        ``cancel_now``), looked up between renewals: a read only, never a write, and the lease
        is not extended (``expires_at`` unchanged); LeaseLostError when the claim no longer
        holds. A pinion calls it about every second while a workload runs or is prepared, so
        that a local ``queue cancel --now`` stops the task within about a second. A backend
        for which a look costs a request to a server (Speckle) returns ``claim`` unchanged:
        its pinion learns a cancel at its next :meth:`renew`."""

    def release(self, claim: Claim, *, reason: str, mismatch_key_id: str | None = None) -> None:
        """Put a claimed workload back in the queue without counting the attempt.

        With ``mismatch_key_id`` the workload is marked as not signed with that key: the
        pinion never runs it, later claims with that key pass it over, and ``queue list``
        shows the mismatch until the workload is re-signed.
        """

    def complete(self, claim: Claim, results: Results) -> None:
        """Store the results and finish the workload (completed, failed or cancelled, from
        the results), in one step: either both happen or neither. LeaseLostError when the
        claim no longer holds (then nothing is stored). Completed: every workload waiting
        after it whose upstreams have now all completed becomes queued in the same step;
        cancelled: those waiting after it are cancelled, down the chain."""

    def fail(self, claim: Claim, reason: str, *, retry: bool) -> None:
        """Record a run that produced no Results (timeout, crash, killed child).

        With ``retry`` and attempts left the workload goes back to queued; otherwise it is
        failed with ``reason``. LeaseLostError when the claim no longer holds.
        """

    def expire(self, max_attempts: int) -> list[str]:
        """Fail running workloads whose lease ran out after ``max_attempts`` attempts; returns
        their ids. (Expired workloads with attempts left stay claimable.)"""

    def reset(self, id_or_prefix: str, *, force: bool = False) -> Workload:
        """Remove a workload (``queue reset``); a running one only with ``force``
        (QueueStateError otherwise). Workloads waiting after it are cancelled, down the chain
        ("upstream X was reset"). Returns what was removed."""

    def resetsecret(self, id_or_prefix: str, secret: str, key_id: str, *,
                    resume: ResumeGrant | None = None) -> Workload:
        """Replace the run-secret (``queue resetsecret``) and clear any mismatch mark; with
        ``resume``, store that grant too, when the workload still resumes from the Results it
        names (a grant made again with the new key)."""

    def prune(
        self,
        before: dt.datetime,
        *,
        workflow: str | None = None,
        pinion: str | None = None,
        dry_run: bool = False,
    ) -> Pruned:
        """Remove the finished workloads whose last change is older than ``before``, with
        their history and all their Results, and the Results of no workload in the queue
        that finished before it (``results prune``; :mod:`caliber.results.prune` says what
        goes and why). Never a queued or running workload, nor a Result of a workload that
        stays, nor a workload that one which has not ended (waiting, queued or running) runs
        after (``after``: its pinion takes their Results for ``$results``); once every one
        of those ended, it goes as any other. Never a workload whose end is still untold
        (:meth:`take_ended` has not given it to a pinion yet), with its Results: every end is
        told once, so it stays until a pinion of its name takes it, then goes as any other.
        With ``dry_run`` nothing changes. Returns what went (or would)."""

    def cancel(self, id_or_prefix: str, by: str, *, now: bool = False) -> Workload:
        """Cancel a workload (``queue cancel``): a queued or waiting one (or one whose
        pinion's lease ran out) becomes cancelled at once and never runs, and so do the
        workloads waiting after it, down the chain ("upstream X was cancelled"); a running
        one is marked, and its pinion learns it at its next :meth:`renew` or
        :meth:`peek_cancel` (``Claim.cancel_requested``; with
        ``now``, ``Claim.cancel_now`` too: a running one that was asked already is asked
        again, now). QueueStateError when it has finished."""

    def retry(self, id_or_prefix: str, by: str, *,
              resume: ResumeGrant | None = None) -> Workload:
        """Queue a failed or cancelled workload again (``queue retry``): a new attempt series,
        its history kept, its run-secret untouched, its mismatch marks cleared (every
        pinion checks it afresh). With ``resume`` (a grant made with the
        user's key for its last Results) its pinion reuses the completed tasks of those
        Results (``Workload.resume_from``, ``resume_signature``, ``resume_grant``); without,
        any earlier resume is dropped. A workload that runs after others is waiting again
        until they have all completed (queued at once when they have). QueueStateError
        otherwise (and with ``resume`` when it has no Results, or other ones than the grant
        names; and when a workload it runs after is no longer in the queue, or cancelled)."""

    def count_statuses(self, *, pinion: str | None = None,
                       workflow: str | None = None) -> dict[str, int]:
        """How many workloads (of ``pinion``) have each status: ``queue list``'s footer."""

    def get_results(self, id_or_prefix: str) -> Results:
        """Stored Results by id (the backend is also a ResultsStore): a resumed run's
        earlier Results."""

    def next_start(self, pinion: str) -> dt.datetime | None:
        """The earliest ``not_before`` still in the future among the queued (not waiting)
        workloads of ``pinion``, or None: an idle pinion waits no longer than until then, so
        that a workload queued for 22:00 starts at 22:00, not at its next look."""

    def take_ended(self, pinion: str, limit: int = 100) -> list[Workload]:
        """The workloads of ``pinion`` that ended with no pinion there to tell of it, oldest
        end first (at most ``limit``), each marked as told in the same step, so that no
        other caller ever gets it too (two pinions of one name share them out): cancelled
        while queued or waiting (:meth:`cancel`, and down a chain from :meth:`cancel`,
        :meth:`complete` with cancelled Results or :meth:`reset`), or failed because their
        lease ran out too often (:meth:`expire`). A workload a pinion ended itself
        (:meth:`complete`, :meth:`fail` with no attempt left) is told by that pinion and is
        never returned; one retried (:meth:`retry`) is told again when it ends again; one
        imported (:meth:`restore`) that had ended counts as told, and so does every one that
        had ended before the queue kept this mark. The pinion of that name sends their events
        (:mod:`caliber.pinion.notify`): every end of a workload is told once."""

    def wait_for_work(self, pinion: str, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a workload of ``pinion`` to become claimable;
        True when told one did (then claim at once), False when the time ran out. An idle
        pinion waits here between empty claims. The default (:class:`IdleWait`) sleeps; a
        queue that can tell (PostgreSQL: LISTEN/NOTIFY) wakes it at once. With ``timeout`` 0
        it only takes what the queue told already (a busy pinion's check, no waiting)."""

    def work_signal(self) -> int | None:
        """A file descriptor that becomes readable when the queue may have told of work (then
        :meth:`wait_for_work` with ``timeout`` 0 says whether it was for the pinion): a busy
        pinion with a free slot waits on it beside its children's pipes. None when this queue
        cannot tell, or is not listening (yet: :meth:`wait_for_work` starts it)."""

    def close(self) -> None:
        """Release connections."""


class IdleWait:
    """The default :meth:`QueueBackend.wait_for_work` (a backend inherits it): sleep, as a
    queue that cannot tell when work arrives must (the pinion claims again after it)."""

    def next_start(self, pinion: str) -> dt.datetime | None:
        """The earliest ``not_before`` still in the future among the queued (not waiting)
        workloads of ``pinion``, or None: an idle pinion waits no longer than until then, so
        that a workload queued for 22:00 starts at 22:00, not at its next look."""

    def wait_for_work(self, pinion: str, timeout: float) -> bool:
        time.sleep(max(timeout, 0.0))
        return False

    def work_signal(self) -> int | None:
        return None
