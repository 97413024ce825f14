"""NUMA placement through the real daemon on libvirt's test driver (2 nodes of 8
threads, 2 and 4 GiB): pins chosen on create, refusals with reasons, placements
kept across a SIGKILL and restart, released on delete."""

from __future__ import annotations

from pathlib import Path

import pytest

from novacron import errors
from tests.daemon_harness import Daemon

PARTITION = ["--dedicated-cpus", "2-7,10-15", "--shared-cpus", "0-1,8-9"]


@pytest.fixture
def placed(tmp_path: Path) -> Daemon:
    return Daemon(
        socket=tmp_path / "run" / "novacrond.sock",
        state_dir=tmp_path / "state",
        log=tmp_path / "novacrond.log",
        extra=PARTITION,
    ).start()


def dedicated_in_use(info: dict) -> list[int]:  # type: ignore[type-arg]
    return [c["id"] for n in info["topology"]["nodes"] for c in n["cpus"] if c["in_use"]]


def test_placements_survive_restart_and_are_released(placed: Daemon) -> None:
    try:
        with placed.client() as c:
            a = c.call("vm.create", name="a", vcpus=4, memory_mib=1024, cpu_policy="dedicated")
            b = c.call("vm.create", name="b", vcpus=2, memory_mib=256, cpu_policy="shared")
            info = c.call("node.info")
        assert a["placement"]["cells"][0]["cpus"] == [2, 3, 4, 5]
        assert b["placement"]["cells"][0]["node"] in (0, 1)
        assert dedicated_in_use(info) == [2, 3, 4, 5]
        topo = info["topology"]
        assert [len(n["cpus"]) for n in topo["nodes"]] == [8, 8]
        assert topo["dedicated_cpus"] == "2-7,10-15" and topo["placed_vms"] == 2

        placed.kill()
        placed.start()
        with placed.client() as c:
            assert dedicated_in_use(c.call("node.info")) == [2, 3, 4, 5]
            # the restored placement holds: a new dedicated VM gets other threads
            d = c.call("vm.create", name="d", vcpus=2, memory_mib=128, cpu_policy="dedicated")
            assert set(d["placement"]["cells"][0]["cpus"]).isdisjoint({2, 3, 4, 5})
            assert c.call("vm.get", name="a")["placement"] == a["placement"]
            c.call("vm.delete", name="a")
            assert dedicated_in_use(c.call("node.info")) == sorted(
                d["placement"]["cells"][0]["cpus"]
            )
    finally:
        assert placed.stop() in (0, None)
    assert "Traceback" not in placed.log_text()


def test_refusals_change_nothing(placed: Daemon) -> None:
    try:
        with placed.client() as c:
            c.call("vm.create", name="big", vcpus=6, memory_mib=512, cpu_policy="dedicated")
            before = c.call("node.info")["topology"]
            with pytest.raises(errors.InsufficientResources) as err:
                c.call("vm.create", name="x", vcpus=7, memory_mib=512, cpu_policy="dedicated")
            assert "free dedicated threads" in err.value.message
            with pytest.raises(errors.InsufficientResources, match="1048576 KiB hugepage"):
                c.call("vm.create", name="y", memory_mib=1024, hugepage_kib=1048576)
            with pytest.raises(errors.InvalidParams):
                c.call("vm.create", name="z", memory_mib=1001, hugepage_kib=2048)
            with pytest.raises(errors.InvalidParams):
                c.call("vm.create", name="z", cpu_policy="exclusive")
            assert c.call("node.info")["topology"] == before
            assert [v["name"] for v in c.call("vm.list")] == ["big"]
            # a VM with more vCPUs than any node's 2 shared threads is split over both
            wide = c.call("vm.create", name="wide", vcpus=4, memory_mib=512)
            cells = wide["placement"]["cells"]
            assert sorted(cell["node"] for cell in cells) == [0, 1]
            assert [cell["vcpus"] for cell in cells] == [2, 2]
    finally:
        assert placed.stop() in (0, None)


def test_a_partition_the_host_lacks_is_reported(tmp_path: Path) -> None:
    d = Daemon(
        socket=tmp_path / "run" / "novacrond.sock",
        state_dir=tmp_path / "state",
        log=tmp_path / "novacrond.log",
        extra=["--dedicated-cpus", "64-71"],
    ).start()
    try:
        with d.client() as c:
            topo = c.call("node.info")["topology"]
            assert "not in the host topology" in topo["problem"]
            with pytest.raises(errors.Unavailable):
                c.call("vm.create", name="a")
            assert c.call("session.hello")["server"] == "novacrond"
    finally:
        assert d.stop() in (0, None)
