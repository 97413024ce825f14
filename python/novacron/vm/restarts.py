"""What the daemon does with a VM it finds shut off while its desired state is running,
and how often it starts one again (the crash-loop guard).

The shut-off reason libvirt keeps for the domain (``vm/states.py`` names) decides:

* ``follow`` — it was stopped on purpose: the guest powered itself off (``shutdown``),
  someone outside the daemon destroyed it (``destroyed``) or reverted it to a shut-off
  snapshot (``from_snapshot``). The record follows: desired state ``stopped``.
* ``restart`` — it died without being asked: its QEMU process failed or was killed
  (``failed`` as an event, ``crashed`` as a state) or the guest crashed (``crashed``).
  Started again when its policy is ``on-failure``.
* only when the daemon starts, also ``restart`` for ``unknown`` (libvirt started
  afresh: the host rebooted under the VM), ``daemon`` (libvirt stopped it) and
  ``saved`` (managed-saved, for example by ``libvirt-guests`` at the host's shutdown:
  starting restores its memory). While the daemon runs, these are left alone.
* ``migrated`` and anything else: nothing (the migration service owns those).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, TypeGuard

Action = Literal["follow", "restart"]

FOLLOW_REASONS = frozenset({"shutdown", "destroyed", "from_snapshot"})
FAILURE_REASONS = frozenset({"crashed", "failed"})
AT_START_REASONS = frozenset({"unknown", "daemon", "saved"})

FIRST_DELAY_S = 1.0  # before the first restart; doubled for each one after it
MAX_DELAY_S = 60.0


def decide(reason: str, at_start: bool) -> Action | None:
    """What to do with a VM that should run and is shut off for ``reason``;
    ``at_start``: the daemon is starting (it may have missed what happened)."""
    if reason in FOLLOW_REASONS:
        return "follow"
    if reason in FAILURE_REASONS or (at_start and reason in AT_START_REASONS):
        return "restart"
    return None


class RestartHistory:
    """The restarts of each VM within the last ``window_s`` seconds: at most ``limit``
    of them, each after a delay twice the one before; past the limit the daemon gives
    up on the VM until an operator starts it (:meth:`reset`). Times are the wall
    clock's: the history outlives a restart of the daemon (:meth:`to_doc`,
    :meth:`load`; the VM service keeps it in the state store), so a crash-looping VM
    the daemon gave up on stays given up, and a held one held."""

    def __init__(
        self,
        limit: int,
        window_s: float,
        clock: Callable[[], float] = time.time,
        first_delay_s: float = FIRST_DELAY_S,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._first_delay_s = first_delay_s
        self._times: dict[str, deque[float]] = {}
        self._last_at: dict[str, float] = {}  # wall clock of the last restart
        self.gave_up: set[str] = set()
        # stopped while it was being migrated: the migration decides where it runs, so
        # it is not started here again until an operator does
        self.held: set[str] = set()

    def _recent(self, name: str) -> deque[float]:
        times = self._times.get(name, deque())
        now = self._clock()
        while times and now - times[0] > self.window_s:
            times.popleft()
        return times

    def delay(self, name: str) -> float | None:
        """Seconds to wait before restarting ``name`` now; None: the limit is reached
        (and the VM is marked given up)."""
        count = len(self._recent(name))
        if count >= self.limit or name in self.gave_up:
            self.gave_up.add(name)
            return None
        return float(min(MAX_DELAY_S, self._first_delay_s * 2**count))

    def record(self, name: str) -> int:
        """Counts a restart of ``name``; returns how many there were in the window."""
        times = self._times.setdefault(name, self._recent(name))
        times.append(self._clock())
        self._last_at[name] = time.time()
        return len(times)

    def reset(self, name: str) -> bool:
        """An operator started the VM (or it is gone): count from zero again. Whether
        there was anything to forget."""
        had = any(name in kept for kept in (self._times, self._last_at, self.gave_up, self.held))
        self._times.pop(name, None)
        self._last_at.pop(name, None)
        self.gave_up.discard(name)
        self.held.discard(name)
        return had

    def to_doc(self) -> dict[str, Any]:
        """The history worth keeping: each VM restarted (``last_at``), given up or held
        (``{name: {"times" (in the window), "last_at", "gave_up", "held"}}``)."""
        doc: dict[str, Any] = {}
        for name in sorted(set(self._times) | set(self._last_at) | self.gave_up | self.held):
            times = list(self._recent(name))
            if times or name in self._last_at or name in self.gave_up or name in self.held:
                doc[name] = {
                    "times": times,
                    "last_at": self._last_at.get(name),
                    "gave_up": name in self.gave_up,
                    "held": name in self.held,
                }
        return doc

    def load(self, doc: Any, names: set[str]) -> None:
        """Takes back :meth:`to_doc`'s document for the VMs ``names`` (the others are
        gone); a malformed entry, or part of one, is skipped."""
        if not isinstance(doc, dict):
            return
        for name, entry in doc.items():
            if name not in names or not isinstance(entry, dict):
                continue
            times = entry.get("times")
            if isinstance(times, list) and all(_number(t) for t in times):
                kept = sorted(float(t) for t in times)
                self._times[name] = deque(kept[max(0, len(kept) - self.limit) :])
            last_at = entry.get("last_at")
            if _number(last_at):
                self._last_at[name] = float(last_at)
            if entry.get("gave_up") is True:
                self.gave_up.add(name)
            if entry.get("held") is True:
                self.held.add(name)

    def view(self, name: str) -> dict[str, Any]:
        """For ``vm.get``: restarts in the window, when the last was (Unix time), whether
        the daemon gave up."""
        return {
            "recent": len(self._recent(name)),
            "window_s": self.window_s,
            "last_at": self._last_at.get(name),
            "gave_up": name in self.gave_up,
            "held": name in self.held,
        }


def _number(value: Any) -> TypeGuard[float]:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
