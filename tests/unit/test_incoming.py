"""The destination's side of a migration: what it says when QEMU never listens."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from novacron.migration import incoming
from novacron.migration.stream import StreamReceiver


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
