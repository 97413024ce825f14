"""Thin disks that outgrow the host's file system, on a real TCG guest writing into a
thin disk on a small tmpfs: QEMU pauses the guest (reason ``ioerror``) instead of failing
its writes; it carries on, its data whole, once it is resumed, which the daemon does by
itself once the file system has ``[vm] no_space_resume_mib`` free again, and not before."""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from novacron.client import SyncClient
from tests.daemon_harness import Daemon
from tests.system import guest
from tests.system.nodes import wait_until


@contextmanager
def full_file_system(size: str, left: int = 0) -> Iterator[tuple[Path, list[Path]]]:
    """A tmpfs of ``size`` holding a 64 MiB thin raw disk and filled up: its path and
    the fillers, in the order to delete them (``left`` MiB of zeros first, then the rest:
    deleting the first frees all but ``left`` MiB)."""
    small = Path(tempfile.mkdtemp(prefix="novacron-full-", dir="/var/tmp"))  # QEMU's user
    small.chmod(0o755)  # reaches it (pytest's tmp_path is root's alone)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "nc-full", str(small)]
    subprocess.run(mount, check=True)
    try:
        disk = small / "thin.raw"
        with disk.open("wb") as f:
            f.truncate(64 << 20)
        fillers = []
        if left:
            big = small / "big"
            subprocess.run(
                ["dd", "if=/dev/zero", f"of={big}", "bs=1M", f"count={left}"], check=True
            )
            fillers.append(big)
        rest = small / "rest"
        full = subprocess.run(["dd", "if=/dev/zero", f"of={rest}", "bs=64k"], capture_output=True)
        assert b"No space left" in full.stderr
        yield disk, [rest, *fillers]
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
        small.rmdir()


def paused_on_its_full_disk(c: SyncClient, name: str) -> None:
    wait_until(
        lambda: c.call("vm.get", name=name)["reason"] == "ioerror",
        120,
        "the guest paused on its write into a full file system",
    )
    got = c.call("vm.get", name=name)
    assert (got["state"], [d["error"] for d in got["disks"]]) == ("paused", ["no_space"])


def test_a_guest_writing_into_a_full_host_file_system_is_paused_until_resumed(
    system_daemon: Daemon, guest_images: guest.GuestImages
) -> None:
    """Too little freed for the daemon (8 MiB): resumed by its operator."""
    with full_file_system("8m") as (disk, fillers), system_daemon.client(timeout=300) as c:
        vm = c.call(
            "vm.create",
            **guest_images.vm(
                "dk4",
                memory_mib=128,
                options="novacron.disk",
                disks=[{"path": str(disk), "format": "raw"}],
            ),
        )
        paused_on_its_full_disk(c, "dk4")
        stats = c.call("vm.stats", name="dk4")
        assert (stats["state"], stats["reason"]) == ("paused", "ioerror")
        log = Path(vm["console_log"])
        assert guest.DISK_READY not in guest.console_text(log)
        for filler in fillers:
            filler.unlink()
        assert c.call("vm.resume", name="dk4")["state"] == "running"
        guest.wait_for_console(log, guest.DISK_READY, timeout=60)
        guest.wait_for_console(log, guest.DISK_OK, timeout=60)  # read back whole
        assert [d["error"] for d in c.call("vm.get", name="dk4")["disks"]] == [None]
        assert guest.DISK_BAD not in guest.console_text(log)
        assert c.call("node.info")["daemon"]["keeper"]["resumed"] == 0
        c.call("vm.delete", name="dk4", force=True)


def test_a_guest_paused_on_a_full_disk_runs_again_once_there_is_room(
    system_daemon: Daemon, guest_images: guest.GuestImages
) -> None:
    """Some room (less than 256 MiB) leaves it paused; 300 MiB more and the daemon
    resumes it, nobody else."""
    filled = full_file_system("320m", left=300)
    with filled as (disk, (rest, big)), system_daemon.client(timeout=300) as c:
        vm = c.call(
            "vm.create",
            **guest_images.vm(
                "ns1",
                memory_mib=128,
                options="novacron.disk",
                disks=[{"path": str(disk), "format": "raw"}],
            ),
        )
        log = Path(vm["console_log"])
        paused_on_its_full_disk(c, "ns1")
        rest.unlink()  # some room, less than the daemon waits for
        time.sleep(7)  # (the daemon looks every 5 s: once at least)
        got = c.call("vm.get", name="ns1")
        assert (got["state"], got["reason"]) == ("paused", "ioerror")
        assert c.call("node.info")["daemon"]["keeper"]["resumed"] == 0
        big.unlink()
        wait_until(
            lambda: c.call("vm.get", name="ns1")["state"] == "running",
            30,
            "the daemon resumed the guest",
        )
        guest.wait_for_console(log, guest.DISK_READY, timeout=60)
        guest.wait_for_console(log, guest.DISK_OK, timeout=60)  # its data whole
        assert guest.DISK_BAD not in guest.console_text(log)
        assert c.call("node.info")["daemon"]["keeper"]["resumed"] == 1
        assert "event=vm.resumed_with_room vm=ns1" in system_daemon.log_text()
        assert [d["error"] for d in c.call("vm.get", name="ns1")["disks"]] == [None]
        c.call("vm.delete", name="ns1", force=True)
