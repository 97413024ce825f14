"""One client connection: read, decode, dispatch concurrently, write in order of completion.

* Many requests may be in flight; each runs as its own task and its response goes out
  as soon as it is ready (responses carry the request's msgid, in any order).
* At most ``max_inflight`` calls run at once per connection; past that the connection
  stops reading (backpressure), it is not refused.
* Calls of methods registered ``inline`` (answered from memory, never waiting, such as
  ``session.hello``) run on the reading task itself: no task to spawn and schedule,
  which is most of such a call's cost.
* Writes go through an :class:`~novacron.server.outbox.Outbox`: in order, coalesced
  under load, and without an extra task switch when the connection is idle.
* Bytes that are not MessagePack-RPC, a message over the limit, one not complete
  ``message_timeout_s`` after it began, or one the daemon's budget of bytes being
  received cannot take (:class:`~novacron.server.limits.PendingBudget`): a
  ``protocol.error`` notification is queued, reading stops, in-flight calls finish, the
  connection closes.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from novacron.auth.identity import Identity
from novacron.errors import ProtocolError
from novacron.eventbus import EventBus, Subscription
from novacron.logs import kv
from novacron.rpc import codec
from novacron.rpc.dispatch import CallContext, Registry
from novacron.server.limits import FREE_PENDING, ConnectionSettings
from novacron.server.outbox import Outbox

log = logging.getLogger("novacron.server")

READ_SIZE = 256 * 1024
# inline answers written at once: one read can hold thousands of inline calls, which
# never reach a checkpoint by themselves; every write lets the other connections run
INLINE_BATCH = 64


async def send_protocol_error(
    send: Callable[[bytes], Awaitable[None]], code: str, message: str
) -> None:
    """Sends the ``protocol.error`` notification that ends a connection, as far as the
    peer reads it: at most 5 s, and a peer already gone is no error."""
    notice = codec.encode_notification("protocol.error", {"code": code, "message": message})
    with (
        trio.move_on_after(5),  # a peer that never reads must not pin us
        contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError),
    ):
        await send(notice)


class Connection:
    def __init__(
        self,
        stream: trio.abc.Stream,
        identity: Identity,
        registry: Registry,
        bus: EventBus,
        settings: ConnectionSettings,
    ) -> None:
        self.stream = stream
        self.identity = identity
        self._registry = registry
        self._bus = bus
        self._decoder = codec.Decoder(
            settings.max_message, codec.REQUEST_MAX_ITEMS, codec.REQUEST_MAX_CONTAINERS
        )
        self._inflight = trio.Semaphore(settings.max_inflight)
        self._message_timeout = settings.message_timeout_s
        self._pending = settings.pending
        self._drawn = 0  # what this connection draws on the pending budget
        self._outbox = Outbox(stream)
        self._reader_scope = trio.CancelScope()
        self._stopping = False
        self._waiting = False  # the reading task waits for bytes or a call slot
        self._ctx = CallContext(identity, bus)
        self._ctx.on_subscribe = self._on_subscribe
        self._ctx.connection.start_task = self._start_task
        self._ctx.connection.notify = self._notify
        self._outer: trio.Nursery | None = None

    def stop_reading(self) -> None:
        """Stop taking new requests (shutdown); calls in flight still get answers. The
        reading task is cancelled only where it waits (for bytes or a call slot): an
        inline answer it is writing is never cut in half."""
        self._stopping = True
        if self._waiting:
            self._reader_scope.cancel()

    async def serve(self) -> None:
        try:
            async with trio.open_nursery() as outer:
                self._outer = outer
                try:
                    async with trio.open_nursery() as calls:
                        with self._reader_scope:
                            await self._read(calls)
                finally:
                    if self._ctx.subscription is not None:
                        self._ctx.subscription.close()
                    outer.cancel_scope.cancel()  # event pumps: nobody to deliver to
        finally:
            if self._pending is not None:  # what it drew goes back (never refused)
                self._pending.settle(self._drawn, 0, exempt=True)
                self._drawn = 0
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self.stream.aclose()

    async def _read(self, calls: trio.Nursery) -> None:
        deadline = math.inf  # for the message begun and not complete, if any
        while not self._stopping:
            self._waiting = True
            try:
                data = await self._receive(deadline)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            finally:
                self._waiting = False
            if data is None:
                late = f"a message was not complete {self._message_timeout:g} s after it began"
                await self._refuse(ProtocolError(late, code="timeout"))
                return
            if not data:
                return
            try:
                messages = self._decoder.feed(data)
            except ProtocolError as exc:
                await self._dispatch(exc.decoded, calls)
                await self._refuse(exc)
                return
            if not self._draw():
                await self._dispatch(messages, calls)  # (the complete ones are answered)
                over = "the daemon holds its limit of requests being received; retry later"
                await self._refuse(ProtocolError(over, code="overloaded"))
                return
            await self._dispatch(messages, calls)
            # set after dispatching, which may wait for a call slot: time spent not
            # reading is not the peer's
            if not self._decoder.pending or not self._message_timeout:
                deadline = math.inf
            elif messages or deadline == math.inf:  # a message began since the last read
                deadline = trio.current_time() + self._message_timeout

    def _draw(self) -> bool:
        """Settles what the message begun draws on the daemon's budget; False when the
        budget cannot take it."""
        if self._pending is None or (not self._drawn and self._decoder.pending <= FREE_PENDING):
            return True  # (nearly every read: nothing drawn, nothing to draw)
        drawn = self._pending.settle(
            self._drawn, self._decoder.pending, exempt=self.identity.local_admin
        )
        if drawn is None:
            return False
        self._drawn = drawn
        return True

    async def _receive(self, deadline: float) -> bytes | bytearray | None:
        """The next bytes (b"" at the end), or None when ``deadline`` passes first. A
        cancel scope only when there is a deadline: most reads end between messages."""
        if deadline == math.inf:
            return await self.stream.receive_some(READ_SIZE)
        with trio.move_on_at(deadline):
            return await self.stream.receive_some(READ_SIZE)
        return None

    async def _refuse(self, exc: ProtocolError) -> None:
        """Tells the peer why its connection ends (``protocol.error``), as far as it reads."""
        log.info(
            "rpc.protocol_error",
            extra=kv(user=self.identity.user, code=exc.code, detail=exc.message),
        )
        await send_protocol_error(self._outbox.send, exc.code, exc.message)

    async def _dispatch(self, messages: list[codec.Message], calls: trio.Nursery) -> None:
        answers: list[bytes] = []  # inline answers, written together
        for message in messages:
            if not isinstance(message, codec.Request):
                continue  # notifications and responses from a client have no method to reach
            if self._registry.inline(message.method):
                answers.append(await self._response(message))
                if len(answers) >= INLINE_BATCH:  # the write is a checkpoint: others run
                    await self._flush(answers)
                continue
            await self._flush(answers)
            if self._stopping:
                return
            try:
                self._inflight.acquire_nowait()  # no scheduler pass when a slot is free
            except trio.WouldBlock:
                self._waiting = True
                try:
                    await self._inflight.acquire()
                finally:
                    self._waiting = False
            calls.start_soon(self._call, message)
        await self._flush(answers)

    async def _flush(self, answers: list[bytes]) -> None:
        """Writes the inline answers gathered so far, in one write, and forgets them."""
        if answers:
            payload = b"".join(answers)  # (one answer: the same object, no copy)
            answers.clear()
            await self._send(payload)

    async def _call(self, request: codec.Request) -> None:
        try:
            await self._send(await self._response(request))
        finally:
            self._inflight.release()

    async def _response(self, request: codec.Request) -> bytes:
        error, result = await self._registry.call(self._ctx, request)
        try:
            return codec.encode_response(request.msgid, error, result)
        except (TypeError, ValueError, OverflowError):
            log.exception("rpc.unencodable_result", extra=kv(method=request.method))
            return codec.encode_response(
                request.msgid, {"code": "internal", "message": "unencodable result"}, None
            )

    async def _send(self, payload: bytes) -> None:
        try:
            await self._outbox.send(payload)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self.stop_reading()  # the peer went away: nothing more can be delivered

    def _start_task(self, task: Callable[[], Awaitable[None]]) -> None:
        """Runs ``task`` while the connection lives (cancelled when it ends)."""
        assert self._outer is not None
        self._outer.start_soon(task)

    async def _notify(self, method: str, payload: dict[str, Any]) -> None:
        """Sends a notification once the peer has read what is queued past the high
        water mark; ClosedResourceError or BrokenResourceError when it is gone."""
        await self._outbox.wait_writable()
        await self._outbox.send(codec.encode_notification(method, payload))

    def _on_subscribe(self, sub: Subscription) -> None:
        assert self._outer is not None
        self._outer.start_soon(self._pump_events, sub)

    async def _pump_events(self, sub: Subscription) -> None:
        # ends when the subscription closes (unsubscribe or connection end)
        async for event in sub:
            payload: dict[str, Any] = event
            try:
                await self._outbox.wait_writable()  # a slow reader loses events, not memory
                await self._outbox.send(codec.encode_notification("event", payload))
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
