"""A running TCG guest's serial console, interactive (``vm.console.*`` and ``novacron vm
console``): the guest's output arrives as notifications, input reaches a shell in the
guest, one client types at a time unless another forces it over while others watch the
same output, a client outside the daemon is respected, and the console's end (the VM
stopped) is told. The console log is still written beside it."""

from __future__ import annotations

import contextlib
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import libvirt
import pytest

from novacron import errors
from novacron.client import SyncClient
from tests.daemon_harness import Daemon
from tests.system import guest
from tests.system.console_client import Console
from tests.system.libvirt_host import URI
from tests.system.nodes import wait_until


def test_a_shell_in_the_guest_answers_on_the_console(
    system_daemon: Daemon, guest_images: guest.GuestImages
) -> None:
    with (
        system_daemon.client(timeout=300) as c,
        system_daemon.client(timeout=60) as other,
        system_daemon.client(timeout=60) as viewer,
    ):
        vm = c.call("vm.create", **guest_images.vm("con1", options="novacron.shell"))
        log = Path(vm["console_log"])
        guest.wait_for_console(log, guest.TICK)  # the log is still written

        # the log over the API: its end, then what follows an offset
        tail = c.call("vm.console.log", name="con1", limit=4096)
        assert guest.TICK.encode() in tail["data"] and tail["end"] - tail["offset"] <= 4096
        wait_until(
            lambda: (
                guest.TICK.encode()
                in c.call("vm.console.log", name="con1", offset=tail["end"])["data"]
            ),
            30,
            "a tick after the offset",
        )
        first = Console(c, "con1")
        first.wait_for(guest.TICK.encode())  # output flows while it is open
        mark = len(first.output)
        assert c.call("vm.console.write", console=first.number, data=b"echo NOVACRON-$((6*7))\r")
        first.wait_for(b"NOVACRON-42", after=mark)
        guest.wait_for_console(log, "NOVACRON-42")
        # what a round trip takes: a line typed, the shell's answer printed (TCG guest;
        # printed for the record, not asserted)
        trips = []
        for k in range(10):
            mark, began = len(first.output), time.monotonic()
            c.call("vm.console.write", console=first.number, data=f"echo RT-$(({k}+1000))\r")
            first.wait_for(f"RT-{k + 1000}".encode(), after=mark)
            trips.append(time.monotonic() - began)
        print(
            f"console round trips (s): median {statistics.median(trips):.4f}, max {max(trips):.4f}"
        )

        # others watch alongside: the same output, no input
        watcher = Console(viewer, "con1", watch=True)
        mark, seen = len(first.output), len(watcher.output)
        c.call("vm.console.write", console=first.number, data=b"echo SHARED-$((3*3))\r")
        first.wait_for(b"SHARED-9", after=mark)
        watcher.wait_for(b"SHARED-9", after=seen)
        with pytest.raises(errors.Conflict, match="read-only"):
            viewer.call("vm.console.write", console=watcher.number, data=b"reboot\r")
        info = c.call("node.info")["daemon"]["consoles"]
        assert (info["open"], info["sessions"], info["watching"]) == (1, 2, 1)

        # one client types at a time: another is refused, then takes it over by force
        with pytest.raises(errors.Conflict, match="force"):
            other.call("vm.console.open", name="con1")
        with pytest.raises(errors.NotFound):  # consoles belong to their connection
            other.call("vm.console.write", console=first.number, data=b"x")
        second = Console(other, "con1", force=True)
        ended = first.wait_closed()
        assert (ended["vm"], ended["reason"]) == ("con1", "taken")
        with pytest.raises(errors.NotFound):
            c.call("vm.console.write", console=first.number, data=b"x")
        mark, seen = len(second.output), len(watcher.output)
        other.call("vm.console.write", console=second.number, data="echo NOVACRON-$((7*6))0\r")
        second.wait_for(b"NOVACRON-420", after=mark)
        watcher.wait_for(b"NOVACRON-420", after=seen)  # watching went on

        # the console ends with the VM, and says so
        c.call("vm.stop", name="con1")
        for console in (second, watcher):
            ended = console.wait_closed()
            assert ended["reason"] in ("ended", "error") and ended["vm"] == "con1"
        assert c.call("node.info")["daemon"]["consoles"]["open"] == 0
        with pytest.raises(errors.Conflict, match="not running"):
            c.call("vm.console.open", name="con1")

        # closed by its client: the console is free for the next one at once
        c.call("vm.start", name="con1")
        third = Console(c, "con1")
        assert c.call("vm.console.close", console=third.number)["closed"] is True
        fourth = Console(other, "con1")
        fourth.wait_for(guest.TICK.encode())
        other.call("vm.console.close", console=fourth.number)

        # a client outside the daemon (virsh console) holds it: refused, unless forced
        outside = libvirt.open(URI)
        try:
            stream = outside.newStream(0)
            outside.lookupByName("con1").openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_SAFE)
            with pytest.raises(errors.Conflict, match="another client holds"):
                c.call("vm.console.watch", name="con1")
            fifth = Console(c, "con1", watch=True, force=True)
            fifth.wait_for(guest.TICK.encode())
            c.call("vm.console.close", console=fifth.number)
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
        finally:
            outside.close()

        # the other way: a client outside the daemon forces the console away from it.
        # Every NovaCron session of the VM is told, and the VM runs on
        typing = Console(c, "con1")
        typing.wait_for(guest.TICK.encode())
        watching = Console(viewer, "con1", watch=True)
        outside = libvirt.open(URI)
        try:
            stream = outside.newStream(0)
            outside.lookupByName("con1").openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
            for console in (typing, watching):
                ended = console.wait_closed()
                assert (ended["vm"], ended["reason"]) == ("con1", "error"), ended
            assert c.call("node.info")["daemon"]["consoles"]["open"] == 0
            assert c.call("vm.get", name="con1")["state"] == "running"
            with pytest.raises(errors.Conflict, match="another client holds"):
                c.call("vm.console.open", name="con1")
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
        finally:
            outside.close()
        # the outside client gone, the daemon opens it again
        again = Console(c, "con1")
        again.wait_for(guest.TICK.encode())
        c.call("vm.console.close", console=again.number)

        # a console may begin with the log's end: what the guest wrote before it opened
        with system_daemon.client(timeout=60) as fresh:
            back = Console(fresh, "con1", watch=True, scrollback=4096)
            back.wait_for(guest.TICK.encode())
            history = back.chunks[0]
            assert 0 < len(history) <= 4096 and guest.TICK.encode() in history
            assert history in fresh.call("vm.console.log", name="con1", limit=65536)["data"]
            with pytest.raises(errors.InvalidParams):
                fresh.call("vm.console.watch", name="con1", scrollback=65537)
        c.call("vm.delete", name="con1", force=True)


def test_the_cli_relays_piped_input_and_prints_the_guests_answer(
    system_daemon: Daemon, guest_images: guest.GuestImages
) -> None:
    with system_daemon.client(timeout=300) as c:
        vm = c.call("vm.create", **guest_images.vm("con2", options="novacron.shell"))
        guest.wait_for_console(Path(vm["console_log"]), "/ #")  # the shell's prompt
        argv = [sys.executable, "-m", "novacron.cli.main", "--socket", str(system_daemon.socket)]
        watching = subprocess.Popen(  # another terminal watches (leaves with Ctrl-C)
            [*argv, "vm", "console", "con2", "--watch"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        wait_until(
            lambda: c.call("node.info")["daemon"]["consoles"]["watching"] == 1, 60, "a watcher"
        )
        done = subprocess.run(
            [*argv, "vm", "console", "con2", "--linger", "5"],
            input=b"echo NOVACRON-$((5*9))\n",
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert b"NOVACRON-45" in done.stdout
        watching.send_signal(signal.SIGINT)
        seen, errs = watching.communicate(timeout=60)
        assert watching.returncode == 0, errs
        assert b"NOVACRON-45" in seen
        logged = subprocess.run(
            [*argv, "vm", "console-log", "con2", "--bytes", "8192"],
            capture_output=True,
            timeout=60,
            check=True,
        )
        assert b"NOVACRON-45" in logged.stdout and len(logged.stdout) <= 8192
        # it let the console go: another client gets it without force
        wait_until(lambda: _opens(c, "con2"), 30, "the console free again")
        c.call("vm.delete", name="con2", force=True)


def _opens(c: SyncClient, vm: str) -> bool:
    try:
        number = c.call("vm.console.open", name=vm)["console"]
    except errors.Conflict:
        return False
    c.call("vm.console.close", console=number)
    return True
