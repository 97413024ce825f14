"""``auth.*``, ``audit.*`` and ``tls.*`` methods: who am I, role bindings, the audit
log, and reloading TLS material (certificates and the revocation list)."""

from __future__ import annotations

from typing import Any

from novacron.api.services import Services
from novacron.auth import policy
from novacron.auth.bindings import BINDABLE_ROLES, check_principal
from novacron.errors import Conflict, InvalidParams, Unavailable
from novacron.rpc.dispatch import CallContext, Registry
from novacron.rpc.params import Params, check_name

MAX_TENANTS = 256
MAX_AUDIT_TAIL = 1000


def register(registry: Registry, services: Services) -> None:
    @registry.method("auth.whoami", inline=True)
    async def whoami(ctx: CallContext, p: Params) -> dict[str, Any]:
        """The caller's identity, roles, tenants and the permissions they give."""
        p.done()
        grants: set[str] = set()
        for role in ctx.identity.roles:
            grants |= policy.ROLE_GRANTS.get(role, frozenset())
        return {
            "identity": ctx.identity.to_wire(),
            "principal": ctx.identity.principal,
            "permissions": sorted(grants | {policy.PUBLIC}),
            "methods": sorted(
                m for m in policy.METHOD_PERMISSIONS if policy.allowed(ctx.identity, m)
            ),
        }

    def bindings() -> Any:
        if services.bindings is None:
            raise Unavailable("role bindings are not available")
        return services.bindings

    @registry.method("auth.bind")
    async def bind(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Give a local user or group a role within tenants (Unix-socket callers)."""
        principal = check_principal(p.text("principal", max_len=80))
        role = p.choice("role", BINDABLE_ROLES, "viewer")
        tenants = sorted({check_name(t, "tenants") for t in p.array("tenants", MAX_TENANTS)})
        p.done()
        if role != "admin" and not tenants:
            raise InvalidParams(f"role {role} needs at least one tenant", {"param": "tenants"})
        await bindings().bind(principal, role, tenants)
        return {"principal": principal, "role": role, "tenants": tenants}

    @registry.method("auth.unbind")
    async def unbind(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Remove a role binding."""
        principal = check_principal(p.text("principal", max_len=80))
        p.done()
        return {"principal": principal, "removed": await bindings().unbind(principal)}

    @registry.method("auth.bindings")
    async def list_bindings(ctx: CallContext, p: Params) -> list[dict[str, Any]]:
        """Every role binding."""
        p.done()
        result: list[dict[str, Any]] = bindings().entries()
        return result

    def audit() -> Any:
        if services.audit is None:
            raise Unavailable("the audit log is not available")
        return services.audit

    @registry.method("audit.tail")
    async def tail(ctx: CallContext, p: Params) -> list[dict[str, Any]]:
        """The newest audit entries, oldest first."""
        limit = p.integer("limit", 1, MAX_AUDIT_TAIL, default=50)
        p.done()
        result: list[dict[str, Any]] = await audit().tail(limit)
        return result

    @registry.method("audit.verify")
    async def verify(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Check the audit log's hash chain; names the first entry that does not check out."""
        p.done()
        result: dict[str, Any] = await audit().verify()
        return result

    @registry.method("tls.reload")
    async def reload(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Read the TLS certificate, key, CA and revocation list again (as SIGHUP does)."""
        p.done()
        if services.tls is None:
            raise Conflict("the TLS listener is not configured")
        return services.tls.reload()
