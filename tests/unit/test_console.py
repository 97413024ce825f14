"""novacron.vm.console against libvirt's test driver: which domains may open a console
(a running one with a pty serial port). The stream itself needs QEMU:
tests/system/test_console.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from novacron import errors
from novacron.vm.console import has_pty_console, open_stream, read_log
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


@given(
    content=st.binary(max_size=3000),
    offset=st.one_of(st.none(), st.integers(min_value=0, max_value=4000)),
    limit=st.integers(min_value=1, max_value=5000),
)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_log_is_read_from_its_end_or_an_offset_within_the_limit(
    tmp_path: Path, content: bytes, offset: int | None, limit: int
) -> None:
    log = tmp_path / "v.log"
    log.write_bytes(content)
    got = read_log(log, offset, limit)
    start = got["offset"]
    assert got["data"] == content[start : start + len(got["data"])]
    assert got["end"] == start + len(got["data"]) and len(got["data"]) <= limit
    if offset is None:  # the end: as much of it as the limit takes
        assert got["end"] == len(content) and len(got["data"]) == min(limit, len(content))
    elif offset <= len(content):
        assert start == offset and len(got["data"]) == min(limit, len(content) - offset)
    else:  # a log cut short since: from its start
        assert start == 0


def test_a_missing_log_is_empty_and_a_symbolic_link_is_not_followed(tmp_path: Path) -> None:
    assert read_log(tmp_path / "none.log", None, 10) == {"data": b"", "offset": 0, "end": 0}
    secret = tmp_path / "secret"
    secret.write_bytes(b"do not read")
    (tmp_path / "link.log").symlink_to(secret)
    with pytest.raises(errors.Conflict, match="cannot read the console log"):
        read_log(tmp_path / "link.log", None, 10)
