"""Blocking calls run off the trio thread, a pool's limiter caps them, and a call
that has started finishes even when its caller is cancelled (novacron/blocking.py)."""

from __future__ import annotations

import threading
import time

import pytest
import trio
import trio.lowlevel
import trio.testing

from novacron.blocking import Pool


async def test_a_call_runs_on_another_thread_with_its_arguments() -> None:
    pool = Pool("libvirt", 2)

    def call(a: int, *, b: int) -> tuple[int, int]:
        return a + b, threading.get_ident()

    total, ident = await pool.run(call, 2, b=3)
    assert total == 5
    assert ident != threading.get_ident()


async def test_an_exception_reaches_the_caller() -> None:
    def fails() -> None:
        raise ValueError("no such domain")

    with pytest.raises(ValueError, match="no such domain"):
        await Pool("sqlite", 1).run(fails)


async def test_at_most_the_pools_threads_run_at_once_and_the_rest_wait() -> None:
    pool = Pool("pyroute2", 2)
    running, most = 0, 0
    lock = threading.Lock()
    release = threading.Event()
    two_in = trio.Event()

    def call() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            if running == 2:
                trio.from_thread.run_sync(two_in.set)
        release.wait(10)
        with lock:
            running -= 1

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(pool.run, call)
        with trio.fail_after(10):
            await two_in.wait()
            await trio.testing.wait_all_tasks_blocked()  # the other three at the limiter
        assert pool.statistics() == {"name": "pyroute2", "threads": 2, "busy": 2, "waiting": 3}
        release.set()
    assert most == 2
    assert pool.statistics()["busy"] == 0


async def test_a_started_call_finishes_before_its_cancellation_takes_effect() -> None:
    pool = Pool("libvirt", 1)
    finished = threading.Event()

    def state_change() -> None:
        time.sleep(0.3)
        finished.set()

    start = trio.current_time()
    returned = after = False
    with trio.move_on_after(0.05) as scope:
        await pool.run(state_change)
        returned = True  # the call was waited for, not abandoned half-way
        await trio.lowlevel.checkpoint()  # the caller's next one: cancelled there
        after = True
    assert finished.is_set() and returned and not after
    assert scope.cancelled_caught
    assert trio.current_time() - start >= 0.25
