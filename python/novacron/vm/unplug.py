"""Taking a device out of a running guest: the guest is asked to release it (ACPI eject
on the PC machine) and the daemon waits, up to a deadline, until the running domain no
longer has it. A guest may never answer (booted without ACPI, no hot-plug support in its
kernel, busy): then nothing is changed and the caller gets ``timeout``; the request stays
with the guest, so asking again once it let go finds the device gone.

The wait holds no lock on the VM: a ``vm.stop``, ``vm.delete`` or other change of it
goes ahead meanwhile (the lock was once held through the wait, up to ``MAX_TIMEOUT_S``,
so a stop of a guest that ignores the request waited that long). Whatever happened, the
detach looks again under the lock once the wait ends: a VM stopped meanwhile loses the
device from its definition (which is what the detach was for), one started again with
the device is asked again, one deleted is ``not_found``.

The request is sent by the running domain's alias for the device, for which libvirt only
sends it and returns; by the device's XML (a driver that names no aliases) libvirt first
waits a few seconds itself. The deadline counts from the call either way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from novacron import errors
from novacron.logs import kv
from novacron.vm.service import VmService, log

TIMEOUT_S = 30.0  # how long a running guest has to release a device, by default
MAX_TIMEOUT_S = 600.0
POLL_S = 0.5


class Plugged(Protocol):
    """A device as the running domain's XML describes it."""

    @property
    def alias(self) -> str | None: ...


Find = Callable[[str], Plugged | None]


@dataclass(frozen=True)
class Pending:
    """A device the running guest still has: its XML, how to find it in the live domain
    XML, and the running domain's alias for it (None: a driver that names none)."""

    xml: str
    find: Find
    alias: str | None


async def plugged(vms: VmService, name: str, find: Find) -> Plugged | None:
    """The device ``find`` finds in VM ``name``'s running domain, None when it has none
    (or the domain does not run: a stopped domain's XML is its definition)."""
    runtime = await vms.hv_pool.run(vms.hv.state_or_none, name)
    if runtime is None or runtime.state not in ("running", "paused"):
        return None
    return find(await vms.hv_pool.run(vms.hv.xml, name))


async def until_released(
    vms: VmService,
    name: str,
    attempt: Callable[[], Awaitable[Pending | None]],
    timeout_s: float,
    what: str,
    details: dict[str, Any],
) -> None:
    """Runs ``attempt`` under VM ``name``'s lock until it finishes the detach (returns
    None). When it finds the running guest still has the device (returns
    :class:`Pending`), the guest is asked to release it, the lock is let go, and the
    wait lasts until the device is gone or the domain no longer runs; then ``attempt``
    runs again. ``timeout`` (with ``details``; ``what`` names the device in the
    message, ``"disk 'vdb'"``) when ``timeout_s`` passes first."""
    deadline = trio.current_time() + timeout_s
    while True:
        async with vms.changing(name):
            pending = await attempt()
            if pending is None:
                return
            await vms.hv_pool.run(vms.hv.unplug_device, name, pending.xml, pending.alias)
            log.info("vm.unplug_requested", extra=kv(vm=name, device=what))
        with trio.move_on_at(deadline):
            while await plugged(vms, name, pending.find):  # noqa: ASYNC110 - polled
                await trio.sleep(POLL_S)
            continue
        raise errors.Timeout(
            f"the guest of vm {name!r} has not released {what} within {timeout_s:g} s; it "
            "keeps it (the request stays with it: call again once it has let go, or stop "
            "the VM and detach then)",
            details,
        )
