"""The source's side of a live migration: where it goes, what it needs from the
destination's answer for a VM with pool disks, and how long it waits for libvirtd's
memory stream while QEMU's mirror of the disks still runs (whole migrations: the system
tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from novacron import errors
from novacron.migration import outgoing, qemu_socket
from novacron.migration.nbd_relay import NbdStats


def test_a_destination_is_host_and_port() -> None:
    assert outgoing.destination_address("node2", 7443) == "node2:7443"
    assert outgoing.destination_address("node2:9000", 7443) == "node2:9000"
    assert outgoing.destination_address("[fd00::2]:9000", 7443) == "[fd00::2]:9000"
    with pytest.raises(errors.InvalidParams, match="needs a port"):
        outgoing.destination_address("node2", 0)


def test_the_destination_must_have_made_volumes_for_exactly_the_pool_disks() -> None:
    answer: dict[str, Any] = {"nbd": {"token": b"t" * 32, "disks": ["vda", "vdc"]}}
    # a destination of an earlier release names no packing: NBD travels as it is
    assert outgoing._nbd_terms(answer, ["vda", "vdc"], "v") == (b"t" * 32, "none")
    for packing in ("lz4", "zstd", "none"):
        answer["nbd"]["packing"] = packing
        assert outgoing._nbd_terms(answer, ["vda", "vdc"], "v") == (b"t" * 32, packing)
    answer["nbd"]["packing"] = "brotli"
    with pytest.raises(errors.MigrationFailed, match="packs NBD as 'brotli'"):
        outgoing._nbd_terms(answer, ["vda", "vdc"], "v")
    assert outgoing._nbd_terms({}, [], "v") is None  # no pool disks: no NBD
    for wrong in ({}, {"nbd": {"token": b"t", "disks": ["vda"]}}, {"nbd": "x"}):
        with pytest.raises(
            errors.MigrationFailed, match=r"volumes for this vm's disks \(vda, vdc\)"
        ):
            outgoing._nbd_terms(wrong, ["vda", "vdc"], "v")


async def test_the_wait_for_the_memory_stream_runs_on_while_the_mirror_moves_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    monkeypatch.setattr(outgoing, "QEMU_ACCEPT_S", 10.0)
    made = qemu_socket.make_dir(tmp_path, "0123456789abcdef")
    try:
        async with await qemu_socket.listen(made.path) as listener:
            # no mirror: libvirtd has QEMU_ACCEPT_S
            with pytest.raises(trio.TooSlowError, match="within 10 s"):
                await outgoing._accept_stream(listener, None)
            # a mirror that moved bytes lately: the wait goes on until it stops moving them
            stats = NbdStats()
            began = trio.current_time()

            async def mirror() -> None:
                for _ in range(5):  # bytes every 8 s for 40 s
                    await trio.sleep(8)
                    stats.last_moved = trio.current_time()

            async with trio.open_nursery() as n:
                n.start_soon(mirror)
                with pytest.raises(trio.TooSlowError):
                    await outgoing._accept_stream(listener, stats)
            assert trio.current_time() - began >= 40 + 10
    finally:
        made.remove()
