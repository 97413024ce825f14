"""MessagePack-RPC framing without I/O.

Bytes go in (:meth:`Decoder.feed`), messages come out; ``encode_*`` turn messages into
bytes. The server, the client and the tests all drive this same codec. The message
shapes are the MessagePack-RPC specification's (as used by Neovim):

* request ``[0, msgid, method, params]``
* response ``[1, msgid, error, result]``
* notification ``[2, method, params]``

Anything else (bytes that are not MessagePack, a message that is not one of these
shapes, a message larger than the configured limit) raises :class:`ProtocolError`,
and the decoder is then unusable: the connection that sent it must be closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgpack

from novacron.errors import InvalidParams, ProtocolError

REQUEST: Final = 0
RESPONSE: Final = 1
NOTIFICATION: Final = 2

DEFAULT_MAX_MESSAGE: Final = 8 * 1024 * 1024
MAX_MSGID: Final = 2**32 - 1
# What a server takes in one request: the decoder keeps every array, map and item as a
# Python object, some 60-70 bytes for a one-byte empty map, so bytes alone do not bound
# a message's memory. No method takes more than 256 items in an array or map, or needs
# more than a few dozen of them.
REQUEST_MAX_ITEMS: Final = 256
REQUEST_MAX_CONTAINERS: Final = 256


@dataclass(frozen=True, slots=True)
class Request:
    msgid: int
    method: str
    params: list[Any]

    def named_params(self) -> dict[str, Any]:
        """The single map of named arguments (``[]`` means none).

        Raises :class:`InvalidParams` for any other shape: the message is valid
        MessagePack-RPC, only its arguments are wrong, so the connection stays open.
        """
        return named_params(self.params)


@dataclass(frozen=True, slots=True)
class Response:
    msgid: int
    error: Any
    result: Any


@dataclass(frozen=True, slots=True)
class Notification:
    method: str
    params: list[Any]


Message = Request | Response | Notification


def named_params(params: list[Any]) -> dict[str, Any]:
    if not params:
        return {}
    if len(params) != 1 or not isinstance(params[0], dict):
        raise InvalidParams("params must be an empty array or an array holding one map")
    args: dict[str, Any] = params[0]
    for key in args:
        if not isinstance(key, str):
            raise InvalidParams("parameter names must be strings")
    return args


def _check_msgid(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_MSGID:
        raise ProtocolError(f"msgid must be an unsigned 32-bit integer, got {value!r:.40}")
    return value


def _check_method(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ProtocolError("method must be a non-empty string")
    return value


def _check_params(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ProtocolError("params must be an array")
    return value


def parse_message(obj: Any) -> Message:
    """Validates one decoded MessagePack object as a MessagePack-RPC message."""
    if not isinstance(obj, list) or not obj:
        raise ProtocolError("a message must be a non-empty array")
    kind = obj[0]
    if kind == REQUEST and type(kind) is int and len(obj) == 4:
        return Request(_check_msgid(obj[1]), _check_method(obj[2]), _check_params(obj[3]))
    if kind == RESPONSE and type(kind) is int and len(obj) == 4:
        return Response(_check_msgid(obj[1]), obj[2], obj[3])
    if kind == NOTIFICATION and type(kind) is int and len(obj) == 3:
        return Notification(_check_method(obj[1]), _check_params(obj[2]))
    raise ProtocolError(f"not a MessagePack-RPC message (type {kind!r:.20}, {len(obj)} elements)")


class Decoder:
    """Incremental decoder for one connection's byte stream.

    ``max_items`` bounds each array's and map's items, ``max_containers`` the arrays and
    maps of one message (a server's decoder takes the ``REQUEST_`` limits; a client's
    reads answers of any shape up to the size limit).
    """

    def __init__(
        self,
        max_message_size: int = DEFAULT_MAX_MESSAGE,
        max_items: int | None = None,
        max_containers: int | None = None,
    ) -> None:
        if max_message_size < 16:
            raise ValueError("max_message_size is too small")
        self.max_message_size = max_message_size
        self._max_containers = max_containers or 0  # (counted only when given)
        self._containers = 0  # completed arrays and maps of the message begun
        counted: dict[str, Any] = {}
        if max_items is not None:
            counted.update(max_array_len=max_items, max_map_len=max_items)
        if max_containers is not None:
            counted.update(list_hook=self._count, object_pairs_hook=self._count_map)
        self._unpacker = msgpack.Unpacker(
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_buffer_size=max_message_size,
            **counted,
        )
        self._failed = False
        self._fed = 0  # bytes fed in all
        self._begun = 0  # where the message not yet complete began

    @property
    def pending(self) -> int:
        """Bytes of a message begun but not yet complete."""
        return self._fed - self._begun

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Feeds bytes; returns every message they complete, in order.

        On bad bytes raises :class:`ProtocolError`; its ``decoded`` attribute holds the
        messages that were complete before them (a server still answers those).
        """
        if self._failed:
            raise ProtocolError("decoder already failed")
        messages: list[Message] = []
        try:
            # Feed only what fits beside the message begun and drain in between: more
            # bytes than that without the message ending means it exceeds the limit.
            # (Where it began is counted here: the unpacker's own position moves on
            # through a message as it parses its arrays and maps, whose items it
            # keeps as objects, not bytes.)
            pos, size = 0, len(data)
            while pos < size:
                free = self.max_message_size - (self._fed - self._begun)
                if free <= 0:
                    raise msgpack.BufferFull
                # the usual case, a whole chunk that fits, is fed without slicing
                chunk = data if pos == 0 and size <= free else memoryview(data)[pos : pos + free]
                self._unpacker.feed(chunk)
                self._fed += len(chunk)
                pos += len(chunk)
                for obj in self._unpacker:
                    self._begun = self._unpacker.tell()  # the end of this message
                    self._containers = 0
                    messages.append(parse_message(obj))
        except ProtocolError as exc:
            raise self._fail(exc, messages) from None
        except msgpack.BufferFull:
            raise self._fail(self._too_large(), messages) from None
        except ValueError as exc:
            # msgpack's own limits: "300 exceeds max_array_len(256)" (and _map_)
            if "exceeds max_" in str(exc):
                raise self._fail(
                    ProtocolError(f"an array or map is too long: {exc}", code="too_large"), messages
                ) from None
            raise self._fail(self._malformed(exc), messages) from None
        except Exception as exc:  # msgpack signals malformed data with many types
            raise self._fail(self._malformed(exc), messages) from None
        return messages

    def _count(self, container: Any) -> Any:
        """Counts an array or map the unpacker has just completed (its hooks)."""
        self._containers += 1
        if self._containers > self._max_containers:
            raise ProtocolError(
                f"a message holds more than {self._max_containers} arrays and maps",
                code="too_large",
            )
        return container

    def _count_map(self, pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
        """A map the unpacker has just completed, from its pairs: counted, and refused
        when a key comes twice (which one a reader keeps is up to the reader: a
        request means one thing to every reader or is not taken)."""
        self._count(pairs)
        made = dict(pairs)
        if len(made) != len(pairs):
            seen: set[Any] = set()
            for key, _ in pairs:
                if key in seen:
                    raise ProtocolError(f"a map holds the key {key!r:.40} twice")
                seen.add(key)
        return made

    def _too_large(self) -> ProtocolError:
        return ProtocolError(
            f"message exceeds the {self.max_message_size}-byte limit", code="too_large"
        )

    @staticmethod
    def _malformed(exc: Exception) -> ProtocolError:
        return ProtocolError(f"malformed MessagePack: {type(exc).__name__}")

    def _fail(self, error: ProtocolError, decoded: list[Message]) -> ProtocolError:
        """Marks the decoder failed; the messages before the bad bytes ride on the error."""
        self._failed = True
        error.decoded = decoded
        return error


def _pack(obj: Any) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def encode_request(msgid: int, method: str, params: dict[str, Any] | None = None) -> bytes:
    """A request's bytes; params MessagePack cannot carry (an integer outside
    -2**63..2**64-1, a type it has no form for) are the caller's ``InvalidParams``."""
    try:
        return _pack([REQUEST, msgid, method, [params] if params else []])
    except (OverflowError, TypeError, ValueError) as exc:
        raise InvalidParams(f"the call's arguments cannot be sent: {exc}") from None


def encode_response(msgid: int, error: dict[str, Any] | None, result: Any) -> bytes:
    return _pack([RESPONSE, msgid, error, result])


def encode_notification(method: str, params: dict[str, Any] | None = None) -> bytes:
    return _pack([NOTIFICATION, method, [params] if params else []])


def encode(message: Message) -> bytes:
    """Encodes any message object (used by tests and tools)."""
    if isinstance(message, Request):
        return _pack([REQUEST, message.msgid, message.method, message.params])
    if isinstance(message, Response):
        return _pack([RESPONSE, message.msgid, message.error, message.result])
    return _pack([NOTIFICATION, message.method, message.params])
