"""``novacron.vm.driver`` beyond the libvirt calls the service tests exercise: the QEMU
process libvirt records for a domain."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from novacron.vm import driver
from novacron.vm.driver import Hypervisor, status_pid

STATUS = """<!--
WARNING: THIS IS AN AUTO-GENERATED FILE.
-->
<domstatus state='paused' reason='migration' pid='{pid}'>
  <monitor path='/var/lib/libvirt/qemu/domain-3-m1/monitor.sock' type='unix'/>
  <domain type='qemu' id='3'><name>m1</name></domain>
</domstatus>
"""


def test_status_pid_reads_libvirts_status_file(tmp_path: Path) -> None:
    path = tmp_path / "m1.xml"
    path.write_text(STATUS.format(pid=3509))
    assert status_pid(path) == 3509
    for bad in ("0", "-1", "", "12a", " 7"):
        path.write_text(STATUS.format(pid=bad))
        assert status_pid(path) is None, bad
    path.write_text("<domain><name>m1</name></domain>")  # a definition, not a status
    assert status_pid(path) is None
    path.write_text("<domstatus pid='12'")  # cut short
    assert status_pid(path) is None
    assert status_pid(tmp_path / "missing.xml") is None


def test_qemu_pid_only_from_the_local_system_qemu_driver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(driver, "QEMU_STATUS_DIR", tmp_path)
    (tmp_path / "m1.xml").write_text(STATUS.format(pid=42))
    assert Hypervisor("qemu:///system").qemu_pid("m1") == 42
    assert Hypervisor("qemu:///system").qemu_pid("m2") is None  # not running
    for uri in ("qemu:///session", "qemu+ssh://host/system", "test:///default"):
        assert Hypervisor(uri).qemu_pid("m1") is None, uri


def test_volumes_are_made_thin_and_qcow2_ones_version_3() -> None:
    """libvirt allocates a raw volume whole unless told ``allocation`` 0, and makes qcow2
    version 2 unless told (a disk that then holds a snapshot cannot grow); raw volumes
    have no version."""
    hv = Hypervisor("test:///default")
    made = {
        fmt: hv.create_volume("default-pool", f"{uuid.uuid4().hex}.{fmt}", 1, fmt)
        for fmt in ("qcow2", "raw")
    }
    try:
        described = {
            fmt: ET.fromstring(hv.conn.storageVolLookupByPath(path).XMLDesc(0))
            for fmt, path in made.items()
        }
        compat = {fmt: doc.findtext("target/compat") for fmt, doc in described.items()}
        assert compat == {"qcow2": "1.1", "raw": None}
        assert [doc.findtext("allocation") for doc in described.values()] == ["0", "0"]
    finally:
        for path in made.values():
            hv.delete_volume(path)
        hv.close()


def test_pool_space_counts_what_the_volumes_were_promised() -> None:
    hv = Hypervisor("test:///default")
    before = hv.pool_space("default-pool")
    made = [
        hv.create_volume("default-pool", f"{uuid.uuid4().hex}.qcow2", size, "qcow2")
        for size in (2, 3)
    ]
    try:
        after = hv.pool_space("default-pool")
        assert after["volumes"] == before["volumes"] + 2
        assert after["committed_bytes"] == before["committed_bytes"] + (5 << 30)
        assert (after["pool"], after["path"]) == ("default-pool", "/default-pool")
        assert after["capacity_bytes"] >= after["available_bytes"]
    finally:
        for path in made:
            hv.delete_volume(path)
        hv.close()


def test_disk_errors_are_named_by_device() -> None:
    """libvirt's test driver reports an error on every disk of a domain, the kinds in
    turn (unspecified, then no space): each is named, by the disk's device name."""
    hv = Hypervisor("test:///default")
    name = f"de-{uuid.uuid4().hex[:8]}"
    disks = "".join(
        f"<disk type='file' device='disk'><source file='/img/{t}.raw'/>"
        f"<target dev='{t}' bus='virtio'/></disk>"
        for t in ("vda", "vdb")
    )
    hv.conn.defineXML(
        f"<domain type='test'><name>{name}</name><memory>65536</memory><vcpu>1</vcpu>"
        f"<os><type>hvm</type></os><devices>{disks}</devices></domain>"
    )
    dom = hv.conn.lookupByName(name)
    dom.create()
    try:
        assert hv.disk_errors(name) == {"vda": "unspecified", "vdb": "no_space"}
    finally:
        dom.destroy()
        dom.undefine()
        hv.close()
