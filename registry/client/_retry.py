"""Retry decisions for registry requests, sans-IO: which failures are retried, and how long to wait.

containers/image retries nothing at the HTTP level (only ``copy`` retries whole pulls); tether retries
each request and resumes each blob, with exponential backoff and full jitter (AWS architecture blog,
"Exponential Backoff And Jitter"), honouring ``Retry-After`` (RFC 9110 10.2.3) on 429 and 503.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = ["RETRYABLE_STATUSES", "RetryPolicy", "parse_retry_after"]

#: Statuses worth another try at the same endpoint (RFC 9110: 408, 429, 500, 502, 503, 504).
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How hard one endpoint is tried before the next source (mirror or primary) is used.

    ``attempts`` counts tries of one request (or, for a blob, consecutive failed tries without
    progress) at one endpoint; ``connect_attempts`` the tries when the endpoint cannot be reached at
    all (a stopped mirror should cost little). Delays are ``uniform(0, min(max_delay,
    base_delay * 2**n))`` unless the server's ``Retry-After`` asks for longer (capped at ``max_delay``).
    """

    attempts: int = 5
    connect_attempts: int = 2
    base_delay: float = 0.5
    max_delay: float = 30.0
    connect_timeout: float = 30.0
    read_timeout: float = 60.0

    def delay(self, failures: int, *, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (1-based)."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** max(0, failures - 1)))
        wait = (rng or random).uniform(0, ceiling) if ceiling > 0 else 0.0
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_delay))
        return wait


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
