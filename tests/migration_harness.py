"""A daemon on the destination's side of a migration, driven by a test that acts as
the source node (a node certificate from the daemon's CA), and the domain XML a
source sends with ``migration.prepare``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from novacron.client import SyncClient, TlsFiles
from novacron.vm import domain_xml
from novacron.vm.spec import VmSpec
from tests.daemon_harness import Daemon
from tests.pki_harness import Pki, client

SOURCE_UUID = "0b5c2b0e-4a8e-4c1e-9f53-7d1d1b7a6a10"


@dataclass
class Node:
    daemon: Daemon
    pki: Pki
    port: int
    issued: dict[str, TlsFiles] = field(default_factory=dict)

    def as_node(self, name: str = "node2", timeout: float = 30) -> SyncClient:
        """A client of the daemon's TLS listener as node ``name``."""
        if name not in self.issued:
            self.issued[name] = self.pki.issue(name, "node", addresses=("127.0.0.1",))
        return client(self.port, self.issued[name], timeout=timeout)


def source_xml(
    name: str,
    tenant: str = "default",
    memory_mib: int = 64,
    uuid: str = SOURCE_UUID,
    **spec: Any,
) -> str:
    """The NovaCron domain XML of a one-vCPU VM ``name``, as its source sends it."""
    vm = VmSpec(name=name, vcpus=1, memory_mib=memory_mib, tenant=tenant, **spec)
    # each disk where its source node has it (a pool's volume: that node's images)
    paths = [
        d.path or f"/var/lib/novacron/images/{name}-{t}.{d.format}"
        for d, t in zip(vm.disks, vm.disk_targets(), strict=True)
    ]
    plan = domain_xml.DomainPlan(
        spec=vm,
        uuid=uuid,
        domain_type="qemu",
        disks=tuple(
            domain_xml.DiskDevice(p, d.format, t)
            for p, d, t in zip(paths, vm.disks, vm.disk_targets(), strict=True)
        ),
        console_log="/var/lib/novacron/consoles/x.log",
    )
    return domain_xml.build(plan)
