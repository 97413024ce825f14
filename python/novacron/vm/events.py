"""libvirt lifecycle events: libvirt's default event loop on one dedicated thread,
events handed to trio through a memory channel and published on the event bus."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

import libvirt
import trio

from novacron import errors
from novacron.eventbus import EventBus
from novacron.logs import kv
from novacron.vm import states
from novacron.vm.driver import Hypervisor

log = logging.getLogger("novacron.vm.events")

RECHECK_S = 2.0  # how often the connection is checked (libvirtd restarts drop callbacks)

_impl_lock = threading.Lock()
_impl_registered = False


def ensure_event_impl() -> None:
    """Registers libvirt's default event loop; must happen before any connection opens."""
    global _impl_registered  # noqa: PLW0603 - process-wide libvirt state
    with _impl_lock:
        if not _impl_registered:
            libvirt.virEventRegisterDefaultImpl()
            _impl_registered = True


class _LoopThread:
    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="libvirt-events", daemon=True)

    def _run(self) -> None:
        # a periodic timer makes virEventRunDefaultImpl return so the stop flag is seen
        libvirt.virEventAddTimeout(500, lambda *_: None, None)
        while not self._stop.is_set():
            if libvirt.virEventRunDefaultImpl() < 0:
                log.error("libvirt.event_loop_failed")
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


class LibvirtEvents:
    """Forwards lifecycle events of managed VMs as ``vm.state`` events."""

    def __init__(
        self,
        hv: Hypervisor,
        bus: EventBus,
        tenant_of: Callable[[str], str | None],
    ) -> None:
        """``tenant_of``: the tenant of a NovaCron VM's domain, None for any other domain
        (whose events are not forwarded)."""
        self._hv = hv
        self._bus = bus
        self._tenant_of = tenant_of
        self.received = 0
        self.dropped = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        ensure_event_impl()
        token = trio.lowlevel.current_trio_token()
        send, recv = trio.open_memory_channel[tuple[str, int, int]](4096)

        def callback(_conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
            # runs on the libvirt event thread: never raise into libvirt's C loop
            try:
                trio.from_thread.run_sync(
                    send.send_nowait, (dom.name(), event, detail), trio_token=token
                )
            except trio.WouldBlock:
                self.dropped += 1
            except Exception:
                self.dropped += 1

        loop = _LoopThread()
        loop.start()
        registered: tuple[Any, int] | None = None
        started = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._forward, recv)
                while True:
                    try:
                        conn = await trio.to_thread.run_sync(lambda: self._hv.conn)
                        if registered is None or registered[0] is not conn:
                            # a new connection (first, or libvirtd restarted): register again
                            cb_id = await trio.to_thread.run_sync(
                                conn.domainEventRegisterAny,
                                None,
                                libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                callback,
                                None,
                            )
                            registered = (conn, cb_id)
                            log.info("libvirt.events_registered", extra=kv(uri=self._hv.uri))
                    except (errors.Unavailable, libvirt.libvirtError) as exc:
                        log.warning("libvirt.events_unavailable", extra=kv(error=str(exc)))
                    if not started:
                        started = True
                        task_status.started()
                    await trio.sleep(RECHECK_S)
        finally:
            loop.stop()
            if registered is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    registered[0].domainEventDeregisterAny(registered[1])

    async def _forward(self, recv: trio.MemoryReceiveChannel[tuple[str, int, int]]) -> None:
        async for name, event, detail in recv:
            self.received += 1
            tenant = self._tenant_of(name)
            if tenant is None:
                continue
            state, reason = states.event_names(event, detail)
            self._bus.publish(
                {
                    "topic": "vm.state",
                    "vm": name,
                    "tenant": tenant,
                    "state": state,
                    "reason": reason,
                }
            )

    def statistics(self) -> dict[str, int]:
        return {"received": self.received, "dropped": self.dropped}
