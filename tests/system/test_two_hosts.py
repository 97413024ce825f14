"""The two-host harness itself: two namespaced hosts with their own libvirtd, and a
TCG guest live-migrated between them by libvirt (peer to peer) — the baseline the
NovaCron data path is compared with, and proof the harness is sound."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from novacron.pki.ca import CertificateAuthority
from tests.system import guest
from tests.system.libvirt_host import LibvirtHost
from tests.system.twohosts import Host, TwoHosts


@pytest.fixture
def hosts(libvirt_host: LibvirtHost) -> Iterator[TwoHosts]:
    pair = TwoHosts.start(secrets.token_hex(3))
    try:
        yield pair
    finally:
        pair.stop()


def boot(hosts: TwoHosts, name: str, images: guest.GuestImages) -> tuple[Path, int]:
    """Defines and starts a workload guest on hosta; its console and tick count so far."""
    console = hosts.a.root.parent / f"{name}.console"
    xml_path = hosts.a.root.parent / f"{name}.xml"
    xml_path.write_text(images.domain_xml(name, 128, console, hosts.qemu_wrapper))
    hosts.a.virsh("define", str(xml_path))
    hosts.a.virsh("start", name)
    guest.wait_for_console(console, guest.WORKLOAD_MARKER)
    return console, console.read_text(errors="replace").count(guest.TICK)


def test_libvirt_live_migration_between_the_two_hosts(
    hosts: TwoHosts, guest_images: guest.GuestImages
) -> None:
    a, b = hosts.a, hosts.b
    assert a.sh("hostname").strip() == "hosta" and b.sh("hostname").strip() == "hostb"
    # hosta reaches hostb's libvirtd over the veth (and only there)
    assert "libvirt" in a.sh(f"virsh -c {b.libvirt_uri} version").lower()
    console, ticks = boot(hosts, "g1", guest_images)
    a.migrate("g1", b, timeout=300)
    assert "running" in b.virsh("domstate", "g1")
    assert "g1" not in a.virsh("list", "--all", "--name")
    # the guest goes on ticking on hostb, with its memory intact (the workload checks it)
    guest.wait_for_console(console, f"{guest.TICK} {ticks + 3}", timeout=120)


@pytest.mark.parametrize("threads", [1, 2])
def test_live_migration_through_the_novacron_data_path(
    hosts: TwoHosts, guest_images: guest.GuestImages, tmp_path: Path, threads: int
) -> None:
    """libvirt drives the migration; QEMU's stream goes source QEMU -> NovaCron's
    source relay -> mutual TLS over the veth -> destination relay -> destination QEMU,
    its RAM pages through the page engine, every byte checked before it is delivered.
    ``threads``: the page engine's at both ends (``[migration] engine_threads``)."""
    a, b = hosts.a, hosts.b
    authority = CertificateAuthority.init(tmp_path / "ca")
    certs = tmp_path / "certs"
    for host in (a, b):
        authority.issue(host.name, "node", certs, node=True, addresses=(host.address,))
    ca = authority.dir / "ca.crt"
    console, ticks = boot(hosts, "g2", guest_images)

    port, channel_port = 49152 + secrets.randbelow(1000), 7443
    root = Path(__file__).resolve().parents[2]
    dest_stats, src_stats = tmp_path / "destination.json", tmp_path / "source.json"
    errs = [(tmp_path / "dest.err").open("wb"), (tmp_path / "src.err").open("wb")]

    def helper(host: Host, role: str, *args: str, n: int) -> subprocess.Popen[bytes]:
        node = certs / host.name
        return host.popen(
            [
                *(sys.executable, "-m", "tests.system.relay_helper", role, *args),
                *(f"{node}.crt", f"{node}.key", str(ca), str(tmp_path / f"{role}.json")),
                str(threads),
            ],
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},  # nsenter resets the cwd
            stdout=subprocess.PIPE,
            stderr=errs[n],
        )

    dest = helper(b, "destination", f"{b.address}:{channel_port}", f"127.0.0.1:{port}", n=0)
    src = helper(a, "source", f"127.0.0.1:{port}", f"{b.address}:{channel_port}", n=1)
    try:
        assert dest.stdout is not None and src.stdout is not None
        for name, proc in (("dest", dest), ("src", src)):
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line == b"READY", (tmp_path / f"{name}.err").read_text()
        a.migrate(
            "g2", b, "--migrateuri", f"tcp://127.0.0.1:{port}", "--listen-address", "127.0.0.1"
        )
        assert src.wait(timeout=60) == 0, (tmp_path / "src.err").read_text()
        assert dest.wait(timeout=60) == 0, (tmp_path / "dest.err").read_text()
    finally:
        for p in (src, dest):
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
            if p.stdout is not None:
                p.stdout.close()
        for f in errs:
            f.close()
    assert "running" in b.virsh("domstate", "g2")
    assert "g2" not in a.virsh("list", "--all", "--name")
    guest.wait_for_console(console, f"{guest.TICK} {ticks + 3}", timeout=120)
    s, d = json.loads(src_stats.read_text()), json.loads(dest_stats.read_text())
    assert s["done"] and d["done"] and d["error"] is None
    assert s["stream_bytes"] == d["stream_bytes"] > 0
    assert s["pages"] > 1000 and s["channel_bytes"] < s["stream_bytes"]
    assert s["returned_bytes"] == d["returned_bytes"] > 0, "the return path was carried"
    print(f"stream {s['stream_bytes']} bytes, channel {s['channel_bytes']}, pages {s['pages']}")
