"""A guest's discards (TRIM) reach a thin volume on a real TCG guest: the blocks it gives
back leave the host's file system (``[hypervisor] disk_discard``, ``unmap`` by default),
and read back as zeros in the guest."""

from __future__ import annotations

import re
from pathlib import Path

from tests.daemon_harness import Daemon
from tests.system import guest

MIB = 1 << 20


def test_blocks_a_guest_discards_leave_its_thin_volume(
    system_daemon: Daemon, guest_images: guest.GuestImages
) -> None:
    """The guest writes 1 MiB of random bytes and 2 MiB of text to its new volume, then
    discards the text's first MiB and writes zeros over its second: the volume's file
    then holds less than 2 MiB (the text's clusters freed both ways, in qcow2 and in the
    file under it; the random megabyte, the guest's counter and qcow2's tables stay),
    the guest reads zeros where the text was, and the random megabyte is still whole."""
    with system_daemon.client(timeout=300) as c:
        vm = c.call(
            "vm.create",
            **guest_images.vm(
                "dc1",
                memory_mib=128,
                options="novacron.disk novacron.discard",
                disks=[{"size_gib": 1}],
            ),
        )
        try:
            log = Path(vm["console_log"])
            path = Path(c.call("vm.get", name="dc1")["disks"][0]["path"])
            guest.wait_for_console(log, guest.DISK_READY, timeout=120)
            written = path.stat().st_blocks * 512  # (some of it may be given back already)
            guest.wait_for_console(log, guest.DISCARDED, timeout=60)
            found = re.search(guest.DISCARDED + r" rc=(\d+) (\w+)", guest.console_text(log))
            assert found is not None and found.groups() == ("0", "zeros"), found
            after = path.stat().st_blocks * 512
            assert after < 2 * MIB, (written, after)
            assert after > MIB  # (the random megabyte is still there)
            mark = len(guest.console_text(log))
            guest.wait_for_console(log, guest.DISK_OK, timeout=60, after=mark)
            assert guest.DISK_BAD not in guest.console_text(log)
        finally:
            c.call("vm.delete", name="dc1", force=True)
