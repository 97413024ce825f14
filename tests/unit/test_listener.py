"""The accept loop every listener (and the migration channel's) runs: out of descriptors,
it waits and retries instead of ending the listener."""

from __future__ import annotations

import logging
import os
import resource
import socket
from pathlib import Path

import pytest
import trio

from novacron.server.listener import accept


async def test_accept_waits_out_a_shortage_of_descriptors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / "l.sock")
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(path)
    listening.listen(4)
    sock = trio.socket.from_stdlib_socket(listening)
    client = socket.socket(socket.AF_UNIX)
    client.connect(path)  # waits in the backlog for accept
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    spare: list[int] = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
        with pytest.raises(OSError, match="Too many open files"):  # every one left
            while True:
                spare.append(os.dup(0))
        accepted: list[trio.socket.SocketType] = []

        async def accepting() -> None:
            accepted.append(await accept(sock))

        with caplog.at_level(logging.ERROR, logger="novacron.server"):
            async with trio.open_nursery() as n:
                n.start_soon(accepting)
                await trio.sleep(0.35)  # a few tries, each refused with EMFILE
                assert not accepted
                os.close(spare.pop())
        assert any(r.getMessage() == "socket.accept_failed" for r in caplog.records)
        client.sendall(b"hi")
        assert await accepted[0].recv(2) == b"hi"
        accepted[0].close()
    finally:
        for fd in spare:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        client.close()
        listening.close()
