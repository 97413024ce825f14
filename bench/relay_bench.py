"""Throughput of the migration data path's two ends, without QEMU or a network.

    python -m bench.relay_bench [--mib 256] [--rounds 3] [--repeat 3] [--json]

Builds a QEMU 7.2 precopy stream (the layout of ``migration/ram.c``) of a synthetic
guest (``bench/synth.py``: zero, duplicate, text-like and random pages; each later
round dirties 5 %), then times :class:`~novacron.migration.stream.StreamSender` fed in
256 KiB reads, as the source relay does (with a page store, as the daemon keeps one),
and :class:`~novacron.migration.stream.StreamReceiver` rebuilding the stream from the
frames. Figures: MB/s of QEMU's (logical) stream on one core for each end, wire bytes
per logical byte, and the best of ``--repeat`` runs. The live-migration benchmark
(``bench/migration_bench.py``) is bounded by these rates on 2-core machines.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as `python bench/relay_bench.py`: the repository's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.qemu_stream_builder import PAGE, StreamBuilder

from bench.synth import generate
from novacron._core import PageStore
from novacron.migration import frames
from novacron.migration.stream import StreamReceiver, StreamSender

READ = 256 * 1024


def precopy(mib: int, rounds: int, seed: int) -> bytes:
    """Round 0 sends every page (zero pages as ZERO records), each later round the
    pages that changed, then the device state and EOF."""
    images = generate(mib, rounds, seed)
    pages = len(images[0]) // PAGE
    b = StreamBuilder().header().ram_setup([(b"pc.ram", pages * PAGE)])
    zero = bytes(PAGE)
    previous: bytes | None = None
    for image in images:
        b.part()
        for n in range(pages):
            page = image[n * PAGE : (n + 1) * PAGE]
            if previous is not None and previous[n * PAGE : (n + 1) * PAGE] == page:
                continue
            if page == zero:
                b.zero(b"pc.ram", n)
            else:
                b.page(b"pc.ram", n, page)
        b.eos()
        previous = image
    b.device_and_eof()
    return bytes(b.out)


def send(stream: bytes) -> tuple[float, list[bytes]]:
    sender = StreamSender(store=PageStore(1 << 20), compression="lz4")
    wire: list[bytes] = []
    started = time.process_time()
    for at in range(0, len(stream), READ):
        wire += sender.feed(stream[at : at + READ])
    wire += sender.finish()
    return time.process_time() - started, wire


def receive(wire: list[bytes], length: int) -> float:
    receiver = StreamReceiver(PageStore(1 << 20))
    decoder = frames.FrameDecoder()
    blob = b"".join(wire)
    rebuilt = 0
    started = time.process_time()
    for at in range(0, len(blob), READ):
        for frame in decoder.feed(blob[at : at + READ]):
            rebuilt += len(receiver.apply(frame))
    took = time.process_time() - started
    if rebuilt != length or not receiver.ended:
        raise SystemExit(f"rebuilt {rebuilt} bytes of {length}")
    return took


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    random.seed(args.seed)
    stream = precopy(args.mib, args.rounds, args.seed)
    runs = []
    for _ in range(args.repeat):
        send_s, wire = send(stream)
        receive_s = receive(wire, len(stream))
        runs.append({"send_s": send_s, "receive_s": receive_s, "wire": sum(map(len, wire))})
    best_send = min(r["send_s"] for r in runs)
    best_receive = min(r["receive_s"] for r in runs)
    mb = len(stream) / 1e6
    result = {
        "logical_mb": round(mb, 1),
        "wire_per_logical": round(runs[0]["wire"] / len(stream), 4),
        "send_mb_s": round(mb / best_send, 1),
        "receive_mb_s": round(mb / best_receive, 1),
        "runs": runs,
        "machine": platform.platform(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{mb:.0f} MB of QEMU stream ({args.mib} MiB guest, {args.rounds} rounds), "
            f"wire/logical {result['wire_per_logical']:.3f}\n"
            f"  source (split, engine, frames, digest):  {result['send_mb_s']:.0f} MB/s per core\n"
            f"  destination (decode, rebuild, digest):   {result['receive_mb_s']:.0f} MB/s per core"
        )
    return result


if __name__ == "__main__":
    main()
