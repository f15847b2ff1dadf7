"""Retry decisions for registry requests, sans-IO: which failures are retried, and how long to wait.

containers/image retries nothing at the HTTP level (only ``copy`` retries whole pulls); tether retries
each request and resumes each blob, with exponential backoff and full jitter (AWS architecture blog,
"Exponential Backoff And Jitter"), honouring ``Retry-After`` (RFC 9110 10.2.3) on 429 and 503.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = ["RETRYABLE_STATUSES", "RetryPolicy", "SpeedFloor", "parse_retry_after"]

#: Statuses worth another try at the same endpoint (RFC 9110: 408, 429, 500, 502, 503, 504).
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How hard one endpoint is tried before the next source (mirror or primary) is used.

    ``attempts`` counts tries of one request (or, for a blob, consecutive failed tries without
    progress) at one endpoint; ``connect_attempts`` the tries when the endpoint cannot be reached at
    all (a stopped mirror should cost little). Delays are ``uniform(0, min(max_delay,
    base_delay * 2**n))`` unless the server's ``Retry-After`` asks for longer (capped at ``max_delay``).

    Outages: when the *last* endpoint left refuses or resets connections, it is not given up after those
    attempts but retried for ``outage_timeout`` seconds from its first failure, at most ``outage_max_delay``
    apart, and each blob then resumes from its offset. 60 s covers a registry process or pod being restarted
    (distribution, Harbor, Quay restart in seconds; a Kubernetes rollout ~30 s) without hiding a registry that
    is gone: ``tether-bound-sync.service`` retries the whole sync anyway, and an interactive pull shows no
    progress meanwhile. Mirrors keep failing over fast (``connect_attempts``): the primary is still to come.

    Stalls, as curl's ``--speed-limit``/``--speed-time``: a blob whose transfer brings fewer than
    ``low_speed_limit`` bytes per second over ``low_speed_time`` seconds is abandoned and resumed from its
    offset (a failure even if it moved); ``attempts`` such failures give the endpoint up. A read timeout
    alone never ends a server that sends one byte every few seconds. ``low_speed_limit=0`` turns it off.
    """

    attempts: int = 5
    connect_attempts: int = 2
    base_delay: float = 0.5
    max_delay: float = 30.0
    connect_timeout: float = 30.0
    read_timeout: float = 60.0
    outage_timeout: float = 60.0
    outage_max_delay: float = 5.0
    low_speed_limit: int = 1024
    low_speed_time: float = 30.0

    def outage_delay(self, failures: int, *, rng: random.Random | None = None) -> float:
        """Seconds to wait between tries of an endpoint in an outage (short: a restart should be noticed soon)."""
        return min(self.delay(failures, rng=rng), self.outage_max_delay)

    def speed_floor(self, now: float) -> SpeedFloor | None:
        """A fresh :class:`SpeedFloor` for a transfer starting at ``now``, or None when the limit is off."""
        if self.low_speed_limit <= 0 or self.low_speed_time <= 0:
            return None
        return SpeedFloor(self.low_speed_limit, self.low_speed_time, start=now)

    def delay(self, failures: int, *, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (1-based)."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** min(max(0, failures - 1), 32)))
        wait = (rng or random).uniform(0, ceiling) if ceiling > 0 else 0.0
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_delay))
        return wait


class SpeedFloor:
    """curl's low-speed check, sans-IO: bytes counted per whole second; the transfer is too slow once the
    last ``window`` seconds brought fewer than ``limit * window`` bytes (never judged before one window).

    :meth:`deadline` is when that happens if nothing more arrives: the reader waits for its next chunk
    until then, so a transfer that sends nothing at all is caught too.
    """

    def __init__(self, limit: int, window: float, *, start: float) -> None:
        self.limit = limit
        self.window = window
        self.start = start
        self._seconds: deque[list[int]] = deque()   # [second, bytes], oldest first

    def add(self, now: float, count: int) -> None:
        """``count`` bytes arrived at ``now``."""
        second = int(now)
        if self._seconds and self._seconds[-1][0] == second:
            self._seconds[-1][1] += count
        else:
            self._seconds.append([second, count])
        while self._seconds and self._seconds[0][0] + 1 + self.window <= now:
            self._seconds.popleft()

    def deadline(self) -> float:
        """The time the floor is broken at unless more bytes arrive before."""
        need = self.limit * self.window
        total = sum(count for _, count in self._seconds)
        earliest = self.start + self.window
        if total < need:
            return earliest
        # bytes of second s count until s + 1 + window: drop them oldest first until the rest is too little
        for second, count in self._seconds:
            total -= count
            if total < need:
                return max(earliest, second + 1 + self.window)
        return earliest  # pragma: no cover - need > 0, so the loop returns

    def received(self) -> int:
        """Bytes counted in the current window."""
        return sum(count for _, count in self._seconds)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from ``now``: delta-seconds or an HTTP-date; ``None`` if absent/invalid."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
