"""``vm.guest`` against a real qemu-guest-agent in a TCG guest: the channel NovaCron puts
in every domain reaches the agent, ``vm.get`` shows it connected, and the guest's host
name, operating system and interface addresses come back; a guest without an agent is
refused at once (``unavailable``), a stopped one without asking (``conflict``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from novacron import errors
from tests.daemon_harness import Daemon
from tests.system import guest
from tests.system.nodes import wait_until


def test_the_guest_agent_reports_the_guests_name_os_and_addresses(
    system_daemon: Daemon, guest_images: guest.GuestImages
) -> None:
    with system_daemon.client(timeout=300) as c:
        vm = c.call("vm.create", **guest_images.vm("ga1", memory_mib=128, options="novacron.agent"))
        guest.wait_for_console(Path(vm["console_log"]), guest.AGENT_MARKER)
        wait_until(lambda: c.call("vm.get", name="ga1")["agent"] == "connected", 120, "the agent")
        doc = c.call("vm.guest", name="ga1")
        assert (doc["name"], doc["tenant"], doc["agent"]) == ("ga1", "default", "connected")
        assert doc["hostname"] == guest.AGENT_HOSTNAME
        assert doc["os"]["id"] == "novacron-test"
        assert doc["os"]["name"] == "NovaCron test guest"
        assert re.match(r"\d+\.\d+\.\d+-", doc["os"]["kernel_release"]), doc["os"]
        lo = next(i for i in doc["interfaces"] if i["name"] == "lo")
        assert {"type": "ipv4", "address": "127.0.0.1", "prefix": 8} in lo["addresses"]
        # the CLI shows the same
        env = {**os.environ, "NOVACRON_SOCKET": str(system_daemon.socket), "COLUMNS": "200"}
        shown = subprocess.run(
            [sys.executable, "-m", "novacron.cli.main", "vm", "guest", "ga1"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        ).stdout
        assert re.search(rf"hostname\s+{guest.AGENT_HOSTNAME}", shown), shown
        assert re.search(r"lo .* 127\.0\.0\.1/8", shown), shown

        # a guest that runs no agent: its channel stays disconnected, the call is refused
        other = c.call("vm.create", **guest_images.vm("ga2", memory_mib=96, options=""))
        guest.wait_for_console(Path(other["console_log"]), guest.BOOT_MARKER)
        assert c.call("vm.get", name="ga2")["agent"] == "disconnected"
        with pytest.raises(errors.Unavailable, match="qemu-guest-agent running") as refused:
            c.call("vm.guest", name="ga2")
        assert refused.value.details == {"vm": "ga2", "agent": "disconnected"}
        c.call("vm.stop", name="ga1")
        with pytest.raises(errors.Conflict, match="only a running guest answers"):
            c.call("vm.guest", name="ga1")
        for name in ("ga1", "ga2"):
            c.call("vm.delete", name=name, force=True)
