"""What a NovaCron certificate says about its holder.

Subject CN is the principal's name. Roles and tenants travel as URIs in the subject
alternative name (``urn:novacron:role:operator``, ``urn:novacron:tenant:acme``); node
certificates carry role ``node`` plus DNS names / IP addresses for TLS server checks.
Shared by the CA (writing) and the daemon (reading); pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from novacron.rpc.params import NAME_RE

ROLE_URI = "urn:novacron:role:"
TENANT_URI = "urn:novacron:tenant:"
ROLES = ("admin", "operator", "viewer", "node")


@dataclass(frozen=True)
class CertIdentity:
    name: str
    roles: frozenset[str]
    tenants: frozenset[str]
    serial: int | None = None


def check_principal(name: str, what: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(f"{what} {name!r} is not a valid name (lower-case letters, digits, - . _)")
    return name


def san_uris(roles: Iterable[str], tenants: Iterable[str]) -> list[str]:
    out = []
    for role in roles:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        out.append(ROLE_URI + role)
    for tenant in tenants:
        out.append(TENANT_URI + check_principal(tenant, "tenant"))
    return out


def from_peercert(cert: dict[str, Any] | None) -> CertIdentity | None:
    """Reads ``ssl.SSLSocket.getpeercert()``'s dict; None without a usable CN."""
    if not cert:
        return None
    name = None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                name = value
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        return None
    roles, tenants = set(), set()
    for kind, value in cert.get("subjectAltName", ()):
        if kind != "URI" or not isinstance(value, str):
            continue
        if value.startswith(ROLE_URI) and value[len(ROLE_URI) :] in ROLES:
            roles.add(value[len(ROLE_URI) :])
        elif value.startswith(TENANT_URI) and NAME_RE.fullmatch(value[len(TENANT_URI) :]):
            tenants.add(value[len(TENANT_URI) :])
    serial = cert.get("serialNumber")
    return CertIdentity(
        name=name,
        roles=frozenset(roles),
        tenants=frozenset(tenants),
        serial=int(serial, 16) if isinstance(serial, str) else None,
    )
