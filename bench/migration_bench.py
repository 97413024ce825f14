"""Live-migration throughput: NovaCron's path against QEMU's own options, side by side.

    python -m bench.migration_bench [--links 100,1000] [--memory-mib 1024] [--pause 60]
        [--options plain,xbzrle,multifd-zstd,novacron] [--novacron-compression zstd]
        [--json FILE]

Builds the two namespaced hosts of the system tests (own libvirtd each, a NovaCron
daemon each, joined by a veth shaped with ``tc tbf`` to each link rate; netem is not
available on these kernels, so no latency is added), boots guests of ``--memory-mib``
running the benchmark workload (150 copies of a binary, ~240 MiB of repeated text,
32 MiB of random data, then a service that keeps writing), and for every option and
link runs three scenarios:

1. the first migration A -> B of a freshly booted guest;
2. the same guest back B -> A after ``--pause`` seconds;
3. a second guest, booted from the same kernel and initramfs, A -> B.

Per run: total time (wall clock of the migrate command), downtime (libvirt's completed
job statistics on the destination), bytes on the wire (the source veth's tx+rx
counters) and CPU seconds spent migrating (every thread of both QEMUs except the vCPU
threads, plus both NovaCron daemons for NovaCron's path). Every guest must be alive and
intact after every migration (its integrity check on the serial console).
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if not __package__:  # run as `python bench/migration_bench.py`: the repository's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.system import guest
from tests.system.libvirt_host import LibvirtHost
from tests.system.nodes import Node, TwoNodes, wait_until
from tests.system.twohosts import Host, TwoHosts

OPTIONS = ("plain", "xbzrle", "multifd-zstd", "novacron")
NATIVE_FLAGS = {
    "plain": [],
    "xbzrle": ["--compressed"],
    "multifd-zstd": ["--parallel", "--parallel-connections", "2"],
}
# QEMU 7.2 takes multifd's compression from its migration object: set on every QEMU of
# both hosts (ignored unless a migration uses multifd)
QEMU_ARGS = "-global migration.multifd-compression=zstd"
TICKS = 100  # /proc stat clock ticks per second
VCPU_THREADS = ("/TCG", "/KVM")  # how QEMU names its vCPU threads' ends


@dataclass
class Run:
    option: str
    link_mbit: int
    scenario: int
    total_s: float
    downtime_ms: int
    wire_bytes: int
    cpu_s: float
    intact: bool
    # CPU seconds by role and thread name (qemu-source/live_migration, daemon-source/...)
    cpu_by_thread_s: dict[str, float] | None = None
    logical_bytes: int | None = None
    # NovaCron only: where each relay's time went (seconds: input, work, output, window)
    relay_stages_s: dict[str, float] | None = None
    destination_relay_stages_s: dict[str, float] | None = None
    # NovaCron only: the page engine's record counts (zero, unchanged, dup, delta, ...)
    records: dict[str, int] | None = None


class CpuMeter:
    """Samples every thread of some processes; counts what they spent while sampled.
    The guest's vCPU threads (``CPU n/TCG``, ``CPU n/KVM``, and ``ALL CPUs/TCG`` where
    TCG runs every vCPU on one thread) are left out. ``pids`` gives each
    process's role; a ``qemu`` already running at the first sample is the source's, one
    that appears later the destination's."""

    def __init__(self, pids: Callable[[], dict[int, str]]) -> None:
        self._pids = pids
        self._first: dict[tuple[int, int], int] = {}
        self._last: dict[tuple[int, int], int] = {}
        self._names: dict[tuple[int, int], str] = {}
        self._at_start: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> CpuMeter:
        self._sample(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def seconds(self) -> float:
        return sum(v - self._first.get(k, 0) for k, v in self._last.items()) / TICKS

    def breakdown(self) -> dict[str, float]:
        """CPU seconds by ``role/thread name`` (threads of one name summed), largest
        first, those under 0.01 s left out."""
        spent: dict[str, float] = {}
        for key, used in self._last.items():
            name = self._names[key]
            spent[name] = spent.get(name, 0.0) + (used - self._first.get(key, 0)) / TICKS
        ranked = sorted(spent.items(), key=lambda kv: -kv[1])
        return {name: round(s, 2) for name, s in ranked if s >= 0.01}

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()

    def _sample(self, first: bool = False) -> None:
        for pid, given in self._pids().items():
            if first:
                self._at_start.add(pid)
            role = given
            if given == "qemu":
                role = "qemu-source" if pid in self._at_start else "qemu-destination"
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    stat = (task / "stat").read_text()
                except OSError:
                    continue
                comm = stat[stat.index("(") + 1 : stat.rindex(")")]
                if comm.endswith(VCPU_THREADS):
                    continue
                fields = stat[stat.rindex(")") + 2 :].split()
                used = int(fields[11]) + int(fields[12])
                key = (pid, int(task.name))
                if first:
                    self._first[key] = used
                self._names[key] = f"{role}/{comm}"
                self._last[key] = max(used, self._last.get(key, 0))


def qemu_pids(name: str) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-f", f"guest={name},"], capture_output=True, text=True, check=False
    )
    return [int(p) for p in out.stdout.split()]


def link_bytes(host: Host) -> int:
    doc = json.loads(host.sh(f"ip -j -s link show dev {host.veth}"))[0]
    stats = doc["stats64"]
    return int(stats["rx"]["bytes"]) + int(stats["tx"]["bytes"])


def shape(hosts: TwoHosts, mbit: int) -> None:
    burst_kb = max(256, mbit * 1000 // 8 // 250 * 2)
    for host in (hosts.a, hosts.b):
        host.sh(
            f"tc qdisc replace dev {host.veth} root tbf rate {mbit}mbit "
            f"burst {burst_kb}kb latency 50ms"
        )


def guest_xml(name: str, memory_mib: int, images: guest.GuestImages, hosts: TwoHosts) -> str:
    console = native_console(hosts, name)
    return images.domain_xml(name, memory_mib, console, hosts.qemu_wrapper, CMDLINE)


CMDLINE = "novacron.workload novacron.bench"


def warm_up(hosts: TwoHosts, images: guest.GuestImages) -> None:
    """Starts and stops a throwaway domain on each host before anything is timed: a
    fresh libvirtd's first domain start takes seconds longer than every later one
    (measured: ~3.4 s from a migration's start to the first destination QEMU being
    launched, ~0.4 s after), which would land on whichever option migrates first."""
    for host in (hosts.a, hosts.b):
        path = host.root.parent / f"warmup-{host.name}.xml"
        path.write_text(guest_xml("bench-warmup", 64, images, hosts))
        host.virsh("define", str(path))
        host.virsh("start", "bench-warmup")
        host.virsh("destroy", "bench-warmup", check=False)
        host.virsh("undefine", "bench-warmup", check=False)


def native_console(hosts: TwoHosts, name: str) -> Path:
    return hosts.a.root.parent / f"{name}.console"


class Bench:
    def __init__(self, nodes: TwoNodes, images: guest.GuestImages, args: argparse.Namespace):
        self.nodes = nodes
        self.hosts = nodes.hosts
        self.images = images
        self.args = args
        self.runs: list[Run] = []

    # -- guests --------------------------------------------------------------------

    def console(self, option: str, name: str, on: Node) -> Path:
        return native_console(self.hosts, name) if option != "novacron" else on.console(name)

    def boot(self, option: str, name: str) -> None:
        a = self.nodes.a
        if option == "novacron":
            with a.client(timeout=300) as c:
                c.call("vm.create", **self.images.vm(name, self.args.memory_mib, CMDLINE))
        else:
            path = self.hosts.a.root.parent / f"{name}.xml"
            path.write_text(guest_xml(name, self.args.memory_mib, self.images, self.hosts))
            a.host.virsh("define", str(path))
            a.host.virsh("start", name)
        console = self.console(option, name, a)
        wait_until(
            lambda: console.exists() and guest.BENCH_MARKER in console.read_text(errors="replace"),
            900,
            f"{name}'s workload",
            step=1,
        )
        time.sleep(5)  # the service loop running

    def intact(self, console: Path, since: int) -> bool:
        try:
            wait_until(
                lambda: console.read_text(errors="replace")[since:].count(guest.INTACT) >= 2,
                120,
                "integrity checks",
                step=1,
            )
        except AssertionError:
            return False
        return guest.CORRUPT not in console.read_text(errors="replace")[since:]

    def remove(self, option: str, name: str, on: Node) -> None:
        if option == "novacron":
            with on.client() as c:
                c.call("vm.delete", name=name, force=True)
        else:
            on.host.virsh("destroy", name, check=False)
            on.host.virsh("undefine", name, check=False)

    # -- one migration -----------------------------------------------------------------

    def migrate(
        self, option: str, link: int, scenario: int, name: str, src: Node, dst: Node
    ) -> None:
        before = link_bytes(src.host)
        console_src = self.console(option, name, src)
        since = len(console_src.read_text(errors="replace")) if option != "novacron" else 0
        daemons = {}
        if option == "novacron":
            for role, node in (("daemon-source", src), ("daemon-destination", dst)):
                if node.daemon.proc:
                    daemons[node.daemon.proc.pid] = role
        logical = None
        stages: dict[str, Any] = {}
        with CpuMeter(lambda: {**dict.fromkeys(qemu_pids(name), "qemu"), **daemons}) as cpu:
            began = time.monotonic()
            if option == "novacron":
                doc = self.novacron_migrate(name, src, dst)
                total = time.monotonic() - began
                reported = doc["result"]["downtime_ms"]
                downtime = -1 if reported is None else int(reported)
                logical = int(doc["result"]["bytes_logical"])
                stages = {
                    key: doc["result"].get(key)
                    for key in ("relay_stages_s", "destination_relay_stages_s", "records")
                }
            else:
                src.host.migrate(name, dst.host, *NATIVE_FLAGS[option], timeout=3600)
                total = time.monotonic() - began
                info = dst.host.virsh("domjobinfo", "--completed", name)
                found = re.search(r"Total downtime:\s+(\d+)", info)
                downtime = int(found.group(1)) if found else -1
        wire = link_bytes(src.host) - before
        console_dst = self.console(option, name, dst)
        run = Run(
            option=option,
            link_mbit=link,
            scenario=scenario,
            total_s=round(total, 2),
            downtime_ms=downtime,
            wire_bytes=wire,
            cpu_s=round(cpu.seconds, 2),
            cpu_by_thread_s=cpu.breakdown(),
            intact=self.intact(console_dst, since if console_dst == console_src else 0),
            logical_bytes=logical,
            **stages,
        )
        self.runs.append(run)
        print(json.dumps(asdict(run)), flush=True)

    def novacron_migrate(self, name: str, src: Node, dst: Node) -> dict[str, Any]:
        argv = [sys.executable, "-m", "novacron.cli.main", "--socket", str(src.daemon.socket)]
        argv += ["--json", "vm", "migrate", name, "--to", dst.address]
        argv += [
            "--compression",
            self.args.novacron_compression,
            "--stall-action",
            "raise_downtime",
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=3600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"novacron migrate failed: {done.stderr}")
        doc: dict[str, Any] = json.loads(done.stdout)
        return doc

    # -- the scenarios -----------------------------------------------------------------

    def option(self, option: str, link: int) -> None:
        a, b = self.nodes.a, self.nodes.b
        if option == "novacron":
            a.restart()  # empty page stores: scenario 1 is a first migration for real
            b.restart()
        first, second = f"bench-{option}-{link}-1", f"bench-{option}-{link}-2"
        self.boot(option, first)
        self.migrate(option, link, 1, first, a, b)
        time.sleep(self.args.pause)
        self.migrate(option, link, 2, first, b, a)
        self.boot(option, second)
        self.migrate(option, link, 3, second, a, b)
        self.remove(option, first, a)
        self.remove(option, second, b)


def targets(runs: list[Run]) -> list[dict[str, Any]]:
    """NovaCron against the best QEMU-native option, per link and scenario."""
    out = []
    for link in sorted({r.link_mbit for r in runs}):
        for scenario in (1, 2, 3):
            here = [r for r in runs if r.link_mbit == link and r.scenario == scenario]
            ours = next((r for r in here if r.option == "novacron"), None)
            native = [r for r in here if r.option != "novacron"]
            if ours is None or not native:
                continue
            best = min(native, key=lambda r: r.total_s)
            ratio = ours.total_s / best.total_s
            limit = 1.0 if link >= 1000 else (0.8 if scenario == 1 else 0.3)
            out.append(
                {
                    "link_mbit": link,
                    "scenario": scenario,
                    "best_native": best.option,
                    "ratio": round(ratio, 3),
                    "target": limit,
                    "met": ratio <= limit and ours.downtime_ms <= 300,
                    "downtime_ms": ours.downtime_ms,
                }
            )
    return out


def table(runs: list[Run]) -> str:
    lines = [
        f"{'link':>6} {'scn':>3} {'option':<13} {'total s':>8} {'downtime':>8} "
        f"{'wire MB':>9} {'cpu s':>7} intact"
    ]
    for r in sorted(runs, key=lambda r: (r.link_mbit, r.scenario, OPTIONS.index(r.option))):
        lines.append(
            f"{r.link_mbit:>6} {r.scenario:>3} {r.option:<13} {r.total_s:>8.2f} "
            f"{r.downtime_ms:>8} {r.wire_bytes / 1e6:>9.1f} {r.cpu_s:>7.2f} {r.intact}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--links", default="100,1000", help="Mbit/s, comma-separated")
    parser.add_argument("--options", default=",".join(OPTIONS))
    parser.add_argument("--memory-mib", type=int, default=1024)
    parser.add_argument("--pause", type=float, default=60.0, help="seconds before migrating back")
    parser.add_argument("--novacron-compression", default="zstd", choices=("lz4", "zstd", "none"))
    parser.add_argument("--json", type=Path, help="write every run and the targets here")
    args = parser.parse_args()
    options = [o for o in args.options.split(",") if o]
    unknown = set(options) - set(OPTIONS)
    if unknown:
        parser.error(f"unknown options: {', '.join(sorted(unknown))}")
    libvirt = LibvirtHost().start()
    images = guest.build()
    hosts = TwoHosts.start("bench" + secrets.token_hex(2), qemu_args=QEMU_ARGS)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            nodes = TwoNodes.start(hosts, Path(scratch))
            try:
                warm_up(hosts, images)
                bench = Bench(nodes, images, args)
                for link in (int(x) for x in args.links.split(",")):
                    shape(hosts, link)
                    for option in options:
                        bench.option(option, link)
            finally:
                nodes.stop()
    finally:
        hosts.stop()
        libvirt.stop()
    print(table(bench.runs))
    verdicts = targets(bench.runs)
    for v in verdicts:
        print(json.dumps(v))
    if args.json:
        doc = {"runs": [asdict(r) for r in bench.runs], "targets": verdicts}
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
