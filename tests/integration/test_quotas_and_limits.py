"""Tenant quotas and per-identity rate limits through the real daemon."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from novacron import errors
from novacron.client import connect
from tests.daemon_harness import Daemon
from tests.pki_harness import Pki, client, free_port


async def test_quota_holds_under_concurrent_creates(daemon: Daemon) -> None:
    with daemon.client() as c:
        q = c.call("quota.set", tenant="acme", max_vms=3, max_vcpus=5)
        assert q["max_vms"] == 3 and q["max_memory_mib"] is None and q["used"]["vms"] == 0
    outcomes: list[str] = []

    async def create(i: int) -> None:
        async with connect(daemon.socket) as nc:
            try:
                await nc.call("vm.create", name=f"q{i}", tenant="acme", memory_mib=64)
                outcomes.append("ok")
            except errors.QuotaExceeded as exc:
                outcomes.append(exc.code)

    async with trio.open_nursery() as n:
        for i in range(8):
            n.start_soon(create, i)
    assert sorted(outcomes) == ["ok"] * 3 + ["quota_exceeded"] * 5
    with daemon.client() as c:
        used = c.call("quota.get", tenant="acme")["used"]
        assert used == {"vcpus": 3, "memory_mib": 192, "vms": 3, "disk_gib": 0}
        c.call("quota.set", tenant="acme", max_vms=10, max_vcpus=5)
        with pytest.raises(errors.QuotaExceeded, match="vcpus"):
            c.call("vm.create", name="big", tenant="acme", vcpus=3, memory_mib=64)
        # deleting one frees its share
        first = next(v["name"] for v in c.call("vm.list") if v["tenant"] == "acme")
        c.call("vm.delete", name=first)
        c.call("vm.create", name="again", tenant="acme", vcpus=2, memory_mib=64)
        # other tenants have their own (here: no) quota
        c.call("vm.create", name="other", tenant="globex", vcpus=8, memory_mib=64)


def test_rate_limit_per_tls_identity(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path / "pki")
    port = free_port()
    d = Daemon(
        socket=tmp_path / "run" / "novacrond.sock",
        state_dir=tmp_path / "state",
        log=tmp_path / "novacrond.log",
        extra=[*pki.daemon_args(port), "--rate-limit-per-s", "2", "--rate-limit-burst", "5"],
    ).start()
    try:
        with (
            client(port, pki.issue("chatty", "viewer", ("acme",))) as chatty,
            client(port, pki.issue("calm", "viewer", ("acme",))) as calm,
        ):
            for _ in range(5):
                chatty.call("vm.list")
            with pytest.raises(errors.RateLimited) as err:
                chatty.call("vm.list")
            assert 0 < err.value.details["retry_after_s"] <= 0.5
            assert calm.call("vm.list") == []  # others are not affected
        with d.client() as local:  # local admins are not limited
            for _ in range(50):
                local.call("session.hello")
    finally:
        assert d.stop() in (0, None)
