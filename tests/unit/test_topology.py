"""Host NUMA topology from libvirt capabilities (the real test driver's and a
two-socket SMT host's XML) and from a sysfs tree laid out as the kernel does."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt

from novacron.placement.topology import parse_capabilities, with_sysfs

SMT_HOST = """<capabilities><host><topology><cells num='2'>
<cell id='0'><memory unit='KiB'>8388608</memory>
  <pages unit='KiB' size='4'>2000000</pages><pages unit='KiB' size='2048'>64</pages>
  <distances><sibling id='0' value='10'/><sibling id='1' value='21'/></distances>
  <cpus num='5'>
    <cpu id='0' socket_id='0' die_id='0' core_id='0' siblings='0,2'/>
    <cpu id='1' socket_id='0' die_id='0' core_id='1' siblings='1,3'/>
    <cpu id='2' socket_id='0' die_id='0' core_id='0' siblings='0,2'/>
    <cpu id='3' socket_id='0' die_id='0' core_id='1' siblings='1,3'/>
    <cpu id='9'/>
  </cpus></cell>
<cell id='1'><memory unit='KiB'>4194304</memory>
  <cpus num='2'>
    <cpu id='4' socket_id='1' die_id='0' core_id='0' siblings='4-5'/>
    <cpu id='5' socket_id='1' die_id='0' core_id='0' siblings='4-5'/>
  </cpus></cell>
</cells></topology></host></capabilities>"""


def test_smt_host_keeps_siblings_on_one_core() -> None:
    nodes = parse_capabilities(ET.fromstring(SMT_HOST))
    assert [n.id for n in nodes] == [0, 1]
    n0, n1 = nodes
    assert n0.memory_mib == 8192 and n0.hugepages == {2048: 64}
    assert [c.id for c in n0.cpus] == [0, 1, 2, 3], "offline cpu 9 left out"
    by_id = {c.id: c for c in n0.cpus + n1.cpus}
    assert by_id[0].core_key == by_id[2].core_key != by_id[1].core_key
    assert by_id[4].core_key == by_id[5].core_key != by_id[0].core_key, "socket 1 core 0 differs"
    assert by_id[4].siblings == (4, 5)
    assert n0.distances == {0: 10, 1: 21}
    engine = n0.to_engine()
    assert engine["cpus"][0] == (0, by_id[0].core_key)


def test_test_driver_topology() -> None:
    conn = libvirt.open("test:///default")
    try:
        nodes = parse_capabilities(ET.fromstring(conn.getCapabilities()))
    finally:
        conn.close()
    assert [(n.id, n.memory_mib, len(n.cpus)) for n in nodes] == [(0, 2048, 8), (1, 4096, 8)]


def test_no_topology_gives_one_node() -> None:
    nodes = parse_capabilities(ET.fromstring("<capabilities><host/></capabilities>"), 3, 1024)
    assert len(nodes) == 1 and [c.id for c in nodes[0].cpus] == [0, 1, 2]


def test_sysfs_gives_free_memory_and_hugepages(tmp_path: Path) -> None:
    node = tmp_path / "node0"
    pool = node / "hugepages" / "hugepages-2048kB"
    pool.mkdir(parents=True)
    (pool / "nr_hugepages").write_text("128\n")
    (pool / "free_hugepages").write_text("100\n")
    (node / "meminfo").write_text(
        "Node 0 MemTotal:        8388608 kB\nNode 0 MemFree:         2097152 kB\n"
    )
    nodes = with_sysfs(parse_capabilities(ET.fromstring(SMT_HOST)), tmp_path)
    assert nodes[0].memory_free_mib == 2048
    assert nodes[0].hugepages == {2048: 128} and nodes[0].hugepages_free == {2048: 100}
    assert nodes[1].memory_free_mib is None, "no sysfs entry: unknown, not zero"


def test_this_machines_sysfs_reads() -> None:
    nodes = with_sysfs(parse_capabilities(ET.fromstring("<capabilities/>"), 1, 1))
    if Path("/sys/devices/system/node/node0/meminfo").exists():
        assert nodes[0].memory_free_mib is not None and nodes[0].memory_free_mib > 0
