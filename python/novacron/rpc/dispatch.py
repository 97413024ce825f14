"""Method registry and dispatch: a request in, an error map or a result out.

Dispatch order for every request: the method exists (``method_not_found``), the caller
may call it (``permission_denied``, see :mod:`novacron.auth.policy`), its arguments are
one map (``invalid_params``), then the handler runs. Handlers raise
:class:`~novacron.errors.NovaCronError` subclasses; anything else is logged with its
traceback and reported as ``internal`` without leaking details.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from novacron import errors
from novacron.auth import policy
from novacron.auth.identity import Identity
from novacron.logs import kv
from novacron.rpc.codec import Request, named_params
from novacron.rpc.params import Params

if TYPE_CHECKING:
    from novacron.auth.audit import AuditLog
    from novacron.auth.ratelimit import RateLimiter
    from novacron.eventbus import EventBus, Subscription

log = logging.getLogger("novacron.rpc")


class ConnectionState:
    """What the calls of one connection share: its event subscription, its open
    consoles, and (set by the connection that serves them) a way to run a task as long
    as the connection lives and to send it notifications."""

    def __init__(self) -> None:
        self.subscription: Subscription | None = None
        self.on_subscribe: Callable[[Subscription], None] | None = None
        self.consoles: dict[int, Any] = {}  # id -> api.console.ConsoleSession
        self.last_console = 0
        self.start_task: Callable[[Callable[[], Awaitable[None]]], None] | None = None
        self.notify: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None


class CallContext:
    """What a handler knows about its caller and connection.

    One per connection; :meth:`for_call` gives each call its own copy (calls of one
    connection run concurrently) that shares the connection's subscription state.
    """

    def __init__(
        self,
        identity: Identity,
        bus: EventBus | None = None,
        _shared: ConnectionState | None = None,
    ) -> None:
        self.identity = identity
        self.bus = bus
        self._shared = _shared or ConnectionState()
        self.tenant: str | None = None  # the tenant a call acted on (for the audit log)
        self.forwarded = False  # the call came from another node on a caller's behalf

    def on_behalf(self, identity: Identity) -> CallContext:
        """A forwarded call's context: ``identity``'s, on this connection (its consoles
        live on it; see ``cluster.forward``)."""
        ctx = CallContext(identity, self.bus, self._shared)
        ctx.forwarded = True
        return ctx

    def for_call(self) -> CallContext:
        ctx = CallContext(self.identity, self.bus, self._shared)
        ctx.forwarded = self.forwarded
        return ctx

    @property
    def connection(self) -> ConnectionState:
        """The state the calls of this connection share."""
        return self._shared

    @property
    def subscription(self) -> Subscription | None:
        return self._shared.subscription

    @subscription.setter
    def subscription(self, value: Subscription | None) -> None:
        self._shared.subscription = value

    @property
    def on_subscribe(self) -> Callable[[Subscription], None] | None:
        return self._shared.on_subscribe

    @on_subscribe.setter
    def on_subscribe(self, value: Callable[[Subscription], None] | None) -> None:
        self._shared.on_subscribe = value


Handler = Callable[[CallContext, Params], Awaitable[Any]]
# answers a call (method, params) about a VM this node does not have (its name):
# (True, result) if the node that owns it answered, (False, None) if no node does
Forwarder = Callable[[CallContext, str, dict[str, Any], str], Awaitable[tuple[bool, Any]]]


@dataclass(frozen=True)
class Method:
    name: str
    handler: Handler
    summary: str
    # answers from memory and never waits (no I/O, lock, thread or sleep): the
    # connection runs it on its reading task instead of spawning a task for it
    inline: bool = False


class Registry:
    def __init__(self) -> None:
        self.methods: dict[str, Method] = {}
        self.audit: AuditLog | None = None
        self.limiter: RateLimiter | None = None
        self.forwarder: Forwarder | None = None

    def method(self, name: str, *, inline: bool = False) -> Callable[[Handler], Handler]:
        """Registers a handler. ``inline`` promises that it never waits (see
        :attr:`Method.inline`); a handler that did would stall its connection."""

        def register(handler: Handler) -> Handler:
            if name in self.methods:
                raise ValueError(f"method {name} registered twice")
            doc = (handler.__doc__ or "").strip().splitlines()
            self.methods[name] = Method(name, handler, doc[0] if doc else "", inline)
            return handler

        return register

    def inline(self, name: str) -> bool:
        """Whether a call of ``name`` runs on its connection's task (unknown: no)."""
        method = self.methods.get(name)
        return method is not None and method.inline

    async def call(self, ctx: CallContext, request: Request) -> tuple[dict[str, Any] | None, Any]:
        """Runs one request; returns (error map or None, result).

        Calls that change state, and every refused call, are appended to the audit log
        with their outcome before the answer goes out.
        """
        ctx = ctx.for_call()
        error, result = await self._run(ctx, request)
        if self.audit is not None:
            outcome = "ok" if error is None else str(error["code"])
            if outcome == "permission_denied" or policy.changes_state(request.method):
                await self.audit.record(
                    ctx.identity, request.method, request.params, outcome, ctx.tenant
                )
        return error, result

    async def _run(self, ctx: CallContext, request: Request) -> tuple[dict[str, Any] | None, Any]:
        try:
            if self.limiter is not None:
                self.limiter.check(ctx.identity)
            method = self.methods.get(request.method)
            if method is None:
                raise errors.MethodNotFound(
                    f"no method {request.method!r}", {"method": request.method}
                )
            policy.authorize(ctx.identity, request.method)
            params = Params(named_params(request.params))
            try:
                result = await method.handler(ctx, params)
            except errors.NotFound as exc:
                # a VM of another node: that node answers (with the caller's identity)
                vm = exc.details.get("vm")
                if (
                    self.forwarder is None
                    or ctx.forwarded
                    or request.method not in policy.FORWARDABLE
                    or not isinstance(vm, str)
                ):
                    raise
                found, result = await self.forwarder(ctx, request.method, params.raw(), vm)
                if not found:
                    raise
        except errors.NovaCronError as exc:
            if isinstance(exc, errors.PermissionDenied | errors.Internal):
                log.warning(
                    "rpc.refused",
                    extra=kv(method=request.method, user=ctx.identity.user, code=exc.code),
                )
            return exc.to_wire(), None
        except Exception:
            log.exception("rpc.internal_error", extra=kv(method=request.method))
            return errors.Internal("internal error; see the daemon log").to_wire(), None
        return None, result
