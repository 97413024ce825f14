"""Caller identities: who is calling, with which roles, within which tenants.

On the Unix socket the identity is the peer's uid/gid/pid from ``SO_PEERCRED``; the
kernel vouches for it, so no password or token is involved. A local caller is ``admin``
when it is root, the daemon's own user, or a member of the socket group (``novacron``
by default); anyone else gets only what a role binding in the state store gives it
(:mod:`novacron.auth.bindings`). On TLS the identity is the verified client
certificate: its CN, and the roles and tenants it carries (:mod:`novacron.pki.names`).

``tenants`` is None for identities that see every tenant (``admin``), else the set of
tenants the caller may see; objects of other tenants do not exist for it.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from novacron.pki.names import CertIdentity

_PEERCRED = struct.Struct("3i")


@dataclass(frozen=True)
class Identity:
    kind: str  # "unix" (SO_PEERCRED) or, later, "tls"
    user: str
    uid: int | None = None
    gid: int | None = None
    pid: int | None = None
    groups: tuple[str, ...] = ()
    roles: frozenset[str] = field(default_factory=frozenset)
    tenants: frozenset[str] | None = frozenset()
    serial: int | None = None  # the client certificate's serial (TLS)

    @property
    def principal(self) -> str:
        """A stable name for logs, audit and rate limits: ``unix:alice``, ``tls:web-ci``."""
        return f"{self.kind}:{self.user}"

    @property
    def local_admin(self) -> bool:
        """A local caller who sees every tenant (root, the daemon's user, the socket group):
        the operator, whom rate and connection limits never refuse."""
        return self.kind == "unix" and self.tenants is None

    def sees(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants

    def to_wire(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "user": self.user,
            "uid": self.uid,
            "gid": self.gid,
            "pid": self.pid,
            "groups": list(self.groups),
            "roles": sorted(self.roles),
            "tenants": None if self.tenants is None else sorted(self.tenants),
        }


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix stream socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    pid, uid, gid = _PEERCRED.unpack(raw)
    return pid, uid, gid


def _group_names(user: str | None, gid: int) -> tuple[str, ...]:
    gids = {gid}
    if user is not None:
        with contextlib.suppress(OSError):
            gids.update(os.getgrouplist(user, gid))
    names = []
    for g in sorted(gids):
        try:
            names.append(grp.getgrgid(g).gr_name)
        except KeyError:
            names.append(str(g))
    return tuple(names)


def unix_identity(pid: int, uid: int, gid: int, admin_group: str) -> Identity:
    try:
        user: str | None = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = None
    groups = _group_names(user, gid)
    trusted = uid == 0 or uid == os.geteuid() or admin_group in groups
    return Identity(
        kind="unix",
        user=user or f"uid:{uid}",
        uid=uid,
        gid=gid,
        pid=pid,
        groups=groups,
        roles=frozenset({"admin"}) if trusted else frozenset(),
        tenants=None if trusted else frozenset(),
    )


def tls_identity(cert: CertIdentity) -> Identity:
    """The identity a verified client certificate carries; ``admin`` sees every tenant."""
    return Identity(
        kind="tls",
        user=cert.name,
        roles=cert.roles,
        tenants=None if "admin" in cert.roles else cert.tenants,
        serial=cert.serial,
    )
