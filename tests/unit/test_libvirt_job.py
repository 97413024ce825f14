"""The migration's libvirt calls: parameters and flags, and the calls that work on
libvirt's test driver (which cannot migrate; real migrations are system tests)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import libvirt
import pytest

from novacron import errors
from novacron.migration import libvirt_job
from novacron.migration.libvirt_job import MigrationCall
from novacron.vm.driver import Hypervisor


@pytest.fixture
def hv() -> Iterator[Hypervisor]:
    h = Hypervisor("test:///default")
    yield h
    h.close()


def call(**kw: object) -> MigrationCall:
    base: dict[str, object] = {
        "name": "vm",
        "dest_uri": "qemu+tls://node2/system",
        "migrate_uri": "unix:///run/novacron/migration/0123456789abcdef/qemu.sock",
        "dest_xml": "<domain/>",
        "bandwidth_mib_s": 0,
        "auto_converge": False,
    }
    return MigrationCall(**{**base, **kw})  # type: ignore[arg-type]


def test_params_point_qemu_at_the_relay_socket() -> None:
    params = call().params()
    uri = "unix:///run/novacron/migration/0123456789abcdef/qemu.sock"
    assert params[libvirt.VIR_MIGRATE_PARAM_URI] == uri
    # libvirt refuses a listen address with the UNIX transport (both ends use the path)
    assert libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS not in params
    assert params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] == "<domain/>"
    assert params[libvirt.VIR_MIGRATE_PARAM_PERSIST_XML] == "<domain/>"
    assert libvirt.VIR_MIGRATE_PARAM_BANDWIDTH not in params
    assert call(bandwidth_mib_s=12).params()[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] == 12


def test_flags() -> None:
    flags = call().flags()
    for flag in (
        libvirt.VIR_MIGRATE_LIVE,
        libvirt.VIR_MIGRATE_PEER2PEER,
        libvirt.VIR_MIGRATE_PERSIST_DEST,
        libvirt.VIR_MIGRATE_UNDEFINE_SOURCE,
    ):
        assert flags & flag
    assert not flags & libvirt.VIR_MIGRATE_AUTO_CONVERGE
    assert call(auto_converge=True).flags() & libvirt.VIR_MIGRATE_AUTO_CONVERGE
    assert not flags & libvirt.VIR_MIGRATE_PARALLEL  # multifd is refused, never asked for
    # libvirt's shared-storage check is skipped only for storage the operator declared
    assert not flags & libvirt.VIR_MIGRATE_UNSAFE
    declared = call(shared_storage=True).flags()
    assert declared & libvirt.VIR_MIGRATE_UNSAFE and declared & ~libvirt.VIR_MIGRATE_UNSAFE == flags


def test_calls_on_the_test_driver(hv: Hypervisor) -> None:
    assert libvirt_job.job_stats(hv, "test") == {}  # no job running
    assert libvirt_job.job_stats(hv, "missing") == {}
    assert libvirt_job.abort(hv, "missing") is False
    assert libvirt_job.incoming_state(hv, "test") == "running"  # persistent and running
    assert libvirt_job.incoming_state(hv, "missing") == "absent"
    assert "<name>test</name>" in libvirt_job.migratable_xml(hv, "test")
    with pytest.raises(errors.NovaCronError) as refused:
        libvirt_job.migrate(hv, call(name="test", dest_uri="test:///default"))
    assert libvirt_job.incoming_state(hv, "test") == "running"  # a failed call leaves it
    # no job ever ran: nothing kept to add to libvirt's own message
    assert libvirt_job.failed_job_message(hv.domain("test")) == ""
    assert "migration job" not in refused.value.message


def test_a_transient_domain_is_still_arriving(hv: Hypervisor) -> None:
    xml = libvirt_job.migratable_xml(hv, "test").replace("<name>test</name>", "<name>t2</name>")
    xml = "\n".join(line for line in xml.splitlines() if "<uuid>" not in line)
    dom = hv.conn.createXML(xml, 0)  # transient, running: like an incoming migration
    try:
        assert libvirt_job.incoming_state(hv, "t2") == "arriving"
    finally:
        dom.destroy()
    assert libvirt_job.incoming_state(hv, "t2") == "absent"


def test_a_persistent_domain_paused_by_the_user_has_arrived_paused(hv: Hypervisor) -> None:
    """What libvirt leaves on the destination when the guest was paused on the source."""
    dom = hv.domain("test")
    dom.suspend()
    try:
        assert dom.state() == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER]
        assert libvirt_job.incoming_state(hv, "test") == "paused"
    finally:
        dom.resume()
    assert libvirt_job.incoming_state(hv, "test") == "running"


PAUSED_REASONS = [
    getattr(libvirt, n)
    for n in dir(libvirt)
    if n.startswith("VIR_DOMAIN_PAUSED_") and n[-5:] != "_LAST"
]


def test_arrival_by_libvirt_state() -> None:
    """When libvirt is done with an incoming domain, and the desired state it arrived with."""
    running, paused = libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED
    for reason in (libvirt.VIR_DOMAIN_RUNNING_MIGRATED, libvirt.VIR_DOMAIN_RUNNING_UNPAUSED):
        assert libvirt_job.arrival(True, running, reason) == "running"
        assert libvirt_job.arrival(False, running, reason) == "arriving"  # still transient
    assert libvirt_job.arrival(True, paused, libvirt.VIR_DOMAIN_PAUSED_USER) == "paused"
    # persistent but still being received: made persistent before QEMU has the whole stream
    assert libvirt_job.arrival(True, paused, libvirt.VIR_DOMAIN_PAUSED_MIGRATION) == "arriving"
    # arrived, then paused by the guest's trouble: it is meant to run
    for reason in (
        libvirt.VIR_DOMAIN_PAUSED_IOERROR,
        libvirt.VIR_DOMAIN_PAUSED_WATCHDOG,
        libvirt.VIR_DOMAIN_PAUSED_CRASHED,
    ):
        assert libvirt_job.arrival(True, paused, reason) == "running"
    for reason in PAUSED_REASONS:  # never before libvirt made it persistent
        assert libvirt_job.arrival(False, paused, reason) == "arriving"
    # shut off because it failed: what a failed Finish leaves (the VM runs on at the source)
    failed = libvirt.VIR_DOMAIN_SHUTOFF_FAILED
    assert libvirt_job.arrival(True, libvirt.VIR_DOMAIN_SHUTOFF, failed) == "failed"
    assert libvirt_job.arrival(False, libvirt.VIR_DOMAIN_SHUTOFF, failed) == "arriving"
    # not running for any other reason: not libvirt's verdict on the migration
    for state in (
        libvirt.VIR_DOMAIN_SHUTOFF,
        libvirt.VIR_DOMAIN_CRASHED,
        libvirt.VIR_DOMAIN_NOSTATE,
    ):
        assert libvirt_job.arrival(True, state, 0) == "arriving"
    for reason in (
        libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN,
        libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED,
        libvirt.VIR_DOMAIN_SHUTOFF_CRASHED,
        libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED,
    ):
        assert libvirt_job.arrival(True, libvirt.VIR_DOMAIN_SHUTOFF, reason) == "arriving"


def test_only_a_failed_arrival_of_this_migration_is_removed(hv: Hypervisor) -> None:
    """Never a domain that runs, one shut off otherwise, or another VM's (libvirt's
    test driver cannot fail a start; the removal itself: tests/system/test_incoming_failure.py)."""
    dom = hv.domain("test")
    uuid = dom.UUIDString()
    assert libvirt_job.remove_failed_arrival(hv, "missing", uuid) is False
    assert libvirt_job.remove_failed_arrival(hv, "test", uuid) is False  # running
    dom.destroy()
    try:
        assert dom.state()[1] == libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED
        assert libvirt_job.remove_failed_arrival(hv, "test", uuid) is False
        other = "00000000-0000-4000-8000-000000000001"
        assert libvirt_job.remove_failed_arrival(hv, "test", other) is False
        assert hv.lookup("test") is not None
    finally:
        dom.create()


def test_only_a_refusal_over_shared_storage_is_one_declaring_storage_helps() -> None:
    unsafe = {"libvirt_code": libvirt.VIR_ERR_MIGRATE_UNSAFE}
    storage = errors.MigrationFailed(
        "libvirt: Unsafe migration: Migration without shared storage is unsafe", unsafe
    )
    cache = errors.MigrationFailed(
        "libvirt: Unsafe migration: Migration may lead to data corruption if disks use cache "
        "other than none or directsync",
        unsafe,
    )
    other = errors.MigrationFailed(
        "libvirt: operation failed: migration out job: unexpectedly failed",
        {"libvirt_code": libvirt.VIR_ERR_OPERATION_FAILED},
    )
    assert libvirt_job.storage_refusal(storage)
    assert not libvirt_job.storage_refusal(cache)
    assert not libvirt_job.storage_refusal(other)


def test_a_kept_job_reason_is_added_only_where_libvirt_gave_no_cause() -> None:
    internal = {"libvirt_code": libvirt.VIR_ERR_INTERNAL_ERROR}
    unknown = errors.MigrationFailed(f"libvirt: {libvirt_job.CAUSE_UNKNOWN}", internal)
    named = errors.MigrationFailed(
        "libvirt: internal error: qemu unexpectedly closed the monitor", internal
    )
    aborted = errors.MigrationFailed(
        f"libvirt: operation aborted: {libvirt_job.CAUSE_UNKNOWN}",
        {"libvirt_code": libvirt.VIR_ERR_OPERATION_ABORTED},
    )
    assert libvirt_job.cause_unknown(unknown)
    assert not libvirt_job.cause_unknown(named)
    assert not libvirt_job.cause_unknown(aborted)


def test_offline_flags_move_a_definition_and_never_a_guest() -> None:
    flags = libvirt_job.OFFLINE_FLAGS
    for flag in (
        libvirt.VIR_MIGRATE_OFFLINE,
        libvirt.VIR_MIGRATE_PEER2PEER,
        libvirt.VIR_MIGRATE_PERSIST_DEST,  # libvirt refuses OFFLINE without it
        libvirt.VIR_MIGRATE_UNDEFINE_SOURCE,
    ):
        assert flags & flag
    assert not flags & libvirt.VIR_MIGRATE_LIVE
    assert not flags & libvirt.VIR_MIGRATE_UNSAFE  # no QEMU opens the disks: nothing to check


def test_an_offline_arrival_by_what_libvirt_holds(hv: Hypervisor) -> None:
    """Absent (or another VM's), a transient placeholder, defined and stopped, or
    started here since; and only the migration's stopped definition is ever removed."""
    xml = libvirt_job.migratable_xml(hv, "test").replace("<name>test</name>", "<name>o1</name>")
    xml = "\n".join(line for line in xml.splitlines() if "<uuid>" not in line)
    uuid = "00000000-0000-4000-8000-00000000000a"
    other = "00000000-0000-4000-8000-00000000000b"
    xml = xml.replace("<name>o1</name>", f"<name>o1</name><uuid>{uuid}</uuid>")
    assert libvirt_job.offline_arrival(hv, "o1", uuid) == "absent"
    transient = hv.conn.createXML(xml, 0)  # what libvirt holds while it prepares
    assert libvirt_job.offline_arrival(hv, "o1", uuid) == "arriving"
    assert libvirt_job.remove_offline_arrival(hv, "o1", uuid) is False  # it runs
    transient.destroy()
    dom = hv.conn.defineXML(xml)  # what libvirt's Finish leaves: persistent, shut off
    try:
        assert libvirt_job.offline_arrival(hv, "o1", uuid) == "stopped"
        assert libvirt_job.offline_arrival(hv, "o1", other) == "absent"  # not this migration's
        assert libvirt_job.remove_offline_arrival(hv, "o1", other) is False
        dom.create()
        assert libvirt_job.offline_arrival(hv, "o1", uuid) == "running"
        assert libvirt_job.remove_offline_arrival(hv, "o1", uuid) is False  # never a running one
        dom.destroy()
        assert libvirt_job.remove_offline_arrival(hv, "o1", uuid) is True
        assert hv.lookup("o1") is None
    finally:
        if hv.lookup("o1") is not None:
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
            dom.undefine()


def test_an_offline_migration_the_test_driver_refuses_leaves_the_vm(hv: Hypervisor) -> None:
    dom = hv.domain("test")
    dom.destroy()
    try:
        xml = libvirt_job.migratable_xml(hv, "test")
        with pytest.raises(errors.NovaCronError):
            libvirt_job.migrate_offline(hv, "test", "test:///default", xml)
        assert libvirt_job.offline_arrival(hv, "test", dom.UUIDString()) == "stopped"
    finally:
        dom.create()
