"""A cap on the bytes per second every blob stream of one run receives together (``--limit-rate``).

:class:`TokenBucket` is the sans-IO half: the generic cell rate algorithm (GCRA, ITU-T I.371's "virtual
scheduling"), which keeps one number, the theoretical arrival time, instead of a token count refilled on a
timer. Every stream that received ``n`` bytes asks it how long to wait before reading more; the waits of all
streams add up on the one shared schedule, so the run as a whole never averages more than ``rate`` bytes per
second, however many streams there are, and at most ``burst`` bytes come early.

A stream that waits does not read its socket; TCP flow control then holds the registry back, so the link
carries what the reader takes (after the kernel's receive buffer, a few MB, has filled once).

:class:`RateLimit` is the trio half the blob reader awaits. curl's ``--limit-rate`` (docs/cmdline-opts/
limit-rate.d) is the model, and its units: :func:`parse_rate` reads ``10M`` as 10 MiB/s (curl's suffixes
k, M, G, T, P are 1024 based, curl#7439).
"""

from __future__ import annotations

import re
from typing import Final

import trio

__all__ = ["RateLimit", "TokenBucket", "parse_rate"]

#: How early the schedule lets bytes come, in seconds of the rate: 50 ms smooths trio's timer granularity
#: (~1 ms) and HTTP/1.1's 64 KiB reads without letting a second's average exceed the rate by more than 5%.
BURST_SECONDS: Final = 0.05
#: The least burst: one read of the HTTP layer (h11 reads 64 KiB), or every read would wait.
MIN_BURST: Final = 64 * 1024
#: Seconds of the rate a blob connection's kernel receive buffer (SO_RCVBUF) holds under a limit, and its bounds:
#: enough for one stream to reach the rate at ~100 ms of round trip, little enough that the buffers filling
#: at the start do not show on the link as a burst (Linux autotuning grows them to several MB each).
RECEIVE_SECONDS: Final = 0.05
RECEIVE_BOUNDS: Final = (128 * 1024, 8 << 20)

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)\s*$", re.IGNORECASE)
_UNITS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_rate(text: str) -> int:
    """Bytes per second as curl's ``--limit-rate`` spells them: ``500000``, ``200K``, ``10M``, ``1.5G``
    (suffixes 1024 based). :class:`ValueError` for anything else, zero included (no limit is no option)."""
    match = _RATE.match(text)
    if match is None:
        raise ValueError(f"invalid rate {text!r}: expected bytes per second, e.g. 500K, 10M or 1G")
    rate = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if rate <= 0:
        raise ValueError(f"invalid rate {text!r}: must be at least 1 byte per second")
    return rate


class TokenBucket:
    """The schedule of a byte rate (GCRA; see the module docstring). Not thread-safe: one trio thread."""

    def __init__(self, rate: float, *, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("a rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else max(MIN_BURST, self.rate * BURST_SECONDS)
        self._tat = float("-inf")   # theoretical arrival time of the next byte

    def delay(self, now: float, n: int) -> float:
        """Take ``n`` bytes received at ``now``: the seconds to wait before receiving more (0 when on time)."""
        self._tat = max(self._tat, now) + n / self.rate
        return max(0.0, self._tat - now - self.burst / self.rate)


class RateLimit:
    """One run's byte rate, shared by every blob stream of every registry client of the run."""

    def __init__(self, rate: float, *, burst: float | None = None) -> None:
        self.bucket = TokenBucket(rate, burst=burst)

    @property
    def rate(self) -> float:
        """Bytes per second."""
        return self.bucket.rate

    @property
    def receive_buffer(self) -> int:
        """The SO_RCVBUF blob connections get under this limit (see :data:`RECEIVE_SECONDS`)."""
        low, high = RECEIVE_BOUNDS
        return int(min(high, max(low, self.rate * RECEIVE_SECONDS)))

    async def take(self, n: int) -> float:
        """Account ``n`` bytes just received; sleep as long as the schedule says. Returns the seconds slept."""
        wait = self.bucket.delay(trio.current_time(), n)
        if wait > 0:
            await trio.sleep(wait)
        return wait
