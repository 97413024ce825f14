"""What a guest agent reports, as libvirt hands it over, turned into ``vm.guest``'s
answer; the agent's state read from a domain's XML."""

from __future__ import annotations

import libvirt
import pytest

from novacron.vm import domain_xml
from novacron.vm.driver import Hypervisor
from novacron.vm.guest_agent import addresses, os_info

IPV4, IPV6 = libvirt.VIR_IP_ADDR_TYPE_IPV4, libvirt.VIR_IP_ADDR_TYPE_IPV6


@pytest.fixture
def hv() -> Hypervisor:
    return Hypervisor("test:///default")


def test_interfaces_and_their_addresses_in_order() -> None:
    found = {  # interfaceAddresses(VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT) of a guest
        "lo": {
            "hwaddr": "00:00:00:00:00:00",
            "addrs": [{"addr": "127.0.0.1", "prefix": 8, "type": 0}],
        },
        "eth0": {
            "hwaddr": "52:54:00:12:34:56",
            "addrs": [
                {"addr": "10.50.0.1", "prefix": 24, "type": libvirt.VIR_IP_ADDR_TYPE_IPV4},
                {
                    "addr": "fe80::5054:ff:fe12:3456",
                    "prefix": 64,
                    "type": libvirt.VIR_IP_ADDR_TYPE_IPV6,
                },
            ],
        },
        "eth1": {"hwaddr": "52:54:00:12:34:57", "addrs": None},  # up, no address yet
    }
    assert addresses(found) == [
        {
            "name": "eth0",
            "mac": "52:54:00:12:34:56",
            "addresses": [
                {"type": "ipv4", "address": "10.50.0.1", "prefix": 24},
                {"type": "ipv6", "address": "fe80::5054:ff:fe12:3456", "prefix": 64},
            ],
        },
        {"name": "eth1", "mac": "52:54:00:12:34:57", "addresses": []},
        {
            "name": "lo",
            "mac": "00:00:00:00:00:00",
            "addresses": [{"type": "ipv4", "address": "127.0.0.1", "prefix": 8}],
        },
    ]
    assert addresses({}) == []


def test_the_os_part_of_guest_info() -> None:
    info = {  # guestInfo(OS | HOSTNAME) of a Debian guest
        "hostname": "web1",
        "os.id": "debian",
        "os.name": "Debian GNU/Linux",
        "os.pretty-name": "Debian GNU/Linux 12 (bookworm)",
        "os.version-id": "12",
        "os.kernel-release": "6.1.0-28-cloud-amd64",
        "os.machine": "x86_64",
    }
    assert os_info(info) == {
        "id": "debian",
        "name": "Debian GNU/Linux",
        "pretty_name": "Debian GNU/Linux 12 (bookworm)",
        "version_id": "12",
        "kernel_release": "6.1.0-28-cloud-amd64",
        "machine": "x86_64",
    }
    assert os_info({"hostname": "web1"}) is None


def test_the_agents_state_is_its_channels() -> None:
    def domain(channels: str) -> str:
        return f"<domain type='qemu'><name>v</name><devices>{channels}</devices></domain>"

    agent = "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'{}/></channel>"
    other = "<channel type='unix'><target type='virtio' name='org.example.other'/></channel>"
    assert domain_xml.guest_agent_state(domain(agent.format(" state='connected'"))) == "connected"
    assert domain_xml.guest_agent_state(domain(other + agent.format(""))) == "disconnected"
    assert domain_xml.guest_agent_state(domain(agent.format(" state='disconnected'"))) == (
        "disconnected"
    )
    assert domain_xml.guest_agent_state(domain(other)) == "none"
    assert domain_xml.guest_agent_state(domain("")) == "none"


def test_a_vm_defined_without_the_agents_port_gets_it(hv: Hypervisor) -> None:
    """(libvirt's test driver keeps a domain of type qemu as it is given: the XML is what
    a VM defined by an earlier release has.)"""
    old = (
        "<domain type='qemu'><name>old</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
        "<os><type>hvm</type></os><devices><serial type='pty'><target port='0'/></serial>"
        "</devices></domain>"
    )
    hv.define(old)
    try:
        assert domain_xml.guest_agent_state(hv.xml("old")) == "none"
        assert hv.add_agent_channel("old")
        assert domain_xml.guest_agent_state(hv.xml("old")) == "disconnected"
        assert "<serial type='pty'>" in hv.xml("old")  # the rest as it was
        assert not hv.add_agent_channel("old")  # once
        assert domain_xml.with_agent_channel(hv.xml("old")) is None
    finally:
        hv.undefine("old")
    # a test driver's own domain is left alone
    assert domain_xml.with_agent_channel(hv.xml("test")) is None
    assert not hv.add_agent_channel("test")
