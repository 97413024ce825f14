"""Stall detection at round boundaries, and the op.progress fields."""

from __future__ import annotations

from novacron.migration.options import MigrateOptions
from novacron.migration.progress import StallWatch, progress, reduction
from novacron.migration.relay import RelayStats


def rounds(watch: StallWatch, remaining: list[int], first: int = 1) -> list[str | None]:
    out = []
    for n, left in enumerate(remaining, start=first):
        decision = watch.observe({"memory_iteration": n, "memory_remaining": left})
        out.append(decision.action if decision else None)
    return out


def test_a_converging_migration_is_left_alone() -> None:
    watch = StallWatch(MigrateOptions())
    assert rounds(watch, [900, 500, 250, 120, 60, 30, 10]) == [None] * 7


def test_samples_within_a_round_decide_nothing() -> None:
    watch = StallWatch(MigrateOptions(stall_rounds=2))
    for _ in range(20):
        assert watch.observe({"memory_iteration": 3, "memory_remaining": 500}) is None


def test_stall_raises_downtime_up_to_the_cap_then_cancels() -> None:
    watch = StallWatch(
        MigrateOptions(max_downtime_ms=300, max_downtime_cap_ms=1000, stall_rounds=2)
    )
    flat = [500] * 12
    actions = rounds(watch, flat)
    decided = [a for a in actions if a]
    assert decided == ["raise_downtime", "raise_downtime", "cancel"]
    assert [d.downtime_ms for d in watch.decisions] == [600, 1000, 1000]
    assert "cap" in watch.decisions[-1].reason


def test_cancel_action_cancels_at_the_first_stall() -> None:
    watch = StallWatch(MigrateOptions(stall_action="cancel", stall_rounds=3))
    actions = rounds(watch, [800, 700, 690, 680, 700])
    assert actions == [None, None, None, None, "cancel"]


def test_auto_converge_is_reported_not_acted_on() -> None:
    options = MigrateOptions(auto_converge=True, stall_action="auto_converge", stall_rounds=2)
    watch = StallWatch(options)
    decided = [a for a in rounds(watch, [500] * 8) if a]
    assert decided and set(decided) == {"auto_converge"}
    assert watch.downtime_ms == options.max_downtime_ms


def test_progress_fields() -> None:
    relay = RelayStats(stream_bytes=1000, channel_bytes=250, pages=7, zero_pages=2)
    stats = {
        "memory_iteration": 2,
        "memory_remaining": 4096,
        "memory_total": 1 << 20,
        "memory_dirty_rate": 10,
        "downtime": 120,
        "time_elapsed": 1500,
    }
    doc = progress(stats, relay)
    assert doc["round"] == 2 and doc["pages"] == 7 and doc["bytes_wire"] == 250
    assert doc["dirty_rate_bytes_s"] == 40960 and doc["expected_downtime_ms"] == 120
    assert reduction(1000, 250) == 4.0 and reduction(5, 0) == 0.0
