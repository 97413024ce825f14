"""A VM that should run is kept running, on real TCG guests and a real libvirtd: one
whose QEMU is killed is started again, one that powers itself off stays off, one with
``restart: never`` (set by ``vm.update``) is left alone, the crash-loop guard gives up
until an operator starts the VM (and keeps to that across a restart of the daemon),
and a VM that died while the daemon was down is started when it starts."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from novacron.client import SyncClient
from novacron.vm.driver import QEMU_STATUS_DIR, status_pid
from tests.daemon_harness import Daemon
from tests.system import guest
from tests.system.conftest import daemon_on_system
from tests.system.libvirt_host import URI, LibvirtHost
from tests.system.nodes import wait_until
from tests.system.test_guest_lifecycle import console, wait_console

LIMIT = 2  # restarts within the window before the daemon gives up (1 s, then 2 s apart)


@pytest.fixture
def keeping(libvirt_host: LibvirtHost, tmp_path: Path) -> Iterator[Daemon]:
    with daemon_on_system(tmp_path, "--vm-restart-limit", str(LIMIT)) as d:
        yield d


def create(c: SyncClient, images: guest.GuestImages, name: str, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = c.call("vm.create", **images.vm(name, memory_mib=128, **extra))
    return doc


def kill_qemu(name: str) -> None:
    """What the OOM killer or a QEMU bug does: the process dies, libvirt sees its
    monitor close (event stopped/failed, state shut off/crashed)."""
    pid = status_pid(QEMU_STATUS_DIR / f"{name}.xml")
    assert pid is not None, f"no QEMU pid for {name}"
    os.kill(pid, signal.SIGKILL)


def boots(vm: dict[str, Any]) -> int:
    return console(vm).count(guest.BOOT_MARKER)


def state(c: SyncClient, name: str) -> tuple[str, str, str]:
    vm = c.call("vm.get", name=name)
    return vm["state"], vm["reason"], vm["desired_state"]


def test_killed_qemu_restarts_poweroff_stays_off_never_is_left(
    keeping: Daemon, guest_images: guest.GuestImages
) -> None:
    with keeping.client(timeout=300) as c, keeping.client(timeout=300) as watcher:
        events = watcher.events(["vm.state", "vm.restart"])
        kept = create(c, guest_images, "kept")
        left = create(c, guest_images, "left")
        off = create(c, guest_images, "off", options="novacron.poweroff_after=4")
        assert kept["restart"] == "on-failure" == left["restart"]
        assert c.call("vm.update", name="left", restart="never")["restart"] == "never"
        for name in ("kept", "left"):
            wait_console(c, name, guest.BOOT_MARKER)
        killed = time.monotonic()
        kill_qemu("kept")
        kill_qemu("left")

        seen: list[dict[str, Any]] = []
        for event in events:
            seen.append(event)
            if event["topic"] == "vm.restart":
                break
        restarted = seen[-1]
        # (the figure in the docs: most of it is the first restart's 1 s delay)
        print(f"QEMU killed -> started again: {time.monotonic() - killed:.2f} s")
        assert {k: restarted[k] for k in ("vm", "outcome", "reason", "attempt")} == {
            "vm": "kept",
            "outcome": "restarted",
            "reason": "crashed",
            "attempt": 1,
        }, seen
        stops = {(e["vm"], e["reason"]) for e in seen if e.get("state") == "stopped"}
        assert {("kept", "failed"), ("left", "failed")} <= stops, seen
        wait_until(lambda: boots(kept) == 2, 120, "kept's second boot")
        doc = c.call("vm.get", name="kept")
        assert (doc["state"], doc["desired_state"]) == ("running", "running")
        assert doc["restarts"]["recent"] == 1 and doc["restarts"]["gave_up"] is False
        assert doc["restarts"]["last_at"] is not None

        # the guest that powered itself off: its record follows, it is not started again
        wait_console(c, "off", guest.POWER_MARKER)
        wait_until(lambda: state(c, "off")[2] == "stopped", 60, "off's record to follow")
        # restart: never: left shut off, still wanted running (drift an operator sees)
        time.sleep(4)  # past the first restart's delay (1 s) with room to spare
        assert state(c, "left") == ("stopped", "crashed", "running")
        assert state(c, "off") == ("stopped", "shutdown", "stopped")
        assert boots(off) == 1 and boots(left) == 1
        keeper = c.call("node.info")["daemon"]["keeper"]
        assert keeper["restarted"] == 1 and keeper["followed"] == 1, keeper
        assert "vm.stopped_outside" in keeping.log_text()
        for name in ("kept", "left", "off"):
            c.call("vm.delete", name=name, force=True)


def test_the_guard_gives_up_until_an_operator_starts_the_vm(
    keeping: Daemon, guest_images: guest.GuestImages
) -> None:
    """Its kernel gone, each restart fails; after LIMIT the daemon stops trying and says
    so; the operator's start (kernel back) counts from zero again."""
    where = Path("/var/tmp") / f"novacron-keeper-{secrets.token_hex(4)}"
    where.mkdir(mode=0o755)
    kernel = where / "vmlinuz"
    shutil.copyfile(guest_images.kernel, kernel)
    kernel.chmod(0o644)
    try:
        with keeping.client(timeout=300) as c, keeping.client(timeout=300) as watcher:
            events = watcher.events(["vm.restart"])
            vm = c.call("vm.create", **{**guest_images.vm("loop", 128), "kernel": str(kernel)})
            wait_console(c, "loop", guest.BOOT_MARKER)
            kernel.rename(where / "elsewhere")
            kill_qemu("loop")
            outcomes = []
            for event in events:
                outcomes.append((event["outcome"], event.get("attempt")))
                if event["outcome"] == "gave_up":
                    assert (event["limit"], event["vm"]) == (LIMIT, "loop"), event
                    break
            assert outcomes == [("start_failed", 1), ("start_failed", 2), ("gave_up", None)]
            doc = c.call("vm.get", name="loop")
            assert doc["state"] == "stopped" and doc["desired_state"] == "running"
            assert doc["restarts"]["gave_up"] is True and doc["restarts"]["recent"] == LIMIT
            keeper = c.call("node.info")["daemon"]["keeper"]
            assert keeper["given_up"] == ["loop"] and keeper["start_failed"] == LIMIT, keeper
            assert "vm.restart_gave_up" in keeping.log_text()
        # a restarted daemon keeps the guard's word: no new attempts at its start
        failed_before = keeping.log_text().count("vm.restart_failed")
        keeping.stop()
        keeping.start(timeout=60)
        with keeping.client(timeout=300) as c:
            time.sleep(3)  # (a restart at the daemon's start would be tried after 1 s)
            keeper = c.call("node.info")["daemon"]["keeper"]
            assert keeper["given_up"] == ["loop"] and keeper["start_failed"] == 0, keeper
            assert keeping.log_text().count("vm.restart_failed") == failed_before
            doc = c.call("vm.get", name="loop")
            assert doc["state"] == "stopped" and doc["desired_state"] == "running"
            assert doc["restarts"]["gave_up"] is True and doc["restarts"]["recent"] == LIMIT

            (where / "elsewhere").rename(kernel)
            assert c.call("vm.start", name="loop")["state"] == "running"
            doc = c.call("vm.get", name="loop")
            assert doc["restarts"]["gave_up"] is False and doc["restarts"]["recent"] == 0
            wait_until(lambda: boots(vm) == 2, 120, "the operator's boot")
            c.call("vm.delete", name="loop", force=True)
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_a_vm_that_died_while_the_daemon_was_down_is_started_at_its_start(
    keeping: Daemon, guest_images: guest.GuestImages
) -> None:
    """Killed QEMU (shut off, crashed): started again. Destroyed by someone with virsh
    (shut off, destroyed): the record follows, stopped."""
    with keeping.client(timeout=300) as c:
        died = create(c, guest_images, "died")
        create(c, guest_images, "destroyed")
        for name in ("died", "destroyed"):
            wait_console(c, name, guest.BOOT_MARKER)
    keeping.stop()
    kill_qemu("died")
    conn = libvirt.open(URI)
    try:
        conn.lookupByName("destroyed").destroy()
        dom = conn.lookupByName("died")
        wait_until(lambda: not dom.isActive(), 30, "libvirt to see died's QEMU gone")
        assert dom.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED]
    finally:
        conn.close()
    keeping.start(timeout=60)
    with keeping.client(timeout=300) as c:
        findings = c.call("node.info")["daemon"]["reconcile"]
        drift = {f["vm"] for f in findings if f["finding"] == "state_drift"}
        assert drift == {"died", "destroyed"}
        wait_until(lambda: boots(died) == 2, 120, "died's second boot")
        assert state(c, "died")[0::2] == ("running", "running")
        wait_until(lambda: state(c, "destroyed")[2] == "stopped", 30, "destroyed's record")
        assert state(c, "destroyed") == ("stopped", "destroyed", "stopped")
        for name in ("died", "destroyed"):
            c.call("vm.delete", name=name, force=True)
