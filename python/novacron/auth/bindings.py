"""Role bindings for Unix-socket callers, kept in the state store.

A binding gives a local user (``user:alice``) or the members of a group
(``group:devs``) a role within some tenants. Callers that are already ``admin``
(root, the daemon's user, the socket group) are unaffected. Bindings are read from an
in-memory copy (identifying a connection costs no thread hop); changes are written to
the store first, then to the copy.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from novacron import errors
from novacron.auth.identity import Identity
from novacron.blocking import Pool
from novacron.rpc.params import NAME_RE
from novacron.state.db import StateStore

BINDABLE_ROLES = ("operator", "viewer", "admin")


def check_principal(principal: str) -> str:
    kind, _, name = principal.partition(":")
    if kind not in ("user", "group") or not NAME_RE.fullmatch(name):
        raise errors.InvalidParams(
            "principal must be user:<name> or group:<name> (a valid name)",
            {"param": "principal"},
        )
    return principal


class Bindings:
    def __init__(self, store: StateStore, pool: Pool) -> None:
        self._store = store
        self._pool = pool
        self._by_principal: dict[str, tuple[str, frozenset[str]]] = {}

    async def load(self) -> None:
        rows = await self._pool.run(self._store.list_bindings)
        self._by_principal = {p: (role, frozenset(t)) for p, role, t in rows}

    def apply(self, identity: Identity) -> Identity:
        """``identity`` with the roles and tenants its bindings give (Unix callers only)."""
        if identity.kind != "unix" or identity.tenants is None or not self._by_principal:
            return identity
        keys = [f"user:{identity.user}", *(f"group:{g}" for g in identity.groups)]
        roles, tenants = set(identity.roles), set(identity.tenants)
        every = False
        for key in keys:
            found = self._by_principal.get(key)
            if found is None:
                continue
            role, bound = found
            roles.add(role)
            if role == "admin":
                every = True
            tenants |= bound
        return replace(
            identity, roles=frozenset(roles), tenants=None if every else frozenset(tenants)
        )

    def entries(self) -> list[dict[str, Any]]:
        return [
            {"principal": p, "role": role, "tenants": sorted(t)}
            for p, (role, t) in sorted(self._by_principal.items())
        ]

    async def bind(self, principal: str, role: str, tenants: list[str]) -> None:
        await self._pool.run(self._store.set_binding, check_principal(principal), role, tenants)
        self._by_principal[principal] = (role, frozenset(tenants))

    async def unbind(self, principal: str) -> bool:
        removed = await self._pool.run(self._store.delete_binding, principal)
        self._by_principal.pop(principal, None)
        return bool(removed)
