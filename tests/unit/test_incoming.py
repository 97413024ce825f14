"""The destination's side of a migration: what it says when QEMU never listens."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import trio
import trio.testing

from novacron import errors
from novacron.migration import incoming
from novacron.migration.stream import StreamReceiver
from novacron.vm.spec import DiskSpec, VmSpec


async def test_a_qemu_that_never_listens_fails_with_where_and_how_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(incoming, "QEMU_CONNECT_S", 0.2)
    ours, theirs = trio.testing.memory_stream_pair()

    async def drain() -> None:  # the source end reads the announcement
        while await theirs.receive_some():
            pass

    async def no_pid() -> int | None:
        return None

    async with trio.open_nursery() as n:
        n.start_soon(drain)
        with pytest.raises(TimeoutError) as caught:
            await incoming._announce_and_connect(
                ours, StreamReceiver(), tmp_path / "qemu.sock", 0, no_pid
            )
        await ours.aclose()
    # an OSError: the relay's failure says it ("relay failed: no QEMU listened at ...")
    assert isinstance(caught.value, OSError)
    assert str(caught.value) == f"no QEMU listened at {tmp_path / 'qemu.sock'} within 0.2 s"


async def test_disks_the_destination_cannot_open_are_refused(tmp_path: Path) -> None:
    def qemu_img(*args: str) -> None:
        subprocess.run(["qemu-img", *args], check=True, capture_output=True)

    base = tmp_path / "base.qcow2"
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-f", "qcow2", str(base), "1M")
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", str(top), "1M")
    spec = VmSpec("v", 1, 64, disks=(DiskSpec(path=str(top)),))
    await incoming.check_disks("here", spec)  # the whole chain is here
    raw_named = VmSpec("r", 1, 64, disks=(DiskSpec(path=str(top), format="raw"),))
    base.unlink()
    with pytest.raises(errors.NotFound, match=r"backing file .*base\.qcow2 of disk") as caught:
        await incoming.check_disks("here", spec)
    assert caught.value.details == {"vm": "v", "path": str(top), "backing": str(base)}
    # a disk given as raw is opened as raw: its bytes name no backing file
    await incoming.check_disks("here", raw_named)
    data = tmp_path / "data.raw"
    own = tmp_path / "own.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={data}", str(own), "1M")
    with_data = VmSpec("d", 1, 64, disks=(DiskSpec(path=str(own)),))
    await incoming.check_disks("here", with_data)
    data.unlink()
    with pytest.raises(errors.NotFound, match=r"data file .*data\.raw of disk") as caught:
        await incoming.check_disks("here", with_data)
    assert caught.value.details == {"vm": "d", "path": str(own), "data_file": str(data)}
    with pytest.raises(errors.NotFound, match=r"disk /nonexistent/x\.qcow2 of vm 'x'"):
        await incoming.check_disks(
            "here", VmSpec("x", 1, 64, disks=(DiskSpec(path="/nonexistent/x.qcow2"),))
        )
    # a disk in the source's pool is not looked for: a copy of it is made here
    await incoming.check_disks("here", VmSpec("m", 1, 64, disks=(DiskSpec(size_gib=1),)))
