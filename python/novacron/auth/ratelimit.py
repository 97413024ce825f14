"""Per-identity rate limiting: a token bucket per principal.

Every call takes a token; tokens come back at ``rate`` per second up to ``burst``.
A caller with no token left gets ``rate_limited`` with the time until the next one.
Local administrators (root, the daemon's user, the socket group) are not limited: they
can stop the daemon anyway. Idle buckets are forgotten so the table stays small.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from novacron.auth.identity import Identity
from novacron.errors import RateLimited

FORGET_AFTER_S = 300.0


class RateLimiter:
    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # principal -> (tokens, stamp)
        self._swept = clock()
        self.refused = 0

    @staticmethod
    def exempt(identity: Identity) -> bool:
        return identity.local_admin

    def check(self, identity: Identity) -> None:
        """Takes a token for ``identity`` or raises :class:`RateLimited`."""
        if self.rate <= 0 or self.exempt(identity):
            return
        now = self._clock()
        tokens, stamp = self._buckets.get(identity.principal, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        if tokens < 1.0:
            self._buckets[identity.principal] = (tokens, now)
            self.refused += 1
            wait = (1.0 - tokens) / self.rate
            raise RateLimited(
                f"{identity.user} is over its rate ({self.rate:g} calls/s); retry in {wait:.3f} s",
                {"retry_after_s": round(wait, 3)},
            )
        self._buckets[identity.principal] = (tokens - 1.0, now)
        if now - self._swept > FORGET_AFTER_S:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        full_after = self.burst / self.rate
        self._buckets = {p: (t, s) for p, (t, s) in self._buckets.items() if now - s < full_after}
        self._swept = now
