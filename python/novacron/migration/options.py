"""``vm.migrate`` options: parsed, checked for combinations that make no sense, and
turned into what libvirt and the page engine take.

Stall actions (what happens when the guest dirties memory faster than the link
carries it, see :mod:`novacron.migration.progress`):

* ``auto_converge`` — QEMU throttles the guest's vCPUs (needs ``auto_converge``:
  QEMU's capability can only be switched on before the migration starts);
* ``raise_downtime`` — NovaCron doubles the allowed downtime, up to
  ``max_downtime_cap_ms``; still stalled at the cap, the migration is cancelled;
* ``cancel`` — the migration is aborted at once; the VM stays on the source.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from novacron.errors import InvalidParams
from novacron.rpc.params import Params

COMPRESSIONS = ("lz4", "zstd", "none")
STALL_ACTIONS = ("auto_converge", "raise_downtime", "cancel")
MAX_DOWNTIME_MS = 60_000
MAX_BANDWIDTH_MBPS = 400_000
MAX_TIMEOUT_S = 86_400.0
# a node's name, a DNS name, an IPv4 address or a bracketed IPv6 one, and a port
DESTINATION = re.compile(r"[A-Za-z0-9._\-\[\]:]{1,255}")


@dataclass(frozen=True)
class MigrateOptions:
    max_downtime_ms: int = 300
    max_downtime_cap_ms: int = 2_000
    bandwidth_mbps: int = 0  # megabits per second of QEMU's stream; 0 = no limit
    compression: str = "lz4"
    zstd_level: int = 1
    disk_compression: str = "lz4"  # QEMU's NBD copy of pool disks, relayed packed
    dedup: bool = True
    auto_converge: bool = False
    stall_action: str = "raise_downtime"
    stall_rounds: int = 4
    timeout_s: float = 0.0  # 0 = no limit

    def engine(self) -> dict[str, Any]:
        """Keyword arguments of :class:`novacron._core.PageEncoder`."""
        return {"compression": self.compression, "zstd_level": self.zstd_level, "dedup": self.dedup}

    def bandwidth_mib_s(self) -> int:
        """libvirt's bandwidth unit (MiB/s, at least 1); 0 = no limit."""
        if not self.bandwidth_mbps:
            return 0
        return max(1, math.ceil(self.bandwidth_mbps * 1_000_000 / 8 / (1 << 20)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> MigrateOptions:
        known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def parse_migrate(p: Params) -> tuple[str, str, MigrateOptions]:
    """``(vm, destination, options)`` from ``vm.migrate``'s parameters."""
    name = p.name()
    destination = parse_destination(p)
    assert destination is not None
    options = parse_options(p)
    p.done()
    return name, destination, options


def parse_destination(p: Params, required: bool = True) -> str | None:
    """``destination``: ``host``, ``host:port`` or a node's name (None if optional and
    not given)."""
    destination = p.opt_text("destination", max_len=255)
    if destination is None:
        if required:
            raise InvalidParams("missing parameter 'destination'", {"param": "destination"})
        return None
    if not DESTINATION.fullmatch(destination):
        raise InvalidParams(
            "destination must be a node's name, host or host:port", {"param": "destination"}
        )
    return destination


def parse_options(p: Params) -> MigrateOptions:
    """The migration options of ``vm.migrate`` (and ``node.drain``), checked."""
    if p.integer("parallel", 0, 64, default=0):
        raise InvalidParams(
            "multifd (parallel connections) is not carried by NovaCron's data path: "
            "its page engine sees one stream; leave parallel unset",
            {"param": "parallel"},
        )
    max_downtime = p.integer("max_downtime_ms", 1, MAX_DOWNTIME_MS, default=300)
    cap = p.integer("max_downtime_cap_ms", 1, MAX_DOWNTIME_MS, default=max(2_000, max_downtime))
    auto_converge = p.flag("auto_converge")
    default_action = "auto_converge" if auto_converge else "raise_downtime"
    options = MigrateOptions(
        max_downtime_ms=max_downtime,
        max_downtime_cap_ms=cap,
        bandwidth_mbps=p.integer("bandwidth_mbps", 0, MAX_BANDWIDTH_MBPS, default=0),
        compression=p.choice("compression", COMPRESSIONS, "lz4"),
        zstd_level=p.integer("zstd_level", 1, 19, default=1),
        disk_compression=p.choice("disk_compression", COMPRESSIONS, "lz4"),
        dedup=p.flag("dedup", True),
        auto_converge=auto_converge,
        stall_action=p.choice("stall_action", STALL_ACTIONS, default_action),
        stall_rounds=p.integer("stall_rounds", 2, 1000, default=4),
        timeout_s=p.number("timeout_s", 0.0, MAX_TIMEOUT_S, 0.0),
    )
    check_combination(options, zstd_level_given=p.given("zstd_level"))
    return options


def check_combination(options: MigrateOptions, zstd_level_given: bool = False) -> None:
    """Options that do not combine are refused before anything happens."""
    if options.stall_action == "auto_converge" and not options.auto_converge:
        raise InvalidParams(
            "stall_action auto_converge needs auto_converge: QEMU's throttling can only be "
            "enabled when the migration starts",
            {"param": "stall_action"},
        )
    if options.max_downtime_cap_ms < options.max_downtime_ms:
        raise InvalidParams(
            "max_downtime_cap_ms is below max_downtime_ms", {"param": "max_downtime_cap_ms"}
        )
    if zstd_level_given and options.compression != "zstd":
        raise InvalidParams("zstd_level needs compression zstd", {"param": "zstd_level"})
