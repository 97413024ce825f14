"""Memory images of a running guest, for ``bench/pagebench.py``.

    python -m bench.guest_images DOMAIN OUT_PREFIX [--count 4] [--interval 1.0]
        [--uri qemu:///system] [--via auto|dump|peek]
    python -m bench.guest_images --boot MIB OUT_PREFIX [--settle 10] [...]

Writes ``OUT_PREFIX.0.raw`` ...; the guest runs ``interval`` seconds between two images.
The guest is paused while each image is taken, so every image is one consistent moment.
An image is read one of two ways (``--via``; ``auto``, the default: ``dump`` when the
connection's URI names no host, else ``peek``):

- ``dump``: a memory-only ELF dump (what ``virsh dump --memory-only`` writes), which
  libvirtd writes into a temporary directory beside ``OUT_PREFIX`` (on its own machine:
  hence not for a remote URI), read back as ``bench/memory_image.py`` reads it (the
  guest's RAM blocks in order of address, the firmware's ROM included) and removed. One
  call: a 128 MiB guest in under a second.
- ``peek``: physical addresses 0 to the guest's memory size through libvirt's
  ``virDomainMemoryPeek`` (``VIR_MEMORY_PHYSICAL``, 64 KiB per call, the API's limit),
  over the connection: about 16 s for 128 MiB under TCG. Addresses 0 to the memory
  size are RAM only on a small guest: on a PC machine with more than about 3 GiB, part
  of it lies above 4 GiB, past the PCI hole.

Images of one run are all taken the same way, so they have one size.

``--boot MIB`` takes the images of the test suite's own guest instead of a running
domain: Debian's cloud kernel and the suite's busybox initramfs (built on first use,
``tests/system/guest.py``) running ``novacron.workload`` (copies of one binary, text,
random data, then a little of each rewritten every 0.2 s), MIB of memory, one vCPU, TCG.
It is started as a transient domain (on the local ``libvirtd``, which is started first,
as the system tests do, when it does not answer), imaged ``--settle`` seconds after its
workload is ready, and destroyed afterwards (session 32's images in
``docs/benchmarks-page-engine.md`` were taken so, by peeking).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import libvirt

if not __package__:  # run as `python bench/guest_images.py`: the repository's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.system import guest
from tests.system.libvirt_host import URI, LibvirtHost

from bench import memory_image

CHUNK = 64 * 1024  # virDomainMemoryPeek refuses more per call


def memory_bytes(dom: libvirt.virDomain) -> int:
    """The guest's memory size in bytes: its RAM as the machine was given it (libvirt's
    ``<memory>``, in KiB), not what a balloon leaves the guest (``<currentMemory>``):
    a balloon takes pages from the guest, not addresses from the machine."""
    return int(dom.maxMemory()) * 1024


def read_image(dom: libvirt.virDomain, size: int) -> bytes:
    """Physical addresses 0 to ``size`` of the guest, peeked 64 KiB a call."""
    out = bytearray(size)
    for offset in range(0, size, CHUNK):
        length = min(CHUNK, size - offset)
        out[offset : offset + length] = dom.memoryPeek(offset, length, libvirt.VIR_MEMORY_PHYSICAL)
    return bytes(out)


def dump(dom: libvirt.virDomain, path: Path) -> None:
    """A memory-only ELF dump of the guest at ``path`` (``virsh dump --memory-only``),
    written by libvirtd: ``path`` is on libvirtd's machine."""
    dom.coreDumpWithFormat(
        str(path), libvirt.VIR_DOMAIN_CORE_DUMP_FORMAT_RAW, libvirt.VIR_DUMP_MEMORY_ONLY
    )


def is_local(uri: str) -> bool:
    """Whether a libvirt URI names no host: its libvirtd runs on this machine, so a file
    it writes can be read here."""
    return not urllib.parse.urlsplit(uri).netloc


def capture(
    dom: libvirt.virDomain, count: int, interval: float, dump_dir: Path | None = None
) -> Iterator[bytes]:
    """``count`` images; the guest runs ``interval`` seconds between two (or as long as
    the caller takes with an image, if longer). Each is given as soon as it is read: a
    large guest's images need not all be in memory at once. Read as dumps libvirtd
    writes into ``dump_dir`` (each removed once read), or peeked without one (see the
    module's text)."""
    size = memory_bytes(dom)
    scratch = None if dump_dir is None else dump_dir / "memory.elf"
    resumed: float | None = None
    for _ in range(count):
        if resumed is not None:
            time.sleep(max(0.0, resumed + interval - time.monotonic()))
        dom.suspend()
        try:
            if scratch is None:
                image = read_image(dom, size)
            else:
                dump(dom, scratch)
        finally:
            dom.resume()
            resumed = time.monotonic()
        if scratch is not None:
            try:
                image = memory_image.load(scratch)  # (the guest runs on meanwhile)
            finally:
                scratch.unlink(missing_ok=True)
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
    parser.add_argument(
        "--via",
        choices=("auto", "dump", "peek"),
        default="auto",
        help="how an image is read (auto: dump unless the URI names a host)",
    )
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


def write_images(
    dom: libvirt.virDomain, prefix: Path, count: int, interval: float, via: str
) -> None:
    """``prefix.N.raw`` for each image, ``via`` ``dump`` or ``peek``."""
    with contextlib.ExitStack() as stack:
        dump_dir = None
        if via == "dump":
            # beside the images (their disk has room for one more); libvirtd writes the
            # dump as its own user, which must be able to reach the directory
            tmp = stack.enter_context(
                tempfile.TemporaryDirectory(prefix=".dumps-", dir=prefix.parent)
            )
            Path(tmp).chmod(0o755)
            dump_dir = Path(tmp)
        for n, image in enumerate(capture(dom, count, interval, dump_dir)):
            Path(f"{prefix}.{n}.raw").write_bytes(image)  # while the guest runs on
            del image


def main() -> None:
    args = parse_args()
    host = None
    if args.boot is not None and args.uri == URI:
        host = LibvirtHost().start()  # (nothing started when libvirtd answers)
    try:
        conn = libvirt.open(args.uri)
        try:
            via = args.via
            if via == "auto":
                via = "dump" if is_local(conn.getURI()) else "peek"
            if args.boot is None:
                dom = conn.lookupByName(args.domain)
                write_images(dom, args.prefix, args.count, args.interval, via)
            else:
                with workload_guest(conn, args.boot, args.settle) as dom:
                    write_images(dom, args.prefix, args.count, args.interval, via)
        finally:
            conn.close()
    finally:
        if host is not None:
            host.stop()


if __name__ == "__main__":
    main()
