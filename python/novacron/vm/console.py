"""A running VM's serial console, interactive, through libvirt (``virDomainOpenConsole``).

A VM's first serial port is a pseudo-terminal whose output libvirt also appends to the
VM's console log (``<serial type='pty'>`` with ``<log>``, see :mod:`domain_xml`). libvirt
lets one client at a time hold it: opening it again answers ``conflict`` unless
``force`` takes it over, which ends the earlier holder's stream.

The stream is non-blocking. libvirt's event loop (its own thread, see
:mod:`novacron.vm.events`) says when it has data; the callback only wakes the trio task
that reads and then stops listening until that task has drained the stream, so a
reader that cannot keep up leaves the guest's output waiting in QEMU (as a serial line
would) instead of in the daemon's memory. Every stream call runs on a worker thread of
the caller's :class:`~novacron.blocking.Pool`.
"""

from __future__ import annotations

import contextlib
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import libvirt
import trio

from novacron import errors
from novacron.blocking import Pool
from novacron.vm.driver import Hypervisor
from novacron.vm.libvirt_errors import libvirt_errors, translate

READ_SIZE = 64 * 1024  # the most one read returns (the guest's output is far slower)
WRITE_TIMEOUT_S = 10.0  # how long a write may wait for libvirt to take its bytes
LIVENESS_S = 2.0  # how often a console without output looks whether libvirt's connection lives
_EVENTS = (
    libvirt.VIR_STREAM_EVENT_READABLE
    | libvirt.VIR_STREAM_EVENT_ERROR
    | libvirt.VIR_STREAM_EVENT_HANGUP
)
_AGAIN = -2  # libvirt's answer of a non-blocking stream with nothing to give or take


def has_pty_console(xml: str) -> bool:
    """Whether the domain's serial console is a pseudo-terminal (one a client can open);
    VMs defined before NovaCron made it one write their console to a file only."""
    dom = ET.fromstring(xml)  # noqa: S314 - XML produced by libvirtd, not by a client
    devices = dom.findall("devices/serial") + dom.findall("devices/console")
    return any(el.get("type") == "pty" for el in devices)


def open_stream(
    hv: Hypervisor, name: str, force: bool
) -> tuple[libvirt.virStream, libvirt.virConnect]:
    """The console stream of running VM ``name`` and the libvirt connection it is on
    (blocking; a worker thread). ``conflict`` when the VM is not running, has no pty
    console or another client holds it (and ``force`` is false)."""
    with libvirt_errors():
        dom = hv.domain(name)
        conn = dom.connect()
        if not dom.isActive():
            raise errors.Conflict(f"VM {name!r} is not running", {"vm": name})
        if not has_pty_console(dom.XMLDesc(0)):
            raise errors.Conflict(
                f"VM {name!r} has no interactive console (its serial port writes to a log"
                " file only, as VMs defined before this release do)",
                {"vm": name},
            )
        stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
    flags = libvirt.VIR_DOMAIN_CONSOLE_SAFE
    if force:
        flags |= libvirt.VIR_DOMAIN_CONSOLE_FORCE
    try:
        dom.openConsole(None, stream, flags)
    except libvirt.libvirtError as exc:
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
        held = "console session" in (exc.get_error_message() or "")  # (libvirt 9's words)
        if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_FAILED and held:
            raise errors.Conflict(
                f"another client holds VM {name!r}'s console; force takes it over",
                {"vm": name, "libvirt_code": exc.get_error_code()},
            ) from None
        raise translate(exc) from None
    return stream, conn


class ConsoleStream:
    """One open console: :meth:`read` the guest's output, :meth:`write` its input,
    :meth:`close` once. Created on the trio thread that uses it."""

    def __init__(self, stream: libvirt.virStream, pool: Pool, conn: libvirt.virConnect) -> None:
        self._stream = stream
        self._conn = conn  # (looked at while no output comes: libvirtd may have gone)
        self._pool = pool
        self._token = trio.lowlevel.current_trio_token()
        self._ready = trio.Event()
        self._listening = False
        self._closed = False
        self.bytes_read = 0
        self.bytes_written = 0

    # -- libvirt's event thread ------------------------------------------------------

    def _on_event(self, stream: libvirt.virStream, _events: int, _opaque: Any) -> None:
        # never raise into libvirt's C loop; stop listening until the reader drained it
        with contextlib.suppress(Exception):
            stream.eventUpdateCallback(0)
        with contextlib.suppress(Exception):  # (trio gone: nobody to wake)
            self._token.run_sync_soon(self._wake)

    def _wake(self) -> None:
        self._ready.set()

    # -- worker threads ----------------------------------------------------------------

    def _recv(self) -> bytes | None:
        with libvirt_errors():
            got = self._stream.recv(READ_SIZE)
        if isinstance(got, bytes):
            return got
        if got == _AGAIN:
            return None
        raise errors.Internal(f"libvirt's console stream answered {got}")

    def _listen(self) -> None:
        with libvirt_errors():
            if self._listening:
                self._stream.eventUpdateCallback(_EVENTS)
            else:
                self._stream.eventAddCallback(_EVENTS, self._on_event, None)
                self._listening = True

    def _send(self, data: bytes) -> int:
        with libvirt_errors():
            sent = self._stream.send(data)
        if sent == _AGAIN:
            return 0
        if sent < 0:
            raise errors.Internal(f"libvirt's console stream answered {sent}")
        return int(sent)

    def _alive(self) -> bool:
        try:
            return bool(self._conn.isAlive())
        except libvirt.libvirtError:
            return False

    def _end(self) -> None:
        if self._listening:
            with contextlib.suppress(libvirt.libvirtError):
                self._stream.eventRemoveCallback()
        with contextlib.suppress(libvirt.libvirtError):
            self._stream.abort()

    # -- trio ----------------------------------------------------------------------------

    async def read(self) -> bytes:
        """The guest's next output, as soon as there is some; ``b""`` once the console
        ended (the VM stopped or left). libvirt's failure (another client took the
        console over) is raised translated."""
        while True:
            got = await self._pool.run(self._recv)
            if got is not None:
                self.bytes_read += len(got)
                return got
            self._ready = trio.Event()  # before listening: a wake-up can't be missed
            await self._pool.run(self._listen)
            # libvirt says nothing to a stream whose connection died (libvirtd stopped or
            # restarted): while no output comes, look at the connection now and then
            while not self._ready.is_set():
                with trio.move_on_after(LIVENESS_S):
                    await self._ready.wait()
                if not self._ready.is_set() and not await self._pool.run(self._alive):
                    raise errors.Unavailable(
                        "the connection to libvirt ended (libvirtd stopped or restarted)"
                    )

    async def write(self, data: bytes) -> None:
        """Gives ``data`` to the guest, all of it; ``timeout`` if libvirt takes none of it
        for :data:`WRITE_TIMEOUT_S`."""
        view = memoryview(data)
        deadline = trio.current_time() + WRITE_TIMEOUT_S
        while view:
            sent = await self._pool.run(self._send, bytes(view))
            if sent:
                self.bytes_written += sent
                view = view[sent:]
                deadline = trio.current_time() + WRITE_TIMEOUT_S
            elif trio.current_time() > deadline:
                raise errors.Timeout("the console took no input for 10 s")
            else:
                await trio.sleep(0.02)

    async def close(self) -> None:
        """Ends the stream (libvirt frees the console for another client); shielded, and
        a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            await self._pool.run(self._end)


def read_log(path: Path, offset: int | None, limit: int) -> dict[str, Any]:
    """Up to ``limit`` bytes of the console log at ``path`` (blocking; a worker thread):
    from byte ``offset``, or the last ``limit`` bytes when ``offset`` is None. An offset
    past the end of a log that was cut short since (a new log after the VM was deleted
    and made again) reads from its start. A log not there yet (the VM never ran) is
    empty."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return {"data": b"", "offset": 0, "end": 0}
    except OSError as exc:  # (a symbolic link put there: not followed)
        raise errors.Conflict(f"cannot read the console log: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as log_file:
        end = os.fstat(fd).st_size
        if offset is None:
            offset = max(0, end - limit)
        start = offset if offset <= end else 0
        log_file.seek(start)
        data = log_file.read(min(limit, end - start))
    return {"data": data, "offset": start, "end": start + len(data)}
