"""Running blocking calls (libvirt, sqlite, pyroute2) off the trio thread.

One :class:`Pool` per resource, each with its own ``CapacityLimiter``. Calls are not
abandoned on cancellation: a state-changing libvirt or sqlite call that has started
always finishes, and cancellation takes effect when it returns.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import trio

P = ParamSpec("P")
T = TypeVar("T")


class Pool:
    def __init__(self, name: str, threads: int) -> None:
        self.name = name
        self.limiter = trio.CapacityLimiter(threads)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        call: Callable[[], T] = functools.partial(fn, *args, **kwargs)
        return await trio.to_thread.run_sync(call, limiter=self.limiter)

    def statistics(self) -> dict[str, Any]:
        stats = self.limiter.statistics()
        return {
            "name": self.name,
            "threads": stats.total_tokens,
            "busy": stats.borrowed_tokens,
            "waiting": stats.tasks_waiting,
        }
