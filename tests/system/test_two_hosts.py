"""The two-host harness itself: two namespaced hosts with their own libvirtd, and a
TCG guest live-migrated between them by libvirt (peer to peer) — the baseline the
NovaCron data path is compared with, and proof the harness is sound."""

from __future__ import annotations

import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system import guest
from tests.system.libvirt_host import LibvirtHost
from tests.system.twohosts import TwoHosts


@pytest.fixture
def hosts(libvirt_host: LibvirtHost) -> Iterator[TwoHosts]:
    pair = TwoHosts.start(secrets.token_hex(3))
    try:
        yield pair
    finally:
        pair.stop()


def guest_xml(name: str, images: guest.GuestImages, emulator: Path, console: Path) -> str:
    dom = ET.Element("domain", type="qemu")
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory", unit="MiB").text = "128"
    ET.SubElement(dom, "vcpu").text = "1"
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64").text = "hvm"
    ET.SubElement(os_el, "kernel").text = str(images.kernel)
    ET.SubElement(os_el, "initrd").text = str(images.initrd)
    ET.SubElement(os_el, "cmdline").text = images.cmdline + " novacron.workload"
    devices = ET.SubElement(dom, "devices")
    ET.SubElement(devices, "emulator").text = str(emulator)
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=str(console), append="on")
    ET.SubElement(devices, "memballoon", model="none")
    return ET.tostring(dom, encoding="unicode")


def wait_for(path: Path, needle: str, timeout: float = 180, after: int = 0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace")[after:]:
            return
        time.sleep(0.25)
    text = path.read_text(errors="replace") if path.exists() else ""
    raise AssertionError(f"{needle!r} not in {path}: {text[-1500:]}")


def test_libvirt_live_migration_between_the_two_hosts(
    hosts: TwoHosts, guest_images: guest.GuestImages
) -> None:
    a, b = hosts.a, hosts.b
    assert a.sh("hostname").strip() == "hosta" and b.sh("hostname").strip() == "hostb"
    # hosta reaches hostb's libvirtd over the veth (and only there)
    assert "libvirt" in a.sh(f"virsh -c {b.libvirt_uri} version").lower()
    console = a.root.parent / "g1.console"
    xml_path = a.root.parent / "g1.xml"
    xml_path.write_text(guest_xml("g1", guest_images, hosts.qemu_wrapper, console))
    a.virsh("define", str(xml_path))
    a.virsh("start", "g1")
    wait_for(console, guest.WORKLOAD_MARKER)
    ticks = console.read_text(errors="replace").count(guest.TICK)
    a.virsh(
        "migrate",
        "--live",
        "--p2p",
        "--persistent",
        "--undefinesource",
        "g1",
        b.libvirt_uri,
        timeout=300,
    )
    assert "running" in b.virsh("domstate", "g1")
    assert "g1" not in a.virsh("list", "--all", "--name")
    # the guest goes on ticking on hostb, with its memory intact (the workload checks it)
    wait_for(console, f"{guest.TICK} {ticks + 3}", timeout=120)
