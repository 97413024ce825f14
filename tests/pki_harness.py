"""Certificates for tests, made by NovaCron's own CA, and a daemon with TLS on."""

from __future__ import annotations

import datetime as dt
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from novacron.client import SyncClient, TlsFiles
from novacron.pki.ca import CertificateAuthority
from tests.daemon_harness import Daemon

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port free now and never handed out before in this run (two calls in
    a row could otherwise name the same port, and two listeners of one daemon clash).
    Under pytest-xdist each worker takes only ports of its own share (worker ``gwN`` of
    ``W``: (port // 2) mod W = N), so two workers never name the same port. (Not port
    mod W: Linux gives ``bind`` to port 0 odd ports only, leaving even ones to
    ``connect``.)"""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    mine = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if (port // 2) % workers == mine and port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def migration_listen() -> list[str]:
    """A loopback test daemon's migration listener on a port of its own (by default it
    takes the TLS port + 1, which nothing reserved and something else may hold)."""
    return ["--migration-listen", f"127.0.0.1:{free_port()}"]


@dataclass
class Pki:
    root: Path
    ca: CertificateAuthority

    @classmethod
    def create(cls, root: Path) -> Pki:
        ca = CertificateAuthority.init(root / "ca", name="Test CA")
        pki = cls(root, ca)
        pki.ca.issue("node1", "node", root / "certs", node=True, addresses=("127.0.0.1",))
        return pki

    def issue(self, name: str, role: str, tenants: tuple[str, ...] = (), **kw: object) -> TlsFiles:
        cert, key = self.ca.issue(
            name,
            role,
            self.root / "certs",
            tenants=tenants,
            node=role == "node",
            **kw,  # type: ignore[arg-type]
        )
        return TlsFiles(cert, key, self.ca.dir / "ca.crt")

    def expired(self, name: str) -> TlsFiles:
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
        return self.issue(name, "admin", not_before=past, days=2)

    def daemon_args(self, port: int, handshake_s: float = 2.0) -> list[str]:
        certs = self.root / "certs"
        return [
            "--tls-listen",
            f"127.0.0.1:{port}",
            "--tls-cert",
            str(certs / "node1.crt"),
            "--tls-key",
            str(certs / "node1.key"),
            "--tls-ca",
            str(self.ca.dir / "ca.crt"),
            "--tls-crl",
            str(self.ca.dir / "crl.pem"),
            "--tls-handshake-timeout-s",
            str(handshake_s),
            *migration_listen(),
        ]


def tls_daemon(tmp_path: Path, pki: Pki, port: int, *extra: str) -> Daemon:
    return Daemon.under(tmp_path, *pki.daemon_args(port), *extra)


def client(port: int, files: TlsFiles, timeout: float = 30) -> SyncClient:
    # the daemon's certificate names node1 (and 127.0.0.1)
    return SyncClient.tls(f"127.0.0.1:{port}", files, timeout=timeout, server_name="node1")
