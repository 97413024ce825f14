"""Two NovaCron nodes on one machine: the two namespaced libvirt hosts of
:mod:`tests.system.twohosts`, each with its own ``novacrond`` (node certificate from a
suite-made CA, TLS listener and migration channel on its veth address, its own state
dir and socket). The daemons run inside their host's namespaces; their Unix sockets
are reachable from the test process by path."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from novacron.client import SyncClient
from novacron.pki.ca import CertificateAuthority
from tests.daemon_harness import Daemon
from tests.etcd_harness import EtcdCluster
from tests.system.twohosts import REFUSE_FLAG, STREAMS, Host, TwoHosts

TLS_PORT = 7443


@dataclass
class Node:
    host: Host
    daemon: Daemon

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def address(self) -> str:
        return f"{self.host.address}:{TLS_PORT}"

    @property
    def state_dir(self) -> Path:
        return self.daemon.state_dir

    def client(self, timeout: float = 120) -> SyncClient:
        return self.daemon.client(timeout)

    def console(self, vm: str) -> Path:
        return self.state_dir / "consoles" / f"{vm}.log"

    def domains(self) -> list[str]:
        return self.host.virsh("list", "--all", "--name").split()

    def domstate(self, vm: str) -> str:
        return self.host.virsh("domstate", vm, check=False).strip()

    def records(self) -> list[str]:
        with self.client() as c:
            return [vm["name"] for vm in c.call("vm.list")]

    def restart(self) -> None:
        if self.daemon.proc is not None and self.daemon.proc.poll() is None:
            self.daemon.stop()
        self.daemon.start(timeout=90)


def node_daemon(hosts: TwoHosts, host: Host, certs: Path, ca: Path, *extra: str) -> Daemon:
    root = host.root / "novacron"
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    cert = certs / f"{host.name}.crt"
    return Daemon(
        socket=root / "novacrond.sock",
        state_dir=root / "state",
        log=root / "novacrond.log",
        uri="qemu:///system",
        prefix=host.enter(),
        extra=[
            *("--node-name", host.name, "--domain-type", "qemu"),
            *("--emulator", str(hosts.qemu_wrapper)),
            *("--tls-listen", f"{host.address}:{TLS_PORT}"),
            *("--tls-cert", str(cert), "--tls-key", str(cert.with_suffix(".key"))),
            *("--tls-ca", str(ca)),
            *("--migration-libvirt-uri", host.libvirt_uri),
            *("--migration-link-timeout-s", "10"),
            *("--migration-stream-dir", str(STREAMS)),
            *extra,
        ],
    )


@dataclass
class TwoNodes:
    hosts: TwoHosts
    a: Node
    b: Node
    etcd: EtcdCluster | None = None

    @classmethod
    def start(
        cls,
        hosts: TwoHosts,
        scratch: Path,
        cluster: bool = False,
        extra: tuple[Sequence[str], Sequence[str]] = ((), ()),
    ) -> TwoNodes:
        """``cluster``: a three-member etcd cluster runs in host A's namespaces (on its
        veth address, so host B reaches it too) and both daemons join it. ``extra``:
        more flags for host A's daemon and for host B's."""
        authority = CertificateAuthority.init(scratch / "ca")
        certs = scratch / "certs"
        for host in (hosts.a, hosts.b):
            authority.issue(host.name, "node", certs, node=True, addresses=(host.address,))
        ca = authority.dir / "ca.crt"
        etcd, flags = None, []
        if cluster:
            etcd = EtcdCluster.start(
                scratch / "etcd", authority, host=hosts.a.address, prefix=tuple(hosts.a.enter())
            )
            flags = ["--cluster-etcd-endpoints", etcd.endpoints, "--cluster-lease-ttl-s", "5"]
        # storage both hosts see (one filesystem), declared shared on both nodes
        shared = shared_storage(hosts)
        shared.mkdir(mode=0o755, exist_ok=True)
        flags += ["--migration-shared-storage", str(shared)]
        a = Node(hosts.a, node_daemon(hosts, hosts.a, certs, ca, *flags, *extra[0]))
        b = Node(hosts.b, node_daemon(hosts, hosts.b, certs, ca, *flags, *extra[1]))
        pair = cls(hosts, a, b, etcd)
        try:
            a.daemon.start(timeout=90)
            b.daemon.start(timeout=90)
        except BaseException:
            pair.stop()
            raise
        return pair

    @property
    def shared(self) -> Path:
        """The directory both nodes declare as shared storage (``[migration] shared_storage``)."""
        return shared_storage(self.hosts)

    def stop(self) -> None:
        for node in (self.a, self.b):
            node.daemon.stop()
            if os.environ.get("NOVACRON_KEEP_LOGS"):
                print(f"--- {node.name} ---\n{node.daemon.log_text()[-20000:]}")
        if self.etcd is not None:
            self.etcd.stop()


@contextmanager
def running_nodes(
    scratch: Path, cluster: bool = False, extra: tuple[Sequence[str], Sequence[str]] = ((), ())
) -> Iterator[TwoNodes]:
    """Two namespaced hosts and their daemons (:meth:`TwoNodes.start`), stopped and
    removed afterwards."""
    hosts = TwoHosts.start(secrets.token_hex(3))
    try:
        pair = TwoNodes.start(hosts, scratch, cluster, extra)
        try:
            yield pair
        finally:
            pair.stop()
    finally:
        hosts.stop()


def shared_storage(hosts: TwoHosts) -> Path:
    return hosts.a.root.parent / "shared"  # removed with the hosts


def wait_until(check: Callable[[], bool], timeout: float, what: str, step: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def cli(node: Node, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "novacron.cli.main", "--socket", str(node.daemon.socket), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def migrate(src: Node, dst: Node, vm: str, *options: str) -> dict[str, Any]:
    done = cli(src, "--json", "vm", "migrate", vm, "--to", dst.address, *options)
    assert done.returncode == 0, f"{done.stderr}\n{logs(src, dst)}"
    doc: dict[str, Any] = json.loads(done.stdout)
    assert doc["state"] == "succeeded", doc
    return doc


def refused_by_hook(src: Node, dst: Node, vm: str) -> None:
    """``vm migrate`` while the destination's libvirt refuses migrations (its QEMU hook):
    it fails and says so; the hook is quiet again afterwards."""
    dst.host.sh(f"touch {REFUSE_FLAG}")
    try:
        done = cli(src, "--json", "vm", "migrate", vm, "--to", dst.address)
    finally:
        dst.host.sh(f"rm -f {REFUSE_FLAG}")
    assert done.returncode == 1, done.stdout
    assert "hook refuses migrations" in done.stderr, f"{done.stderr}\n{logs(src, dst)}"


def logs(*nodes: Node) -> str:
    """The daemons' logs, then each host's libvirtd warnings and QEMU logs (tails)."""
    parts = [f"--- {n.name} ---\n{n.daemon.log_text()[-6000:]}" for n in nodes]
    for n in nodes:
        log_dir = n.host.root / "log"
        for path in [log_dir / "libvirtd.log", *sorted((log_dir / "qemu").glob("*.log"))]:
            if path.is_file():
                lines = path.read_text(errors="replace").splitlines(keepends=True)
                # libvirtd's node-device scan logs an ethtool error per foreign interface
                text = "".join(x for x in lines if "EthtoolIoctl" not in x)[-3000:]
                parts.append(f"--- {n.name}: {path.relative_to(log_dir)} ---\n{text}")
    return "\n".join(parts)
