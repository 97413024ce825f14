"""Keeps each running VM's NIC taps shaped to its NICs' limits (``vm.nic.limit``).

libvirt makes a VM's taps when the VM starts (or arrives by migration, or a NIC is
plugged in) and removes them when it stops, and it knows nothing of NovaCron's limits.
So the shaper brings a VM's taps to its NICs' limits (:mod:`novacron.net.shaping`):

* at once when a limit changes (:meth:`NicShaper.converge`, from ``vm.nic.limit``) or a
  NIC with limits is plugged in;
* on every ``vm.state`` event saying a VM runs (started, resumed, arrived), which covers
  starts from outside the daemon and the state keeper's restarts;
* when the daemon starts, and every ``[network] reconcile_interval_s`` after, for every
  VM with limits (and every VM it shaped before, whose limits may have been lifted):
  a tap changed behind the daemon's back is put right.

IFBs of taps that are gone are swept after a VM with limits is shaped or stops, and at
the first periodic pass (what a daemon before this one left); a host where no VM has
limits is not looked at again.
A VM without limits is never touched. A tap that cannot be shaped is logged
(``net.shape_failed``) and tried again at the next pass; the VM runs on.
"""

from __future__ import annotations

import logging
import math

import trio

from novacron import errors
from novacron.blocking import Pool
from novacron.eventbus import EventBus
from novacron.logs import kv
from novacron.net import shaping
from novacron.net.kernel import Kernel
from novacron.vm.domain_xml import parse_interfaces
from novacron.vm.service import VmService
from novacron.vm.spec import VmSpec

log = logging.getLogger("novacron.net.shaper")


class NicShaper:
    def __init__(
        self, vms: VmService, kernel: Kernel, pool: Pool, bus: EventBus, interval_s: float
    ) -> None:
        self.vms = vms
        self.kernel = kernel
        self.pool = pool  # the network service's: one netlink call at a time
        self.bus = bus
        self.interval_s = interval_s
        self.shaped: set[str] = set()  # running VMs with limits on their taps, as last seen
        self.changes = 0  # taps changed (a limit put on, changed or lifted)
        self.swept = 0
        self._lock = trio.Lock()  # one pass at a time (a tap's state read, then changed)
        self._swept_once = False  # (the first pass sweeps what a daemon before left)

    async def converge(self, name: str) -> None:
        """Brings VM ``name``'s taps to its NICs' limits, if it runs (a VM that does not
        has no taps; a failure is logged, not raised), and sweeps the IFBs of taps that
        went (a NIC with limits unplugged)."""
        async with self._lock:
            if await self._converge_logged(name):
                await self.sweep()

    async def _converge_logged(self, name: str) -> bool:
        """:meth:`_converge`, a failure logged (and counted as touched: sweep anyway)."""
        try:
            return await self._converge(name)
        except errors.NovaCronError as exc:
            log.warning("net.shape_failed", extra=kv(vm=name, error=exc.message))
            return True

    async def _converge(self, name: str) -> bool:
        """:meth:`converge` but the sweep; whether the VM has or had limits."""
        try:
            rec = await self.vms.record(name)
        except errors.NotFound:
            had = name in self.shaped
            self.shaped.discard(name)
            return had
        spec = VmSpec.from_dict(rec.spec)
        limited = any(nic.limits for nic in spec.nics)
        if not limited and name not in self.shaped:
            return False
        runtime = await self.vms.hv_pool.run(self.vms.hv.state_or_none, name)
        if runtime is None or runtime.state not in ("running", "paused"):
            self.shaped.discard(name)  # (no taps; the next start makes new, unshaped ones)
            return True
        xml = await self.vms.hv_pool.run(self.vms.hv.xml, name)
        taps = {i.mac: i.device for i in parse_interfaces(xml) if i.device}
        for nic in spec.nics:
            tap = taps.get(nic.mac)
            if tap is None:
                continue
            try:
                changed = await self.pool.run(shaping.shape, self.kernel.ipr, tap, nic.limits)
            except errors.NotFound:
                continue  # (the tap went meanwhile: unplugged, or the VM stopped)
            if changed:
                self.changes += 1
                limits = nic.limits.to_dict() if nic.limits else "none"
                log.info(
                    "net.shaped",
                    extra=kv(vm=name, mac=nic.mac, device=tap, changed=changed, limits=limits),
                )
        if limited:
            self.shaped.add(name)
        else:
            self.shaped.discard(name)
        return True

    async def sweep(self) -> None:
        self._swept_once = True
        try:
            gone = await self.pool.run(shaping.sweep, self.kernel.ipr)
        except Exception as exc:  # (netlink trouble: the next pass tries again)
            log.warning("net.shape_sweep_failed", extra=kv(error=repr(exc)))
            return
        for device in gone:
            self.swept += 1
            log.info("net.shape_swept", extra=kv(device=device))

    async def converge_all(self) -> None:
        """Every VM with limits (or shaped before); then the sweep, unless no VM has or
        had limits since the first pass (no IFB of NovaCron's can be there)."""
        async with self._lock:
            touched = not self._swept_once
            for rec in await self.vms.records.all():
                nics = rec.spec.get("nics", ())
                if rec.name in self.shaped or any(n.get("limits") for n in nics):
                    touched = await self._converge_logged(rec.name) or touched
            if touched:
                await self.sweep()

    def statistics(self) -> dict[str, int]:
        return {"shaped_vms": len(self.shaped), "changes": self.changes, "swept": self.swept}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sub = self.bus.subscribe(frozenset({"vm.state"}), buffer=4096)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._periodic)
                task_status.started()
                async for event in sub:
                    if event["topic"] == "events.lost":
                        await self.converge_all()
                    elif event.get("state") in ("running", "paused"):
                        await self.converge(str(event["vm"]))
                    elif event.get("state") == "stopped" and self.shaped:
                        await self.sweep()  # (a shaped VM's taps may have gone with it)
        finally:
            sub.close()

    async def _periodic(self) -> None:
        interval = self.interval_s or math.inf
        while True:
            await self.converge_all()
            await trio.sleep(interval)
