"""Keeps VMs in the state the operator asked for: one that should run and is found shut
off is started again or its record follows what happened (``vm/restarts.py`` decides).

One that should run and is found paused because its disk's file system filled up is
resumed once there is room again (:mod:`~novacron.vm.no_space`).

It looks when the daemon starts (after reconciliation: the host may have rebooted, or
a QEMU died while the daemon was down), on every ``vm.state`` event saying a VM
stopped (or paused on an I/O error), and every ``[vm] check_interval_s`` seconds
(events lost while libvirtd restarted, or while the VM was migrating). Each decision is
taken again under the VM's lock, on libvirt's current state, so it never races an
operator's call; a VM being migrated is left to the migration service.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio

from novacron import errors
from novacron.eventbus import EventBus
from novacron.logs import kv
from novacron.state.db import VmRecord
from novacron.vm import no_space
from novacron.vm.driver import RuntimeState
from novacron.vm.restarts import Action, decide
from novacron.vm.service import VmService
from novacron.vm.spec import VmSpec

log = logging.getLogger("novacron.vm.keeper")

RETRY_S = 5.0  # the first look, after reconciliation, is tried again this often until it works


class StateKeeper:
    def __init__(
        self,
        svc: VmService,
        bus: EventBus,
        check_interval_s: float,
        start_concurrency: int,
        no_space_resume_mib: int = 256,
    ) -> None:
        self.svc = svc
        self.bus = bus
        self.check_interval_s = check_interval_s
        self.ready = trio.Event()  # set once reconciliation is done
        self._starting = trio.CapacityLimiter(start_concurrency)
        self._handling: set[str] = set()  # VMs a task of this keeper is deciding on
        self.counts = {
            "restarted": 0,
            "followed": 0,
            "start_failed": 0,
            "gave_up": 0,
            "resumed": 0,
        }
        self.no_space_resume_bytes = no_space_resume_mib * no_space.MIB  # 0: never
        self._waiting_for_room: set[str] = set()  # paused on a full disk, looked at
        self._left: set[str] = set()  # paused on a disk error the operator must see to

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sub = self.bus.subscribe(frozenset({"vm.state"}), buffer=4096)
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                await self.ready.wait()
                while not await self._sweep(nursery, at_start=True):  # noqa: ASYNC110 - retried
                    await trio.sleep(RETRY_S)
                if self.check_interval_s > 0:
                    nursery.start_soon(self._periodic, nursery)
                async for event in sub:
                    if event["topic"] == "events.lost":
                        await self._sweep(nursery, at_start=False)
                    elif event.get("state") == "stopped":
                        self._stopped(nursery, str(event["vm"]), str(event["reason"]))
                    elif (event.get("state"), event.get("reason")) == ("paused", "ioerror"):
                        self.paused_on_error(nursery, str(event["vm"]))
        finally:
            sub.close()

    def _stopped(self, nursery: trio.Nursery, name: str, reason: str) -> None:
        if name in self.svc.migrating and reason != "migrated":
            # (its QEMU died or was stopped during the migration: only the migration's
            # outcome says where the VM is; starting it here could make two)
            self.svc.restarts.held.add(name)
            nursery.start_soon(self.svc.save_restarts)
            log.warning("vm.restart_held", extra=kv(vm=name, reason=reason))
            return
        self.consider(nursery, name, reason, at_start=False)

    async def _periodic(self, nursery: trio.Nursery) -> None:
        while True:
            await trio.sleep(self.check_interval_s)
            await self._sweep(nursery, at_start=False)

    async def _sweep(self, nursery: trio.Nursery, at_start: bool) -> bool:
        """:meth:`sweep`; False when libvirt or the store did not answer (logged)."""
        try:
            await self.sweep(nursery, at_start)
        except errors.NovaCronError as exc:
            log.warning("keeper.check_failed", extra=kv(error=exc.message, at_start=at_start))
            return False
        return True

    async def sweep(self, nursery: trio.Nursery, at_start: bool) -> None:
        """Looks at every VM that should run."""
        svc = self.svc
        records = await svc.records.all()
        runtimes = await svc.hv_pool.run(svc.hv.all_states)
        on_error = set()
        for rec in records:
            runtime = runtimes.get(rec.name)
            if rec.desired_state != "running" or runtime is None:
                continue
            if runtime.state == "stopped":
                self.consider(nursery, rec.name, runtime.reason, at_start)
            elif (runtime.state, runtime.reason) == ("paused", "ioerror"):
                on_error.add(rec.name)
                self.paused_on_error(nursery, rec.name)
        self._left &= on_error  # (one resumed or stopped by its operator: told again)

    def consider(self, nursery: trio.Nursery, name: str, reason: str, at_start: bool) -> None:
        """Decides on ``name``, found or reported shut off for ``reason``, in a task of
        its own (one at a time per VM)."""
        action = decide(reason, at_start)
        if action is None or name in self._handling:
            return
        self._handling.add(name)
        nursery.start_soon(self._handle, name, action, at_start)

    def paused_on_error(self, nursery: trio.Nursery, name: str) -> None:
        """Watches ``name``, paused on a disk error, in a task of its own until its disks'
        file systems have room (:mod:`no_space`)."""
        if not self.no_space_resume_bytes or name in self._waiting_for_room | self._left:
            return
        self._waiting_for_room.add(name)
        nursery.start_soon(self._resume_when_room, name)

    async def _resume_when_room(self, name: str) -> None:
        with _guarded(name, self._waiting_for_room):
            while True:
                async with self.svc.locked(name):
                    verdict = await self._room_verdict(name)
                    if verdict is None:
                        return  # (resumed, stopped or deleted meanwhile)
                    if verdict.action == "resume":
                        await self.svc.hv_pool.run(self.svc.hv.resume, name)
                free = ",".join(f"{t}:{b // no_space.MIB}" for t, b in verdict.free.items())
                if verdict.action == "resume":
                    self.counts["resumed"] += 1
                    log.warning("vm.resumed_with_room", extra=kv(vm=name, free_mib=free))
                    return
                if verdict.action == "leave":
                    self._left.add(name)
                    log.warning("vm.paused_on_disk_error", extra=kv(vm=name, why=verdict.why))
                    return
                await trio.sleep(no_space.CHECK_S)

    async def _room_verdict(self, name: str) -> no_space.Verdict | None:
        """Under the VM's lock: whether to resume ``name`` now; None when it is no longer
        paused on an I/O error, should not run, or is migrating."""
        found = await self._should_run(name)
        if found is None or (found[1].state, found[1].reason) != ("paused", "ioerror"):
            return None
        svc = self.svc
        failed = await svc.hv_pool.run(svc.hv.disk_errors, name)
        xml = await svc.hv_pool.run(svc.hv.xml, name)
        wanted = self.no_space_resume_bytes
        return await trio.to_thread.run_sync(no_space.judge, xml, failed, wanted)

    async def _should_run(self, name: str) -> tuple[VmRecord, RuntimeState] | None:
        """``name``'s record and libvirt's state of it, if it should run and is not being
        migrated; else None."""
        svc = self.svc
        if name in svc.migrating:
            return None
        rec = await svc.records.get(name)
        if rec is None or rec.desired_state != "running":
            return None
        runtime = await svc.hv_pool.run(svc.hv.state_or_none, name)
        return None if runtime is None else (rec, runtime)

    async def _handle(self, name: str, action: Action, at_start: bool) -> None:
        with _guarded(name, self._handling):
            if action == "follow":
                await self._follow(name, at_start)
            else:
                await self._restart(name, at_start)

    async def _still(
        self, name: str, action: Action, at_start: bool
    ) -> tuple[VmRecord, str] | None:
        """Under the VM's lock: its record and shut-off reason if ``action`` is still
        what to do (it should run, it is shut off for such a reason, it is not
        migrating); else None."""
        found = await self._should_run(name)
        if found is None:
            return None
        rec, runtime = found
        if runtime.state != "stopped" or decide(runtime.reason, at_start) != action:
            return None
        return rec, runtime.reason

    async def _follow(self, name: str, at_start: bool) -> None:
        async with self.svc.locked(name):
            found = await self._still(name, "follow", at_start)
            if found is None:
                return
            rec, reason = found
            await self.svc.records.set_desired_state(name, "stopped")
        self.counts["followed"] += 1
        log.info("vm.stopped_outside", extra=kv(vm=name, tenant=rec.tenant, reason=reason))

    async def _restart(self, name: str, at_start: bool) -> None:
        svc = self.svc
        rec = await svc.records.get(name)
        if rec is None or name in svc.restarts.gave_up or name in svc.restarts.held:
            return
        if VmSpec.from_dict(rec.spec).restart == "never":
            return
        while True:
            delay = svc.restarts.delay(name)
            if delay is None:  # (and now given up, until an operator starts it)
                await svc.save_restarts()
                self.counts["gave_up"] += 1
                limit, window = svc.restarts.limit, svc.restarts.window_s
                log.error("vm.restart_gave_up", extra=kv(vm=name, limit=limit, window_s=window))
                self._publish(rec.tenant, name, "gave_up", limit=limit, window_s=window)
                return
            await trio.sleep(delay)
            async with self._starting, svc.locked(name):
                found = await self._still(name, "restart", at_start)
                if found is None or name in svc.restarts.held:
                    return
                rec, reason = found
                if VmSpec.from_dict(rec.spec).restart == "never":  # (changed meanwhile)
                    return
                attempt = svc.restarts.record(name)
                await svc.save_restarts()
                try:
                    await svc.hv_pool.run(svc.hv.start, name)
                except errors.NovaCronError as exc:
                    self.counts["start_failed"] += 1
                    log.error(
                        "vm.restart_failed",
                        extra=kv(vm=name, reason=reason, attempt=attempt, error=exc.message),
                    )
                    self._publish(
                        rec.tenant,
                        name,
                        "start_failed",
                        reason=reason,
                        attempt=attempt,
                        error=exc.message,
                    )
                    continue
            self.counts["restarted"] += 1
            log.warning("vm.restarted", extra=kv(vm=name, reason=reason, attempt=attempt))
            self._publish(rec.tenant, name, "restarted", reason=reason, attempt=attempt)
            return

    def _publish(self, tenant: str, name: str, outcome: str, **fields: Any) -> None:
        self.bus.publish(
            {"topic": "vm.restart", "vm": name, "tenant": tenant, "outcome": outcome, **fields}
        )

    def statistics(self) -> dict[str, Any]:
        restarts = self.svc.restarts
        return {**self.counts, "given_up": sorted(restarts.gave_up), "held": sorted(restarts.held)}


@contextmanager
def _guarded(name: str, busy: set[str]) -> Iterator[None]:
    """A keeper task's body for VM ``name``: its failure is logged, never raised (a bug
    here must not take the daemon down); ``name`` leaves ``busy`` when it ends."""
    try:
        yield
    except errors.NovaCronError as exc:
        log.error("keeper.failed", extra=kv(vm=name, error=exc.message))
    except Exception:
        log.exception("keeper.crashed", extra=kv(vm=name))
    finally:
        busy.discard(name)
