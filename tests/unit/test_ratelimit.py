"""Token buckets per principal, on a clock the test drives."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from novacron.auth.identity import Identity
from novacron.auth.ratelimit import RateLimiter
from novacron.errors import RateLimited

ALICE = Identity(kind="tls", user="alice", tenants=frozenset({"acme"}))
BOB = Identity(kind="tls", user="bob", tenants=frozenset({"acme"}))
ROOT = Identity(kind="unix", user="root", roles=frozenset({"admin"}), tenants=None)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_rate_per_principal() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=10, burst=5, clock=clock)
    for _ in range(5):
        limiter.check(ALICE)
    with pytest.raises(RateLimited) as err:
        limiter.check(ALICE)
    assert err.value.details == {"retry_after_s": 0.1}
    limiter.check(BOB)  # buckets are per principal
    clock.now = 0.1
    limiter.check(ALICE)
    for _ in range(1000):
        limiter.check(ROOT)  # local admins are not limited


@given(st.lists(st.floats(0, 1), min_size=1, max_size=200))
def test_never_more_than_burst_plus_rate_times_elapsed(gaps: list[float]) -> None:
    clock = Clock()
    limiter = RateLimiter(rate=20, burst=10, clock=clock)
    allowed = 0
    for gap in gaps:
        clock.now += gap
        try:
            limiter.check(ALICE)
            allowed += 1
        except RateLimited:
            pass
    assert allowed <= 10 + 20 * clock.now + 1e-9
