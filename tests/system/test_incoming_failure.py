"""What a destination does with what libvirt leaves of an incoming migration that did
not arrive, on a real libvirtd.

When libvirt's Finish step fails after it made the incoming domain persistent (waiting
for QEMU, refreshing devices, starting the CPUs), it stops QEMU and keeps the
definition: persistent, shut off, reason ``failed``. The source resumes the VM. The
destination must then end its operation at once, remove that definition (else the VM
is defined on two nodes, the next start adopts it, and its next migration here is
refused), and never adopt it. libvirt cannot be made to fail its Finish step on
demand, so these tests leave on the real libvirtd exactly that state (the migration's
own domain, persistent, shut off as ``failed``) and let the daemon's incoming migration
find it. A daemon acts as the destination; the test is its source (a node certificate
from the same CA: ``tests/migration_harness.py``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import libvirt
import pytest

from novacron import errors
from novacron.client import SyncClient
from tests.daemon_harness import Daemon
from tests.migration_harness import Node, source_xml
from tests.pki_harness import Pki, free_port
from tests.system.conftest import daemon_on_system
from tests.system.libvirt_host import URI, LibvirtHost
from tests.system.nodes import wait_until

# where the daemon makes the directories the destination QEMU would listen in (short:
# a socket's path must fit in 107 bytes)
STREAMS = Path(f"/tmp/nc-{os.getpid()}-inc/migration")


@pytest.fixture
def dest(libvirt_host: LibvirtHost, tmp_path: Path) -> Iterator[Node]:
    pki = Pki.create(tmp_path / "pki")
    port = free_port()
    flags = (*pki.daemon_args(port), "--migration-stream-dir", str(STREAMS))
    with daemon_on_system(tmp_path, *flags) as d:
        yield Node(d, pki, port)
    shutil.rmtree(STREAMS.parent, ignore_errors=True)


def prepare(source: SyncClient, name: str) -> dict[str, Any]:
    """The source's ``migration.prepare`` of a 64 MiB VM ``name``."""
    answer: dict[str, Any] = source.call(
        "migration.prepare",
        vm=name,
        xml=source_xml(name, uuid=str(uuid.uuid4())),
        stream_socket=str(STREAMS / secrets.token_hex(8) / "qemu.sock"),
        options={"compression": "lz4"},
    )
    return answer


@contextmanager
def connection() -> Iterator[libvirt.virConnect]:
    conn = libvirt.open(URI)
    try:
        yield conn
    finally:
        conn.close()


def interrupted(dest: Node) -> tuple[str, dict[str, Any]]:
    """A VM prepared to come here, and the destination daemon killed in the middle of
    its incoming migration: the VM's name and the prepare step's answer."""
    name = "arrival-" + secrets.token_hex(3)
    with dest.as_node(timeout=120) as source:
        answer = prepare(source, name)
    dest.daemon.kill()
    return name, answer


def leave_failed_arrival(dest_xml: str) -> libvirt.virDomain:
    """What a failed Finish leaves: the domain, persistent, shut off as ``failed``.
    Made by defining it and starting it from a kernel that is not there (libvirt then
    stops it as a failed start, the same state as its failed Finish)."""
    missing = f"/var/tmp/novacron-no-such-kernel-{secrets.token_hex(4)}"
    xml = dest_xml.replace("<os>", f"<os><kernel>{missing}</kernel>", 1)
    assert missing in xml
    with connection() as conn:
        dom = conn.defineXML(xml)
        with pytest.raises(libvirt.libvirtError):
            dom.create()
        assert dom.isPersistent() == 1
        assert dom.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_FAILED]
        return dom


def domain_exists(name: str) -> bool:
    with connection() as conn:
        return name in [d.name() for d in conn.listAllDomains(0)]


def records(d: Daemon) -> list[str]:
    with d.client() as c:
        return [vm["name"] for vm in c.call("vm.list")]


def test_a_failed_finish_ends_the_incoming_migration_and_leaves_no_definition(
    dest: Node,
) -> None:
    name = "arrival-" + secrets.token_hex(3)
    with dest.as_node(timeout=120) as source:
        answer = prepare(source, name)
        leave_failed_arrival(answer["dest_xml"])
        # the source's libvirt call failed: it tells the destination
        source.call("migration.abort", op=answer["op"])
        start = time.monotonic()
        ended = source.call("migration.result", op=answer["op"])
        waited = time.monotonic() - start
    assert ended["state"] == "failed" and ended["error"]["code"] == "migration_failed"
    message = ended["error"]["message"]
    assert "Finish step failed" in message and "removed" in message, message
    assert waited < 30, f"waited {waited:.0f} s for libvirt's verdict, which was there"
    assert not domain_exists(name)
    assert name not in records(dest.daemon)
    # nothing is left that refuses the VM's next migration here (domain, placement)
    with dest.as_node(timeout=120) as source:
        again = prepare(source, name)
        source.call("migration.abort", op=again["op"])
        assert source.call("migration.result", op=again["op"])["state"] == "failed"


def test_after_a_restart_a_failed_arrival_is_removed_not_adopted(dest: Node) -> None:
    name, answer = interrupted(dest)
    leave_failed_arrival(answer["dest_xml"])
    dest.daemon.start(timeout=60)
    wait_until(lambda: not domain_exists(name), 30, "the failed arrival's definition to go")
    assert not domain_exists(name), "the definition a failed Finish left is still there"
    assert name not in records(dest.daemon)
    with dest.daemon.client() as c:
        op = c.call("op.get", op=answer["op"])
        findings = c.call("node.info")["daemon"]["reconcile"]
    assert op["state"] == "failed"
    assert name not in [f["vm"] for f in findings]


def test_after_a_restart_a_domain_still_arriving_is_not_adopted(dest: Node) -> None:
    """Transient and running: libvirt has not decided yet (here it never will: the
    domain is destroyed, as libvirt removes one whose migration failed). Reconciliation
    never listed transient domains; what this guards is the restart path as a whole. A
    persistent domain still arriving (paused for the migration, after Finish made it
    persistent), which reconciliation used to adopt, cannot be staged on libvirt."""
    name, answer = interrupted(dest)
    with connection() as conn:
        dom = conn.createXML(answer["dest_xml"], 0)  # transient, running
        try:
            dest.daemon.start(timeout=60)
            assert name not in records(dest.daemon)
        finally:
            dom.destroy()
    assert name not in records(dest.daemon)
    with dest.daemon.client() as c:
        assert c.call("op.get", op=answer["op"])["state"] == "failed"


@pytest.mark.parametrize("paused", [False, True])
def test_after_a_restart_a_vm_that_arrived_is_recorded_as_it_arrived(
    dest: Node, paused: bool
) -> None:
    """The daemon died after libvirt's switch-over: at its start the domain is
    persistent and running (or paused by the user's word, as a VM paused on the source
    arrives); the migration service records it so and amends the operation."""
    name, answer = interrupted(dest)
    with connection() as conn:
        dom = conn.defineXML(answer["dest_xml"])
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED if paused else 0)
        if paused:
            assert dom.state() == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER]
    dest.daemon.start(timeout=60)
    wait_until(lambda: name in records(dest.daemon), 30, f"a record of {name}")
    with dest.daemon.client() as c:
        vm = c.call("vm.get", name=name)
        op = c.call("op.get", op=answer["op"])
        assert vm["desired_state"] == ("paused" if paused else "running")
        assert vm["state"] == ("paused" if paused else "running")
        assert op["state"] == "succeeded" and op["result"]["restarted"] is True
        c.call("vm.delete", name=name, force=True)


def prepare_offline(source: SyncClient, name: str) -> dict[str, Any]:
    """The source's ``migration.prepare`` of a stopped 64 MiB VM ``name``."""
    answer: dict[str, Any] = source.call(
        "migration.prepare",
        vm=name,
        xml=source_xml(name, uuid=str(uuid.uuid4())),
        offline=True,
    )
    assert answer["offline"] is True and "token" not in answer, answer
    return answer


def test_an_offline_arrival_is_recorded_stopped_once_libvirt_defined_it(dest: Node) -> None:
    """What libvirt's offline migration leaves here: the VM defined, shut off. The
    destination records it, stopped, without being told (the source may have died)."""
    name = "cold-" + secrets.token_hex(3)
    with dest.as_node(timeout=120) as source:
        answer = prepare_offline(source, name)
        with connection() as conn:
            conn.defineXML(answer["dest_xml"])
        ended = source.call("migration.result", op=answer["op"])
    assert ended["state"] == "succeeded" and ended["result"]["state"] == "stopped", ended
    with dest.daemon.client() as c:
        vm = c.call("vm.get", name=name)
        assert (vm["state"], vm["desired_state"]) == ("stopped", "stopped"), vm
        c.call("vm.delete", name=name)
    assert not domain_exists(name)


def test_an_offline_arrival_the_source_gave_up_leaves_nothing(dest: Node) -> None:
    """libvirt refused the move: the source's word ends the destination's side at once,
    nothing stays here, and the VM may be prepared here again. Once the VM arrived,
    a late word changes nothing (the source, whose libvirt defined the VM here but failed
    to undefine it there, asks how this side ended and removes its own copy)."""
    name = "cold-" + secrets.token_hex(3)
    with dest.as_node(timeout=120) as source:
        answer = prepare_offline(source, name)
        source.call("migration.abort", op=answer["op"])
        ended = source.call("migration.result", op=answer["op"])
        assert ended["state"] == "failed", ended
        assert ended["error"]["message"] == "cancelled by the source", ended
        assert not domain_exists(name) and name not in records(dest.daemon)

        again = prepare_offline(source, name)  # (the placement was released)
        with connection() as conn:
            conn.defineXML(again["dest_xml"])
        assert source.call("migration.result", op=again["op"])["state"] == "succeeded"
        with pytest.raises(errors.NotFound):
            source.call("migration.abort", op=again["op"])
        assert source.call("migration.result", op=again["op"])["state"] == "succeeded"
    assert domain_exists(name) and name in records(dest.daemon)
    with dest.daemon.client() as c:
        c.call("vm.delete", name=name)


def test_after_a_restart_an_offline_arrival_is_recorded_stopped(dest: Node) -> None:
    """The daemon died while a stopped VM was moving here; libvirt defined it meanwhile:
    at its start the daemon records it, stopped, and amends the operation."""
    name = "cold-" + secrets.token_hex(3)
    with dest.as_node(timeout=120) as source:
        answer = prepare_offline(source, name)
    dest.daemon.kill()
    with connection() as conn:
        conn.defineXML(answer["dest_xml"])
    dest.daemon.start(timeout=60)
    wait_until(lambda: name in records(dest.daemon), 30, f"a record of {name}")
    with dest.daemon.client() as c:
        vm = c.call("vm.get", name=name)
        op = c.call("op.get", op=answer["op"])
        assert (vm["state"], vm["desired_state"]) == ("stopped", "stopped"), vm
        assert op["state"] == "succeeded" and op["result"]["restarted"] is True, op
        c.call("vm.delete", name=name)
