"""The mutual-TLS listener with real certificates from NovaCron's CA: who gets in,
who is refused (wrong CA, expired, revoked, no certificate, TLS 1.2, a handshake that
never comes), and that the daemon keeps serving others throughout."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from novacron import errors
from novacron.client import TlsFiles
from novacron.pki.ca import CertificateAuthority
from tests.daemon_harness import Daemon
from tests.pki_harness import Pki, client, free_port, tls_daemon


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.create(tmp_path / "pki")


@pytest.fixture
def tls(tmp_path: Path, pki: Pki) -> Iterator[tuple[Daemon, int]]:
    port = free_port()
    d = tls_daemon(tmp_path, pki, port).start()
    try:
        yield d, port
    finally:
        rc = d.stop()
        assert rc in (0, None), d.log_text()
        assert "Traceback" not in d.log_text(), d.log_text()


def refused(port: int, files: TlsFiles) -> str:
    """Connects and calls; returns the failure (the test fails if the call works)."""
    try:
        with client(port, files, timeout=10) as c:
            c.call("session.hello")
    except (errors.Unavailable, errors.Timeout) as exc:
        return exc.message
    raise AssertionError("the call went through")


def test_admin_and_tenant_roles_over_tls(tls: tuple[Daemon, int], pki: Pki) -> None:
    _, port = tls
    with client(port, pki.issue("root-ops", "admin")) as admin:
        who = admin.call("auth.whoami")
        assert who["identity"]["kind"] == "tls" and who["identity"]["user"] == "root-ops"
        assert who["identity"]["tenants"] is None and "audit.verify" in who["methods"]
        admin.call("vm.create", name="a1", tenant="acme", memory_mib=64)
        admin.call("vm.create", name="g1", tenant="globex", memory_mib=64)
    with client(port, pki.issue("alice", "operator", ("acme",))) as alice:
        assert alice.call("auth.whoami")["identity"]["tenants"] == ["acme"]
        assert [v["name"] for v in alice.call("vm.list")] == ["a1"]
        assert alice.call("vm.start", name="a1")["state"] == "running"
        with pytest.raises(errors.NotFound):  # exists, but not for alice
            alice.call("vm.get", name="g1")
        with pytest.raises(errors.NotFound):
            alice.call("vm.delete", name="g1", force=True)
        # her only tenant is the default for new VMs; another tenant is refused
        assert alice.call("vm.create", name="a2", memory_mib=64)["tenant"] == "acme"
        with pytest.raises(errors.PermissionDenied):
            alice.call("vm.create", name="a3", tenant="globex", memory_mib=64)
        # no host file is offered by default: new volumes only ([vm] disk_dirs, boot_dirs)
        with pytest.raises(errors.PermissionDenied, match="boot_dirs: none"):
            alice.call("vm.create", name="a4", memory_mib=64, kernel="/boot/vmlinuz")
        with pytest.raises(errors.PermissionDenied, match="disk_dirs: none"):
            alice.call("vm.create", name="a4", memory_mib=64, disks=[{"path": "/dev/sda"}])
        with pytest.raises(errors.PermissionDenied):
            alice.call("audit.tail")
    with client(port, pki.issue("victor", "viewer", ("acme",))) as viewer:
        assert {v["name"] for v in viewer.call("vm.list")} == {"a1", "a2"}
        with pytest.raises(errors.PermissionDenied):
            viewer.call("vm.stop", name="a1")
    with client(port, pki.issue("node2", "node", addresses=("127.0.0.1",))) as node:
        assert node.call("session.hello")["identity"]["roles"] == ["node"]
        with pytest.raises(errors.PermissionDenied):
            node.call("vm.list")
    with client(port, pki.issue("auditor", "admin")) as admin:
        entries = admin.call("audit.tail", limit=50)
    refusals = [(e["principal"], e["method"]) for e in entries if e["outcome"] != "ok"]
    assert ("tls:alice", "vm.create") in refusals  # another tenant
    assert ("tls:victor", "vm.stop") in refusals and ("tls:node2", "vm.list") in refusals
    assert ("tls:alice", "audit.tail") in refusals
    assert [
        e["method"] for e in entries if e["principal"] == "tls:alice" and e["outcome"] == "ok"
    ] == [
        "vm.start",
        "vm.create",
    ]


def test_a_tenant_sees_every_state_event_of_its_vms_and_none_of_others(
    tls: tuple[Daemon, int], pki: Pki
) -> None:
    _, port = tls
    with (
        client(port, pki.issue("root-ops", "admin")) as admin,
        client(port, pki.issue("victor", "viewer", ("acme",)), timeout=15) as victor,
    ):
        stream = victor.events(["vm.state"])
        admin.call("vm.create", name="g1", tenant="globex", memory_mib=64)
        admin.call("vm.start", name="g1")
        admin.call("vm.create", name="a1", tenant="acme", memory_mib=64)
        admin.call("vm.start", name="a1")
        admin.call("vm.delete", name="a1", force=True)
        admin.call("vm.delete", name="g1", force=True)
        seen = []
        for event in stream:
            seen.append((event["vm"], event["tenant"], event["state"], event["reason"]))
            if event["state"] == "undefined":
                break
    # from its definition (before the VM's record is written) to its removal
    assert seen == [
        ("a1", "acme", "defined", "added"),
        ("a1", "acme", "running", "booted"),
        ("a1", "acme", "stopped", "destroyed"),
        ("a1", "acme", "undefined", "removed"),
    ]


def test_wrong_ca_expired_no_cert_and_tls12_are_refused(
    tls: tuple[Daemon, int], pki: Pki, tmp_path: Path
) -> None:
    d, port = tls
    good = pki.issue("good", "viewer", ("acme",))
    with client(port, good) as kept:  # an open connection keeps working throughout
        other = CertificateAuthority.init(tmp_path / "other-ca", name="Other CA")
        cert, key = other.issue("mallory", "admin", tmp_path / "other")
        assert refused(port, TlsFiles(cert, key, pki.ca.dir / "ca.crt"))
        assert refused(port, pki.expired("old"))

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(pki.ca.dir / "ca.crt"))
        with (
            pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)),
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="node1") as s,
        ):
            s.sendall(b"\x94\x00\x01\xadsession.hello\x90")  # hello without a cert
            if not s.recv(1024):
                raise ConnectionResetError("closed without an answer")

        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        old.load_cert_chain(good.cert, good.key)
        old.load_verify_locations(cafile=str(good.ca))
        with (
            pytest.raises((ssl.SSLError, ConnectionResetError)),
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ):
            old.wrap_socket(raw, server_hostname="node1").close()

        assert kept.call("vm.list") == []
    log = d.log_text()
    assert log.count("tls.refused") >= 4
    assert "certificate has expired" in log


def test_revocation_takes_effect_on_reload(tls: tuple[Daemon, int], pki: Pki) -> None:
    d, port = tls
    eve = pki.issue("eve", "operator", ("acme",))
    admin_files = pki.issue("admin1", "admin")
    with client(port, eve) as c:
        assert c.call("auth.whoami")["principal"] == "tls:eve"
    pki.ca.revoke(name="eve")
    with client(port, eve) as c:  # the daemon still has the old CRL
        c.call("session.hello")
    d.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "tls.reloaded" not in d.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "certificate revoked" in refused(port, eve) or "tls.refused" in d.log_text()
    with client(port, admin_files) as admin:  # the method does the same as SIGHUP
        assert admin.call("tls.reload")["reloaded"] is True
    assert "certificate revoked" in d.log_text()


def test_a_silent_client_is_cut_at_the_handshake_deadline(
    tls: tuple[Daemon, int], pki: Pki
) -> None:
    d, port = tls
    files = pki.issue("busy", "viewer", ("acme",))
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    try:
        with client(port, files) as c:  # served while 20 connections stall
            assert c.call("vm.list") == []
        time.sleep(2.5)  # the deadline is 2 s
        for s in silent:
            s.settimeout(5)
            assert s.recv(1) == b"", "the server closed the stalled connection"
    finally:
        for s in silent:
            s.close()
    assert "handshake timed out" in d.log_text()


def test_connections_past_the_handshakes_in_progress_are_closed_at_once(
    tmp_path: Path, pki: Pki
) -> None:
    port = free_port()
    d = tls_daemon(tmp_path, pki, port, "--tls-max-handshakes", "3").start()
    files = pki.issue("busy", "viewer", ("acme",))
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        deadline = time.monotonic() + 10
        while "handshakes in progress" not in d.log_text():
            assert time.monotonic() < deadline, "a fourth connection was never refused"
            extra = socket.create_connection(("127.0.0.1", port))
            extra.settimeout(5)
            assert extra.recv(1) == b""  # closed, not kept waiting for a handshake
            extra.close()
        assert "3 handshakes in progress, at most 3" in d.log_text()
        time.sleep(2.5)  # the silent ones are cut at the 2 s handshake deadline
        with client(port, files) as c:
            assert c.call("vm.list") == []
    finally:
        for s in silent:
            s.close()
        rc = d.stop()
        assert rc in (0, None), d.log_text()
        assert "Traceback" not in d.log_text(), d.log_text()


def test_a_group_readable_key_stops_the_daemon(tmp_path: Path, pki: Pki) -> None:
    os.chmod(pki.root / "certs" / "node1.key", 0o640)
    d = tls_daemon(tmp_path, pki, free_port())
    d.log.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(d.argv(), capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "readable by group or others" in done.stderr
