"""``novacron metrics``: the VMs' counters in Prometheus's text exposition format.

The daemon speaks msgpack-RPC only; this command is one of its clients. It asks
``vm.stats.list`` (or, with ``--cluster``, ``cluster.stats``: every node's VMs, each
series labelled with its node) and ``node.info``, and prints the figures as metric
families (format version 0.0.4: ``# HELP``, ``# TYPE``, one sample a line). With
``--output FILE`` it writes them to FILE atomically (a temporary file in the same
directory, renamed over it), as node_exporter's textfile collector wants; a systemd
timer running it every so often is the usual setup (``docs/operations.md``).

Counters are the hypervisor's, cumulative since the VM's QEMU started; a value the
hypervisor does not report is left out rather than printed as zero. Only the tenants
the caller sees are there.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from novacron.sync_client import SyncClient

PREFIX = "novacron_"


@dataclass
class Family:
    name: str  # without the prefix
    kind: str  # "counter" or "gauge"
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, labels: dict[str, str], value: Any, scale: float = 1) -> None:
        """One sample, unless the value is unknown (None, or not a number)."""
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            return
        self.samples.append((labels, value * scale))


def escape(value: str) -> str:
    """A label value as the text format writes it: backslash, double quote and line
    feed escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render(families: Iterable[Family]) -> str:
    lines = []
    for family in families:
        if not family.samples:
            continue
        name = PREFIX + family.name
        lines.append(f"# HELP {name} {family.help}")
        lines.append(f"# TYPE {name} {family.kind}")
        for labels, value in family.samples:
            text = ",".join(f'{key}="{escape(val)}"' for key, val in labels.items())
            lines.append(f"{name}{{{text}}} {number(value)}" if text else f"{name} {number(value)}")
    return "\n".join(lines) + "\n" if lines else ""


def vm_families(rows: list[dict[str, Any]]) -> list[Family]:
    """The families of ``vm.stats.list`` rows (each labelled ``node`` when it has one)."""
    info = Family(
        "vm_info", "gauge", "A VM known to the daemon (1), with its state and the reason for it."
    )
    running = Family("vm_running", "gauge", "Whether the VM runs (1) or not (0).")
    vcpus = Family("vm_vcpus", "gauge", "The VM's vCPUs.")
    cpu = Family("vm_cpu_seconds_total", "counter", "CPU time of the VM's QEMU process.")
    rss = Family("vm_memory_rss_bytes", "gauge", "Memory the VM's QEMU holds on the host.")
    disk = {
        key: Family(f"vm_disk_{name}", kind, text)
        for key, name, kind, text in (
            ("rd_bytes", "read_bytes_total", "counter", "Bytes the guest read from the disk."),
            ("wr_bytes", "write_bytes_total", "counter", "Bytes the guest wrote to the disk."),
            ("rd_reqs", "read_requests_total", "counter", "Read requests of the guest."),
            ("wr_reqs", "write_requests_total", "counter", "Write requests of the guest."),
            ("capacity_bytes", "capacity_bytes", "gauge", "The disk's size for the guest."),
            ("allocation_bytes", "allocation_bytes", "gauge", "Bytes of the disk written."),
        )
    }
    nic = {
        key: Family(f"vm_network_{name}", "counter", text)
        for key, name, text in (
            ("rx_bytes", "receive_bytes_total", "Bytes the guest received."),
            ("tx_bytes", "transmit_bytes_total", "Bytes the guest sent."),
            ("rx_packets", "receive_packets_total", "Packets the guest received."),
            ("tx_packets", "transmit_packets_total", "Packets the guest sent."),
            ("rx_drops", "receive_drops_total", "Packets dropped on their way to the guest."),
            ("tx_drops", "transmit_drops_total", "Packets of the guest dropped."),
        )
    }
    for row in rows:
        labels = {"tenant": str(row.get("tenant", "")), "vm": str(row["name"])}
        if row.get("node") is not None:
            labels = {"node": str(row["node"]), **labels}
        state = {"state": str(row.get("state", "")), "reason": str(row.get("reason", ""))}
        info.add({**labels, **state}, 1)
        running.add(labels, 1 if row.get("state") == "running" else 0)
        stats = row.get("cpu") or {}
        vcpus.add(labels, stats.get("vcpus"))
        cpu.add(labels, stats.get("time_ns"), 1e-9)
        rss.add(labels, (row.get("memory") or {}).get("rss_kib"), 1024)
        for item in row.get("disks") or []:
            for key, family in disk.items():
                family.add({**labels, "device": str(item.get("target"))}, item.get(key))
        for item in row.get("nics") or []:
            for key, family in nic.items():
                family.add({**labels, "mac": str(item.get("mac"))}, item.get(key))
    return [info, running, vcpus, cpu, rss, *disk.values(), *nic.values()]


def node_families(doc: dict[str, Any], labels: dict[str, str]) -> list[Family]:
    """The families of the answering node's ``node.info``."""
    daemon = doc.get("daemon") or {}
    cordoned = Family("node_cordoned", "gauge", "Whether the node is cordoned (1) or not (0).")
    cordoned.add(labels, 1 if doc.get("cordon") else 0)
    managed = Family("node_vms", "gauge", "VMs the daemon manages on the node.")
    managed.add(labels, daemon.get("managed_vms"))
    uptime = Family("node_daemon_uptime_seconds", "gauge", "Seconds since the daemon started.")
    uptime.add(labels, daemon.get("uptime_s"))
    keeper = daemon.get("keeper") or {}
    kept = Family(
        "node_keeper_total",
        "counter",
        "What the state keeper did since the daemon started, by outcome.",
    )
    for outcome in ("restarted", "start_failed", "gave_up", "followed", "resumed"):
        kept.add({**labels, "outcome": outcome}, keeper.get(outcome))
    given_up = Family("node_vms_given_up", "gauge", "VMs the restart policy gave up on.")
    given_up.add(labels, len(keeper.get("given_up") or []) if keeper else None)
    consoles = daemon.get("consoles") or {}
    open_ = Family("node_consoles_open", "gauge", "VMs whose serial console a client has open.")
    open_.add(labels, consoles.get("open"))
    sessions = Family(
        "node_console_sessions", "gauge", "Clients with a VM's serial console open, by mode."
    )
    if consoles:
        watching = int(consoles.get("watching") or 0)
        sessions.add({**labels, "mode": "typing"}, int(consoles.get("sessions") or 0) - watching)
        sessions.add({**labels, "mode": "watching"}, watching)
    shaping = daemon.get("shaping") or {}
    shaped = Family("node_nic_shaped_vms", "gauge", "Running VMs with NIC limits on their taps.")
    shaped.add(labels, shaping.get("shaped_vms"))
    shaper = Family(
        "node_nic_shaper_total",
        "counter",
        "What the NIC shaper did since the daemon started: taps changed, IFBs swept.",
    )
    for what in ("changes", "swept"):
        shaper.add({**labels, "what": what}, shaping.get(what))
    storage = doc.get("storage") or {}
    where = {**labels, "pool": str(storage.get("pool", ""))}
    space = []
    for key, text in (
        ("capacity_bytes", "Size of the file system of the daemon's storage pool."),
        ("available_bytes", "Bytes its guests can still write in the daemon's storage pool."),
        ("reserve_bytes", "Bytes of the storage pool kept free of new volumes."),
        ("committed_bytes", "Sum of the sizes of the pool's volumes (thin: not yet written)."),
    ):
        family = Family(f"node_storage_{key}", "gauge", text)
        family.add(where, storage.get(key))
        space.append(family)
    return [cordoned, managed, uptime, kept, given_up, open_, sessions, shaped, shaper, *space]


def stats_families(doc: dict[str, Any]) -> list[Family]:
    """``cluster.stats``' word on each node: answered (1) or not (0)."""
    answered = Family("cluster_node_answered", "gauge", "Whether the node answered (1) or not.")
    for node in doc.get("nodes") or []:
        answered.add({"node": str(node["node"])}, 0 if "error" in node else 1)
    return [answered]


def collect(client: SyncClient, cluster: bool, tenant: str | None) -> str:
    info: dict[str, Any] = client.call("node.info")
    if cluster:
        doc: dict[str, Any] = client.call("cluster.stats", tenant=tenant)
        families = [*vm_families(doc["vms"]), *stats_families(doc)]
        families += node_families(info, {"node": str(info.get("node", ""))})
    else:
        families = [*vm_families(client.call("vm.stats.list", tenant=tenant))]
        families += node_families(info, {})
    return render(families)


def write_atomically(path: Path, text: str) -> None:
    """``text`` into ``path``, whole or not at all (readers never see half a file)."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def add_commands(groups: Any) -> None:
    cmd = groups.add_parser(
        "metrics", help="VM and node figures in Prometheus's text format (textfile collector)"
    )
    cmd.add_argument("--cluster", action="store_true", help="every node's VMs (a cluster only)")
    cmd.add_argument("--tenant", help="only this tenant's VMs")
    cmd.add_argument("--output", type=Path, help="write to FILE atomically instead of stdout")
    cmd.set_defaults(run=run_metrics)


def run_metrics(client: SyncClient, args: argparse.Namespace) -> None:
    text = collect(client, args.cluster, args.tenant)
    if args.output is not None:
        write_atomically(args.output, text)
    else:
        sys.stdout.write(text)
