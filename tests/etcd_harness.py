"""A real etcd cluster for tests: three members on loopback ports, mutual TLS on both
the client and the peer side with certificates from NovaCron's own CA (the same CA
the daemons' node certificates come from), data in a temporary directory.

``host``/``prefix``: the members listen on ``host`` and run under ``prefix`` (an
``nsenter`` into a namespaced test host, so that daemons in the namespaces reach it);
the checks then run there too."""

from __future__ import annotations

import inspect
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from novacron.pki.ca import CertificateAuthority
from tests.pki_harness import free_port

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"https://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"https://{self.host}:{self.peer_port}"


def _request(url: str, body: str, cert: str, key: str, ca: str) -> tuple[int, str]:
    """One gateway request (``body`` empty: a GET); self-contained, so that it also runs
    as a script inside a namespace."""
    import ssl

    import httpx

    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    if body:
        r = httpx.post(url, content=body, verify=ctx, timeout=5)
    else:
        r = httpx.get(url, verify=ctx, timeout=2)
    return r.status_code, r.text


# the same request as a script: url, body and the client files as argv
_GATEWAY = (
    inspect.getsource(_request) + "import json, sys\nprint(json.dumps(_request(*sys.argv[1:6])))\n"
)


@dataclass
class EtcdCluster:
    root: Path
    ca: CertificateAuthority
    members: list[Member] = field(default_factory=list)
    prefix: tuple[str, ...] = ()

    @classmethod
    def start(
        cls,
        root: Path,
        ca: CertificateAuthority,
        size: int = 3,
        host: str = "127.0.0.1",
        prefix: tuple[str, ...] = (),
    ) -> EtcdCluster:
        members = [Member(f"etcd{i}", free_port(), free_port(), host) for i in range(size)]
        cluster = cls(root, ca, members, prefix)
        for m in cluster.members:
            ca.issue(m.name, "node", root / "certs", node=True, addresses=(host,))
        for m in cluster.members:
            cluster.launch(m, new=True)
        cluster.wait_healthy()
        return cluster

    @property
    def endpoints(self) -> str:
        return ",".join(m.client_url for m in self.members)

    def launch(self, m: Member, new: bool = False) -> None:
        certs = self.root / "certs"
        ca = str(self.ca.dir / "ca.crt")
        initial = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        log = (self.root / f"{m.name}.log").open("ab")
        m.proc = subprocess.Popen(
            [
                *self.prefix,
                ETCD,
                "--name",
                m.name,
                "--data-dir",
                str(self.root / m.name),
                "--listen-client-urls",
                m.client_url,
                "--advertise-client-urls",
                m.client_url,
                "--listen-peer-urls",
                m.peer_url,
                "--initial-advertise-peer-urls",
                m.peer_url,
                "--initial-cluster",
                initial,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                f"novacron-test-{self.root.name}",
                "--client-cert-auth",
                "--trusted-ca-file",
                ca,
                "--cert-file",
                str(certs / f"{m.name}.crt"),
                "--key-file",
                str(certs / f"{m.name}.key"),
                "--peer-client-cert-auth",
                "--peer-trusted-ca-file",
                ca,
                "--peer-cert-file",
                str(certs / f"{m.name}.crt"),
                "--peer-key-file",
                str(certs / f"{m.name}.key"),
                "--heartbeat-interval",
                "100",
                "--election-timeout",
                "1000",
                "--logger",
                "zap",
            ],
            stdout=log,
            stderr=log,
        )
        log.close()

    def client_files(self) -> tuple[str, str, str]:
        """A client certificate for checks from the test itself."""
        certs = self.root / "certs"
        if not (certs / "probe.crt").exists():
            self.ca.issue("probe", "node", certs, node=True, addresses=("127.0.0.1",))
        return str(certs / "probe.crt"), str(certs / "probe.key"), str(self.ca.dir / "ca.crt")

    def gateway(
        self, path: str, body: dict[str, Any] | None = None, member: Member | None = None
    ) -> tuple[int, str]:
        """One request to the JSON gateway (of ``member``, or the first that answers),
        from where the members run; ``body`` None: a GET."""
        problems: list[str] = []
        for m in [member] if member is not None else self.members:
            args = [m.client_url + path, json.dumps(body) if body is not None else ""]
            args += self.client_files()
            if not self.prefix:
                try:
                    return _request(*args)
                except httpx.HTTPError as exc:
                    problems.append(str(exc))
                    continue
            done = subprocess.run(
                [*self.prefix, sys.executable, "-c", _GATEWAY, *args],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if done.returncode == 0:
                status, text = json.loads(done.stdout)
                return int(status), str(text)
            problems.extend(done.stderr.strip().splitlines()[-1:])
        raise RuntimeError(f"no etcd member answered {path}: {problems}")

    def healthy(self, m: Member) -> bool:
        try:
            status, text = self.gateway("/health", member=m)
        except RuntimeError:
            return False
        return status == 200 and '"true"' in text

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = [m for m in self.members if m.proc is not None and m.proc.poll() is None]
            if running and all(self.healthy(m) for m in running):
                return
            time.sleep(0.2)
        logs = "\n".join(
            (self.root / f"{m.name}.log").read_text(errors="replace")[-3000:] for m in self.members
        )
        raise RuntimeError(f"etcd did not become healthy:\n{logs}")

    def kill(self, m: Member) -> None:
        if m.proc is not None and m.proc.poll() is None:
            m.proc.kill()
            m.proc.wait(10)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Every member stopped (SIGSTOP) for the block: connections open, nothing
        answers, as with a hung cluster; resumed on the way out."""
        running = [m.proc for m in self.members if m.proc is not None]
        for proc in running:
            proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            for proc in running:
                proc.send_signal(signal.SIGCONT)

    def restart(self, m: Member) -> None:
        self.kill(m)
        self.launch(m)

    def stop(self) -> None:
        for m in self.members:
            self.kill(m)
