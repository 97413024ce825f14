from __future__ import annotations

import os
import socket

from novacron.auth.identity import peer_credentials, unix_identity


def test_peer_credentials_of_a_real_socket_pair() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        pid, uid, gid = peer_credentials(a)
    assert (pid, uid, gid) == (os.getpid(), os.getuid(), os.getgid())


def test_trust_rules() -> None:
    me = unix_identity(1, os.geteuid(), os.getegid(), "no-such-group")
    assert me.roles == frozenset({"admin"})  # the daemon's own user
    nobody = unix_identity(1, 65534, 65534, "no-such-group")
    assert nobody.roles == frozenset()
    assert nobody.to_wire()["uid"] == 65534
    root = unix_identity(1, 0, 0, "no-such-group")
    assert "admin" in root.roles
    ghost = unix_identity(1, 54321, 54321, "no-such-group")
    assert ghost.user == "uid:54321"


def test_group_membership_grants_admin() -> None:
    nobody_group = unix_identity(1, 65534, 65534, "nogroup")
    assert "nogroup" in nobody_group.groups
    assert nobody_group.roles == frozenset({"admin"})
