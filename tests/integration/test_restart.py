"""A daemon killed or stopped and started again keeps every VM (reconcile)."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from novacron import errors
from tests.daemon_harness import Daemon
from tests.integration.test_cli import cli


def test_sigkill_and_restart_reconciles(daemon: Daemon) -> None:
    with daemon.client() as c:
        c.call("vm.create", name="a", disks=[{"size_gib": 1}], tenant="t1")
        c.call("vm.create", name="b", start=True)
        c.call("vm.create", name="c")
        c.call("vm.create", name="d", start=True)
        c.call("vm.pause", name="b")
    daemon.kill()
    daemon.start()
    with daemon.client() as c:
        vms = {v["name"]: v for v in c.call("vm.list")}
        info = c.call("node.info")
    assert set(vms) == {"a", "b", "c", "d"}
    assert vms["a"]["tenant"] == "t1"
    # test:///default forgets its domains with the process: all three are redefined
    findings = {(f["vm"], f["finding"]) for f in info["daemon"]["reconcile"]}
    assert {("a", "redefined"), ("b", "redefined"), ("c", "redefined")} <= findings
    # b was paused before the crash; libvirt now says stopped: reported as drift on the next start
    assert "reconcile.redefined" in daemon.log_text()
    with daemon.client() as c:
        assert c.call("vm.start", name="b")["state"] == "running"
        # d was running: redefined shut off (as after a host reboot), it is started again
        deadline = time.monotonic() + 30
        while c.call("vm.get", name="d")["state"] != "running":
            assert time.monotonic() < deadline, "d was not started again"
            time.sleep(0.1)
        assert c.call("node.info")["daemon"]["keeper"]["restarted"] == 1
        assert c.call("vm.get", name="d")["restarts"]["recent"] == 1


def test_clean_stop_removes_socket_and_exits_zero(daemon: Daemon) -> None:
    assert daemon.stop() == 0
    assert not daemon.socket.exists()
    daemon.start()


def test_socket_mode_is_0660(daemon: Daemon) -> None:
    mode = stat.S_IMODE(os.stat(daemon.socket).st_mode)
    assert mode == 0o660
    db_mode = stat.S_IMODE(os.stat(daemon.state_dir / "state.db").st_mode)
    assert db_mode & 0o077 == 0


def test_second_daemon_on_same_socket_refuses(daemon: Daemon, tmp_path: Path) -> None:
    other = Daemon(socket=daemon.socket, state_dir=tmp_path / "s2", log=tmp_path / "d2.log")
    done = subprocess.run(other.argv(), capture_output=True, timeout=60, check=False)
    assert done.returncode == 1
    assert b"daemon.socket_in_use" in done.stderr
    with daemon.client() as c:
        assert c.call("session.hello")


def test_unprivileged_caller_may_only_say_hello(daemon: Daemon) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another uid")
    os.chmod(daemon.socket, 0o666)
    os.chmod(daemon.socket.parent, 0o755)
    for parent in daemon.socket.parents:
        if parent == parent.parent:
            break
        os.chmod(parent, os.stat(parent).st_mode | 0o011)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become nobody and call
        os.close(read)
        code = b"?"
        try:
            os.setgid(65534)
            os.setgroups([])
            os.setuid(65534)
            from novacron.client import SyncClient

            with SyncClient(daemon.socket, timeout=10) as c:
                hello = c.call("session.hello")
                assert hello["identity"]["uid"] == 65534
                assert hello["identity"]["roles"] == []
                try:
                    c.call("vm.list")
                    code = b"allowed"
                except errors.PermissionDenied:
                    code = b"denied"
        except BaseException as exc:
            code = repr(exc).encode()
        os.write(write, code)
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 200) == b"denied"


def test_daemon_serves_while_libvirt_is_unreachable(tmp_path: Path) -> None:
    """libvirtd down at start: the daemon still serves; VM calls answer ``unavailable``."""
    d = Daemon(
        socket=tmp_path / "u.sock",
        state_dir=tmp_path / "state",
        log=tmp_path / "u.log",
        uri=f"qemu+unix:///system?socket={tmp_path}/no-libvirtd.sock",
    ).start()
    try:
        with d.client() as c:
            assert c.call("session.hello")["protocol"] == 1
            with pytest.raises(errors.Unavailable) as info:
                c.call("vm.list")
            assert "cannot connect" in info.value.message
            with pytest.raises(errors.Unavailable) as info:
                c.call("node.info")
            assert info.value.details["daemon"]["hypervisor_ready"] is False
            with pytest.raises(errors.Unavailable):
                c.call("vm.create", name="x")
        assert "hypervisor.unavailable" in d.log_text()
    finally:
        assert d.stop() == 0


def test_a_backup_restored_brings_back_the_store_as_it_was(daemon: Daemon) -> None:
    """``node.backup`` while the daemon serves; then the documented restore (stop, put
    the copy in place of state.db, start): the records, bindings and audit log are those
    of the backup, and reconciliation takes it from there."""
    with daemon.client() as c:
        c.call("vm.create", name="kept", tenant="t1")
        c.call("auth.bind", principal="user:alice", role="operator", tenants=["t1"])
        made = c.call("node.backup")
        c.call("vm.create", name="after")  # not in the backup
        c.call("vm.delete", name="kept")  # in it
    backup = daemon.state_dir / "backups" / os.path.basename(made["path"])
    assert made["path"] == str(backup) and backup.is_file()
    assert made["vms"] == 1 and made["integrity"] == "ok" and made["audit_entries"] >= 2
    done = cli(daemon, "node", "backup")  # as an operator runs it
    assert "integrity" in done.stdout and "ok" in done.stdout, done.stdout
    assert len(list(backup.parent.glob("state-*.db"))) == 2
    assert daemon.stop() == 0
    db = daemon.state_dir / "state.db"
    for leftover in ("state.db-wal", "state.db-shm"):
        (daemon.state_dir / leftover).unlink(missing_ok=True)
    db.write_bytes(backup.read_bytes())
    daemon.start()
    with daemon.client() as c:
        assert [v["name"] for v in c.call("vm.list")] == ["kept"]
        bound = {b["principal"] for b in c.call("auth.bindings")}
        assert "user:alice" in bound
        assert c.call("audit.verify")["ok"] is True
        assert c.call("vm.start", name="kept")["state"] == "running"
