"""A running TCG guest's size changed within its room (``vm.update`` up to ``max_vcpus``
and ``max_memory_mib``): vCPUs plugged in, memory given back through the balloon and
taken again. QEMU has them, the guest sees them come and go, and the numbers stay after
a stop and start."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from novacron import errors
from novacron.client import SyncClient
from tests.daemon_harness import Daemon
from tests.system import guest
from tests.system.nodes import wait_until


def cpus(log: Path, after: int = 0) -> str | None:
    """The guest's last report of its vCPUs (``present=... online=...``) after ``after``."""
    found = re.findall(
        guest.CPUS_MARKER + r" (present=\S+ online=\S+)", guest.console_text(log)[after:]
    )
    return found[-1] if found else None


def test_vcpus_are_plugged_into_a_running_guest(
    system_daemon: Daemon, guest_images: guest.GuestImages
) -> None:
    """(Two vCPUs at most: the suite's hosts have two threads, and a VM's vCPUs are
    placed on distinct ones.)"""
    with system_daemon.client(timeout=300) as c:
        vm = c.call(
            "vm.create",
            **guest_images.vm("cpu1", options="novacron.cpuwatch", max_vcpus=2),
        )
        assert (vm["vcpus"], vm["max_vcpus"]) == (1, 2)
        log = Path(vm["console_log"])
        wait_until(lambda: cpus(log) == "present=0 online=0", 120, "the guest's one vCPU")

        plugged = c.call("vm.update", name="cpu1", vcpus=2)
        assert (plugged["vcpus"], plugged["state"]) == (2, "running")
        wait_until(lambda: cpus(log) == "present=0-1 online=0-1", 60, "two vCPUs in the guest")
        assert c.call("vm.stats", name="cpu1")["cpu"]["vcpus"] == 2

        with pytest.raises(errors.Conflict, match="must be stopped to take vCPUs out"):
            c.call("vm.update", name="cpu1", vcpus=1)
        with pytest.raises(errors.InvalidParams, match="below"):
            c.call("vm.update", name="cpu1", vcpus=3)
        with pytest.raises(errors.Conflict, match="balloon"):
            c.call("vm.update", name="cpu1", memory_mib=256)
        assert c.call("vm.get", name="cpu1")["vcpus"] == 2
        assert cpus(log) == "present=0-1 online=0-1"

        c.call("vm.stop", name="cpu1")
        before = len(guest.console_text(log))
        c.call("vm.start", name="cpu1")  # the definition kept what was plugged
        wait_until(
            lambda: cpus(log, before) == "present=0-1 online=0-1", 120, "two vCPUs after a boot"
        )
        c.call("vm.stop", name="cpu1")
        assert c.call("vm.update", name="cpu1", vcpus=1)["vcpus"] == 1  # taken out, stopped
        before = len(guest.console_text(log))
        c.call("vm.start", name="cpu1")
        wait_until(lambda: cpus(log, before) == "present=0 online=0", 120, "one vCPU after a boot")
        c.call("vm.delete", name="cpu1", force=True)


def memory_kib(log: Path, after: int = 0) -> int | None:
    """The guest's last report of its MemTotal after ``after``."""
    found = re.findall(guest.MEMORY_MARKER + r" total_kib=(\d+)", guest.console_text(log)[after:])
    return int(found[-1]) if found else None


def settled(c: SyncClient, vm: str, log: Path, mib: int) -> int:
    """Waits until QEMU's balloon has the guest at ``mib`` and the guest's own report has
    stopped moving; returns the guest's MemTotal then."""
    wait_until(
        lambda: c.call("vm.stats", name=vm)["memory"]["current_kib"] == mib * 1024,
        120,
        f"the balloon at {mib} MiB",
    )
    seen: list[int | None] = []

    def still() -> bool:
        seen.append(memory_kib(log))
        return len(seen) >= 4 and seen[-1] is not None and len(set(seen[-4:])) == 1

    wait_until(still, 60, "the guest's memory to settle")
    total = seen[-1]
    assert total is not None
    return total


def test_memory_is_given_back_through_the_balloon_and_taken_again(
    system_daemon: Daemon, guest_images: guest.GuestImages
) -> None:
    with system_daemon.client(timeout=300) as c:
        vm = c.call(
            "vm.create",
            **guest_images.vm(
                "mem1", memory_mib=160, options="novacron.memwatch", max_memory_mib=288
            ),
        )
        assert (vm["memory_mib"], vm["max_memory_mib"]) == (160, 288)
        log = Path(vm["console_log"])
        booted = settled(c, "mem1", log, 160)  # the balloon took 128 of the 288 MiB it booted with

        grown = c.call("vm.update", name="mem1", memory_mib=288)
        assert (grown["memory_mib"], grown["state"]) == (288, "running")
        full = settled(c, "mem1", log, 288)
        assert full - booted == 128 * 1024  # the guest has every page the balloon gave back

        shrunk = c.call("vm.update", name="mem1", memory_mib=96)
        assert shrunk["memory_mib"] == 96
        assert full - settled(c, "mem1", log, 96) == 192 * 1024

        with pytest.raises(errors.InvalidParams, match="below"):
            c.call("vm.update", name="mem1", memory_mib=320)
        with pytest.raises(errors.Conflict, match="max_memory_mib"):
            c.call("vm.update", name="mem1", max_memory_mib=512)

        c.call("vm.stop", name="mem1")
        c.call("vm.start", name="mem1")  # the definition kept the balloon's target
        settled(c, "mem1", log, 96)
        c.call("vm.delete", name="mem1", force=True)
