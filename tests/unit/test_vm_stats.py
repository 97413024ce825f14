"""``novacron.vm.stats``: a VM's counters read from libvirt's test driver (a node file of
its own, so the VM has the devices each branch needs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from novacron.vm import stats
from novacron.vm.driver import Hypervisor

NODE = """<node>
  <domain type='test'>
    <name>busy</name>
    <memory unit='KiB'>262144</memory>
    <currentMemory unit='KiB'>131072</currentMemory>
    <vcpu>2</vcpu>
    <os><type>hvm</type></os>
    <devices>
      <disk type='file' device='disk'>
        <source file='/guest/root.qcow2'/><target dev='vda' bus='virtio'/>
      </disk>
      <disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk>
      <interface type='bridge'>
        <mac address='52:54:00:AA:00:01'/><source bridge='br0'/>
      </interface>
    </devices>
  </domain>
</node>
"""


@pytest.fixture
def hv(tmp_path: Path) -> Hypervisor:
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    return Hypervisor(f"test://{node}")


def test_a_running_vm_reports_cpu_memory_disks_and_nics(hv: Hypervisor) -> None:
    doc = stats.read(hv, "busy")
    assert (doc["name"], doc["state"]) == ("busy", "running")
    cpu = doc["cpu"]
    assert cpu["vcpus"] == 2 and cpu["time_ns"] > 0
    assert isinstance(cpu["user_ns"], int) and isinstance(cpu["system_ns"], int)
    memory = doc["memory"]
    assert (memory["max_kib"], memory["current_kib"]) == (262144, 131072)
    assert set(memory) == {"max_kib", "current_kib", *stats.MEMORY_KEYS.values()}
    # the empty CD-ROM drive has nothing to count
    [disk] = doc["disks"]
    assert (disk["target"], disk["path"]) == ("vda", "/guest/root.qcow2")
    for key in ("rd_reqs", "rd_bytes", "wr_reqs", "wr_bytes", "capacity_bytes"):
        assert isinstance(disk[key], int) and disk[key] >= 0, key
    [nic] = doc["nics"]
    assert nic["mac"] == "52:54:00:aa:00:01" and nic["device"]  # the driver named it
    assert all(isinstance(nic[key], int) for key in stats.NIC_KEYS)


def test_a_vm_that_is_not_running_has_no_counters(hv: Hypervisor) -> None:
    hv.conn.lookupByName("busy").destroy()
    doc = stats.read(hv, "busy")
    assert doc["state"] == "stopped"
    assert (doc["cpu"], doc["memory"], doc["disks"], doc["nics"]) == (None, None, [], [])
    missing = stats.read(hv, "ghost")
    assert missing["state"] == "missing" and missing["cpu"] is None


def test_read_many_reads_each_in_order(hv: Hypervisor) -> None:
    conn = hv.conn
    conn.defineXML(
        "<domain type='test'><name>idle</name><memory>65536</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    docs = stats.read_many(hv, ["idle", "busy"])
    assert [(d["name"], d["state"]) for d in docs] == [("idle", "stopped"), ("busy", "running")]


def test_unknown_counters_are_none() -> None:
    # libvirt reports a counter it does not have as -1 (QEMU's block errors)
    assert stats._counter(-1) is None
    assert stats._counter(0) == 0
    assert stats._counter(None) is None
    assert stats._counter(7) == 7
