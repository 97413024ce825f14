"""Starts the real ``novacrond`` process for integration and system tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from novacron.client import SyncClient

# the class below has a field named ``socket`` (the daemon's socket path), which hides the
# module inside its body
UnixSocket = socket.socket

# flags that lift the per-identity call rate limit (a fuzz or race would mostly hit it)
UNLIMITED = ("--rate-limit-per-s", "100000", "--rate-limit-burst", "100000")


@dataclass
class Daemon:
    socket: Path
    state_dir: Path
    log: Path
    extra: list[str] = field(default_factory=list)
    uri: str = "test:///default"
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    prefix: list[str] = field(default_factory=list)  # e.g. nsenter into a test host

    @classmethod
    def under(cls, tmp_path: Path, *extra: str, prefix: list[str] | None = None) -> Daemon:
        """A daemon (not started) with its socket, state and log under ``tmp_path``."""
        return cls(
            socket=tmp_path / "run" / "novacrond.sock",
            state_dir=tmp_path / "state",
            log=tmp_path / "novacrond.log",
            extra=list(extra),
            prefix=prefix or [],
        )

    def argv(self) -> list[str]:
        return [
            *self.prefix,
            sys.executable,
            "-m",
            "novacron.daemon",
            "--dev",
            "--socket",
            str(self.socket),
            "--state-dir",
            str(self.state_dir),
            "--hypervisor-uri",
            self.uri,
            "--log-level",
            "debug",
            "--shutdown-grace-s",
            "10",
            *self.extra,
        ]

    def start(self, timeout: float = 30) -> Daemon:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdout=log, stderr=log, env={**os.environ, **(self.env or {})}
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"novacrond exited {self.proc.returncode}:\n{self.log_text()}")
            if self.socket.exists():
                try:
                    with SyncClient(self.socket, timeout=5) as c:
                        c.call("session.hello")
                    return self
                except Exception:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"novacrond did not come up:\n{self.log_text()}")

    def client(self, timeout: float = 60) -> SyncClient:
        return SyncClient(self.socket, timeout=timeout)

    def raw(self) -> UnixSocket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(str(self.socket))
        return sock

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
