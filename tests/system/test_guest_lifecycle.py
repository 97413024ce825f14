"""A real TCG guest driven through the daemon on qemu:///system."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
import pytest

from novacron import errors
from novacron.client import SyncClient
from novacron.vm import domain_xml
from tests.daemon_harness import Daemon
from tests.system import guest
from tests.system.libvirt_host import URI


def console(vm: dict[str, Any]) -> str:
    return guest.console_text(Path(vm["console_log"]))


def wait_console(
    c: SyncClient, name: str, needle: str, after: int = 0, timeout: float = 120
) -> str:
    vm = c.call("vm.get", name=name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = console(vm)
        if needle in text[after:]:
            return text
        time.sleep(0.25)
    raise AssertionError(f"{needle!r} not on {name}'s console:\n{console(vm)[-2000:]}")


def ticks(text: str) -> int:
    return text.count(guest.TICK)


def create_guest(
    c: SyncClient, name: str, images: guest.GuestImages, **extra: Any
) -> dict[str, Any]:
    params: dict[str, Any] = {"start": False, "disks": [{"size_gib": 1}], **extra}
    made: dict[str, Any] = c.call("vm.create", **images.vm(name, memory_mib=256, **params))
    return made


def test_boot_pause_resume_snapshot_shutdown_delete(
    system_daemon: Daemon, guest_images: guest.GuestImages
) -> None:
    with system_daemon.client(timeout=300) as c:
        vm = create_guest(c, "sys1", guest_images, start=True)
        assert vm["state"] == "running"
        assert c.call("node.info")["hypervisor"]["domain_type"] == "qemu"
        wait_console(c, "sys1", guest.BOOT_MARKER)
        wait_console(c, "sys1", f"{guest.TICK} 2")

        assert c.call("vm.pause", name="sys1")["state"] == "paused"
        frozen = ticks(console(vm))
        time.sleep(2.5)
        assert ticks(console(vm)) <= frozen + 1  # at most one tick was already in flight
        assert c.call("vm.resume", name="sys1")["state"] == "running"
        wait_console(c, "sys1", f"{guest.TICK} {frozen + 2}")

        snap = c.call("vm.snapshot.create", vm="sys1", name="booted", description="after boot")
        assert snap["state"] == "running"
        assert [s["name"] for s in c.call("vm.snapshot.list", vm="sys1")] == ["booted"]

        # graceful: the ACPI power button reaches the guest, which powers itself off
        down = c.call("vm.shutdown", name="sys1", timeout_s=60)
        assert down["state"] == "stopped"
        assert down["forced"] is False
        assert guest.POWER_MARKER in console(vm)

        # resized since: the revert gives the VM the snapshot's size back, placed again
        grown = c.call("vm.update", name="sys1", vcpus=2, memory_mib=320)
        assert (grown["vcpus"], grown["memory_mib"]) == (2, 320)
        wider = c.call("vm.disk.resize", vm="sys1", target="vda", size_gib=2)
        assert [(d["target"], d["size_gib"]) for d in wider["disks"]] == [("vda", 2)]
        assert guest.image_bytes(vm["disks"][0]["path"]) == 2 << 30

        # revert brings back the running guest from the snapshot's memory
        before = len(console(vm))
        back = c.call("vm.snapshot.revert", vm="sys1", name="booted")
        assert (back["state"], back["vcpus"], back["memory_mib"]) == ("running", 1, 256)
        # qcow2 keeps the size a disk had at the snapshot, and QEMU's revert restores it
        assert [(d["target"], d["size_gib"]) for d in back["disks"]] == [("vda", 1)]
        assert guest.image_bytes(vm["disks"][0]["path"]) == 1 << 30
        wait_console(c, "sys1", guest.TICK, after=before)
        conn = libvirt.open(URI)
        try:
            live = conn.lookupByName("sys1").XMLDesc(0)
        finally:
            conn.close()
        root = ET.fromstring(live)
        assert (root.findtext("vcpu"), root.findtext("memory")) == ("1", str(256 * 1024))
        managed = domain_xml.parse_managed(live)  # the pins libvirt runs it with: made from it
        assert managed is not None and managed.placement == back["placement"]
        c.call("vm.snapshot.delete", vm="sys1", name="booted")

        assert c.call("vm.stop", name="sys1")["state"] == "stopped"
        disk = vm["disks"][0]["path"]
        assert Path(disk).exists()
        deleted = c.call("vm.delete", name="sys1")
        assert deleted["volumes_deleted"] == [disk]
        assert not Path(disk).exists()
        assert c.call("vm.list") == []
    conn = libvirt.open(URI)
    try:
        assert "sys1" not in [d.name() for d in conn.listAllDomains(0)]
    finally:
        conn.close()


def test_sigkill_daemon_loses_no_vm_and_running_guest_keeps_running(
    system_daemon: Daemon, guest_images: guest.GuestImages
) -> None:
    with system_daemon.client(timeout=300) as c:
        create_guest(c, "sys2", guest_images, start=True)
        create_guest(c, "sys3", guest_images)
        vm = c.call("vm.get", name="sys2")
        wait_console(c, "sys2", f"{guest.TICK} 1")
    system_daemon.kill()
    seen = ticks(console(vm))
    system_daemon.start(timeout=60)
    with system_daemon.client(timeout=300) as c:
        vms = {v["name"]: v for v in c.call("vm.list")}
        assert set(vms) == {"sys2", "sys3"}
        assert vms["sys2"]["state"] == "running"
        assert vms["sys3"]["state"] == "stopped"
        # nothing needed repair: libvirt kept both domains
        findings = c.call("node.info")["daemon"]["reconcile"]
        assert not [f for f in findings if f["finding"] in ("redefined", "adopted", "failed")]
        wait_console(c, "sys2", f"{guest.TICK} {seen + 2}")
        c.call("vm.delete", name="sys2", force=True)
        c.call("vm.delete", name="sys3")


def test_domain_defined_but_not_recorded_is_adopted(
    system_daemon: Daemon, guest_images: guest.GuestImages
) -> None:
    """A crash between libvirt define and the sqlite commit: the restart adopts the domain."""
    with system_daemon.client(timeout=300) as c:
        create_guest(c, "sys4", guest_images)
    system_daemon.stop()
    # simulate the crash window: the record is gone, the domain (with metadata) remains
    db = sqlite3.connect(system_daemon.state_dir / "state.db")
    db.execute("DELETE FROM vms WHERE name = ?", ("sys4",))
    db.commit()
    db.close()
    system_daemon.start(timeout=60)
    with system_daemon.client(timeout=300) as c:
        findings = c.call("node.info")["daemon"]["reconcile"]
        assert {"vm": "sys4", "finding": "adopted"} in [
            {k: f[k] for k in ("vm", "finding")} for f in findings
        ]
        vm = c.call("vm.get", name="sys4")
        assert vm["state"] == "stopped" and vm["memory_mib"] == 256
        c.call("vm.delete", name="sys4")


def test_shutdown_ignored_by_the_guest_times_out_then_forces(
    system_daemon: Daemon, guest_images: guest.GuestImages
) -> None:
    """Pressed before the guest has loaded its ACPI button driver, the press is lost."""
    with system_daemon.client(timeout=300) as c:
        create_guest(c, "sys5", guest_images, start=True)
        with pytest.raises(errors.Timeout) as info:
            c.call("vm.shutdown", name="sys5", timeout_s=0.5)
        assert info.value.details["vm"] == "sys5"
        assert c.call("vm.get", name="sys5")["state"] == "running"
        down = c.call("vm.shutdown", name="sys5", timeout_s=0.5, force=True)
        assert down["state"] == "stopped"
        c.call("vm.delete", name="sys5")


def test_a_stop_or_delete_does_not_wait_for_a_shutdown_the_guest_ignores(
    system_daemon: Daemon,
) -> None:
    """Firmware with nothing to boot ignores the power button. A ``vm.stop`` sent while
    ``vm.shutdown`` waits out its hour acts at once (it waited for the VM's lock, and the
    caller's client gave up first), and the shutdown then answers with the VM stopped by
    it, not forced; a ``vm.delete`` in the same place makes the shutdown ``not_found``."""
    answers: dict[str, Any] = {}

    def shut_down(key: str) -> None:
        with system_daemon.client(timeout=120) as c:
            try:
                answers[key] = c.call("vm.shutdown", name="deaf", timeout_s=3600)
            except errors.NovaCronError as e:
                answers[key] = e

    def while_shutting_down(key: str, act: Callable[[SyncClient], Any]) -> Any:
        waiter = threading.Thread(target=shut_down, args=(key,))
        waiter.start()
        with system_daemon.client(timeout=60) as c:
            deadline = time.monotonic() + 60
            while c.call("vm.get", name="deaf")["desired_state"] != "stopped":
                assert time.monotonic() < deadline, "the shutdown was never asked"
                time.sleep(0.05)
            done = act(c)
        waiter.join(timeout=60)
        assert not waiter.is_alive(), "the shutdown still waits for a VM that is off"
        return done

    with system_daemon.client() as c:
        c.call("vm.create", name="deaf", memory_mib=64, start=True)
    stopped = while_shutting_down("stop", lambda c: c.call("vm.stop", name="deaf"))
    assert stopped["state"] == "stopped"
    assert answers["stop"]["state"] == "stopped" and answers["stop"]["forced"] is False
    with system_daemon.client() as c:
        c.call("vm.start", name="deaf")
    while_shutting_down("delete", lambda c: c.call("vm.delete", name="deaf", force=True))
    assert isinstance(answers["delete"], errors.NotFound)


def guest_shape(text: str) -> list[tuple[int, int]]:
    """(CPUs, MemTotal KiB) the guest reported at each boot."""
    found = re.findall(guest.SHAPE_MARKER + r" cpus=(\d+) mem_kib=(\d+)", text)
    return [(int(cpus), int(kib)) for cpus, kib in found]


def test_a_stopped_guest_is_resized_and_boots_with_its_new_size(
    system_daemon: Daemon, guest_images: guest.GuestImages
) -> None:
    with system_daemon.client(timeout=300) as c:
        vm = c.call("vm.create", **guest_images.vm("sys6", memory_mib=128))
        wait_console(c, "sys6", guest.SHAPE_MARKER)
        with pytest.raises(errors.Conflict, match="must be stopped"):
            c.call("vm.update", name="sys6", vcpus=2)
        c.call("vm.stop", name="sys6")
        doc = c.call("vm.update", name="sys6", vcpus=2, memory_mib=256)
        assert (doc["vcpus"], doc["memory_mib"], doc["state"]) == (2, 256, "stopped")
        c.call("vm.start", name="sys6")
        deadline = time.monotonic() + 120
        while len(guest_shape(console(vm))) < 2:
            assert time.monotonic() < deadline, console(vm)[-2000:]
            time.sleep(0.25)
        (cpus0, kib0), (cpus1, kib1) = guest_shape(console(vm))
        assert (cpus0, cpus1) == (1, 2)
        # MemTotal is RAM less what the kernel keeps: it grows by about the 128 MiB added
        assert 100 * 1024 < kib1 - kib0 <= 128 * 1024, (kib0, kib1)
        conn = libvirt.open(URI)
        try:
            info = conn.lookupByName("sys6").info()  # QEMU's own figures
        finally:
            conn.close()
        assert (info[1], info[3]) == (256 * 1024, 2)
        c.call("vm.delete", name="sys6", force=True)


def test_repairs_libvirt_refuses_are_reported_and_tried_at_the_next_start(
    system_daemon: Daemon,
) -> None:
    """Behind the stopped daemon's back one VM's domain is undefined, and another's
    metadata is edited into a spec of the wrong shape and its record dropped. With an
    emulator libvirt cannot find, the start cannot define the first again: it says so
    (finding ``failed``) and serves; the second is not adopted (``failed``: its spec is
    checked as a request is; an AttributeError there once escaped reconciliation). The
    next start with the emulator back defines the first again."""
    with system_daemon.client() as c:
        c.call("vm.create", name="rec1", memory_mib=64)
        c.call("vm.create", name="rec2", memory_mib=64)
    system_daemon.stop()
    conn = libvirt.open(URI)
    try:
        conn.lookupByName("rec1").undefine()
        xml = conn.lookupByName("rec2").XMLDesc(0)
        assert '"nics": []' in xml
        conn.defineXML(xml.replace('"nics": []', '"nics": "none"'))
    finally:
        conn.close()
    db = sqlite3.connect(system_daemon.state_dir / "state.db")
    with db:
        db.execute("DELETE FROM vms WHERE name = ?", ("rec2",))
    db.close()

    def findings(c: SyncClient) -> dict[str, tuple[str, str]]:
        found = c.call("node.info")["daemon"]["reconcile"]
        return {f["vm"]: (f["finding"], f["detail"]) for f in found}

    usual = list(system_daemon.extra)
    system_daemon.extra = [*usual, "--emulator", "/nonexistent/qemu-system-x86_64"]
    system_daemon.start(timeout=60)
    with system_daemon.client() as c:
        found = findings(c)
        assert found["rec1"][0] == "failed" and "could not be redefined" in found["rec1"][1]
        assert found["rec2"][0] == "failed" and "spec.nics" in found["rec2"][1]
        assert [vm["name"] for vm in c.call("vm.list")] == ["rec1"]
        with pytest.raises(errors.NovaCronError):
            c.call("vm.start", name="rec1")  # no domain to start
        assert c.call("session.hello")["server"] == "novacrond"
    system_daemon.stop()
    system_daemon.extra = usual
    system_daemon.start(timeout=60)
    with system_daemon.client() as c:
        found = findings(c)
        assert found["rec1"][0] == "redefined"
        assert found["rec2"][0] == "failed"
        assert c.call("vm.start", name="rec1")["state"] == "running"
        c.call("vm.delete", name="rec1", force=True)
    assert "Traceback" not in system_daemon.log_text()
