"""A guest paused because its disk's file system filled up is resumed by the daemon once
the file system has ``[vm] no_space_resume_mib`` free again, and not before; on a real
TCG guest writing into a thin disk on a small tmpfs."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

from tests.daemon_harness import Daemon
from tests.system import guest
from tests.system.nodes import wait_until

MIB = 1 << 20


def test_a_guest_paused_on_a_full_disk_runs_again_once_there_is_room(
    system_daemon: Daemon, guest_images: guest.GuestImages
) -> None:
    small = Path(tempfile.mkdtemp(prefix="novacron-room-", dir="/var/tmp"))  # QEMU's user
    small.chmod(0o755)  # reaches it
    mount = ["mount", "-t", "tmpfs", "-o", "size=320m,mode=0755", "nc-room", str(small)]
    subprocess.run(mount, check=True)
    try:
        disk = small / "thin.raw"
        with disk.open("wb") as f:
            f.truncate(64 << 20)
        big, rest = small / "big", small / "rest"
        subprocess.run(["dd", "if=/dev/zero", f"of={big}", "bs=1M", "count=300"], check=True)
        full = subprocess.run(["dd", "if=/dev/zero", f"of={rest}", "bs=64k"], capture_output=True)
        assert b"No space left" in full.stderr
        with system_daemon.client(timeout=300) as c:
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
            wait_until(
                lambda: c.call("vm.get", name="ns1")["reason"] == "ioerror",
                120,
                "the guest paused on its write into a full file system",
            )
            assert [d["error"] for d in c.call("vm.get", name="ns1")["disks"]] == ["no_space"]
            # some room, less than the daemon waits for (256 MiB): the guest stays paused
            rest.unlink()
            time.sleep(12)  # (the daemon looks every 5 s)
            got = c.call("vm.get", name="ns1")
            assert (got["state"], got["reason"]) == ("paused", "ioerror")
            assert c.call("node.info")["daemon"]["keeper"]["resumed"] == 0
            big.unlink()  # room: the daemon resumes it, nobody else does
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
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
        small.rmdir()
