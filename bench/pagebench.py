"""Page-engine benchmark: NovaCron's page stream against memcpy, lz4, zstd-1 and QEMU.

    python -m bench.pagebench IMAGE [IMAGE ...] [--json]
    python -m bench.pagebench --synthetic [--mib 256] [--rounds 4] [--json]
    python bench/pagebench.py ...   (the same, as a script, from any directory)

IMAGEs are memory images of one guest in order: raw (``bench/synth.py`` makes synthetic
ones; ``bench/guest_images.py`` takes them from a running guest) or ELF core dumps of
its memory (``virsh dump --memory-only DOMAIN FILE``; ``bench/memory_image.py``).
Round 0 offers every page; round k offers the pages whose hash differs from image k-1,
found by the engine's own scan, whose hashes the encoder takes (``encode_unscanned_s``:
the same rounds through an encoder that hashes the pages itself). Each round is encoded,
decoded on a fresh receiver that has seen the earlier rounds, and verified byte for
byte; ``records`` counts what the encoder sent the round's pages as (zero, unchanged, dup,
delta, delta_from, compressed, raw: its ``stats()``; ``filtered``: how many of the
compressed pages went with a word-difference filter), the mix that explains a guest's
figures. Baselines on the same offered bytes: memcpy, lz4 alone, zstd-1 alone (each over
the offered pages as one stream), and QEMU precopy (zero pages as 9-byte records, others
as 4096 bytes + an 8-byte header). The figures are for one thread; the run on all cores
(``all_cores``) gives the encoder and the decoder every core each (the decoder reads
batches ahead of the one it applies, so a round of one batch decodes no faster). Passes
on one thread and on all cores alternate; each speedup is the median of the passes'
own ratios (a pass on one thread against the pass on all cores right after it).
The issue's targets are judged on these figures (``targets``; ``bench/page_targets.py``).
Discarded warm-up passes, one on one thread and one on all cores, run first (see
``main``). IMAGE files are read when their round
comes, one at a time, so a large guest's images need not fit in memory together (peak:
about 4x the guest's size: the round's image, the encoder's delta cache, the receiver,
and the memcpy baseline's copy; a run that would not fit in the memory available is
refused before it starts).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lz4.block
import zstandard

if not __package__:  # run as `python bench/pagebench.py`: the repository's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import memory_image
from bench.page_targets import table, verdicts
from bench.synth import generate
from novacron import _core
from novacron.errors import EngineError

PAGE = _core.PAGE_SIZE
Image = bytes | Path  # a file is read when its round comes (one image in memory at a time)
VERIFY_PAGES = 16384  # the receiver's pages compared a slice (64 MiB) at a time


# what the encoder sent each offered page as (its `stats()` counters): the round's mix
RECORD_KINDS = ("zero", "unchanged", "dup", "delta", "delta_from", "compressed", "raw")


def records_line(n: int, records: dict[str, int]) -> str:
    """A round's record counts, for the printed report."""
    return f"round {n} pages sent as: " + ", ".join(f"{k} {records[k]}" for k in RECORD_KINDS)


def dirty_pages(bitmap: bytes, pages: int) -> list[int]:
    """The page indices set in a scan's dirty bitmap (``PageScan.dirty_since``)."""
    return [i for i in range(pages) if bitmap[i >> 3] >> (i & 7) & 1]


def offered_bytes(image: bytes, indices: list[int]) -> bytes:
    view = memoryview(image)
    return b"".join(view[i * PAGE : (i + 1) * PAGE] for i in indices)


def timed(fn: Any, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def memcpy_time(data: bytes) -> float:
    """Seconds to copy ``data`` into an already-touched buffer (no page faults).

    Through a memoryview: ``bytearray[:] = bytes`` first copies the bytes into a new
    bytearray (CPython 3.11), so it timed a fresh allocation and two copies."""
    target = memoryview(bytearray(len(data)))
    target[:] = data  # touch every page of the target first
    start = time.perf_counter()
    target[:] = data
    return time.perf_counter() - start


def baselines(data: bytes) -> dict[str, Any]:
    memcpy_s = memcpy_time(data)
    lz4_out, lz4_s = timed(lz4.block.compress, data)
    lz4_bytes = len(lz4_out)
    del lz4_out  # (a large guest's round 0: not two compressed copies at once)
    zstd = zstandard.ZstdCompressor(level=1)
    zstd_out, zstd_s = timed(zstd.compress, data)
    zstd1_bytes = len(zstd_out)
    del zstd_out
    pages = len(data) // PAGE
    scan = _core.scan_pages(data)
    qemu = scan.zero_pages * 9 + (pages - scan.zero_pages) * (PAGE + 8)
    return {
        "memcpy_s": memcpy_s,
        "lz4_bytes": lz4_bytes,
        "lz4_s": lz4_s,
        "zstd1_bytes": zstd1_bytes,
        "zstd1_s": zstd_s,
        "qemu_bytes": qemu,
    }


def load(image: Image) -> bytes:
    """The image's bytes (a file: raw, or an ELF dump's RAM: ``bench.memory_image``).
    ``bytes``, never a mutable buffer: the encoder takes a scan's hashes for an
    immutable object only."""
    if isinstance(image, bytes):
        return image
    try:
        return memory_image.load(image)
    except memory_image.ImageError as e:
        raise SystemExit(f"pagebench: {e}") from None


def matches(dec: _core.PageDecoder, image: bytes) -> bool:
    """Whether the receiver holds ``image``, compared a slice at a time (no copy of the
    whole guest next to it)."""
    view = memoryview(image)
    pages = len(image) // PAGE
    for first in range(0, pages, VERIFY_PAGES):
        last = min(pages, first + VERIFY_PAGES)
        if dec.pages(range(first, last)) != bytes(view[first * PAGE : last * PAGE]):
            return False
    return True


def digest(wire: bytes | memoryview) -> bytes:
    return hashlib.blake2b(wire, digest_size=16).digest()


def run(
    images: Sequence[Image],
    threads: int,
    compression: str,
    cache_pages: int,
    pages: int | None = None,
    zstd_level: int = 1,
) -> list[dict[str, Any]]:
    """One pass over the rounds. Round k's dirty pages come from the engine's scan of
    image k (its hashes against image k-1's), and the encoder takes the offered pages'
    hashes from that scan. Then a second encoder is fed the same rounds without the scan
    (hashing the pages itself, as a migration stream's encoder must), which gives
    ``encode_unscanned_s``; its bytes must be the same. It runs after the first encoder
    and the receiver are gone: each holds up to a guest's size. ``pages``: the guest's
    size in pages (read from the first image when not given)."""
    guest = len(load(images[0])) // PAGE if pages is None else pages

    def encoder() -> _core.PageEncoder:
        return _core.PageEncoder(
            guest,
            compression=compression,
            zstd_level=zstd_level,
            threads=threads,
            delta_cache_pages=cache_pages,
        )

    enc = encoder()
    dec = _core.PageDecoder(guest, threads=threads)
    rounds = []
    offers: list[list[int] | None] = []  # round 0: every page
    wires: list[bytes] = []  # each round's output, as a digest
    previous: bytes | None = None
    counted = enc.stats()  # (the encoder's counters as the round begins)
    for n, source in enumerate(images):
        image = load(source)
        if len(image) != guest * PAGE:
            raise SystemExit(f"round {n}: the image changed size while the bench ran")
        start = time.perf_counter()
        scan = _core.scan_pages(image)
        bitmap = None if previous is None else scan.dirty_since(previous)
        scan_s = time.perf_counter() - start
        indices = None
        if bitmap is not None:
            indices = dirty_pages(bitmap, guest)
        previous = scan.hashes
        wire, encode_s = timed(enc.encode, image, indices, scan)
        counts = enc.stats()
        _, decode_s = timed(dec.decode, wire)
        offered = list(range(guest)) if indices is None else indices
        data = image if indices is None else offered_bytes(image, offered)
        rounds.append(
            {
                "pages": len(offered),
                "logical_bytes": len(offered) * PAGE,
                "wire_bytes": len(wire),
                "scan_s": scan_s,
                "encode_s": encode_s,
                "decode_s": decode_s,
                "verified": matches(dec, image),
                "records": {k: counts[k] - counted[k] for k in RECORD_KINDS},
                "filtered": counts["filtered"] - counted["filtered"],
                "image_memcpy_s": memcpy_time(image),
                "baselines": baselines(data),
            }
        )
        counted = counts
        offers.append(indices)
        wires.append(digest(wire))
        del image, data, wire, scan  # before the next round's image is read
    del enc, dec
    unscanned = encoder()
    for n, (source, indices) in enumerate(zip(images, offers, strict=True)):
        image = load(source)
        again, rounds[n]["encode_unscanned_s"] = timed(unscanned.encode, image, indices)
        if digest(again) != wires[n]:
            raise SystemExit(f"round {n}: the scan changed the encoder's output")
        del image, again
    return rounds


def peak_memory(guest_bytes: int, cache_pages: int) -> int:
    """About the most memory a pass takes: the round's image, the encoder's delta cache,
    the receiver and, in turn, the memcpy baseline's copy or the compressors' outputs."""
    return 3 * guest_bytes + min(cache_pages * PAGE, guest_bytes) + (256 << 20)


def available_memory() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (``None`` where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


TIMES = ("scan_s", "encode_s", "encode_unscanned_s", "decode_s", "image_memcpy_s")
BASELINE_TIMES = ("memcpy_s", "lz4_s", "zstd1_s")


def median_of(passes: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per round, the median of each time over the passes (bytes are identical in every
    pass: the engine is deterministic); ``verified`` only if every pass verified."""
    out = []
    for same_round in zip(*passes, strict=True):
        first = dict(same_round[0])
        for key in TIMES:
            first[key] = statistics.median(r[key] for r in same_round)
        first["baselines"] = dict(first["baselines"])
        for key in BASELINE_TIMES:
            first["baselines"][key] = statistics.median(r["baselines"][key] for r in same_round)
        first["verified"] = all(r["verified"] for r in same_round)
        out.append(first)
    return out


def paired_speedups(
    single: list[list[dict[str, Any]]], multi: list[list[dict[str, Any]]], key: str
) -> list[float]:
    """Per round, the median over the passes of one thread's time ``key`` divided by all
    cores' in the same pass (``single[p]`` and ``multi[p]`` ran one after the other)."""
    rounds = len(single[0])
    return [
        statistics.median(
            s[n][key] / max(1e-9, m[n][key]) for s, m in zip(single, multi, strict=True)
        )
        for n in range(rounds)
    ]


def ratios(rounds: list[dict[str, Any]]) -> list[dict[str, float]]:
    out = []
    for r in rounds:
        b = r["baselines"]
        out.append(
            {
                "wire_vs_zstd1": r["wire_bytes"] / max(1, b["zstd1_bytes"]),
                "wire_vs_qemu": r["wire_bytes"] / max(1, b["qemu_bytes"]),
                "encode_vs_zstd1_time": r["encode_s"] / max(1e-9, b["zstd1_s"]),
                "encode_unscanned_vs_zstd1_time": r["encode_unscanned_s"] / max(1e-9, b["zstd1_s"]),
                "scan_vs_image_memcpy_time": r["scan_s"] / max(1e-9, r["image_memcpy_s"]),
                "decode_speedup_vs_encode": r["encode_s"] / max(1e-9, r["decode_s"]),
            }
        )
    return out


def check_images(parser: argparse.ArgumentParser, paths: list[Path]) -> int:
    """The images' common size in bytes; a clear error (exit 2) for an unreadable, empty
    or ragged one. They are read later, one round at a time, so that images of a large
    guest need not all fit in memory together."""
    sizes: list[int] = []
    for path in paths:
        try:
            size = memory_image.image_size(path)
        except memory_image.ImageError as e:
            parser.error(str(e))
        if not size or size % PAGE:
            parser.error(f"{path}: {size} bytes is not a whole number (> 0) of 4 KiB pages")
        if sizes and size != sizes[0]:
            parser.error(f"{path}: {size} bytes, but {paths[0]} has {sizes[0]}")
        sizes.append(size)
    return sizes[0]


def image_arguments(doc: str, codecs: Sequence[str]) -> argparse.ArgumentParser:
    """A parser of the images a page-engine bench takes (IMAGEs or ``--synthetic``) and
    of ``--compression`` (one of ``codecs``)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("images", nargs="*", type=Path)
    parser.add_argument("--synthetic", action="store_true", help="generate the images (synth.py)")
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--compression", default="lz4", choices=list(codecs))
    return parser


def main() -> None:
    parser = image_arguments(__doc__, ["lz4", "zstd", "none"])
    parser.add_argument(
        "--zstd-level", type=int, default=1, help="the engine's zstd level (--compression zstd)"
    )
    parser.add_argument(
        "--delta-cache-mib",
        type=int,
        default=None,
        help="sender's delta cache (default: the guest's size, i.e. a base for every page)",
    )
    parser.add_argument(
        "--passes",
        type=int,
        default=3,
        help="run everything this many times and report per-round medians (noisy machines)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.zstd_level != 1 and args.compression != "zstd":
        parser.error("--zstd-level is for --compression zstd")
    if not 1 <= args.zstd_level <= 19:  # (as vm.migrate's zstd_level)
        parser.error("--zstd-level must be 1 to 19")
    images: list[Image]
    if args.synthetic:
        generated = generate(args.mib, args.rounds, seed=1)
        images, size = list(generated), len(generated[0])
    elif args.images:
        images = list(args.images)
        size = check_images(parser, args.images)
    else:
        parser.error("give IMAGEs or --synthetic")
    cores = os.cpu_count() or 1
    guest_pages = size // PAGE
    cache_pages = guest_pages if args.delta_cache_mib is None else args.delta_cache_mib * 256
    needed, free = peak_memory(size, cache_pages), available_memory()
    if free is not None and needed > free:
        parser.error(
            f"a {size >> 20} MiB guest takes about {needed >> 20} MiB here, and "
            f"{free >> 20} MiB is available (a smaller --delta-cache-mib takes less)"
        )
    # Warm-up, discarded: on these VMs the first touch of memory the guest kernel never
    # handed out before costs about 2.7 ms/MiB (the hypervisor backs it lazily); one
    # full pass on one thread and one on all cores bring the process's working memory
    # in for every contender alike (all cores hold more at once: the decoder's batches
    # read ahead, up to 16 block buffers, and the encoder's per-thread buffers, which
    # the engine keeps for the next encoder and decoder).

    def one_pass(threads: int) -> list[dict[str, Any]]:
        return run(images, threads, args.compression, cache_pages, guest_pages, args.zstd_level)

    try:
        one_pass(1)
        if cores > 1:
            one_pass(cores)
    except EngineError as e:  # (later passes make the same objects)
        raise SystemExit(f"pagebench: {e}") from None
    passes = max(1, args.passes)
    # one thread and all cores take turns, pass by pass: these machines drift over
    # minutes, and a speedup is the median of its passes' own ratios
    single_passes: list[list[dict[str, Any]]] = []
    multi_passes: list[list[dict[str, Any]]] = []
    for _ in range(passes):
        single_passes.append(one_pass(1))
        multi_passes.append(one_pass(cores))
    single, multi = median_of(single_passes), median_of(multi_passes)
    result = {
        "page_size": PAGE,
        "threads": 1,
        "passes": passes,
        "compression": args.compression,
        "zstd_level": args.zstd_level,
        "delta_cache_pages": cache_pages,
        "rounds": single,
        "ratios": ratios(single),
        "all_cores": {
            "threads": cores,
            "rounds": multi,
            "encode_speedup": paired_speedups(single_passes, multi_passes, "encode_s"),
            "encode_unscanned_speedup": paired_speedups(
                single_passes, multi_passes, "encode_unscanned_s"
            ),
            "decode_speedup": paired_speedups(single_passes, multi_passes, "decode_s"),
        },
    }
    result["targets"] = verdicts(result)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{'round':>5} {'pages':>8} {'logical MB':>10} {'wire MB':>8} {'zstd1 MB':>8} "
        f"{'qemu MB':>8} {'scan s':>7} {'enc s':>7} {'unsc s':>7} {'dec s':>7} {'zstd1 s':>7} "
        f"{'memcpy s':>8} ok"
    )
    for n, r in enumerate(single):
        b = r["baselines"]
        cells = [
            f"{n:>5}",
            f"{r['pages']:>8}",
            f"{r['logical_bytes'] / 1e6:>10.1f}",
            f"{r['wire_bytes'] / 1e6:>8.2f}",
            f"{b['zstd1_bytes'] / 1e6:>8.2f}",
            f"{b['qemu_bytes'] / 1e6:>8.1f}",
            f"{r['scan_s']:>7.3f}",
            f"{r['encode_s']:>7.3f}",
            f"{r['encode_unscanned_s']:>7.3f}",
            f"{r['decode_s']:>7.3f}",
            f"{b['zstd1_s']:>7.3f}",
            f"{b['memcpy_s']:>8.4f}",
            str(r["verified"]),
        ]
        print(" ".join(cells))
    for n, r in enumerate(single):
        print(records_line(n, r["records"]))
        print(f"round {n} compressed pages with a filter: {r['filtered']}")
    for n, q in enumerate(result["ratios"]):
        print(f"round {n}: " + ", ".join(f"{k}={v:.2f}" for k, v in q.items()))
    for key in ("encode_speedup", "encode_unscanned_speedup", "decode_speedup"):
        print(f"all cores {key}: " + ", ".join(f"{x:.2f}" for x in result["all_cores"][key]))
    print("issue #3's targets (bench/page_targets.py; * a round outside the limit):")
    for line in table(result["targets"]):
        print("  " + line)


if __name__ == "__main__":
    main()
