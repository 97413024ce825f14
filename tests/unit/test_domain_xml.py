from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace

import libvirt
from hypothesis import given
from hypothesis import strategies as st

from novacron.vm import domain_xml
from novacron.vm.spec import DiskLimits, DiskSpec, VmSpec, disk_target


def plan(spec: VmSpec, domain_type: str = "qemu") -> domain_xml.DomainPlan:
    disks = tuple(
        domain_xml.DiskDevice(f"/img/{i}.qcow2", d.format, disk_target(i))
        for i, d in enumerate(spec.disks)
    )
    return domain_xml.DomainPlan(
        spec=spec,
        uuid="5b1e3c9a-4a39-4c5e-8a39-3a8f0f6c1d11",
        domain_type=domain_type,
        disks=disks,
        console_log="/var/lib/novacron/consoles/x.log",
    )


def attr(root: ET.Element, path: str, name: str) -> str | None:
    """Attribute ``name`` of the element at ``path``, which must exist."""
    element = root.find(path)
    assert element is not None, path
    return element.get(name)


def test_disk_targets() -> None:
    assert [disk_target(i) for i in (0, 1, 25, 26, 27)] == [
        "vda",
        "vdb",
        "vdz",
        "vdaa",
        "vdab",
    ]


def test_build_direct_kernel_boot_guest() -> None:
    spec = VmSpec(
        name="g1",
        vcpus=2,
        memory_mib=256,
        tenant="t1",
        kernel="/k/vmlinuz",
        initrd="/k/initrd",
        cmdline="console=ttyS0 quiet",
        disks=(DiskSpec(size_gib=1),),
    )
    root = ET.fromstring(domain_xml.build(plan(spec)))
    assert root.get("type") == "qemu"
    assert root.findtext("name") == "g1"
    assert root.findtext("vcpu") == "2"
    assert attr(root, "memory", "unit") == "MiB"
    assert root.findtext("os/kernel") == "/k/vmlinuz"
    assert root.findtext("os/initrd") == "/k/initrd"
    assert root.findtext("os/cmdline") == "console=ttyS0 quiet"
    assert attr(root, "devices/serial", "type") == "pty"  # a console a client can open
    assert attr(root, "devices/serial/log", "file") == "/var/lib/novacron/consoles/x.log"
    assert attr(root, "devices/serial/log", "append") == "on"
    assert attr(root, "devices/disk/target", "dev") == "vda"
    assert attr(root, "devices/disk/driver", "type") == "qcow2"


@given(
    st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xD7FF),
        min_size=1,
        max_size=200,
    )
)
def test_hostile_strings_stay_data(cmdline: str) -> None:
    spec = VmSpec(name="g1", vcpus=1, memory_mib=64, kernel="/k", cmdline=cmdline)
    text = domain_xml.build(plan(spec))
    root = ET.fromstring(text)
    assert root.findtext("os/cmdline") == cmdline
    # serial, the guest agent's channel, memballoon: nothing injected
    assert [d.tag for d in root.findall("devices/*")] == ["serial", "channel", "memballoon"]


def test_metadata_round_trip() -> None:
    spec = VmSpec(name="g1", vcpus=1, memory_mib=64, tenant="acme", disks=(DiskSpec(path="/a"),))
    managed = domain_xml.parse_managed(domain_xml.build(plan(spec)))
    assert managed is not None
    assert managed.tenant == "acme"
    assert VmSpec.from_dict(managed.spec) == spec
    assert domain_xml.parse_managed("<domain><name>x</name></domain>") is None


def file_disks(xml: str) -> list[str | None]:
    return [d.path for d in domain_xml.parse_disks(xml) if d.kind == "file" and d.path]


def test_parse_disk_paths() -> None:
    spec = VmSpec(
        name="g", vcpus=1, memory_mib=64, disks=(DiskSpec(size_gib=1), DiskSpec(path="/b"))
    )
    assert file_disks(domain_xml.build(plan(spec))) == [
        "/img/0.qcow2",
        "/img/1.qcow2",
    ]


def test_libvirt_test_driver_accepts_the_xml() -> None:
    conn = libvirt.open("test:///default")
    try:
        spec = VmSpec(
            name="xmlcheck", vcpus=1, memory_mib=64, kernel="/k", disks=(DiskSpec(size_gib=1),)
        )
        dom = conn.defineXML(domain_xml.build(plan(spec, "test")))
        assert dom.name() == "xmlcheck"
        assert domain_xml.parse_managed(dom.XMLDesc(0)) is not None
        dom.undefine()
    finally:
        conn.close()


def test_placement_elements_for_a_split_dedicated_vm_on_hugepages() -> None:
    from dataclasses import replace

    from novacron._core import Placer

    nodes = [
        {
            "id": n,
            "memory_mib": 4096,
            "cpus": [(n * 4 + t, n * 2 + t // 2) for t in range(4)],
            "hugepages": {2048: 1024},
        }
        for n in range(2)
    ]
    placement = (
        Placer(nodes, dedicated_cpus=[1, 2, 3, 5, 6, 7], shared_cpus=[0, 4])
        .allocate("big", 6, 2048, "dedicated", "strict", 2048)
        .to_dict()
    )
    spec = VmSpec(name="big", vcpus=6, memory_mib=2048, cpu_policy="dedicated", hugepage_kib=2048)
    root = ET.fromstring(domain_xml.build(replace(plan(spec), placement=placement)))
    pins = {p.get("vcpu"): p.get("cpuset") for p in root.findall("cputune/vcpupin")}
    assert pins == {"0": "1", "1": "2", "2": "3", "3": "5", "4": "6", "5": "7"}
    assert root.find("cputune/emulatorpin").get("cpuset") == "0,4"  # type: ignore[union-attr]
    assert root.find("vcpu").get("cpuset") == "1-3,5-7"  # type: ignore[union-attr]
    memory = root.find("numatune/memory")
    assert memory is not None and (memory.get("mode"), memory.get("nodeset")) == ("strict", "0-1")
    memnodes = [(m.get("cellid"), m.get("nodeset")) for m in root.findall("numatune/memnode")]
    assert memnodes == [("0", "0"), ("1", "1")]
    cells = root.findall("cpu/numa/cell")
    assert [(c.get("cpus"), c.get("memory")) for c in cells] == [
        ("0-2", str(1024 * 1024)),
        ("3-5", str(1024 * 1024)),
    ]
    page = root.find("memoryBacking/hugepages/page")
    assert page is not None and page.get("size") == "2048"
    # the placement travels in the metadata, so an adopted domain keeps it
    managed = domain_xml.parse_managed(ET.tostring(root, encoding="unicode"))
    assert managed is not None and managed.placement == placement


def test_shared_single_node_vm_has_no_guest_numa() -> None:
    from dataclasses import replace

    placement = {
        "cpu": "shared",
        "memory": "interleave",
        "hugepage_kib": None,
        "cells": [{"node": 1, "first_vcpu": 0, "vcpus": 2, "memory_kib": 65536, "cpus": [4, 5]}],
        "emulator_cpus": [4, 5],
    }
    spec = VmSpec(name="s", vcpus=2, memory_mib=64, memory_policy="interleave")
    root = ET.fromstring(domain_xml.build(replace(plan(spec), placement=placement)))
    assert [p.get("cpuset") for p in root.findall("cputune/vcpupin")] == ["4-5", "4-5"]
    assert root.find("numatune/memory").get("mode") == "interleave"  # type: ignore[union-attr]
    assert root.find("cpu") is None and root.find("memoryBacking") is None


def test_retarget_replaces_the_sources_placement_and_keeps_the_rest() -> None:
    from dataclasses import replace

    split = {
        "cpu": "dedicated",
        "memory": "strict",
        "hugepage_kib": 2048,
        "cells": [
            {"node": 0, "first_vcpu": 0, "vcpus": 1, "memory_kib": 65536, "cpus": [1]},
            {"node": 1, "first_vcpu": 1, "vcpus": 1, "memory_kib": 65536, "cpus": [5]},
        ],
        "emulator_cpus": [0, 4],
    }
    here = {
        "cpu": "shared",
        "memory": "preferred",
        "hugepage_kib": None,
        "cells": [{"node": 0, "first_vcpu": 0, "vcpus": 2, "memory_kib": 131072, "cpus": [2, 3]}],
        "emulator_cpus": [2, 3],
    }
    spec = VmSpec(name="mv", vcpus=2, memory_mib=128, cpu_policy="dedicated", hugepage_kib=2048)
    source = ET.fromstring(
        domain_xml.build(replace(plan(spec), placement=split, emulator="/usr/bin/qemu-a"))
    )
    # libvirt adds a CPU model and device addresses of its own: they must survive
    cpu = ET.SubElement(source, "cpu", mode="custom")
    ET.SubElement(cpu, "model").text = "qemu64"
    if (existing := source.find("cpu/numa")) is not None:
        source.find("cpu").remove(existing)  # type: ignore[union-attr]
    text = domain_xml.retarget(
        ET.tostring(source, encoding="unicode"), here, "/state/b/consoles/mv.log", "/usr/bin/qb"
    )
    root = ET.fromstring(text)
    assert [p.get("cpuset") for p in root.findall("cputune/vcpupin")] == ["2-3", "2-3"]
    assert root.find("vcpu").get("cpuset") == "2-3"  # type: ignore[union-attr]
    assert root.find("numatune/memory").get("mode") == "preferred"  # type: ignore[union-attr]
    assert root.findall("numatune/memnode") == [] and root.find("memoryBacking") is None
    assert root.find("cpu/numa") is None and root.find("cpu/model").text == "qemu64"  # type: ignore[union-attr]
    assert root.find("devices/serial/log").get("file") == "/state/b/consoles/mv.log"  # type: ignore[union-attr]
    assert root.find("devices/emulator").text == "/usr/bin/qb"  # type: ignore[union-attr]
    managed = domain_xml.parse_managed(text)
    assert managed is not None and managed.placement == here and managed.spec == spec.to_dict()


def _running_console_xml(serial_type: str) -> str:
    """A running domain's console devices as libvirt describes them (pty: its terminal
    and log, mirrored by ``<console>``; file: the form of VMs defined before ptys)."""
    spec = VmSpec(name="mv", vcpus=1, memory_mib=64)
    root = ET.fromstring(domain_xml.build(plan(spec)))
    devices = root.find("devices")
    assert devices is not None
    for el in devices.findall("serial"):
        devices.remove(el)
    for tag in ("serial", "console"):
        el = ET.SubElement(devices, tag, type=serial_type)
        if serial_type == "pty":
            if tag == "console":
                el.set("tty", "/dev/pts/7")
            ET.SubElement(el, "source", path="/dev/pts/7")
            ET.SubElement(el, "log", file="/state/a/consoles/mv.log", append="on")
        else:
            ET.SubElement(el, "source", path="/state/a/consoles/mv.log", append="on")
        ET.SubElement(el, "target", port="0")
    return ET.tostring(root, encoding="unicode")


def test_retarget_points_a_pty_console_at_this_hosts_log_and_drops_the_sources_terminal() -> None:
    root = ET.fromstring(
        domain_xml.retarget(_running_console_xml("pty"), None, "/state/b/consoles/mv.log")
    )
    for tag in ("serial", "console"):
        device = root.find(f"devices/{tag}")
        assert device is not None and device.get("type") == "pty"
        assert device.find("source") is None and device.get("tty") is None
        assert device.find("log").get("file") == "/state/b/consoles/mv.log"  # type: ignore[union-attr]
        assert device.find("target").get("port") == "0"  # type: ignore[union-attr]


def test_retarget_keeps_an_older_vms_file_console_a_file_on_this_host() -> None:
    root = ET.fromstring(
        domain_xml.retarget(_running_console_xml("file"), None, "/state/b/consoles/mv.log")
    )
    source = root.find("devices/serial/source")
    assert source is not None and source.get("path") == "/state/b/consoles/mv.log"
    assert root.find("devices/serial").get("type") == "file"  # type: ignore[union-attr]


def test_only_a_pty_console_can_be_opened() -> None:
    from novacron.vm.console import has_pty_console

    assert has_pty_console(_running_console_xml("pty"))
    assert not has_pty_console(_running_console_xml("file"))
    bare = domain_xml.build(plan(VmSpec(name="t", vcpus=1, memory_mib=64), "test"))
    assert not has_pty_console(bare)  # the test driver's domains have no serial port


def test_retarget_without_placement_drops_the_sources_pins() -> None:
    from dataclasses import replace

    placement = {
        "cpu": "shared",
        "memory": "strict",
        "hugepage_kib": None,
        "cells": [{"node": 1, "first_vcpu": 0, "vcpus": 1, "memory_kib": 65536, "cpus": [4]}],
        "emulator_cpus": [4],
    }
    spec = VmSpec(name="p", vcpus=1, memory_mib=64)
    source = domain_xml.build(replace(plan(spec), placement=placement))
    root = ET.fromstring(domain_xml.retarget(source, None, None))
    assert root.find("cputune") is None and root.find("numatune") is None
    assert "cpuset" not in root.find("vcpu").attrib  # type: ignore[union-attr]
    managed = domain_xml.parse_managed(ET.tostring(root, encoding="unicode"))
    assert managed is not None and managed.placement is None


def test_retarget_refuses_a_domain_that_is_not_novacrons() -> None:
    import pytest

    with pytest.raises(ValueError, match="metadata"):
        domain_xml.retarget("<domain><name>x</name><vcpu>1</vcpu></domain>", None, None)


DISKS_XML = """
<domain type='test'>
  <name>disks</name><memory unit='MiB'>64</memory><os><type>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <source file='/shared/top.qcow2'/>
      <backingStore type='file'><format type='qcow2'/><source file='/local/base.qcow2'/>
        <backingStore/></backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'><target dev='sda' bus='sata'/><readonly/></disk>
    <disk type='file' device='cdrom'>
      <source file='/isos/install.iso'/><target dev='sdb' bus='sata'/><readonly/>
    </disk>
    <disk type='block' device='disk'><source dev='/dev/vg/lv'/><target dev='vdb'/></disk>
    <disk type='network' device='disk'>
      <source protocol='rbd' name='pool/image'><host name='mon1' port='6789'/></source>
      <target dev='vdc'/>
    </disk>
    <disk type='volume' device='disk'>
      <source pool='default' volume='v.raw'/><target dev='vdd'/>
    </disk>
  </devices>
</domain>
"""


def test_parse_disks_reads_libvirts_description_of_every_disk_type() -> None:
    conn = libvirt.open("test:///default")
    try:
        dom = conn.defineXML(DISKS_XML)
        try:
            xml = dom.XMLDesc(0)  # as libvirt gives it back, not as written
        finally:
            dom.undefine()
    finally:
        conn.close()
    disks = domain_xml.parse_disks(xml)
    assert [(d.target, d.kind, d.path, d.readonly, d.empty) for d in disks] == [
        ("vda", "file", "/shared/top.qcow2", False, False),  # its backing image is not a disk
        ("sda", "file", None, True, True),
        ("sdb", "file", "/isos/install.iso", True, False),
        ("vdb", "block", "/dev/vg/lv", False, False),
        ("vdc", "network", None, False, False),
        ("vdd", "volume", None, False, False),
    ]
    assert file_disks(xml) == ["/shared/top.qcow2", "/isos/install.iso"]
    assert {d.alias for d in disks} == {None}  # (a definition names no aliases)


def test_parse_disks_reads_a_running_domains_alias() -> None:
    xml = """<domain><devices>
      <disk type='file'>
        <source file='/a.qcow2'/><target dev='vda'/><alias name='virtio-disk0'/>
      </disk>
      <disk type='file'><source file='/b.raw'/><target dev='vdb'/></disk>
    </devices></domain>"""
    assert [(d.target, d.alias) for d in domain_xml.parse_disks(xml)] == [
        ("vda", "virtio-disk0"),
        ("vdb", None),
    ]


def test_parse_interfaces_reads_mac_host_device_and_type() -> None:
    xml = """<domain><devices>
      <interface type='bridge'>
        <mac address='52:54:00:AB:CD:01'/><source bridge='br0'/><target dev='vnet4'/>
      </interface>
      <interface type='network'><source network='default'/></interface>
      <disk type='file' device='disk'><target dev='vda'/></disk>
    </devices></domain>"""
    assert domain_xml.parse_interfaces(xml) == [
        domain_xml.InterfaceDevice(mac="52:54:00:ab:cd:01", device="vnet4", kind="bridge"),
        domain_xml.InterfaceDevice(mac="", device="", kind="network"),  # not started yet
    ]


def test_a_disk_is_added_after_the_others_and_removed_by_its_name() -> None:
    xml = """<domain type='kvm'><name>v</name><devices>
      <emulator>/usr/bin/qemu-system-x86_64</emulator>
      <disk type='file' device='disk'><source file='/a.qcow2'/><target dev='vda'/></disk>
      <disk type='file' device='cdrom'><target dev='sda'/><readonly/></disk>
      <interface type='bridge'><mac address='52:54:00:00:00:01'/></interface>
    </devices></domain>"""
    added = domain_xml.with_disk(xml, domain_xml.DiskDevice("/b.raw", "raw", "vdb"))
    assert [(d.target, d.path) for d in domain_xml.parse_disks(added)] == [
        ("vda", "/a.qcow2"),
        ("sda", None),
        ("vdb", "/b.raw"),
    ]
    root = ET.fromstring(added)
    assert [el.tag for el in root.find("devices")] == [  # type: ignore[union-attr]
        "emulator",
        "disk",
        "disk",
        "disk",
        "interface",
    ]
    new = root.findall("devices/disk")[2]
    assert new.find("driver").get("type") == "raw"  # type: ignore[union-attr]
    assert new.find("target").get("bus") == "virtio"  # type: ignore[union-attr]
    removed = domain_xml.without_disk(added, "vda")
    assert [d.target for d in domain_xml.parse_disks(removed)] == ["sda", "vdb"]
    assert domain_xml.without_disk(removed, "vdz") == removed  # no such disk: unchanged
    assert ET.fromstring(removed).find("devices/interface") is not None
    bare = domain_xml.with_disk(
        "<domain><name>v</name></domain>", domain_xml.DiskDevice("/c", "qcow2", "vda")
    )
    assert [d.target for d in domain_xml.parse_disks(bare)] == ["vda"]


def test_a_disks_limits_are_its_iotune_and_are_replaced_whole() -> None:
    limited = domain_xml.DiskDevice(
        "/p/a.qcow2", "qcow2", "vda", DiskLimits(read_bytes_per_s=1 << 20, write_iops=50)
    )
    el = domain_xml.disk_element(limited)
    assert {c.tag: c.text for c in el.find("iotune")} == {  # type: ignore[union-attr]
        "read_bytes_sec": str(1 << 20),
        "write_iops_sec": "50",
    }
    assert domain_xml.disk_element(replace(limited, limits=None)).find("iotune") is None
    xml = """<domain><devices>
      <disk type='file'><source file='/p/a.qcow2'/><target dev='vda'/>
        <iotune><total_bytes_sec>9</total_bytes_sec></iotune></disk>
      <disk type='file'><source file='/p/b.qcow2'/><target dev='vdb'/>
        <iotune><read_iops_sec>7</read_iops_sec></iotune></disk>
    </devices></domain>"""

    def iotunes(text: str) -> dict[str, dict[str, str | None]]:
        root = ET.fromstring(text)
        return {
            d.find("target").get("dev"): {c.tag: c.text for c in d.findall("iotune/*")}  # type: ignore[union-attr,misc]
            for d in root.findall("devices/disk")
        }

    changed = domain_xml.with_disk_limits(xml, limited)
    assert iotunes(changed) == {
        "vda": {"read_bytes_sec": str(1 << 20), "write_iops_sec": "50"},
        "vdb": {"read_iops_sec": "7"},  # another disk's stay
    }
    lifted = domain_xml.with_disk_limits(changed, replace(limited, limits=None))
    assert iotunes(lifted) == {"vda": {}, "vdb": {"read_iops_sec": "7"}}


def test_room_for_vcpus_is_the_maximum_with_the_rest_current() -> None:
    spec = VmSpec(name="hp", vcpus=2, memory_mib=64, max_vcpus=6)
    root = ET.fromstring(domain_xml.build(plan(spec)))
    vcpu = root.find("vcpu")
    assert vcpu is not None and (vcpu.text, vcpu.get("current")) == ("6", "2")
    without = ET.fromstring(domain_xml.build(plan(VmSpec(name="hp", vcpus=2, memory_mib=64))))
    vcpu = without.find("vcpu")
    assert vcpu is not None and (vcpu.text, vcpu.get("current")) == ("2", None)

    conn = libvirt.open("test:///default")
    try:  # libvirt's own description, resized both ways
        dom = conn.defineXML(domain_xml.build(plan(spec, "test")))
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        from dataclasses import replace

        for vcpus, most, want in ((3, 6, ("6", "3")), (4, None, ("4", None)), (1, 4, ("4", "1"))):
            grown = replace(spec, vcpus=vcpus, max_vcpus=most)
            xml = domain_xml.resized(xml, grown, None)
            got = ET.fromstring(xml).find("vcpu")
            assert got is not None and (got.text, got.get("current")) == want
            dom = conn.defineXML(xml)
            assert dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG) == vcpus
            xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            managed = domain_xml.parse_managed(xml)
            assert managed is not None and managed.spec.get("max_vcpus") == most
        dom.undefine()
    finally:
        conn.close()


def test_room_for_memory_is_the_maximum_the_current_target_and_a_balloon() -> None:
    from dataclasses import replace

    spec = VmSpec(name="bl", vcpus=1, memory_mib=128, max_memory_mib=512)
    root = ET.fromstring(domain_xml.build(plan(spec)))
    assert root.findtext("memory") == "512" and root.findtext("currentMemory") == "128"
    assert root.find("devices/memballoon").get("model") == "virtio"  # type: ignore[union-attr]
    plain = ET.fromstring(domain_xml.build(plan(replace(spec, max_memory_mib=None))))
    assert plain.findtext("memory") == "128" and plain.findtext("currentMemory") == "128"
    assert plain.find("devices/memballoon").get("model") == "none"  # type: ignore[union-attr]

    # libvirt's balloon carries an address; a resize to the other model drops it
    xml = ET.tostring(plain, encoding="unicode").replace(
        '<memballoon model="none" />',
        "<memballoon model='none'><address type='pci' slot='0x05'/></memballoon>",
    )
    roomy = ET.fromstring(domain_xml.resized(xml, spec, None))
    balloon = roomy.find("devices/memballoon")
    assert balloon is not None and balloon.attrib == {"model": "virtio"} and not list(balloon)
    assert roomy.findtext("memory") == "512" and roomy.findtext("currentMemory") == "128"
    back = ET.fromstring(
        domain_xml.resized(
            ET.tostring(roomy, encoding="unicode"), replace(spec, max_memory_mib=None), None
        )
    )
    assert back.find("devices/memballoon").get("model") == "none"  # type: ignore[union-attr]
    assert back.findtext("memory") == "128"


def test_a_file_console_is_made_a_pty_logging_to_the_same_file() -> None:
    upgraded = domain_xml.with_pty_console(_running_console_xml("file"))
    assert upgraded is not None
    root = ET.fromstring(upgraded)
    for tag in ("serial", "console"):
        device = root.find(f"devices/{tag}")
        assert device is not None and device.get("type") == "pty"
        assert device.find("source") is None
        assert device.find("log").get("file") == "/state/a/consoles/mv.log"  # type: ignore[union-attr]
        assert device.find("target").get("port") == "0"  # type: ignore[union-attr]
    assert domain_xml.with_pty_console(upgraded) is None
    assert domain_xml.with_pty_console(_running_console_xml("pty")) is None


def test_the_configured_cpu_model_holds_the_guest_numa_cells() -> None:
    """``[hypervisor] cpu_model``: a mode or a named model, in the one ``<cpu>`` that a
    placement across nodes adds its guest cells to; none given, libvirt's default."""
    split = {
        "cpu": "shared",
        "memory": "strict",
        "hugepage_kib": None,
        "cells": [
            {"node": 0, "first_vcpu": 0, "vcpus": 1, "memory_kib": 65536, "cpus": [1]},
            {"node": 1, "first_vcpu": 1, "vcpus": 1, "memory_kib": 65536, "cpus": [5]},
        ],
        "emulator_cpus": [0, 4],
    }
    spec = VmSpec(name="cm", vcpus=2, memory_mib=128)
    for model, attrs, named in (
        ("host-model", {"mode": "host-model"}, None),
        ("host-passthrough", {"mode": "host-passthrough"}, None),
        (
            "Haswell-noTSX",
            {"mode": "custom", "match": "exact", "check": "partial"},
            "Haswell-noTSX",
        ),
    ):
        root = ET.fromstring(
            domain_xml.build(replace(plan(spec), placement=split, cpu_model=model))
        )
        [cpu] = root.findall("cpu")
        assert cpu.attrib == attrs
        assert cpu.findtext("model") == named
        if named:
            assert cpu.find("model").get("fallback") == "forbid"  # type: ignore[union-attr]
        assert [c.get("cpus") for c in cpu.findall("numa/cell")] == ["0", "1"]
    plain = ET.fromstring(domain_xml.build(plan(spec)))
    assert plain.find("cpu") is None
    on_test = ET.fromstring(domain_xml.build(replace(plan(spec, "test"), cpu_model="host-model")))
    assert on_test.find("cpu") is None  # (libvirt's test driver has no CPU models)


def test_a_disks_discard_is_on_its_driver_and_follows_the_setting() -> None:
    device = domain_xml.DiskDevice("/a.qcow2", "qcow2", "vda", discard="unmap")
    driver = domain_xml.disk_element(device).find("driver")
    assert driver is not None and driver.get("discard") == "unmap"
    assert driver.get("detect_zeroes") == "unmap"  # (zeros written are freed too)
    driver = domain_xml.disk_element(replace(device, discard=None)).find("driver")
    assert driver is not None and driver.get("discard") is None  # libvirt's default
    xml = (
        "<domain><devices>"
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        "<source file='/a.qcow2'/><target dev='vda'/></disk>"
        "<disk type='block' device='disk'><driver name='qemu' type='raw' discard='ignore'/>"
        "<source dev='/dev/vg/lv'/><target dev='vdb'/></disk>"
        "<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
        "<source file='/ro.raw'/><target dev='vdc'/><readonly/></disk>"
        "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
        "<source file='/i.iso'/><target dev='sda'/><readonly/></disk>"
        "</devices></domain>"
    )
    unmapped = domain_xml.with_disk_discard(xml, "unmap")
    assert unmapped is not None
    found = {
        d.find("target").get("dev"): d.find("driver").get("discard")  # type: ignore[union-attr]
        for d in ET.fromstring(unmapped).iter("disk")
    }
    assert found == {"vda": "unmap", "vdb": "unmap", "vdc": None, "sda": None}
    assert domain_xml.with_disk_discard(unmapped, "unmap") is None  # nothing left to change
    zeros = {
        d.find("target").get("dev"): d.find("driver").get("detect_zeroes")  # type: ignore[union-attr]
        for d in ET.fromstring(unmapped).iter("disk")
    }
    assert zeros == {"vda": "unmap", "vdb": "unmap", "vdc": None, "sda": None}
    ignored = domain_xml.with_disk_discard(unmapped, "ignore")
    assert ignored is not None and ignored.count('discard="ignore"') == 2
    assert "detect_zeroes" not in ignored
    # one defined with the discard but not the zeros (outside NovaCron): given them
    older = unmapped.replace(' detect_zeroes="unmap"', "", 1)
    assert domain_xml.with_disk_discard(older, "unmap") is not None
    # libvirt takes it
    conn = libvirt.open("test:///default")
    try:
        spec = VmSpec(name="discards", vcpus=1, memory_mib=64, disks=(DiskSpec(size_gib=1),))
        disks = (domain_xml.DiskDevice("/img/0.qcow2", "qcow2", "vda", discard="unmap"),)
        dom = conn.defineXML(domain_xml.build(replace(plan(spec, "test"), disks=disks)))
        try:
            assert "discard='unmap' detect_zeroes='unmap'" in dom.XMLDesc(0)
        finally:
            dom.undefine()
    finally:
        conn.close()
