"""The blocking client, for scripts and the CLI: :class:`SyncClient`.

It speaks MessagePack-RPC over the daemon's Unix socket, or over mutual TLS 1.3 to its
TCP listener (:meth:`SyncClient.tls`), and raises the :mod:`novacron.errors` class
matching the error code the daemon sent::

    with SyncClient() as nc:
        nc.call("vm.start", name="web1")

    with SyncClient.tls("node1:7443", TlsFiles(cert, key, ca)) as nc:
        nc.call("auth.whoami")

Plain sockets only: importing it does not import trio, so a CLI command starts
quickly. The trio client (:mod:`novacron.client`) shares its helpers.
"""

from __future__ import annotations

import itertools
import select
import socket
import ssl
import struct
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

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
    if not 1 <= int(port) <= 65535:
        raise errors.InvalidParams(f"address {address!r}: the port must be 1 to 65535")
    return host.strip("[]"), int(port)


def clean_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def protocol_error(note: codec.Notification) -> errors.ProtocolError:
    """The exception for the server's ``protocol.error`` notification."""
    info = note.params[0] if note.params and isinstance(note.params[0], dict) else {}
    return errors.ProtocolError(str(info.get("message")), code=str(info.get("code")))


def result_of(response: codec.Response) -> Any:
    if response.error is not None:
        raise errors.from_wire(response.error)
    return response.result


MAX_TIMEOUT_S = 366 * 86400


def check_timeout(timeout: float) -> None:
    """A client's answer timeout: more than 0 and at most a year (``InvalidParams``
    otherwise: NaN, infinity and negative values used to crash or wait forever)."""
    if not 0 < timeout <= MAX_TIMEOUT_S:  # (False for NaN)
        raise errors.InvalidParams(
            f"timeout must be more than 0 and at most {MAX_TIMEOUT_S} seconds, not {timeout}"
        )


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
        if timeout is not None:
            check_timeout(timeout)
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
            # would add a poll() before every recv() (measurable per call); a zero one
            # would mean none, so the shortest is a microsecond
            seconds, micros = divmod(max(round(timeout * 1_000_000), 1), 1_000_000)
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
        if timeout is not None:
            check_timeout(timeout)
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
            self._sock.sendall(codec.encode_request(msgid, method, clean_params(params)))
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            raise self._closed_reason() from None
        held: list[codec.Message] = []
        try:
            while True:
                message = self._next()
                if isinstance(message, codec.Response) and message.msgid == msgid:
                    return result_of(message)
                if isinstance(message, codec.Notification) and message.method == "protocol.error":
                    raise protocol_error(message)
                held.append(message)
        finally:
            self._queue.extendleft(reversed(held))

    def _closed_reason(self) -> errors.NovaCronError:
        """Why the server closed: its ``protocol.error`` if it sent one."""
        try:
            while True:
                message = self._next()
                if isinstance(message, codec.Notification) and message.method == "protocol.error":
                    return protocol_error(message)
        except (errors.NovaCronError, OSError):
            pass
        return errors.Unavailable("connection to novacrond closed")

    def fileno(self) -> int:
        """The connection's socket, for ``select`` beside other files."""
        return self._sock.fileno()

    def notifications(self, timeout: float = 0.0) -> list[codec.Notification]:
        """The notifications received so far; if there are none, those that arrive
        within ``timeout`` seconds (one read). Responses stay queued for their calls;
        the server's ``protocol.error`` is raised."""
        if not any(isinstance(m, codec.Notification) for m in self._queue) and self._readable(
            timeout
        ):
            try:
                data = self._sock.recv(READ_SIZE)
            except (BlockingIOError, TimeoutError, ssl.SSLWantReadError):
                data = None  # (a TLS record not complete yet)
            except (ssl.SSLError, ConnectionResetError) as exc:
                raise errors.Unavailable(f"connection to novacrond failed: {exc}") from None
            if data == b"":
                raise errors.Unavailable("connection to novacrond closed")
            if data:
                self._queue.extend(self._decoder.feed(data))
        notes = [m for m in self._queue if isinstance(m, codec.Notification)]
        if notes:
            kept = [m for m in self._queue if not isinstance(m, codec.Notification)]
            self._queue.clear()
            self._queue.extend(kept)
        for note in notes:
            if note.method == "protocol.error":
                raise protocol_error(note)
        return notes

    def _readable(self, timeout: float) -> bool:
        if isinstance(self._sock, ssl.SSLSocket) and self._sock.pending():
            return True  # decrypted bytes already inside the TLS layer
        ready, _, _ = select.select([self._sock], [], [], timeout)
        return bool(ready)

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
