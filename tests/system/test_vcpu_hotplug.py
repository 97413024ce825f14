"""vCPUs plugged into a running TCG guest and taken out of it (``vm.update vcpus`` up to
``max_vcpus``): QEMU has them, the guest sees them come and go, and the number stays
after a stop and start."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from novacron import errors
from tests.daemon_harness import Daemon
from tests.system import guest
from tests.system.nodes import wait_until


def cpus(log: Path, after: int = 0) -> str | None:
    """The guest's last report of its vCPUs (``present=... online=...``) after ``after``."""
    found = re.findall(
        guest.CPUS_MARKER + r" (present=\S+ online=\S+)", guest.console_text(log)[after:]
    )
    return found[-1] if found else None


def test_vcpus_are_plugged_into_a_running_guest_and_taken_out(
    system_daemon: Daemon, guest_images: guest.GuestImages
) -> None:
    with system_daemon.client(timeout=300) as c:
        vm = c.call(
            "vm.create",
            **guest_images.vm("cpu1", options="novacron.cpuwatch", max_vcpus=3),
        )
        assert (vm["vcpus"], vm["max_vcpus"]) == (1, 3)
        log = Path(vm["console_log"])
        wait_until(lambda: cpus(log) == "present=0 online=0", 120, "the guest's one vCPU")

        plugged = c.call("vm.update", name="cpu1", vcpus=3)
        assert (plugged["vcpus"], plugged["state"]) == (3, "running")
        wait_until(lambda: cpus(log) == "present=0-2 online=0-2", 60, "three vCPUs in the guest")
        assert c.call("vm.stats", name="cpu1")["cpu"]["vcpus"] == 3

        taken = c.call("vm.update", name="cpu1", vcpus=2)
        assert taken["vcpus"] == 2
        wait_until(lambda: cpus(log) == "present=0-1 online=0-1", 60, "two vCPUs in the guest")
        assert c.call("vm.stats", name="cpu1")["cpu"]["vcpus"] == 2

        with pytest.raises(errors.InvalidParams, match="below"):
            c.call("vm.update", name="cpu1", vcpus=4)
        with pytest.raises(errors.Conflict, match="memory"):
            c.call("vm.update", name="cpu1", memory_mib=256)
        assert c.call("vm.get", name="cpu1")["vcpus"] == 2

        c.call("vm.stop", name="cpu1")
        before = len(guest.console_text(log))
        c.call("vm.start", name="cpu1")  # the definition kept what was plugged
        wait_until(
            lambda: cpus(log, before) == "present=0-1 online=0-1", 120, "two vCPUs after a boot"
        )
        c.call("vm.delete", name="cpu1", force=True)
