"""bench.guest_images against libvirt's test driver (its reading of a running guest's
memory, and its booting of the suite's guest, are tested on a real TCG guest in
tests/system/test_page_engine_guest.py)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest
from bench.guest_images import memory_bytes, parse_args

from tests.system.guest import GuestImages


def test_an_image_spans_the_machines_memory_not_what_the_balloon_leaves() -> None:
    conn = libvirt.open("test:///default")
    try:
        dom = conn.lookupByName("test")  # the driver's domain: 8 GiB, ballooned to 2 GiB
        _, max_kib, current_kib, *_ = dom.info()
        assert current_kib < max_kib
        assert memory_bytes(dom) == max_kib * 1024
    finally:
        conn.close()


def test_a_domain_or_a_boot_size_names_what_is_imaged() -> None:
    named = parse_args(["web1", "/var/tmp/pb", "--count", "3"])
    assert (named.domain, named.prefix, named.boot, named.count) == (
        "web1",
        Path("/var/tmp/pb"),
        None,
        3,
    )
    booted = parse_args(["--boot", "1024", "/var/tmp/pb-1g", "--settle", "5"])
    assert (booted.domain, booted.prefix, booted.boot, booted.settle) == (
        None,
        Path("/var/tmp/pb-1g"),
        1024,
        5.0,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["/var/tmp/pb"],  # no domain and no --boot
        ["--boot", "256", "web1", "/var/tmp/pb"],  # both
        ["--boot", "64", "/var/tmp/pb"],  # too small for the guest's workload
        ["--boot", "4096", "/var/tmp/pb"],  # RAM would not lie at 0..size
        ["web1", "/var/tmp/pb", "--count", "0"],
        ["web1", "/var/tmp/pb", "--interval", "-1"],
    ],
)
def test_what_cannot_be_imaged_is_refused_before_anything_starts(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_the_suites_guest_is_a_tcg_pc_running_the_workload_with_all_its_memory() -> None:
    # (what --boot starts: tests.system.guest.GuestImages.domain_xml)
    images = GuestImages(kernel=Path("/cache/vmlinuz"), initrd=Path("/cache/initrd.cpio"))
    xml = images.domain_xml("pb", 1024, Path("/tmp/x/console.log"), "/usr/bin/qemu")
    dom = ET.fromstring(xml)
    assert dom.get("type") == "qemu"
    assert dom.find("os/type").get("machine") == "pc"  # type: ignore[union-attr]
    assert dom.findtext("memory") == "1024" and dom.find("memory").get("unit") == "MiB"  # type: ignore[union-attr]
    assert dom.findtext("os/kernel") == "/cache/vmlinuz"
    assert dom.findtext("os/initrd") == "/cache/initrd.cpio"
    assert (dom.findtext("os/cmdline") or "").split()[-1] == "novacron.workload"
    assert dom.find("devices/serial/source").get("path") == "/tmp/x/console.log"  # type: ignore[union-attr]
    assert dom.find("devices/memballoon").get("model") == "none"  # type: ignore[union-attr]
    # libvirt takes it as it is: its memory is the machine's, with no balloon below it
    conn = libvirt.open("test:///default")
    try:
        defined = conn.defineXML(xml)
        assert memory_bytes(defined) == 1024 << 20
        defined.undefine()
    finally:
        conn.close()
