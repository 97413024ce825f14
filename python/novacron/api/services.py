"""The services handlers may use, built once by the daemon."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from novacron.config import Config
from novacron.eventbus import EventBus
from novacron.vm.service import VmService


@dataclass
class Services:
    config: Config
    vms: VmService
    bus: EventBus
    started_at: float = field(default_factory=time.time)
    reconcile_findings: list[dict[str, Any]] = field(default_factory=list)
    hypervisor_ready: bool = False
