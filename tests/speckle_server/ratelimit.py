"""Rate limits modelled on speckle-server's ``BurstyRateLimiter`` (fixed windows).

Real source: modules/core/utils/ratelimiter.ts (the limits, ``getActionForPath``) and
modules/core/rest/ratelimiter.ts (the middleware). ``getActionForPath`` looks the *literal*
path up in its table, so ``POST /graphql`` has its own limit while the object endpoints (whose
table keys hold ``:streamId``) all count against ``ALL_REQUESTS``; version creates are limited
in their resolver (``COMMIT_CREATE``, per user).

A request first takes a point from the regular window (``points`` per ``window`` seconds); when
that is used up it takes one from the burst window (``burst`` per ``burst_window`` seconds); when
both are used up it is refused. Refused requests still consume points, as on the real server.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True)
class Limit:
    """``points`` per ``window`` seconds, then ``burst`` more per ``burst_window`` seconds."""

    points: int
    burst: int
    window: float = 1.0
    burst_window: float = 60.0


@dataclass(frozen=True)
class RateLimit:
    """Which limits the server enforces; ``None`` switches one off.

    ``version_create`` guards ``versionMutations.create`` (a GraphQL error with HTTP 429, no
    ``Retry-After``); ``graphql`` guards every ``POST /graphql`` and ``rest`` every object
    endpoint (HTTP 429 with ``Retry-After``), as the real server's middleware does.
    """

    version_create: Limit | None = None
    graphql: Limit | None = None
    rest: Limit | None = None

    @classmethod
    def speckle_defaults(cls) -> RateLimit:
        """The real server's defaults (``modules/core/utils/ratelimiter.ts``)."""
        return cls(version_create=Limit(1, 100), graphql=Limit(50, 200), rest=Limit(500, 2000))


@dataclass
class Verdict:
    """Outcome of one consumed point."""

    allowed: bool
    remaining: int
    retry_after: float  # seconds until a point is free again (0 when allowed)

    def breach_headers(self) -> dict[str, str]:
        """``addRateLimitHeadersToResponseFactory``: ``Retry-After`` is ``msBeforeNext / 1000``
        as JavaScript prints it (``0.734``, ``1``: not always a whole number), with the reset
        time and the meditation link."""
        ms = max(1, math.ceil(self.retry_after * 1000))
        reset = datetime.now(UTC) + timedelta(milliseconds=ms)
        return {
            "Retry-After": str(ms // 1000) if ms % 1000 == 0 else str(ms / 1000),
            "X-RateLimit-Reset": reset.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "X-Speckle-Meditation": "https://http.cat/429",
        }


class RateLimiter:
    """Thread-safe fixed-window counters keyed by (action, source)."""

    def __init__(self, config: RateLimit) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str, bool], list[float]] = {}  # key -> [start, count]

    def consume(self, action: str, source: str) -> Verdict | None:
        """Take one point of ``action`` for ``source``; ``None`` when that limit is off."""
        limit: Limit | None = getattr(self.config, action)
        if limit is None:
            return None
        now = time.monotonic()
        with self._lock:
            used, regular_wait = self._take(action, source, False, limit.window, now)
            if used < limit.points:
                return Verdict(True, limit.points - used - 1, 0.0)
            burst_used, burst_wait = self._take(action, source, True, limit.burst_window, now)
            if burst_used < limit.burst:
                return Verdict(True, 0, 0.0)
            return Verdict(False, 0, min(regular_wait, burst_wait))

    def _take(
        self, action: str, source: str, burst: bool, window: float, now: float
    ) -> tuple[int, float]:
        """Count one point in a window; return (points used before it, seconds left)."""
        entry = self._windows.setdefault((action, source, burst), [now, 0])
        if now - entry[0] >= window:
            entry[0], entry[1] = now, 0
        used = int(entry[1])
        entry[1] += 1
        return used, entry[0] + window - now

    def reset(self) -> None:
        """Forget every counter (a fresh minute for everyone)."""
        with self._lock:
            self._windows.clear()
