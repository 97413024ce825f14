"""The services handlers may use, built once by the daemon."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from novacron.api.console_hub import ConsoleHub
from novacron.auth.audit import AuditLog
from novacron.auth.bindings import Bindings
from novacron.cluster.service import ClusterService
from novacron.config import Config
from novacron.eventbus import EventBus
from novacron.migration.service import MigrationService
from novacron.net.service import NetworkService
from novacron.net.shaper import NicShaper
from novacron.server.limits import ConnectionLimits, PendingBudget
from novacron.vm.keeper import StateKeeper
from novacron.vm.service import VmService


class TlsControl(Protocol):
    """What ``tls.reload`` needs from the TLS listener."""

    def reload(self) -> dict[str, Any]: ...


@dataclass
class Services:
    config: Config
    vms: VmService
    bus: EventBus
    bindings: Bindings | None = None
    audit: AuditLog | None = None
    tls: TlsControl | None = None
    migrations: MigrationService | None = None
    networks: NetworkService | None = None
    shaper: NicShaper | None = None  # keeps VM taps shaped to NIC limits (net/shaper.py)
    cluster: ClusterService | None = None
    connections: ConnectionLimits | None = None
    keeper: StateKeeper | None = None  # restarts VMs that should run (vm/keeper.py)
    pending: PendingBudget | None = None  # bytes of requests being received, daemon-wide
    started_at: float = field(default_factory=time.time)
    reconcile_findings: list[dict[str, Any]] = field(default_factory=list)
    hypervisor_ready: bool = False
    # why [hypervisor] cpu_model cannot run here (checked when libvirt first answers)
    cpu_model_problem: str | None = None
    consoles: ConsoleHub | None = None  # the VMs' shared consoles (set by api.console)
