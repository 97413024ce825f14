"""The state keeper on libvirt's test driver: its decisions taken on libvirt's real
state (a domain defined and never started is shut off for ``unknown``, as after a host
reboot; one destroyed behind the daemon's back for ``destroyed``), and, in
:func:`test_running_keeper_follows_libvirt_events`, on libvirt's own lifecycle events."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from novacron.eventbus import EventBus, Subscription
from novacron.vm.driver import Hypervisor
from novacron.vm.events import LibvirtEvents
from novacron.vm.keeper import StateKeeper
from novacron.vm.restarts import RestartHistory
from novacron.vm.service import VmService
from novacron.vm.spec import VmSpec
from tests.unit.conftest import unique


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


@pytest.fixture
def keeper(vm_service: VmService, bus: EventBus) -> StateKeeper:
    # no waiting between restarts: what is tested is what is restarted, and how often
    vm_service.restarts = RestartHistory(limit=2, window_s=600, first_delay_s=0.0)
    return StateKeeper(vm_service, bus, check_interval_s=0, start_concurrency=2)


@pytest.fixture
def restarts(bus: EventBus) -> Iterator[Subscription]:
    sub = bus.subscribe(frozenset({"vm.restart"}))
    yield sub
    sub.close()


async def shut_off_wanting_to_run(svc: VmService, restart: str = "on-failure") -> str:
    """A VM recorded as running whose domain is shut off for ``unknown``."""
    name = unique("kept")
    await svc.create(VmSpec(name=name, vcpus=1, memory_mib=64, restart=restart), start=False)
    await svc.records.set_desired_state(name, "running")
    assert (await svc.hv_pool.run(svc.hv.state, name)).reason == "unknown"
    return name


async def sweep(keeper: StateKeeper, at_start: bool) -> None:
    async with trio.open_nursery() as nursery:  # (returns once every decision is taken)
        await keeper.sweep(nursery, at_start)


async def state(svc: VmService, name: str) -> tuple[str, str]:
    doc = await svc.get(name)
    return doc["state"], doc["desired_state"]


async def until(svc: VmService, name: str, wanted: tuple[str, str]) -> None:
    while await state(svc, name) != wanted:  # noqa: ASYNC110 - libvirt's state, polled
        await trio.sleep(0.05)


async def received(sub: Subscription) -> list[dict[str, object]]:
    """The events published so far (all are there: publishing never waits)."""
    events = []
    with trio.move_on_after(0.2):
        async for event in sub:
            events.append(event)
    return events


async def test_at_its_start_the_daemon_starts_a_vm_found_shut_off(
    vm_service: VmService, keeper: StateKeeper, restarts: Subscription
) -> None:
    name = await shut_off_wanting_to_run(vm_service)
    await sweep(keeper, at_start=False)  # while running, "unknown" is nobody's doing
    assert await state(vm_service, name) == ("stopped", "running")
    await sweep(keeper, at_start=True)
    assert await state(vm_service, name) == ("running", "running")
    [event] = await received(restarts)
    assert event == {
        "topic": "vm.restart",
        "vm": name,
        "tenant": "default",
        "outcome": "restarted",
        "reason": "unknown",
        "attempt": 1,
    }
    doc = await vm_service.get(name)
    assert doc["restart"] == "on-failure" and doc["restarts"]["recent"] == 1
    assert keeper.statistics()["restarted"] == 1
    await vm_service.delete(name, force=True, keep_disks=False)


async def test_restart_never_is_left_shut_off(
    vm_service: VmService, keeper: StateKeeper, restarts: Subscription
) -> None:
    name = await shut_off_wanting_to_run(vm_service, restart="never")
    await sweep(keeper, at_start=True)
    assert await state(vm_service, name) == ("stopped", "running")
    assert await received(restarts) == [] and keeper.statistics()["restarted"] == 0
    await vm_service.delete(name, force=True, keep_disks=False)


async def test_a_vm_destroyed_behind_the_daemons_back_is_recorded_stopped(
    vm_service: VmService, keeper: StateKeeper
) -> None:
    name = unique("outside")
    await vm_service.create(VmSpec(name=name, vcpus=1, memory_mib=64), start=True)
    await vm_service.hv_pool.run(vm_service.hv.destroy, name)  # as virsh destroy would
    await sweep(keeper, at_start=False)
    assert await state(vm_service, name) == ("stopped", "stopped")
    assert keeper.statistics()["followed"] == 1
    await sweep(keeper, at_start=True)  # (and nothing more to do)
    assert await state(vm_service, name) == ("stopped", "stopped")
    await vm_service.delete(name, force=True, keep_disks=False)


async def test_a_vm_being_migrated_or_held_is_left_to_the_migration(
    vm_service: VmService, keeper: StateKeeper
) -> None:
    name = await shut_off_wanting_to_run(vm_service)
    vm_service.migrating.add(name)
    async with trio.open_nursery() as nursery:
        keeper._stopped(nursery, name, "failed")  # its QEMU died during the migration
    assert vm_service.restarts.held == {name}
    vm_service.migrating.discard(name)  # the migration failed: the VM is still here
    await sweep(keeper, at_start=True)
    assert await state(vm_service, name) == ("stopped", "running")
    assert (await vm_service.get(name))["restarts"]["held"] is True
    assert keeper.statistics()["held"] == [name]
    await vm_service.start(name)  # the operator's word ends the hold
    assert vm_service.restarts.held == set()
    await vm_service.delete(name, force=True, keep_disks=False)


async def test_past_the_limit_it_gives_up_once_until_an_operator_starts_it(
    vm_service: VmService, keeper: StateKeeper, restarts: Subscription
) -> None:
    name = await shut_off_wanting_to_run(vm_service)
    for _ in range(2):  # two restarts in the window already (limit 2)
        vm_service.restarts.record(name)
    await sweep(keeper, at_start=True)
    await sweep(keeper, at_start=True)
    assert await state(vm_service, name) == ("stopped", "running")
    [event] = await received(restarts)
    assert (event["outcome"], event["limit"], event["window_s"]) == ("gave_up", 2, 600)
    assert keeper.statistics()["gave_up"] == 1 and keeper.statistics()["given_up"] == [name]
    assert (await vm_service.get(name))["restarts"]["gave_up"] is True
    # the daemon restarted (a new service on the same store): it stays given up
    restarted = VmService(vm_service.config, vm_service.hv, vm_service.store)
    await restarted.load_restarts()
    assert (await restarted.get(name))["restarts"]["gave_up"] is True
    assert (await restarted.get(name))["restarts"]["recent"] == 2
    await sweep(StateKeeper(restarted, EventBus(), 0, start_concurrency=2), at_start=True)
    assert await state(restarted, name) == ("stopped", "running")
    await vm_service.start(name)
    again = VmService(vm_service.config, vm_service.hv, vm_service.store)
    await again.load_restarts()  # the operator's start is kept too
    assert (await again.get(name))["restarts"]["gave_up"] is False
    assert (await vm_service.get(name))["restarts"] == {
        "recent": 0,
        "window_s": 600,
        "last_at": None,
        "gave_up": False,
        "held": False,
    }
    await vm_service.delete(name, force=True, keep_disks=False)


@pytest.fixture
async def running(
    vm_service: VmService, keeper: StateKeeper, bus: EventBus
) -> AsyncIterator[StateKeeper]:
    """The keeper and libvirt's event forwarder running, as in the daemon."""
    events = LibvirtEvents(vm_service.hv, bus, vm_service.managed.event_tenant)
    async with trio.open_nursery() as nursery:
        await nursery.start(events.run)
        await nursery.start(keeper.run)
        yield keeper
        nursery.cancel_scope.cancel()


async def test_running_keeper_follows_libvirt_events(
    vm_service: VmService, running: StateKeeper
) -> None:
    """Started after reconciliation (``ready``): what was shut off is started; a
    destroy behind the daemon's back, reported by libvirt's event, is followed."""
    waiting = await shut_off_wanting_to_run(vm_service)
    running.ready.set()
    with trio.fail_after(10):
        await until(vm_service, waiting, ("running", "running"))
        await vm_service.hv_pool.run(vm_service.hv.destroy, waiting)
        await until(vm_service, waiting, ("stopped", "stopped"))
    assert running.statistics()["followed"] == 1
    await vm_service.delete(waiting, force=True, keep_disks=False)


async def test_libvirt_gone_leaves_the_keeper_looking_again(
    vm_service: VmService, bus: EventBus, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """libvirtd unreachable when the keeper first looks: it says so and keeps trying
    (it never takes the daemon down)."""
    vm_service.hv = Hypervisor(f"qemu+unix:///system?socket={tmp_path}/no-libvirtd.sock")
    keeper = StateKeeper(vm_service, bus, check_interval_s=0, start_concurrency=1)
    keeper.ready.set()
    with trio.move_on_after(0.5) as waited:
        await keeper.run()
    assert waited.cancelled_caught  # still running
    assert "keeper.check_failed" in caplog.messages


async def test_a_paused_vm_is_resumed_only_when_paused_on_a_full_disk(
    keeper: StateKeeper, vm_service: VmService
) -> None:
    """A VM paused by its operator, or behind the daemon's back (libvirt's reason
    ``user``), stays paused: only an I/O error pause is watched for room
    (``tests/system/test_no_space.py`` has the real one)."""
    by_operator, behind = unique("paused"), unique("paused")
    for name in (by_operator, behind):
        await vm_service.create(VmSpec(name=name, vcpus=1, memory_mib=64), start=True)
    await vm_service.pause(by_operator)
    await vm_service.hv_pool.run(vm_service.hv.suspend, behind)
    await sweep(keeper, at_start=False)
    assert await state(vm_service, by_operator) == ("paused", "paused")
    assert await state(vm_service, behind) == ("paused", "running")
    assert keeper.statistics()["resumed"] == 0
    assert not keeper._waiting_for_room
    for name in (by_operator, behind):
        await vm_service.delete(name, force=True, keep_disks=False)
