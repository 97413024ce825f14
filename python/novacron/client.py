"""The trio client for plugins and async code: :func:`connect` and :func:`connect_tls`.

Both speak MessagePack-RPC over the daemon's Unix socket, or over mutual TLS to its
TCP listener, and raise the :mod:`novacron.errors` class matching the error code the
daemon sent::

    async with novacron.client.connect() as nc:
        vms = await nc.call("vm.list")

The blocking client lives in :mod:`novacron.sync_client` (no trio import, for the CLI);
:class:`SyncClient`, :class:`TlsFiles` and :func:`split_address` are re-exported here.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from novacron import errors, paths
from novacron.rpc import codec
from novacron.sync_client import (
    CONNECT_TIMEOUT_S,
    READ_SIZE,
    SyncClient,
    TlsFiles,
    clean_params,
    protocol_error,
    result_of,
    split_address,
)

__all__ = ["Client", "SyncClient", "TlsFiles", "connect", "connect_tls", "split_address"]


class _Pending:
    __slots__ = ("done", "response")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.response: codec.Response | None = None


class Client:
    """A trio client; many calls may be in flight at once. Create it with :func:`connect`."""

    def __init__(
        self, stream: trio.abc.Stream, max_message: int, notification_buffer: float = math.inf
    ) -> None:
        self._stream = stream
        self._decoder = codec.Decoder(max_message)
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._send_lock = trio.Lock()
        # notifications not yet taken by notifications(): past a finite buffer, the client
        # stops reading (and the daemon's sending waits) until they are taken
        self._notify_send, self._notify_recv = trio.open_memory_channel[codec.Notification](
            notification_buffer
        )
        self._failure: errors.NovaCronError | None = None

    async def call(self, method: str, **params: Any) -> Any:
        """Calls ``method`` with named arguments (None values are left out)."""
        if self._failure is not None:
            raise self._failure
        msgid = next(self._ids) % (codec.MAX_MSGID + 1)
        pending = self._pending[msgid] = _Pending()
        try:
            async with self._send_lock:
                await self._stream.send_all(
                    codec.encode_request(msgid, method, clean_params(params))
                )
            await pending.done.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            with trio.move_on_after(1):  # let the reader pick up a protocol.error, if any
                await pending.done.wait()
            raise self._failure or errors.Unavailable("connection to novacrond lost") from None
        finally:
            self._pending.pop(msgid, None)
        if pending.response is None:
            raise self._failure or errors.Unavailable("connection to novacrond lost")
        return result_of(pending.response)

    async def notifications(self) -> AsyncGenerator[codec.Notification, None]:
        async for note in self._notify_recv:
            yield note

    async def subscribe(self, topics: list[str] | None = None) -> AsyncIterator[dict[str, Any]]:
        """Subscribes now and returns an async iterator over event maps."""
        await self.call("events.subscribe", topics=topics)
        return self._events()

    async def _events(self) -> AsyncIterator[dict[str, Any]]:
        async for note in self.notifications():
            if note.method == "event" and note.params and isinstance(note.params[0], dict):
                yield note.params[0]

    async def _reader(self) -> None:
        try:
            while True:
                data = await self._stream.receive_some(READ_SIZE)
                if not data:
                    break
                for message in self._decoder.feed(data):
                    if isinstance(message, codec.Notification):
                        if message.method == "protocol.error":
                            self._failure = protocol_error(message)
                        await self._notify_send.send(message)
                    else:
                        self._dispatch(message)
        except errors.ProtocolError as exc:
            self._failure = exc
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            if self._failure is None:
                self._failure = errors.Unavailable("connection to novacrond closed")
            for pending in self._pending.values():
                pending.done.set()
            self._notify_send.close()

    def _dispatch(self, message: codec.Message) -> None:
        if isinstance(message, codec.Response):
            pending = self._pending.get(message.msgid)
            if pending is not None:
                pending.response = message
                pending.done.set()


@asynccontextmanager
async def _serving(
    stream: trio.abc.Stream, max_message: int, notification_buffer: float = math.inf
) -> AsyncIterator[Client]:
    """A client on a connected stream, its reader running until the block ends. What
    the block raises comes out as it is, not in an exception group (the reader task is
    the client's own business)."""
    async with stream:
        try:
            async with trio.open_nursery() as nursery:
                client = Client(stream, max_message, notification_buffer)
                nursery.start_soon(client._reader)
                try:
                    yield client
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            if len(group.exceptions) != 1:
                raise
            raise group.exceptions[0] from None


@asynccontextmanager
async def connect(
    path: str | Path | None = None, max_message: int = codec.DEFAULT_MAX_MESSAGE
) -> AsyncIterator[Client]:
    """Opens a trio client on the daemon's Unix socket."""
    target = Path(path) if path is not None else paths.default_client_socket()
    try:
        stream = await trio.open_unix_socket(str(target))
    except OSError as exc:
        raise errors.Unavailable(f"cannot connect to {target}: {exc.strerror}") from None
    async with _serving(stream, max_message) as client:
        yield client


@asynccontextmanager
async def connect_tls(
    address: str,
    files: TlsFiles,
    server_name: str | None = None,
    max_message: int = codec.DEFAULT_MAX_MESSAGE,
    notification_buffer: float = math.inf,
) -> AsyncIterator[Client]:
    """Opens a trio client on a daemon's TLS listener (``host:port``).

    ``server_name`` is the name the daemon's node certificate must carry (default: the
    host part of ``address``); ``notification_buffer``: see :class:`Client`.
    """
    host, port = split_address(address)
    try:
        tcp = await trio.open_tcp_stream(host, port)
    except OSError as exc:
        raise errors.Unavailable(f"cannot connect to {address}: {exc.strerror}") from None
    stream = trio.SSLStream(tcp, files.context(), server_hostname=server_name or host)
    try:
        with trio.fail_after(CONNECT_TIMEOUT_S):
            await stream.do_handshake()
    except (trio.BrokenResourceError, trio.TooSlowError) as exc:
        await trio.aclose_forcefully(stream)
        raise errors.Unavailable(f"TLS handshake with {address} failed: {exc}") from None
    async with _serving(stream, max_message, notification_buffer) as client:
        yield client
