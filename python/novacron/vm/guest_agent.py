"""What a running guest says about itself through the QEMU guest agent (``vm.guest``):
its network interfaces and their addresses, its host name, its operating system.

Every VM NovaCron defines has the agent's channel (a virtio-serial port named
``org.qemu.guest_agent.0``, :func:`~novacron.vm.domain_xml.build`); a guest that runs
``qemu-guest-agent`` answers on it. libvirt tells whether the agent is connected (the
channel's ``state`` in the live XML: ``connected`` once the agent opened its port), so
the state is read without asking the guest (``vm.get``'s ``agent``), and the guest is
asked only when its agent is there. What the agent reports is the guest's word: useful
(the addresses a DHCP server or the guest itself chose), never a security boundary.

Blocking: :func:`read` runs on the libvirt worker pool; libvirt waits at most
:data:`AGENT_TIMEOUT_S` for each answer (set on the domain before asking), so a hung
agent holds a worker thread no longer than that.
"""

from __future__ import annotations

from typing import Any

import libvirt

from novacron import errors
from novacron.vm.domain_xml import guest_agent_state
from novacron.vm.driver import Hypervisor
from novacron.vm.libvirt_errors import libvirt_errors

AGENT_TIMEOUT_S = 5  # how long libvirt waits for the agent's answer to each command
ADDRESS_TYPES = {
    libvirt.VIR_IP_ADDR_TYPE_IPV4: "ipv4",
    libvirt.VIR_IP_ADDR_TYPE_IPV6: "ipv6",
}
# guestInfo's OS keys ("os.name", ...) -> ours
OS_KEYS = {
    "os.id": "id",
    "os.name": "name",
    "os.pretty-name": "pretty_name",
    "os.version": "version",
    "os.version-id": "version_id",
    "os.kernel-release": "kernel_release",
    "os.kernel-version": "kernel_version",
    "os.machine": "machine",
}


def addresses(found: dict[str, Any]) -> list[dict[str, Any]]:
    """libvirt's ``interfaceAddresses`` answer as a list, by interface name."""
    interfaces = []
    for name in sorted(found):
        entry = found[name] or {}
        interfaces.append(
            {
                "name": name,
                "mac": entry.get("hwaddr") or None,
                "addresses": [
                    {
                        "type": ADDRESS_TYPES.get(a.get("type"), "unknown"),
                        "address": a.get("addr"),
                        "prefix": a.get("prefix"),
                    }
                    for a in entry.get("addrs") or []
                ],
            }
        )
    return interfaces


def os_info(info: dict[str, Any]) -> dict[str, str] | None:
    """The OS part of libvirt's ``guestInfo`` answer; None when it has none."""
    found = {ours: str(info[key]) for key, ours in OS_KEYS.items() if key in info}
    return found or None


def read(hv: Hypervisor, name: str) -> dict[str, Any]:
    """What the running VM ``name``'s guest agent reports. ``conflict`` when the VM does
    not run, ``unavailable`` when its agent is not connected, ``timeout`` when the agent
    does not answer."""
    state = hv.state(name).state
    if state != "running":
        raise errors.Conflict(
            f"vm {name!r} is {state}: only a running guest answers", {"vm": name, "state": state}
        )
    agent = "connected" if hv.is_test_driver else guest_agent_state(hv.xml(name))
    if agent != "connected":
        why = "it has no agent channel" if agent == "none" else "is qemu-guest-agent running?"
        raise errors.Unavailable(
            f"vm {name!r}: the guest agent is not connected ({why})",
            {"vm": name, "agent": agent},
        )
    dom = hv.domain(name)
    with libvirt_errors():
        try:  # (libvirt keeps it for the domain until its next start)
            dom.agentSetResponseTimeout(AGENT_TIMEOUT_S, 0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                raise  # (the test driver has no agent timeout)
        found = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT, 0)
        wanted = libvirt.VIR_DOMAIN_GUEST_INFO_OS | libvirt.VIR_DOMAIN_GUEST_INFO_HOSTNAME
        try:
            info = dom.guestInfo(wanted, 0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                raise
            info = {}  # (libvirt's test driver)
    return {
        "name": name,
        "agent": agent,
        "hostname": info.get("hostname"),
        "os": os_info(info),
        "interfaces": addresses(found or {}),
    }
