from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from novacron.auth.identity import Identity
from novacron.server.limits import FREE_PENDING, ConnectionLimits, PendingBudget

ALICE = Identity(kind="tls", user="alice", roles=frozenset({"operator"}), tenants=frozenset({"a"}))
BOB = Identity(kind="unix", user="bob", uid=1001, roles=frozenset({"viewer"}))
ROOT = Identity(kind="unix", user="root", uid=0, roles=frozenset({"admin"}), tenants=None)
TLS_ADMIN = Identity(kind="tls", user="ops", roles=frozenset({"admin"}), tenants=None)


def test_an_identity_is_refused_past_its_share_and_admitted_again_when_one_closes() -> None:
    limits = ConnectionLimits(total=100, per_identity=2)
    assert limits.admit(ALICE) is None and limits.admit(ALICE) is None
    why = limits.admit(ALICE)
    assert why == "tls:alice has 2 connections open, at most 2 per identity"
    assert limits.admit(BOB) is None  # others are not affected
    limits.release(ALICE)
    assert limits.admit(ALICE) is None
    assert limits.statistics() == {
        "open": 3,
        "identities": 2,
        "refused": 1,
        "max": 100,
        "max_per_identity": 2,
    }


def test_the_total_is_shared_by_every_identity() -> None:
    limits = ConnectionLimits(total=2, per_identity=10)
    assert limits.admit(ALICE) is None and limits.admit(BOB) is None
    assert limits.admit(TLS_ADMIN) == "the daemon has 2 connections open, at most 2"
    limits.release(BOB)
    assert limits.admit(TLS_ADMIN) is None


def test_a_local_admin_is_counted_but_never_refused() -> None:
    limits = ConnectionLimits(total=1, per_identity=1)
    for _ in range(3):
        assert limits.admit(ROOT) is None
    assert limits.held(ROOT) == 3
    assert limits.admit(ALICE) is not None  # the admin's connections fill the total
    assert limits.admit(TLS_ADMIN) is not None  # an admin over TLS is not exempt


def test_zero_means_no_limit_and_releasing_what_was_never_admitted_is_a_bug() -> None:
    limits = ConnectionLimits(total=0, per_identity=0)
    for _ in range(1000):
        assert limits.admit(ALICE) is None
    with pytest.raises(ValueError, match="no connection to release"):
        limits.release(BOB)
    with pytest.raises(ValueError, match="cannot be negative"):
        ConnectionLimits(total=-1, per_identity=0)


WHO = [ALICE, BOB, ROOT, TLS_ADMIN]


@given(
    total=st.integers(0, 6),
    per_identity=st.integers(0, 4),
    steps=st.lists(st.tuples(st.booleans(), st.integers(0, len(WHO) - 1)), max_size=60),
)
def test_admission_matches_the_rules_for_any_sequence(
    total: int, per_identity: int, steps: list[tuple[bool, int]]
) -> None:
    limits = ConnectionLimits(total, per_identity)
    held = [0] * len(WHO)
    for opening, i in steps:
        who = WHO[i]
        if not opening:
            if held[i]:
                limits.release(who)
                held[i] -= 1
            continue
        over_share = per_identity > 0 and held[i] >= per_identity
        over_total = total > 0 and sum(held) >= total
        refused = limits.admit(who)
        assert (refused is None) == (who.local_admin or not (over_share or over_total))
        if refused is None:
            held[i] += 1
        assert limits.held(who) == held[i]
        assert limits.statistics()["open"] == sum(held)
        # nobody but a local admin is ever past a limit because of an admission
        if not who.local_admin:
            assert not per_identity or held[i] <= per_identity


def test_the_pending_budget_takes_what_fits_beyond_each_connections_free_share() -> None:
    budget = PendingBudget(100_000)
    assert budget.settle(0, FREE_PENDING) == 0  # a connection's own share draws nothing
    a = budget.settle(0, FREE_PENDING + 60_000)
    assert a == 60_000 and budget.used == 60_000
    assert budget.settle(0, FREE_PENDING + 50_000) is None  # does not fit beside a
    assert budget.used == 60_000 and budget.refused == 1  # a refusal changes nothing
    # a local admin draws but is never refused
    admin = budget.settle(0, FREE_PENDING + 50_000, exempt=True)
    assert admin == 50_000 and budget.used == 110_000
    assert budget.settle(a, 10) == 0  # a's message completed: what it drew is back
    assert budget.settle(admin, 0, exempt=True) == 0
    assert budget.statistics() == {
        "bytes": 0,
        "peak_bytes": 110_000,
        "max_bytes": 100_000,
        "refused": 1,
    }
    unlimited = PendingBudget(0)
    assert unlimited.settle(0, 1 << 30) == (1 << 30) - FREE_PENDING  # counted, never refused
    with pytest.raises(ValueError, match="cannot be negative"):
        PendingBudget(-1)


@given(
    total=st.integers(0, 4 * FREE_PENDING),
    steps=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 3 * FREE_PENDING), st.booleans()),
        max_size=60,
    ),
)
def test_the_pending_budget_matches_the_rules_for_any_sequence(
    total: int, steps: list[tuple[int, int, bool]]
) -> None:
    budget = PendingBudget(total)
    drawn = [0, 0, 0, 0]
    for conn, pending, exempt in steps:
        wanted = max(0, pending - FREE_PENDING)
        fits = not total or exempt or budget.used - drawn[conn] + wanted <= total
        before = drawn[conn]
        got = budget.settle(before, pending, exempt)
        # a connection that shrinks or stays is never refused
        assert (got is not None) == (fits or wanted <= before)
        if got is not None:
            assert got == wanted
            drawn[conn] = got
        assert budget.used == sum(drawn)
        if total and not exempt and got is not None and got > before:
            assert budget.used <= total  # only a local admin ever takes it past the budget
