"""novacron.vm.console against libvirt's test driver: which domains may open a console
(a running one with a pty serial port). The stream itself needs QEMU:
tests/system/test_console.py."""

from __future__ import annotations

import pytest

from novacron import errors
from novacron.vm.console import has_pty_console, open_stream
from novacron.vm.driver import Hypervisor


@pytest.fixture
def hv() -> Hypervisor:
    return Hypervisor("test:///default")


def test_the_test_drivers_running_domain_has_no_pty_and_is_refused(hv: Hypervisor) -> None:
    assert hv.state("test").state == "running"
    assert not has_pty_console(hv.xml("test"))
    with pytest.raises(errors.Conflict, match="no interactive console"):
        open_stream(hv, "test", force=False)


def test_a_stopped_or_unknown_domain_is_refused(hv: Hypervisor) -> None:
    hv.destroy("test")
    with pytest.raises(errors.Conflict, match="not running"):
        open_stream(hv, "test", force=True)
    with pytest.raises(errors.NotFound):
        open_stream(hv, "nope", force=False)


def test_a_pty_serial_or_console_counts() -> None:
    xml = "<domain><devices><console type='pty'><target port='0'/></console></devices></domain>"
    assert has_pty_console(xml)
    assert not has_pty_console("<domain><devices><serial type='file'/></devices></domain>")
    assert not has_pty_console("<domain/>")


def test_a_vm_defined_with_a_file_console_gets_a_pty_at_its_next_start(hv: Hypervisor) -> None:
    from novacron.vm import domain_xml

    xml = (
        "<domain type='test'><name>old</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
        "<os><type>hvm</type></os><devices><serial type='file'>"
        "<source path='/state/consoles/old.log' append='on'/><target port='0'/>"
        "</serial></devices></domain>"
    )
    assert domain_xml.with_pty_console(hv.xml("test")) is None  # nothing to change
    hv.define(xml)
    try:
        assert not has_pty_console(hv.xml("old"))
        hv.start("old")
        assert has_pty_console(hv.xml("old"))
        inactive = domain_xml.with_pty_console(hv.xml("old"))
        assert inactive is None  # (already upgraded: a second start changes nothing)
        assert "/state/consoles/old.log" in hv.xml("old")  # the log stays where it was
    finally:
        hv.undefine("old")
