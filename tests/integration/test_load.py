"""Concurrency: many clients pipelining; SIGTERM in the middle of load."""

from __future__ import annotations

import signal
import sqlite3

import pytest
import trio

from novacron.rpc import codec
from tests.daemon_harness import Daemon

CLIENTS = 200
PIPELINE = 50


async def pipelined_client(path: str, index: int, results: dict[int, list[codec.Message]]) -> None:
    stream = await trio.open_unix_socket(path)
    async with stream:
        batch = b"".join(
            codec.encode_request(
                i,
                ("session.hello", "vm.list", "vm.get")[i % 3],
                {"name": "shared"} if i % 3 == 2 else None,
            )
            for i in range(PIPELINE)
        )
        await stream.send_all(batch)
        decoder = codec.Decoder()
        got: list[codec.Message] = []
        while len(got) < PIPELINE:
            data = await stream.receive_some(65536)
            assert data, "daemon closed the connection early"
            got.extend(decoder.feed(data))
        results[index] = got


@pytest.mark.slow
async def test_200_clients_each_pipelining_50_calls(daemon: Daemon) -> None:
    with daemon.client() as c:
        c.call("vm.create", name="shared")
    results: dict[int, list[codec.Message]] = {}
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for i in range(CLIENTS):
                nursery.start_soon(pipelined_client, str(daemon.socket), i, results)
    assert len(results) == CLIENTS
    for got in results.values():
        responses = [m for m in got if isinstance(m, codec.Response)]
        assert len(responses) == len(got)
        assert sorted(m.msgid for m in responses) == list(range(PIPELINE))
        for m in responses:
            assert m.error is None
            if m.msgid % 3 == 2:
                assert m.result["name"] == "shared"


async def creator(path: str, index: int, acked: set[str], answered: list[int]) -> None:
    try:
        stream = await trio.open_unix_socket(path)
    except OSError:
        return  # the daemon stopped accepting
    async with stream:
        names = [f"load-{index}-{i}" for i in range(20)]
        try:
            await stream.send_all(
                b"".join(
                    codec.encode_request(i, "vm.create", {"name": n}) for i, n in enumerate(names)
                )
            )
        except trio.BrokenResourceError:
            return
        decoder = codec.Decoder()
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return
            if not data:
                return
            for m in decoder.feed(data):
                assert isinstance(m, codec.Response)
                answered.append(m.msgid)
                if m.error is None:
                    assert m.result["name"] == names[m.msgid]
                    acked.add(names[m.msgid])


@pytest.mark.slow
async def test_sigterm_under_load_loses_nothing(daemon: Daemon) -> None:
    acked: set[str] = set()
    answered: list[int] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(creator, str(daemon.socket), i, acked, answered)
            await trio.sleep(0.3)
            daemon.signal(signal.SIGTERM)
    rc = await trio.to_thread.run_sync(daemon.wait)
    assert rc == 0, daemon.log_text()
    assert acked, "no create was acknowledged before SIGTERM"
    # the store holds exactly the acknowledged VMs: nothing lost, nothing half-written
    db = sqlite3.connect(daemon.state_dir / "state.db")
    rows = {r[0] for r in db.execute("SELECT name FROM vms")}
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    assert acked <= rows
    assert all(r.startswith("load-") for r in rows)
    # restarted, the daemon serves every acknowledged VM again
    daemon.start()
    with daemon.client() as c:
        listed = {v["name"] for v in c.call("vm.list")}
    assert acked <= listed
