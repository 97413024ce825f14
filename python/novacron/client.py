"""Clients for plugins and scripts: :func:`connect` (trio) and :class:`SyncClient`.

Both speak MessagePack-RPC over the daemon's Unix socket, or over mutual TLS to its
TCP listener (:func:`connect_tls`, :meth:`SyncClient.tls`), and raise the
:mod:`novacron.errors` class matching the error code the daemon sent::

    async with novacron.client.connect() as nc:
        vms = await nc.call("vm.list")

    with novacron.client.SyncClient() as nc:
        nc.call("vm.start", name="web1")

    with SyncClient.tls("node1:7443", TlsFiles(cert, key, ca)) as nc:
        nc.call("auth.whoami")
"""

from __future__ import annotations

import itertools
import math
import socket
import ssl
import struct
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import trio

from novacron import errors, paths
from novacron.rpc import codec

READ_SIZE = 256 * 1024
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class TlsFiles:
    """The client's certificate and key, and the cluster CA that signed the daemon's."""

    cert: Path
    key: Path
    ca: Path

    def context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        try:
            ctx.load_cert_chain(self.cert, self.key)
            ctx.load_verify_locations(cafile=str(self.ca))
        except (OSError, ssl.SSLError) as exc:
            raise errors.InvalidParams(f"TLS files unusable: {exc}") from None
        return ctx


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise errors.InvalidParams(f"address {address!r} is not host:port")
    return host.strip("[]"), int(port)


def _params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def _protocol_error(note: codec.Notification) -> errors.ProtocolError:
    """The exception for the server's ``protocol.error`` notification."""
    info = note.params[0] if note.params and isinstance(note.params[0], dict) else {}
    return errors.ProtocolError(str(info.get("message")), code=str(info.get("code")))


def _result(response: codec.Response) -> Any:
    if response.error is not None:
        raise errors.from_wire(response.error)
    return response.result


class _Pending:
    __slots__ = ("done", "response")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.response: codec.Response | None = None


class Client:
    """A trio client; many calls may be in flight at once. Create it with :func:`connect`."""

    def __init__(self, stream: trio.abc.Stream, max_message: int) -> None:
        self._stream = stream
        self._decoder = codec.Decoder(max_message)
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._send_lock = trio.Lock()
        self._notify_send, self._notify_recv = trio.open_memory_channel[codec.Notification](
            math.inf
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
                await self._stream.send_all(codec.encode_request(msgid, method, _params(params)))
            await pending.done.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            with trio.move_on_after(1):  # let the reader pick up a protocol.error, if any
                await pending.done.wait()
            raise self._failure or errors.Unavailable("connection to novacrond lost") from None
        finally:
            self._pending.pop(msgid, None)
        if pending.response is None:
            raise self._failure or errors.Unavailable("connection to novacrond lost")
        return _result(pending.response)

    async def notifications(self) -> AsyncIterator[codec.Notification]:
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
        elif isinstance(message, codec.Notification):
            if message.method == "protocol.error":
                self._failure = _protocol_error(message)
            self._notify_send.send_nowait(message)


@asynccontextmanager
async def _serving(stream: trio.abc.Stream, max_message: int) -> AsyncIterator[Client]:
    """A client on a connected stream, its reader running until the block ends."""
    async with stream, trio.open_nursery() as nursery:
        client = Client(stream, max_message)
        nursery.start_soon(client._reader)
        try:
            yield client
        finally:
            nursery.cancel_scope.cancel()


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
) -> AsyncIterator[Client]:
    """Opens a trio client on a daemon's TLS listener (``host:port``).

    ``server_name`` is the name the daemon's node certificate must carry (default: the
    host part of ``address``).
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
    async with _serving(stream, max_message) as client:
        yield client


class SyncClient:
    """A blocking client (one call at a time) for scripts and the CLI."""

    def __init__(
        self,
        path: str | Path | None = None,
        timeout: float | None = None,
        max_message: int = codec.DEFAULT_MAX_MESSAGE,
        *,
        sock: socket.socket | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else paths.default_client_socket()
        if sock is not None:
            self._sock = sock
        else:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self._sock.connect(str(self.path))
            except OSError as exc:
                self._sock.close()
                raise errors.Unavailable(f"cannot connect to {self.path}: {exc.strerror}") from None
        if timeout is not None:
            # a kernel receive timeout keeps the socket blocking: Python's settimeout()
            # would add a poll() before every recv() (measurable per call)
            seconds = int(timeout)
            micros = int((timeout - seconds) * 1_000_000)
            self._sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", seconds, micros)
            )
        self._decoder = codec.Decoder(max_message)
        self._ids = itertools.count(1)
        self._queue: deque[codec.Message] = deque()

    @classmethod
    def tls(
        cls,
        address: str,
        files: TlsFiles,
        timeout: float | None = None,
        server_name: str | None = None,
        max_message: int = codec.DEFAULT_MAX_MESSAGE,
    ) -> SyncClient:
        """A client on a daemon's TLS listener (``host:port``), mutual TLS 1.3."""
        host, port = split_address(address)
        context = files.context()
        try:
            raw = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
        except OSError as exc:
            raise errors.Unavailable(f"cannot connect to {address}: {exc.strerror}") from None
        try:
            sock = context.wrap_socket(raw, server_hostname=server_name or host)
            sock.settimeout(None)
        except (OSError, ssl.SSLError) as exc:
            raw.close()
            raise errors.Unavailable(f"TLS handshake with {address} failed: {exc}") from None
        return cls(address, timeout, max_message, sock=sock)

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def _next(self) -> codec.Message:
        while not self._queue:
            try:
                data = self._sock.recv(READ_SIZE)
            except (BlockingIOError, TimeoutError, ssl.SSLWantReadError):
                raise errors.Timeout("no answer from novacrond in time") from None
            except (ssl.SSLError, ConnectionResetError) as exc:
                # e.g. the server's alert for a revoked or rejected certificate
                raise errors.Unavailable(f"connection to novacrond failed: {exc}") from None
            if not data:
                raise errors.Unavailable("connection to novacrond closed")
            self._queue.extend(self._decoder.feed(data))
        return self._queue.popleft()

    def call(self, method: str, **params: Any) -> Any:
        msgid = next(self._ids) % (codec.MAX_MSGID + 1)
        try:
            self._sock.sendall(codec.encode_request(msgid, method, _params(params)))
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            raise self._closed_reason() from None
        held: list[codec.Message] = []
        try:
            while True:
                message = self._next()
                if isinstance(message, codec.Response) and message.msgid == msgid:
                    return _result(message)
                if isinstance(message, codec.Notification) and message.method == "protocol.error":
                    raise _protocol_error(message)
                held.append(message)
        finally:
            self._queue.extendleft(reversed(held))

    def _closed_reason(self) -> errors.NovaCronError:
        """Why the server closed: its ``protocol.error`` if it sent one."""
        try:
            while True:
                message = self._next()
                if isinstance(message, codec.Notification) and message.method == "protocol.error":
                    return _protocol_error(message)
        except (errors.NovaCronError, OSError):
            pass
        return errors.Unavailable("connection to novacrond closed")

    def events(self, topics: list[str] | None = None) -> Iterator[dict[str, Any]]:
        """Subscribes now and returns an iterator over event maps."""
        self.call("events.subscribe", topics=topics)
        return self._events()

    def _events(self) -> Iterator[dict[str, Any]]:
        while True:
            message = self._next()
            if (
                isinstance(message, codec.Notification)
                and message.method == "event"
                and message.params
            ):
                yield message.params[0]
