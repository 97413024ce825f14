"""The migration benchmark's CPU meter (the bench itself needs two hosts and real
guests: it runs by hand, ``bench/migration_bench.py``)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench.migration_bench import CpuMeter

SPIN = ["sh", "-c", "while :; do :; done"]
# a process spinning on a thread named as single-threaded TCG names its vCPU thread
VCPU = [
    sys.executable,
    "-c",
    "import ctypes; ctypes.CDLL(None).prctl(15, b'ALL CPUs/TCG')\nwhile True: pass",
]


def wait_for_name(pid: int, name: str) -> None:
    """Until the process's main thread is called ``name``: the interpreter's start
    (before the rename) is not a vCPU's time, and a loaded machine can spend more
    than a sample's interval on it."""
    comm = Path(f"/proc/{pid}/comm")
    deadline = time.monotonic() + 30
    while comm.read_text().strip() != name:
        assert time.monotonic() < deadline, f"{pid} never named itself {name!r}"
        time.sleep(0.01)


def test_the_cpu_meter_tells_source_from_destination_and_threads_apart() -> None:
    """A process there at the first sample is the source's, one that appears later the
    destination's; each thread's CPU lands under its role and name, and the parts add
    up to the whole. The guest's vCPU threads are not counted."""
    source = subprocess.Popen(SPIN)
    vcpu = subprocess.Popen(VCPU)
    destination = None
    try:
        wait_for_name(vcpu.pid, "ALL CPUs/TCG")
        roles = {source.pid: "qemu", vcpu.pid: "qemu"}
        with CpuMeter(lambda: dict(roles)) as cpu:
            time.sleep(0.4)
            destination = subprocess.Popen(SPIN)
            roles[destination.pid] = "qemu"
            time.sleep(0.6)
    finally:
        for proc in (source, vcpu, destination):
            if proc:
                proc.kill()
                proc.wait()
    spent = cpu.breakdown()
    assert set(spent) == {"qemu-source/sh", "qemu-destination/sh"}, spent  # no vCPU
    assert spent["qemu-source/sh"] > spent["qemu-destination/sh"] > 0
    assert abs(sum(spent.values()) - cpu.seconds) < 0.03
