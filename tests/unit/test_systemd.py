from __future__ import annotations

import os
import socket
from pathlib import Path

from novacron import systemd


def test_notify_sends_a_datagram(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        assert systemd.notify("READY=1\nSTATUS=ok", {"NOTIFY_SOCKET": str(path)})
        assert sock.recv(100) == b"READY=1\nSTATUS=ok"


def test_notify_abstract_socket() -> None:
    name = f"novacron-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert systemd.notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"WATCHDOG=1"


def test_notify_without_systemd() -> None:
    assert not systemd.notify("READY=1", {})
    assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/sock"})


def test_watchdog_interval() -> None:
    assert systemd.watchdog_interval({}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 5.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}) is None
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert systemd.watchdog_interval(mine) == 1.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "x"}) is None


def test_listen_fds_takes_passed_socket() -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0novacron-lfd-" + str(os.getpid()))
    listener.listen()
    saved = os.dup(3) if _fd_open(3) else None
    try:
        os.dup2(listener.fileno(), 3)
        env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1"}
        (got,) = systemd.listen_fds(env)
        assert got.fileno() == 3
        assert got.getsockname() == listener.getsockname()
        assert systemd.listen_fds({"LISTEN_PID": "1", "LISTEN_FDS": "1"}) == []
        got.detach()
    finally:
        if saved is not None:
            os.dup2(saved, 3)
            os.close(saved)
        else:
            os.close(3)
        listener.close()


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True
