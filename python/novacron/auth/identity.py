"""Caller identities.

On the Unix socket the identity is the peer's uid/gid/pid from ``SO_PEERCRED``; the
kernel vouches for it, so no password or token is involved. A local caller is trusted
(``admin``) when it is root, the daemon's own user, or a member of the socket group
(``novacron`` by default); anyone else may only say hello. Full RBAC with roles and
tenants arrives with the TLS listener.
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

    def to_wire(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "user": self.user,
            "uid": self.uid,
            "gid": self.gid,
            "pid": self.pid,
            "groups": list(self.groups),
            "roles": sorted(self.roles),
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
    )
