"""Bearer tokens: the token endpoint's answer and a per-scope cache, sans-IO (the clock is injected).

Token responses follow the distribution token spec (docs/spec/auth/token.md): ``token`` or
``access_token``, ``expires_in`` (default 60 s; containers/image docker_client.go raises anything
shorter to 60 s), ``issued_at``. The cache refreshes a token before it expires (``refresh_margin``)
rather than letting a long pull run into 401s, and a token found stale by the registry is dropped only
if it is still the cached one (another task may already have refreshed it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from tether.registry.errors import AuthenticationError

__all__ = ["MIN_TOKEN_LIFETIME", "BearerToken", "TokenCache", "parse_token_response"]

#: containers/image docker_client.go ``minimumTokenLifetimeSeconds``.
MIN_TOKEN_LIFETIME = 60.0


@dataclass(frozen=True)
class BearerToken:
    """A token and how long it lives (seconds) from when it was received."""

    value: str
    lifetime: float
    refresh_token: str | None = None

    def __repr__(self) -> str:  # never print the secret
        return f"BearerToken(<redacted>, lifetime={self.lifetime})"


def parse_token_response(body: bytes, *, what: str) -> BearerToken:
    """The token endpoint's JSON answer; :class:`AuthenticationError` naming ``what`` if unusable."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise AuthenticationError(f"{what}: the token server's answer is not JSON") from None
    if not isinstance(obj, dict):
        raise AuthenticationError(f"{what}: the token server's answer is not a JSON object")
    value = obj.get("token") or obj.get("access_token")
    if not isinstance(value, str) or not value:
        raise AuthenticationError(f"{what}: the token server's answer has no token")
    expires_in = obj.get("expires_in")
    lifetime = float(expires_in) if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) else 0.0
    refresh = obj.get("refresh_token")
    return BearerToken(
        value=value,
        lifetime=max(lifetime, MIN_TOKEN_LIFETIME),
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
    )


class TokenCache:
    """Tokens by key (realm, service, scopes, identity), each valid until shortly before it expires."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, refresh_margin: float = 0.1) -> None:
        """``refresh_margin``: the fraction of a token's lifetime (at least 5 s) before expiry at which
        it is considered stale and fetched again."""
        self._clock = clock
        self._margin = refresh_margin
        self._tokens: dict[Hashable, tuple[str, float]] = {}

    def get(self, key: Hashable) -> str | None:
        """The cached token for ``key`` if it is not about to expire."""
        entry = self._tokens.get(key)
        if entry is None:
            return None
        value, stale_at = entry
        if self._clock() >= stale_at:
            del self._tokens[key]
            return None
        return value

    def put(self, key: Hashable, token: BearerToken, *, received_at: float | None = None) -> None:
        """Cache ``token``; ``received_at`` is the clock value when the request for it was sent."""
        start = self._clock() if received_at is None else received_at
        margin = max(5.0, token.lifetime * self._margin)
        self._tokens[key] = (token.value, start + max(0.0, token.lifetime - margin))

    def invalidate(self, key: Hashable, value: str) -> None:
        """Drop the token for ``key`` if it is still ``value`` (the one a registry refused)."""
        entry = self._tokens.get(key)
        if entry is not None and entry[0] == value:
            del self._tokens[key]

    def __len__(self) -> int:
        return len(self._tokens)
