"""Whether this node takes new VMs: an admin cordons a node before maintenance.

A cordoned node keeps running, starting and stopping the VMs it has, but takes no new
ones: ``vm.create`` is refused here, incoming migrations are refused, and in a cluster
``node: "auto"`` placement (and a drain's) passes it by. The cordon is kept in the
state store (``node_settings``), so it outlives restarts and reboots until
``node.uncordon``; in a cluster it is published in the node's registration.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from novacron import errors
from novacron.blocking import Pool
from novacron.state.db import StateStore

KEY = "cordon"
MAX_REASON = 256


@dataclass(frozen=True)
class CordonState:
    since: float  # Unix time of the first cordon (cordoning again keeps it)
    reason: str
    by: str  # the principal who cordoned (or cordoned again)


class Cordon:
    def __init__(self, store: StateStore, pool: Pool, node: str) -> None:
        self._store = store
        self._pool = pool
        self.node = node
        self.state: CordonState | None = None
        self.on_change: Callable[[], None] | None = None  # the cluster's re-publish

    async def load(self) -> None:
        doc = await self._pool.run(self._store.get_setting, KEY)
        self.state = _parse(doc)

    async def set(self, reason: str, by: str) -> CordonState:
        """Cordons the node (again: a new reason and principal, the first ``since``)."""
        since = self.state.since if self.state is not None else time.time()
        state = CordonState(since=since, reason=reason, by=by)
        await self._pool.run(self._store.set_setting, KEY, asdict(state))
        self.state = state
        self._changed()
        return state

    async def clear(self) -> bool:
        """Takes the cordon away; whether there was one."""
        was = self.state is not None
        await self._pool.run(self._store.set_setting, KEY, None)
        self.state = None
        if was:
            self._changed()
        return was

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def to_wire(self) -> dict[str, Any] | None:
        return asdict(self.state) if self.state is not None else None

    def refuse(self, what: str) -> None:
        """``conflict`` when cordoned: the node takes no ``what``."""
        if self.state is None:
            return
        why = f" ({self.state.reason})" if self.state.reason else ""
        raise errors.Conflict(
            f"node {self.node!r} is cordoned{why}: it takes no {what}; "
            "node.uncordon lets it take them again",
            {"node": self.node, "cordoned": True, "reason": self.state.reason},
        )


def _parse(doc: Any) -> CordonState | None:
    """The stored value; anything unreadable counts as cordoned (the safe side)."""
    if doc is None:
        return None
    if not isinstance(doc, dict):
        return CordonState(since=0.0, reason="unreadable cordon record", by="")
    since = doc.get("since")
    reason = doc.get("reason")
    by = doc.get("by")
    return CordonState(
        since=float(since) if isinstance(since, int | float) else 0.0,
        reason=str(reason)[:MAX_REASON] if reason is not None else "",
        by=str(by) if by is not None else "",
    )
