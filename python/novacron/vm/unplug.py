"""Taking a device out of a running guest: the guest is asked to release it (ACPI eject
on the PC machine) and the daemon waits, up to a deadline, until the running domain no
longer has it. A guest may never answer (booted without ACPI, no hot-plug support in its
kernel, busy): then nothing is changed and the caller gets ``timeout``; the request stays
with the guest, so asking again once it let go finds the device gone.

The request is sent by the running domain's alias for the device, for which libvirt only
sends it and returns; by the device's XML (a driver that names no aliases) libvirt first
waits a few seconds itself. The deadline counts from the call either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import trio

from novacron import errors
from novacron.vm.service import VmService

TIMEOUT_S = 30.0  # how long a running guest has to release a device, by default
MAX_TIMEOUT_S = 600.0
POLL_S = 0.5


class Plugged(Protocol):
    """A device as the running domain's XML describes it."""

    @property
    def alias(self) -> str | None: ...


async def unplug(
    vms: VmService,
    name: str,
    xml: str,
    find: Callable[[str], Plugged | None],
    timeout_s: float,
    what: str,
    details: dict[str, Any],
) -> None:
    """Asks the running guest of VM ``name`` to release the device ``find`` finds in the
    live domain XML (``xml``: the device's own, for a driver without aliases) and waits
    until it is gone; ``timeout`` (with ``details``) after ``timeout_s``. A device the
    guest already released is not asked for again. ``what`` names it in the message
    (``"disk 'vdb'"``)."""

    async def plugged() -> Plugged | None:
        return find(await vms.hv_pool.run(vms.hv.xml, name))

    deadline = trio.current_time() + timeout_s
    device = await plugged()
    if device is None:
        return
    await vms.hv_pool.run(vms.hv.unplug_device, name, xml, device.alias)
    with trio.move_on_at(deadline):
        while await plugged():  # noqa: ASYNC110 - libvirt's domain is polled, not awaited
            await trio.sleep(POLL_S)
        return
    raise errors.Timeout(
        f"the guest of vm {name!r} has not released {what} within {timeout_s:g} s; it "
        "keeps it (the request stays with it: call again once it has let go, or stop the "
        "VM and detach then)",
        details,
    )
