"""``vm.migrate``, ``op.*`` and ``migration.*`` against a live daemon on libvirt's test
driver (which cannot migrate: what is checked here is everything around it — the
refusals, the destination's preparation and its clean-up). Real migrations between two
hosts are in ``tests/system/test_migration.py``."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from novacron import errors
from novacron.client import SyncClient
from novacron.vm import domain_xml
from novacron.vm.spec import DiskSpec
from tests.migration_harness import Node, source_xml
from tests.pki_harness import Pki, client, free_port, tls_daemon

# where the daemon makes the directories the destination QEMU listens in (short: a
# socket's path must fit in 107 bytes)
STREAMS = Path(f"/tmp/nc-{os.getpid()}/migration")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    pki = Pki.create(tmp_path / "pki")
    port = free_port()
    d = tls_daemon(tmp_path, pki, port, "--migration-stream-dir", str(STREAMS))
    d.start()
    yield Node(d, pki, port)
    d.stop()
    shutil.rmtree(STREAMS.parent, ignore_errors=True)
    assert "Traceback" not in d.log_text(), d.log_text()


def stream_socket(name: str | None = None) -> str:
    return str(STREAMS / (name or secrets.token_hex(8)) / "qemu.sock")


def prepare(
    c: SyncClient,
    name: str,
    xml: str | None = None,
    stream: str | None = None,
    options: dict[str, Any] | None = None,
) -> Any:
    return c.call(
        "migration.prepare",
        vm=name,
        xml=xml if xml is not None else source_xml(name),
        stream_socket=stream or stream_socket(),
        options={"compression": "lz4"} if options is None else options,
    )


def test_vm_migrate_refusals(node: Node) -> None:
    with node.daemon.client() as c:
        c.call("vm.create", name="web", memory_mib=64, start=True)
        with pytest.raises(errors.InvalidParams, match="multifd"):
            c.call("vm.migrate", name="web", destination="node2:7443", parallel=2)
        with pytest.raises(errors.InvalidParams, match="auto_converge"):
            c.call("vm.migrate", name="web", destination="n2", stall_action="auto_converge")
        with pytest.raises(errors.NotFound):
            c.call("vm.migrate", name="ghost", destination="node2:7443")
        with pytest.raises(errors.Conflict, match="test driver"):
            c.call("vm.migrate", name="web", destination="node2:7443")
        assert c.call("op.list") == []
        with pytest.raises(errors.NotFound):
            c.call("op.get", op="op-0000")


def test_prepare_places_answers_and_cleans_up_on_abort(node: Node) -> None:
    with node.as_node() as peer:
        qemu_at = Path(stream_socket())
        answer = prepare(peer, "arrival", stream=str(qemu_at))
        # the destination QEMU's directory: private to the user QEMU runs as (libvirt's
        # test driver has no DAC model: the daemon's own user)
        made = qemu_at.parent.stat()
        assert stat.S_IMODE(made.st_mode) == 0o700 and made.st_uid == os.getuid()
        assert stat.S_IMODE(STREAMS.stat().st_mode) == 0o711
        assert not qemu_at.exists()  # QEMU makes the socket, not the daemon
        assert len(answer["token"]) == 32 and answer["channel_port"] > 0
        assert answer["libvirt_uri"].endswith("/system") and answer["node"]
        managed = domain_xml.parse_managed(answer["dest_xml"])
        assert managed is not None and managed.name == "arrival"
        with pytest.raises(errors.AlreadyExists):  # one incoming migration per name
            prepare(peer, "arrival")
        # another node cannot act on this migration
        with node.as_node("node3") as other, pytest.raises(errors.NotFound):
            other.call("migration.abort", op=answer["op"])
        assert peer.call("migration.abort", op=answer["op"])["aborting"]
        ended = peer.call("migration.result", op=answer["op"])
    assert ended["state"] == "failed" and ended["error"]["code"] == "migration_failed"
    assert not qemu_at.parent.exists()  # gone with the migration
    with node.daemon.client() as c:
        op = c.call("op.get", op=answer["op"])
        assert op["kind"] == "migrate_in" and op["peer"] == "node2" and op["state"] == "failed"
        assert "arrival" not in [vm["name"] for vm in c.call("vm.list")]
        # the placement was released: the name can be prepared again
    with node.as_node() as peer:
        again = prepare(peer, "arrival")
        peer.call("migration.abort", op=again["op"])


def test_prepare_refusals(node: Node, tmp_path: Path) -> None:
    with node.daemon.client() as c:
        c.call("vm.create", name="taken", memory_mib=64)
        c.call("quota.set", tenant="tiny", max_vms=0)
    with node.as_node() as peer:
        with pytest.raises(errors.AlreadyExists):
            prepare(peer, "taken")
        with pytest.raises(errors.InvalidParams, match="NovaCron domain"):
            prepare(peer, "x", "<domain><name>x</name></domain>")
        with pytest.raises(errors.InvalidParams, match="NovaCron domain"):
            prepare(peer, "other", source_xml("x"))
        with pytest.raises(errors.InvalidParams, match="NovaCron domain"):
            prepare(peer, "bad", "<domain")
        # disks in the source's pool: a volume of each one's size and format made here for
        # QEMU's mirror, named in the definition; gone again when the source gives up
        pooled = source_xml("d", disks=(DiskSpec(size_gib=1), DiskSpec(size_gib=2, format="raw")))
        with pytest.raises(errors.InsufficientResources, match="GiB free"):
            peer.call(
                "migration.prepare",
                vm="d",
                xml=pooled,
                stream_socket=stream_socket(),
                options={},
                disk_bytes=1 << 50,  # what the source's volumes hold: no room here
            )
        answer = prepare(peer, "d", pooled)
        assert answer["nbd"]["disks"] == ["vda", "vdb"] and len(answer["nbd"]["token"]) == 32
        # a source of an earlier release asks for no packing: NBD crosses as it is
        assert answer["nbd"]["packing"] == "none"
        images = node.daemon.state_dir / "images"
        made = [str(images / "d-vda.qcow2"), str(images / "d-vdb.raw")]
        assert [d.path for d in domain_xml.parse_disks(answer["dest_xml"])] == made
        peer.call("migration.abort", op=answer["op"])
        assert peer.call("migration.result", op=answer["op"])["state"] == "failed"
        # the volumes went with it: the same names are made again
        again = prepare(peer, "d", pooled, options={"disk_compression": "zstd"})
        assert again["nbd"]["disks"] == ["vda", "vdb"] and again["nbd"]["packing"] == "zstd"
        peer.call("migration.abort", op=again["op"])
        peer.call("migration.result", op=again["op"])
        missing = source_xml("e", disks=(DiskSpec(path="/nonexistent/e.qcow2"),))
        with pytest.raises(errors.NotFound, match="not reachable"):
            prepare(peer, "e", missing)
        # an overlay that is here, over a base image that is not (left on the source)
        overlay = tmp_path / "overlay.qcow2"
        create = ["qemu-img", "create", "-f", "qcow2", "-u", "-b", "base.qcow2", "-F", "qcow2"]
        subprocess.run([*create, str(overlay), "1M"], check=True, capture_output=True)
        no_base = source_xml("b", disks=(DiskSpec(path=str(overlay)),))
        with pytest.raises(errors.NotFound, match=r"backing file .*/base\.qcow2 of disk"):
            prepare(peer, "b", no_base)
        # an image whose external data file is not here
        own = tmp_path / "own.qcow2"
        data = tmp_path / "own.raw"
        make = ["qemu-img", "create", "-f", "qcow2", "-o", f"data_file={data}", str(own), "1M"]
        subprocess.run(make, check=True, capture_output=True)
        data.unlink()
        no_data = source_xml("f", disks=(DiskSpec(path=str(own)),))
        with pytest.raises(errors.NotFound, match=r"data file .*/own\.raw of disk") as caught:
            prepare(peer, "f", no_data)
        assert caught.value.details["data_file"] == str(data)
        with pytest.raises(errors.QuotaExceeded):
            prepare(peer, "q", source_xml("q", tenant="tiny"))
        # a spec of the wrong shape is the peer's error, checked as a request is (each of
        # these reached placement or the XML and was an internal error), and a domain
        # without what is fitted to this node is refused too; nothing is kept
        spec_tag = "<novacron:spec>"
        for change, param in (
            ('"vcpus": 1}', '"vcpus": []}'),
            ('"nics": []', '"nics": "x"'),
            ('"memory_policy": "strict"', '"memory_policy": {"a": 1}'),
            ('"memory_mib": 64', '"memory_mib": 1.5'),
        ):
            mangled = source_xml("m").replace(change, param)
            assert mangled != source_xml("m") and spec_tag in mangled
            with pytest.raises(errors.InvalidParams, match="spec"):
                prepare(peer, "m", mangled)
        no_vcpu = source_xml("m").replace('<vcpu placement="static">1</vcpu>', "")
        with pytest.raises(errors.InvalidParams, match="no <vcpu>"):
            prepare(peer, "m", no_vcpu)
        with node.daemon.client() as c:
            assert "m" not in [vm["name"] for vm in c.call("vm.list")]
        # only <stream_dir>/<16 hex digits>/qemu.sock: no other path is made or chowned
        for elsewhere in (
            "/tmp/x/0123456789abcdef/qemu.sock",
            f"{STREAMS}/0123456789abcdef/other.sock",
            f"{STREAMS}/../0123456789abcdef/qemu.sock",
            f"{STREAMS}/0123456789ABCDEF/qemu.sock",
            f"{STREAMS}/0123456789abcdef/../qemu.sock",
            f"{STREAMS}/a/0123456789abcdef/qemu.sock",
            "qemu.sock",
        ):
            with pytest.raises(errors.InvalidParams, match="stream_dir"):
                prepare(peer, "p", stream=elsewhere)
        taken = Path(stream_socket())
        taken.parent.mkdir(parents=True)
        with pytest.raises(errors.Conflict, match="already here"):
            prepare(peer, "p", stream=str(taken))
        assert [p.name for p in STREAMS.iterdir()] == [taken.parent.name]
        with pytest.raises(errors.InvalidParams, match="same NovaCron release"):
            peer.call(
                "migration.prepare", vm="z", xml=source_xml("z"), stream_port=49152, options={}
            )
        # snapshots' descriptions: each the VM's own; a running VM's only on shared storage
        xml = source_xml("s")
        snap: dict[str, Any] = {
            "xml": f"<domainsnapshot><name>a</name>{xml}</domainsnapshot>",
            "current": True,
        }
        live = peer.call(
            "migration.prepare",
            vm="s",
            xml=xml,
            stream_socket=stream_socket(),
            options={},
            snapshots=[snap],
        )
        # (op.get shows them by name; the descriptions are kept for a restart)
        with node.daemon.client() as c:
            assert c.call("op.get", op=live["op"])["params"]["snapshots"] == ["a"]
        peer.call("migration.abort", op=live["op"])
        assert peer.call("migration.result", op=live["op"])["state"] == "failed"
        pooled_snap = {**snap, "xml": snap["xml"].replace(xml, pooled)}
        for extra, why, param in (
            (
                {"stream_socket": stream_socket(), "snapshots": [pooled_snap]},
                "only when its disks are on shared storage",
                "snapshots",
            ),
            ({"offline": True, "snapshots": "a"}, "must be an array", "snapshots"),
            (
                {"offline": True, "snapshots": [{**snap, "xml": xml}]},
                "<domainsnapshot>",
                "snapshots[0]",
            ),
            ({"offline": True, "snapshots": [snap, snap]}, "name of its own", "snapshots[1]"),
        ):
            with pytest.raises(errors.InvalidParams, match=why) as refused:
                vm_xml = pooled if "shared storage" in why else xml
                vm = "d" if "shared storage" in why else "s"
                peer.call("migration.prepare", vm=vm, xml=vm_xml, options={}, **extra)
            assert refused.value.details == {"param": param}
        assert peer.call("session.hello")["node"]  # (the connection stays open)
    operator = node.pki.issue("op1", "operator", ("default",))
    with client(node.port, operator) as c, pytest.raises(errors.PermissionDenied):
        prepare(c, "y")
    with node.daemon.client() as c:
        assert [o for o in c.call("op.list") if o["state"] == "running"] == []


def test_a_destination_without_the_memory_refuses_and_keeps_nothing(node: Node) -> None:
    """The destination places the incoming VM before anything moves: a VM larger than its
    free memory is refused (the source's VM never leaves), and nothing is left behind."""
    with node.as_node() as peer:
        with pytest.raises(errors.InsufficientResources):
            prepare(peer, "big", source_xml("big", memory_mib=256 * 1024))
        prepare(peer, "small")  # what fits is still taken
    with node.daemon.client() as c:
        assert "big" not in [v["name"] for v in c.call("vm.list")]
        ops = [o for o in c.call("op.list") if o["vm"] == "big"]
        assert all(o["state"] != "running" for o in ops), ops


def test_op_cancel_of_an_ended_operation_conflicts(node: Node) -> None:
    with node.as_node() as peer:
        answer = prepare(peer, "late")
        peer.call("migration.abort", op=answer["op"])
        peer.call("migration.result", op=answer["op"])
    with node.daemon.client() as c, pytest.raises(errors.Conflict, match="already ended"):
        c.call("op.cancel", op=answer["op"])


def test_what_a_killed_daemons_migration_left_is_swept_at_the_next_start(
    node: Node, tmp_path: Path
) -> None:
    """A daemon that stops in the middle of a migration leaves its stream directory; the
    next daemon to start on that stream_dir removes it, and never one a running
    migration (here: another daemon's) holds."""
    with node.as_node() as peer:
        answer = prepare(peer, "arrival")
        ours = next(STREAMS.iterdir())
    left = STREAMS / "0123456789abcdef"  # a daemon before this one, killed mid-migration
    left.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(left / "qemu.sock"))

    other = tls_daemon(
        tmp_path / "other", node.pki, free_port(), "--migration-stream-dir", str(STREAMS)
    )
    other.start()
    try:
        assert not left.exists()
        assert ours.is_dir()  # node's migration still runs
        assert "migration.stream_dirs_swept" in other.log_text()
    finally:
        other.stop()

    node.daemon.kill()  # in the middle of "arrival"
    assert ours.is_dir()
    node.daemon.start()
    assert not ours.exists()
    with node.daemon.client() as c:
        op = c.call("op.get", op=answer["op"])
    assert op["state"] == "failed" and "interrupted" in op["error"]["message"]
