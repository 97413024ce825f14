"""Socket activation and sd_notify with real sockets standing in for systemd."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from novacron.client import SyncClient

# what systemd does before exec: the socket at fd 3, LISTEN_PID = the daemon's pid
LAUNCH = (
    "import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); os.close(fd); "
    "os.environ['LISTEN_PID'] = str(os.getpid()); "
    "os.execv(sys.executable, [sys.executable, '-m', 'novacron.daemon', *sys.argv[2:]])"
)


def test_socket_activation_ready_and_watchdog(tmp_path: Path) -> None:
    sock_path = tmp_path / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(16)
    notify_path = tmp_path / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(30)
    env = {
        **os.environ,
        "LISTEN_FDS": "1",
        "NOTIFY_SOCKET": str(notify_path),
        "WATCHDOG_USEC": "400000",
    }
    log = (tmp_path / "d.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            LAUNCH,
            str(listener.fileno()),
            "--dev",
            "--socket",
            str(tmp_path / "unused.sock"),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        pass_fds=(listener.fileno(),),
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        messages: list[bytes] = []
        deadline = time.monotonic() + 30
        while not any(m.startswith(b"READY=1") for m in messages):
            assert time.monotonic() < deadline
            messages.append(notify.recv(4096))
        # READY comes only when the passed socket is serving
        with SyncClient(sock_path, timeout=10) as c:
            assert c.call("session.hello")["protocol"] == 1
        assert not (tmp_path / "unused.sock").exists()
        # the watchdog task pings at half of WATCHDOG_USEC
        pings = 0
        while pings < 3:
            if notify.recv(4096) == b"WATCHDOG=1":
                pings += 1
        proc.terminate()
        assert proc.wait(30) == 0
        notify.setblocking(False)
        tail = []
        while True:
            try:
                tail.append(notify.recv(4096))
            except BlockingIOError:
                break
        assert b"STOPPING=1" in tail
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()
        listener.close()
        log.close()
