"""bench.guest_images against libvirt's test driver, whose guests' memory reads as each
byte's address (mod 256) and which takes no memory-only dumps (the dumps, and the
booting of the suite's guest, are tested on a real TCG guest in
tests/system/test_page_engine_guest.py)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from bench.guest_images import (
    CHUNK,
    capture,
    is_local,
    memory_bytes,
    parse_args,
    read_image,
    write_images,
)

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


SMALL_KIB = 256  # a guest small enough to peek whole in a test


@pytest.fixture
def small_guest() -> Iterator[libvirt.virDomain]:
    conn = libvirt.open("test:///default")
    xml = (
        f"<domain type='test'><name>pb-small</name><memory unit='KiB'>{SMALL_KIB}</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    dom = conn.createXML(xml, 0)
    try:
        yield dom
    finally:
        dom.destroy()
        conn.close()


def addresses(start: int, length: int) -> bytes:
    """What the test driver's guests hold at ``start``: each byte its address mod 256."""
    return bytes((start + i) & 0xFF for i in range(length))


def test_a_peeked_image_is_the_guests_memory_from_address_0_in_order(
    small_guest: libvirt.virDomain,
) -> None:
    # (a size that is not a whole number of 64 KiB calls: the last one is shorter)
    assert read_image(small_guest, 3 * CHUNK + 100) == addresses(0, 3 * CHUNK + 100)


def test_peeked_images_are_taken_paused_and_the_guest_runs_on(
    small_guest: libvirt.virDomain, tmp_path: Path
) -> None:
    size = SMALL_KIB * 1024
    images = list(capture(small_guest, count=2, interval=0.0))
    assert images == [addresses(0, size)] * 2
    assert small_guest.info()[0] == libvirt.VIR_DOMAIN_RUNNING
    write_images(small_guest, tmp_path / "pb", count=2, interval=0.0, via="peek")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pb.0.raw", "pb.1.raw"]
    assert (tmp_path / "pb.1.raw").read_bytes() == addresses(0, size)


def test_a_dump_that_fails_leaves_the_guest_running_and_no_file_behind(
    small_guest: libvirt.virDomain, tmp_path: Path
) -> None:
    # the test driver refuses memory-only dumps: the failure reaches the caller
    with pytest.raises(libvirt.libvirtError, match="unsupported flags"):
        write_images(small_guest, tmp_path / "pb", count=2, interval=0.0, via="dump")
    assert small_guest.info()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("uri", "local"),
    [
        ("qemu:///system", True),
        ("qemu:///session", True),
        ("qemu+unix:///system?socket=/run/x.sock", True),
        ("test:///default", True),
        ("qemu+ssh://root@host2/system", False),
        ("qemu+tls://host2.example/system", False),
        ("qemu+tcp://10.0.0.2:16509/system", False),
    ],
)
def test_dumps_are_taken_only_where_libvirtd_runs_on_this_machine(uri: str, local: bool) -> None:
    assert is_local(uri) is local


def test_a_domain_or_a_boot_size_names_what_is_imaged() -> None:
    named = parse_args(["web1", "/var/tmp/pb", "--count", "3"])
    assert (named.domain, named.prefix, named.boot, named.count, named.via) == (
        "web1",
        Path("/var/tmp/pb"),
        None,
        3,
        "auto",
    )
    assert parse_args(["web1", "/var/tmp/pb", "--via", "peek"]).via == "peek"
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
        ["web1", "/var/tmp/pb", "--via", "virsh"],
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
