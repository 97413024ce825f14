"""A console held while the host's libvirtd restarts (on a namespaced host of its own,
so the suite's libvirtd is not touched): every client of it is told the console ended
with an error, the guest runs on, and once libvirtd is back a console opens again."""

from __future__ import annotations

from novacron import errors
from tests.system import guest
from tests.system.console_client import Console
from tests.system.nodes import Node, TwoNodes, wait_until
from tests.system.test_migration import boot, retire


def opens(node: Node, vm: str) -> bool:
    with node.client() as c:
        try:
            number = c.call("vm.console.open", name=vm)["console"]
        except (errors.Unavailable, errors.Conflict):  # (while libvirtd comes back)
            return False
        c.call("vm.console.close", console=number)
        return True


def test_a_console_held_while_libvirtd_restarts_ends_and_opens_again(
    nodes: TwoNodes, guest_images: guest.GuestImages
) -> None:
    a = nodes.a
    boot(a, "lvr", guest_images, "novacron.shell")
    with a.client() as typing, a.client() as watching:
        console = Console(typing, "lvr")
        watcher = Console(watching, "lvr", watch=True)
        typing.call("vm.console.write", console=console.number, data=b"echo ONE-$((0+1))\r")
        console.wait_for(b"ONE-1")
        a.host.sh("kill $(cat /run/libvirt/libvirtd.pid)")
        for held in (console, watcher):
            ended = held.wait_closed()
            assert (ended["vm"], ended["reason"]) == ("lvr", "error"), ended
            assert "connection to libvirt ended" in str(ended["message"])
        a.host.sh("libvirtd -d --listen -p /run/libvirt/libvirtd.pid")
        wait_until(lambda: opens(a, "lvr"), 90, "a console of lvr once libvirtd is back")
        assert a.domstate("lvr") == "running"  # the guest ran on
        again = Console(typing, "lvr")
        typing.call("vm.console.write", console=again.number, data=b"echo TWO-$((1+1))\r")
        again.wait_for(b"TWO-2")
        typing.call("vm.console.close", console=again.number)
    retire(a, "lvr")
