"""Serial console benchmark: how fast a guest's output reaches the daemon's clients, and
a typed line's round trip, with one client typing and 0 to N others watching.

    python bench/console_bench.py [--kib 512] [--watchers 0,1,3] [--trips 20] [--json]

Boots the test suite's guest (``tests/system/guest.py``: Debian's kernel, the suite's
busybox initramfs with a shell on ``ttyS0``; TCG, one vCPU, 128 MiB) under a daemon on
the local ``libvirtd`` (started first, as the system tests do, when it does not answer),
reads it once straight from libvirt's console stream (the baseline: no daemon in
between), then opens its console (``vm.console.open``) and, per watcher count, that many
``vm.console.watch`` on connections of their own. Then:

* **flood**: the shell prints ``--kib`` KiB of text (``yes``'s 64-byte lines cut by
  ``head -c``) followed by an end mark; the time from the command's newline to the end
  mark at the typing client, the rate, and whether every watcher got the same bytes;
* **round trip**: ``--trips`` lines ``echo RT-k`` typed, each timed until its answer.

The serial port is an emulated 16550 UART under TCG: the rate is QEMU's and the guest's
as much as NovaCron's (the guest's kernel writes the UART a byte at a time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import libvirt

if not __package__:  # run as `python bench/console_bench.py`: the repository's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.system import guest
from tests.system.conftest import daemon_on_system
from tests.system.libvirt_host import URI, LibvirtHost

from novacron.client import SyncClient

MARK = b"CONSOLE-BENCH-2END"  # (printed by the shell: the echoed command reads $((1+1)))
LINE = "0123456789abcdef" * 4  # yes adds the newline: 65 bytes a line


class Reader:
    """One console's output, as notifications bring it."""

    def __init__(self, client: SyncClient, number: int) -> None:
        self.client, self.number, self.output = client, number, bytearray()

    def pump(self, timeout: float) -> None:
        for note in self.client.notifications(timeout):
            payload = note.params[0]
            if note.method == "console" and payload["console"] == self.number:
                self.output += payload["data"]
            elif note.method == "console.closed":
                raise SystemExit(f"console closed: {payload}")

    def wait_for(self, needle: bytes, after: int, timeout: float = 600) -> float:
        """Seconds until ``needle`` is in the output past ``after``."""
        began = time.monotonic()
        while needle not in self.output[after:]:
            if time.monotonic() - began > timeout:
                raise SystemExit(f"{needle!r} did not come: {bytes(self.output[-300:])!r}")
            self.pump(0.05)
        return time.monotonic() - began


def flood(output: bytearray) -> bytes:
    """What a console printed from the ready mark to the end mark."""
    return bytes(output[output.index(b"READY-42") : output.index(MARK)])


def direct(dom: libvirt.virDomain, kib: int) -> dict[str, Any]:
    """The same flood read straight from libvirt's console stream (a blocking one, as
    ``virsh console`` reads it), no daemon in between: the baseline."""
    stream = dom.connect().newStream(0)
    dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_SAFE)
    try:
        stream.send(b"echo READY-$((2*21))\r")
        out = bytearray()
        while b"READY-42" not in out:
            out += stream.recv(65536)
        start = len(out)
        command = f"yes {LINE} | head -c {kib * 1024}; echo CONSOLE-BENCH-$((1+1))END\r"
        began = time.monotonic()
        stream.send(command.encode())
        while MARK not in out[start:]:
            out += stream.recv(65536)
        took = time.monotonic() - began
        got = len(out[start : out.index(MARK, start)])
        return {
            "watchers": "direct",
            "flood_bytes": got,
            "flood_s": round(took, 3),
            "flood_kib_per_s": round(got / 1024 / took, 1),
        }
    finally:
        stream.abort()


def run(c: SyncClient, watchers: list[SyncClient], kib: int, trips: int) -> dict[str, Any]:
    typing = Reader(c, c.call("vm.console.open", name="bench")["console"])
    watching = [Reader(w, w.call("vm.console.watch", name="bench")["console"]) for w in watchers]
    try:
        mark = len(typing.output)
        c.call("vm.console.write", console=typing.number, data=b"echo READY-$((2*21))\r")
        typing.wait_for(b"READY-42", mark)
        starts = [len(typing.output)] + [len(w.output) for w in watching]
        command = f"yes {LINE} | head -c {kib * 1024}; echo CONSOLE-BENCH-$((1+1))END\r"
        began = time.monotonic()
        c.call("vm.console.write", console=typing.number, data=command.encode())
        typing.wait_for(MARK, starts[0])
        flood_s = time.monotonic() - began
        for w, start in zip(watching, starts[1:], strict=True):
            w.wait_for(MARK, start)
        got = typing.output[starts[0] : typing.output.index(MARK, starts[0])]
        same = all(flood(w.output) == flood(typing.output) for w in watching)
        times = []
        for k in range(trips):
            mark = len(typing.output)
            t0 = time.monotonic()
            c.call(
                "vm.console.write", console=typing.number, data=f"echo RT-$(({k}+1000))\r".encode()
            )
            typing.wait_for(f"RT-{k + 1000}".encode(), mark)
            times.append(time.monotonic() - t0)
        return {
            "watchers": len(watchers),
            "flood_bytes": len(got),
            "flood_s": round(flood_s, 3),
            "flood_kib_per_s": round(len(got) / 1024 / flood_s, 1),
            "watchers_got_the_same_bytes": same,
            "round_trip_median_ms": round(statistics.median(times) * 1000, 1),
            "round_trip_max_ms": round(max(times) * 1000, 1),
        }
    finally:
        for reader in (typing, *watching):
            reader.client.call("vm.console.close", console=reader.number)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kib", type=int, default=512)
    parser.add_argument("--watchers", default="0,1,3")
    parser.add_argument("--trips", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    counts = [int(n) for n in args.watchers.split(",")]
    images = guest.build()
    host = LibvirtHost().start()
    results = []
    try:
        with (
            tempfile.TemporaryDirectory(prefix="novacron-console-bench-") as tmp,
            daemon_on_system(Path(tmp)) as d,
            d.client(timeout=300) as c,
        ):
            vm = c.call("vm.create", **images.vm("bench", options="novacron.shell"))
            guest.wait_for_console(Path(vm["console_log"]), "/ #")
            conn = libvirt.open(URI)
            try:
                results.append(direct(conn.lookupByName("bench"), args.kib))
            finally:
                conn.close()
            if not args.json:
                print(json.dumps(results[-1]))
            for n in counts:
                watchers = [d.client(timeout=60) for _ in range(n)]
                try:
                    results.append(run(c, watchers, args.kib, args.trips))
                finally:
                    for w in watchers:
                        w.close()
                if not args.json:
                    print(json.dumps(results[-1]))
            c.call("vm.delete", name="bench", force=True)
    finally:
        host.stop()
    if args.json:
        print(json.dumps({"runs": results}))


if __name__ == "__main__":
    main()
