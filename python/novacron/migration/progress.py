"""Progress and stall detection of a running migration, sans-IO.

The source samples libvirt's job statistics (``virDomainGetJobStats``) about once a
second; :func:`progress` folds a sample and the relay's counters into the
``op.progress`` fields, and :class:`StallWatch` decides, at each new pre-copy round,
whether the migration is converging.

A migration converges when the memory left to send shrinks from round to round. It is
stalled when ``stall_rounds`` rounds in a row did not bring the remaining bytes below
90 % of the best seen so far: the guest dirties memory about as fast as the link
carries it, and more rounds will not help.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from novacron.migration.options import MigrateOptions
from novacron.migration.relay import RelayStats

PAGE = 4096
GAIN = 0.9  # a round must bring the remaining bytes below 90 % of the best so far


@dataclass(frozen=True)
class StallDecision:
    action: str  # "auto_converge" (QEMU throttles), "raise_downtime" or "cancel"
    downtime_ms: int  # the allowed downtime after the action
    round: int
    remaining_bytes: int
    reason: str


class StallWatch:
    def __init__(self, options: MigrateOptions) -> None:
        self._options = options
        self.downtime_ms = options.max_downtime_ms
        self._round = 0
        self._best: int | None = None
        self._without_gain = 0
        self.decisions: list[StallDecision] = []

    def observe(self, stats: dict[str, Any]) -> StallDecision | None:
        """One job-statistics sample; a decision when a stall was detected."""
        rnd = int(stats.get("memory_iteration", 0))
        if rnd <= self._round or (self.decisions and self.decisions[-1].action == "cancel"):
            return None  # decisions are taken at round boundaries only
        self._round = rnd
        remaining = int(stats.get("memory_remaining", 0))
        if rnd < 2:
            return None  # the first full pass says nothing about convergence
        if self._best is None or remaining < self._best * GAIN:
            self._best = remaining
            self._without_gain = 0
            return None
        self._without_gain += 1
        if self._without_gain < self._options.stall_rounds:
            return None
        self._without_gain = 0
        reason = (
            f"{self._options.stall_rounds} rounds without the remaining "
            f"{remaining} bytes shrinking below {int(self._best * GAIN)}"
        )
        action = self._options.stall_action
        if action == "raise_downtime":
            if self.downtime_ms >= self._options.max_downtime_cap_ms:
                action = "cancel"
                reason += f"; downtime already at its cap of {self.downtime_ms} ms"
            else:
                self.downtime_ms = min(self._options.max_downtime_cap_ms, self.downtime_ms * 2)
                self._best = None  # give the new allowance its own rounds
        decision = StallDecision(action, self.downtime_ms, rnd, remaining, reason)
        self.decisions.append(decision)
        return decision


def progress(stats: dict[str, Any], relay: RelayStats) -> dict[str, Any]:
    """The ``op.progress`` fields of one sample (see ``docs/protocol.md``)."""
    dirty_pps = int(stats.get("memory_dirty_rate", 0))
    return {
        "round": int(stats.get("memory_iteration", 0)),
        "pages": relay.pages,
        "zero_pages": relay.zero_pages,
        "bytes_logical": relay.stream_bytes,
        "bytes_wire": relay.channel_bytes,
        "remaining_bytes": int(stats.get("memory_remaining", stats.get("data_remaining", 0))),
        "total_bytes": int(stats.get("memory_total", 0)),
        "dirty_rate_pps": dirty_pps,
        "dirty_rate_bytes_s": dirty_pps * PAGE,
        "qemu_bps": int(stats.get("memory_bps", 0)),
        "expected_downtime_ms": int(stats.get("downtime", 0)),
        "throttle_pct": int(stats.get("auto_converge_throttle", 0)),
        "elapsed_ms": int(stats.get("time_elapsed", 0)),
    }


def reduction(logical: int, wire: int) -> float:
    """How many times fewer bytes crossed the link than QEMU produced."""
    return round(logical / wire, 2) if wire else 0.0
