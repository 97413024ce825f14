"""A VM's resource use as libvirt counts it: CPU time, memory, disk and NIC I/O.

Counters are cumulative since the VM's QEMU process started (a restart starts them from
zero again) and are read in one go with the time of reading (``at``), so a client turns
two samples into rates. A counter the hypervisor does not report is ``None``; a VM that
is not running has no counters at all (``cpu``, ``memory`` ``None``, no disks or NICs).

Blocking: every function here runs on the libvirt worker pool.
"""

from __future__ import annotations

import time
from typing import Any

import libvirt

from novacron import errors
from novacron.vm import domain_xml, states
from novacron.vm.driver import Hypervisor
from novacron.vm.libvirt_errors import libvirt_errors

# libvirt's memoryStats keys (KiB) -> ours; the guest-reported ones need a balloon driver
MEMORY_KEYS = {
    "rss": "rss_kib",  # what the QEMU process holds on the host
    "unused": "unused_kib",
    "available": "available_kib",
    "usable": "usable_kib",
    "swap_in": "swap_in_kib",
    "swap_out": "swap_out_kib",
    "major_fault": "major_faults",
    "minor_fault": "minor_faults",
}
# how libvirt refuses per-cgroup figures it has no cgroup for
CGROUP_MISSING = (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_NO_SUPPORT)
NIC_KEYS = (
    "rx_bytes",
    "rx_packets",
    "rx_errors",
    "rx_drops",
    "tx_bytes",
    "tx_packets",
    "tx_errors",
    "tx_drops",
)


def _counter(value: Any) -> int | None:
    """libvirt reports an unknown counter as -1."""
    return int(value) if isinstance(value, int) and value >= 0 else None


def _cpu(dom: libvirt.virDomain, vcpus: int, cpu_time: int) -> dict[str, Any]:
    """From the domain's cgroup; where libvirt has none (a libvirtd in a container,
    ``cgroup_controllers = []``) the total is ``cpu_time`` of ``virDomainGetInfo``,
    which libvirt then reads from ``/proc``, and user/system time are unknown."""
    try:
        total = dom.getCPUStats(True)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() not in CGROUP_MISSING:
            raise
        total = []
    row = total[0] if total else {}
    return {
        "time_ns": _counter(row.get("cpu_time", cpu_time)),
        "user_ns": _counter(row.get("user_time")),
        "system_ns": _counter(row.get("system_time")),
        "vcpus": vcpus,
    }


def _memory(dom: libvirt.virDomain, max_kib: int, current_kib: int) -> dict[str, Any]:
    reported = dom.memoryStats()
    doc: dict[str, Any] = {"max_kib": max_kib, "current_kib": current_kib}
    for key, ours in MEMORY_KEYS.items():
        doc[ours] = _counter(reported.get(key))
    return doc


def _disks(dom: libvirt.virDomain, xml: str) -> list[dict[str, Any]]:
    found = []
    for disk in domain_xml.parse_disks(xml):
        if not disk.target or disk.empty:
            continue  # an empty CD-ROM drive has nothing to count
        rd_reqs, rd_bytes, wr_reqs, wr_bytes, _errs = dom.blockStats(disk.target)
        capacity, allocation, physical = dom.blockInfo(disk.target)
        found.append(
            {
                "target": disk.target,
                "path": disk.path,
                "rd_reqs": _counter(rd_reqs),
                "rd_bytes": _counter(rd_bytes),
                "wr_reqs": _counter(wr_reqs),
                "wr_bytes": _counter(wr_bytes),
                "capacity_bytes": _counter(capacity),
                "allocation_bytes": _counter(allocation),
                "physical_bytes": _counter(physical),
            }
        )
    return found


def _nics(dom: libvirt.virDomain, xml: str) -> list[dict[str, Any]]:
    found = []
    for iface in domain_xml.parse_interfaces(xml):
        doc: dict[str, Any] = {"mac": iface.mac, "device": iface.device or None}
        values = dom.interfaceStats(iface.device) if iface.device else (None,) * len(NIC_KEYS)
        doc.update(zip(NIC_KEYS, (_counter(v) for v in values), strict=True))
        found.append(doc)
    return found


def _idle(name: str, state: str, reason: str) -> dict[str, Any]:
    return {
        "name": name,
        "state": state,
        "reason": reason,
        "at": time.time(),
        "cpu": None,
        "memory": None,
        "disks": [],
        "nics": [],
    }


def read(hv: Hypervisor, name: str) -> dict[str, Any]:
    """One VM's counters now (state ``missing`` when libvirt has no such domain)."""
    dom = hv.lookup(name)
    if dom is None:
        return _idle(name, "missing", "no libvirt domain")
    with libvirt_errors():
        try:
            return _read_active(dom, name)
        except libvirt.libvirtError as exc:
            # stopped between two calls: the answer is that it is not running
            if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID and not dom.isActive():
                return _idle(name, *states.named(*dom.state()))
            raise


def _read_active(dom: libvirt.virDomain, name: str) -> dict[str, Any]:
    # (the reason too: a paused VM's ``ioerror`` is QEMU stopping it on a write the host
    # could not take, its file system full)
    state_name, reason = states.named(*dom.state())
    _, max_kib, current_kib, vcpus, cpu_time = dom.info()
    if not dom.isActive():
        return _idle(name, state_name, reason)
    at = time.time()
    xml = dom.XMLDesc(0)
    return {
        "name": name,
        "state": state_name,
        "reason": reason,
        "at": at,
        "cpu": _cpu(dom, vcpus, cpu_time),
        "memory": _memory(dom, max_kib, current_kib),
        "disks": _disks(dom, xml),
        "nics": _nics(dom, xml),
    }


def read_many(hv: Hypervisor, names: list[str]) -> list[dict[str, Any]]:
    """Several VMs' counters in one worker call; a VM gone meanwhile is left out."""
    found = []
    for name in names:
        try:
            found.append(read(hv, name))
        except errors.NotFound:
            continue
    return found
