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
    from novacron.eventbus import EventBus, Subscription

log = logging.getLogger("novacron.rpc")


class CallContext:
    """What a handler knows about its caller and connection."""

    def __init__(self, identity: Identity, bus: EventBus | None = None) -> None:
        self.identity = identity
        self.bus = bus
        self.subscription: Subscription | None = None
        self.on_subscribe: Callable[[Subscription], None] | None = None


Handler = Callable[[CallContext, Params], Awaitable[Any]]


@dataclass(frozen=True)
class Method:
    name: str
    handler: Handler
    summary: str


class Registry:
    def __init__(self) -> None:
        self.methods: dict[str, Method] = {}

    def method(self, name: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            if name in self.methods:
                raise ValueError(f"method {name} registered twice")
            doc = (handler.__doc__ or "").strip().splitlines()
            self.methods[name] = Method(name, handler, doc[0] if doc else "")
            return handler

        return register

    async def call(self, ctx: CallContext, request: Request) -> tuple[dict[str, Any] | None, Any]:
        """Runs one request; returns (error map or None, result)."""
        try:
            method = self.methods.get(request.method)
            if method is None:
                raise errors.MethodNotFound(
                    f"no method {request.method!r}", {"method": request.method}
                )
            policy.authorize(ctx.identity, request.method)
            params = Params(named_params(request.params))
            result = await method.handler(ctx, params)
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
