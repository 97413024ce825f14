"""Raw memory images of a running guest, for ``bench/pagebench.py``.

    python -m bench.guest_images DOMAIN OUT_PREFIX [--count 4] [--interval 1.0]
        [--uri qemu:///system]
    python -m bench.guest_images --boot MIB OUT_PREFIX [--settle 10] [...]

Reads the guest's physical memory through libvirt's ``virDomainMemoryPeek``
(``VIR_MEMORY_PHYSICAL``, 64 KiB per call, the API's limit) and writes
``OUT_PREFIX.0.raw`` ...; the guest runs ``interval`` seconds between two images. The
guest is paused while each image is read, so every image is one consistent moment.

``--boot MIB`` takes the images of the test suite's own guest instead of a running
domain: Debian's cloud kernel and the suite's busybox initramfs (built on first use,
``tests/system/guest.py``) running ``novacron.workload`` (copies of one binary, text,
random data, then a little of each rewritten every 0.2 s), MIB of memory, one vCPU, TCG.
It is started as a transient domain (on the local ``libvirtd``, which is started first,
as the system tests do, when it does not answer), imaged ``--settle`` seconds after its
workload is ready, and destroyed afterwards (session 32's images in
``docs/benchmarks-page-engine.md`` were taken so).

Physical addresses 0 to the guest's memory size are RAM only on a small guest: on a PC
machine with more than about 3 GiB, part of it lies above 4 GiB, past the PCI hole. For
such a guest take ELF dumps instead, one per round (``virsh dump --memory-only DOMAIN
FILE``), which ``bench/pagebench.py`` reads as images (``bench/memory_image.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import libvirt

if not __package__:  # run as `python bench/guest_images.py`: the repository's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.system import guest
from tests.system.libvirt_host import URI, LibvirtHost

CHUNK = 64 * 1024  # virDomainMemoryPeek refuses more per call


def memory_bytes(dom: libvirt.virDomain) -> int:
    """The guest's memory size in bytes: its RAM as the machine was given it (libvirt's
    ``<memory>``, in KiB), not what a balloon leaves the guest (``<currentMemory>``):
    a balloon takes pages from the guest, not addresses from the machine."""
    return int(dom.maxMemory()) * 1024


def read_image(dom: libvirt.virDomain, size: int) -> bytes:
    out = bytearray(size)
    for offset in range(0, size, CHUNK):
        length = min(CHUNK, size - offset)
        out[offset : offset + length] = dom.memoryPeek(offset, length, libvirt.VIR_MEMORY_PHYSICAL)
    return bytes(out)


def capture(dom: libvirt.virDomain, count: int, interval: float) -> Iterator[bytes]:
    """``count`` images; the guest runs ``interval`` seconds between two (or as long as
    the caller takes with an image, if longer). Each is given as soon as it is read: a
    large guest's images need not all be in memory at once."""
    size = memory_bytes(dom)
    resumed: float | None = None
    for _ in range(count):
        if resumed is not None:
            time.sleep(max(0.0, resumed + interval - time.monotonic()))
        dom.suspend()
        try:
            image = read_image(dom, size)
        finally:
            dom.resume()
            resumed = time.monotonic()
        yield image


@contextmanager
def workload_guest(
    conn: libvirt.virConnect,
    memory_mib: int,
    settle: float,
    name: str = "novacron-pagebench",
    timeout: float = 300.0,
) -> Iterator[libvirt.virDomain]:
    """The suite's guest running its workload (see the module's text), ``settle``
    seconds after the workload said it is ready; destroyed when the block ends."""
    images = guest.build()
    emulator = shutil.which("qemu-system-x86_64")
    if emulator is None:
        raise SystemExit("qemu-system-x86_64 is not installed (run ./bootstrap.sh test)")
    with tempfile.TemporaryDirectory(prefix="novacron-pagebench-") as tmp:
        Path(tmp).chmod(0o755)  # (QEMU may run as another user)
        console = Path(tmp) / "console.log"
        xml = images.domain_xml(name, memory_mib, console, emulator)
        dom = conn.createXML(xml, 0)
        try:
            try:
                guest.wait_for_console(console, guest.WORKLOAD_MARKER, timeout)
            except AssertionError as timed_out:
                raise SystemExit(f"the guest's workload did not start: {timed_out}") from None
            time.sleep(settle)
            yield dom
        finally:
            with contextlib.suppress(libvirt.libvirtError):  # (already gone)
                dom.destroy()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        usage="python -m bench.guest_images (DOMAIN | --boot MIB) OUT_PREFIX [options]",
    )
    parser.add_argument("target", nargs="+", metavar="ARG", help="[DOMAIN] OUT_PREFIX")
    parser.add_argument("--boot", type=int, metavar="MIB", help="image the suite's guest")
    parser.add_argument("--settle", type=float, default=10.0, help="with --boot (seconds)")
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--uri", default=URI)
    args = parser.parse_args(argv)
    if len(args.target) != (1 if args.boot is not None else 2):
        parser.error("give DOMAIN OUT_PREFIX, or --boot MIB OUT_PREFIX")
    if args.boot is not None and not 128 <= args.boot <= 3072:
        # (the workload's files live in RAM; above 3 GiB a PC's RAM is not all at 0..size)
        parser.error("--boot takes 128 to 3072 MiB")
    if args.count < 1 or args.interval < 0 or args.settle < 0:
        parser.error("--count must be at least 1, --interval and --settle not negative")
    args.domain = None if args.boot is not None else args.target[0]
    args.prefix = Path(args.target[-1])
    return args


def write_images(dom: libvirt.virDomain, prefix: Path, count: int, interval: float) -> None:
    for n, image in enumerate(capture(dom, count, interval)):  # written while the guest runs on
        Path(f"{prefix}.{n}.raw").write_bytes(image)
        del image


def main() -> None:
    args = parse_args()
    host = None
    if args.boot is not None and args.uri == URI:
        host = LibvirtHost().start()  # (nothing started when libvirtd answers)
    try:
        conn = libvirt.open(args.uri)
        try:
            if args.boot is None:
                write_images(conn.lookupByName(args.domain), args.prefix, args.count, args.interval)
            else:
                with workload_guest(conn, args.boot, args.settle) as dom:
                    write_images(dom, args.prefix, args.count, args.interval)
        finally:
            conn.close()
    finally:
        if host is not None:
            host.stop()


if __name__ == "__main__":
    main()
