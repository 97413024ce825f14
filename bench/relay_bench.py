"""Throughput of the migration data path's two ends, without QEMU or a network.

    python -m bench.relay_bench [--mib 256] [--rounds 3] [--repeat 3] [--json] [IMAGE ...]

Builds a QEMU 7.2 precopy stream (the layout of ``migration/ram.c``) of a synthetic
guest (``bench/synth.py``: zero, duplicate, text-like and random pages; each later
round dirties 5 %) or of the memory images given (raw or ELF dumps, in order, as
``bench/pagebench.py`` takes them: image 1 is round 0), then times
:class:`~novacron.migration.stream.StreamSender` fed in 256 KiB reads, as the source
relay does (with a page store, as the daemon keeps one), and
:class:`~novacron.migration.stream.StreamReceiver` rebuilding the stream from the
frames. Figures: MB/s of QEMU's (logical) stream on one core for each end, wire bytes
per logical byte and by frame type, and the best of ``--repeat`` runs. The
live-migration benchmark (``bench/migration_bench.py``) is bounded by these rates on
2-core machines.

``--relayed`` also runs the daemons' two relay loops (``relay_source`` and
``relay_destination``) on one trio event loop, joined by loopback TCP connections,
with stand-ins for the two QEMUs, and reports the wall-clock rate and how long the
event loop went without running its other tasks (a task asking to wake every 0.5 ms:
its largest and 99th-percentile lateness). A daemon's other clients wait that long.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import trio

if not __package__:  # run as `python bench/relay_bench.py`: the repository's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.qemu_stream_builder import PAGE, SHUT, StreamBuilder

from bench import pagebench
from bench.synth import generate
from novacron._core import PageStore
from novacron.migration import frames
from novacron.migration.channel import CHANNEL_SNDBUF
from novacron.migration.relay import RelayStats, relay_destination, relay_source
from novacron.migration.stream import StreamReceiver, StreamSender

READ = 256 * 1024


def precopy(images: list[bytes]) -> bytes:
    """Round 0 sends every page (zero pages as ZERO records), each later round the
    pages that changed, then the device state and EOF. Record headers as QEMU writes
    them: the block's name on a section's first record, ``CONTINUE`` after it."""
    pages = len(images[0]) // PAGE
    b = StreamBuilder().header().ram_setup([(b"pc.ram", pages * PAGE)])
    zero = bytes(PAGE)
    previous: bytes | None = None
    for image in images:
        b.part()
        cont = False
        for n in range(pages):
            page = image[n * PAGE : (n + 1) * PAGE]
            if previous is not None and previous[n * PAGE : (n + 1) * PAGE] == page:
                continue
            if page == zero:
                b.zero(b"pc.ram", n, cont)
            else:
                b.page(b"pc.ram", n, page, cont)
            cont = True
        b.eos()
        previous = image
    b.device_and_eof()
    return bytes(b.out)


FRAME_NAMES = {
    frames.VERBATIM: "verbatim",
    frames.PAGES: "pages",
    frames.PACKED_PAGES: "packed_pages",
    frames.CHECK: "check",
    frames.START: "start",
    frames.END: "end",
}


def by_frame(wire: list[bytes]) -> dict[str, int]:
    """Channel bytes by frame type (headers included); for page frames, also the bytes
    of their entries (``pages_head``) as they went: raw in ``PAGES``, packed in
    ``PACKED_PAGES`` (with its two lengths)."""
    out: dict[str, int] = {}
    for f in frames.FrameDecoder().feed(b"".join(wire)):
        name = FRAME_NAMES.get(f.kind, str(f.kind))
        out[name] = out.get(name, 0) + frames.HEADER.size + len(f.payload)
        head = 0
        if f.kind == frames.PACKED_PAGES:
            head = 8 + int.from_bytes(f.payload[16:20], "big")
        elif f.kind == frames.PAGES:
            count, at = int.from_bytes(f.payload[8:12], "big"), 12
            for _ in range(count):
                at += 12 + int.from_bytes(f.payload[at : at + 4], "big")
            head = at - 12
        out["pages_head"] = out.get("pages_head", 0) + head
    return out


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


TICK_S = 0.0005


async def _tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """Two ends of a loopback TCP connection, as between the daemons (the kernel's
    buffers bound what a writer can put ahead of its reader)."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = trio.socket.socket()
    await client.connect(listener.getsockname())
    server, _ = await listener.accept()
    listener.close()
    return trio.SocketStream(client), trio.SocketStream(server)


def _unix_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """Two ends of a Unix stream socket, as between QEMU and a daemon
    (``migration.qemu_socket``)."""
    a, b = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return trio.SocketStream(a), trio.SocketStream(b)


async def _relayed(stream: bytes) -> dict[str, Any]:
    """Both relay loops on this event loop; the loop's lateness meanwhile."""
    src_qemu, src_side = _unix_pair()
    dst_side, dst_qemu = _unix_pair()
    chan_src, chan_dst = await _tcp_pair()
    # the daemon's buffer size on the link (``migration.channel``)
    chan_src.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHANNEL_SNDBUF)
    received = 0
    lateness: list[float] = []

    async def source_qemu() -> None:
        for at in range(0, len(stream), READ):
            await src_qemu.send_all(stream[at : at + READ])
        await src_qemu.receive_some(len(SHUT))  # QEMU waits for SHUT before closing
        await src_qemu.aclose()

    async def destination_qemu() -> None:
        nonlocal received
        while received < len(stream):
            data = await dst_qemu.receive_some(READ)
            if not data:
                raise SystemExit(f"the destination QEMU got {received} of {len(stream)} bytes")
            received += len(data)
        await dst_qemu.send_all(SHUT)
        await dst_qemu.aclose()

    async def source() -> None:
        sender = StreamSender(store=PageStore(1 << 20), compression="lz4")
        await relay_source(src_side, chan_src, sender, RelayStats())
        await chan_src.aclose()

    async def destination() -> None:
        receiver = StreamReceiver(PageStore(1 << 20))
        await relay_destination(chan_dst, dst_side, receiver, RelayStats())
        await chan_dst.aclose()

    async def ticker() -> None:
        while True:
            asked = trio.current_time()
            await trio.sleep(TICK_S)
            lateness.append(trio.current_time() - asked - TICK_S)

    started = time.perf_counter()
    try:
        async with trio.open_nursery() as outer:
            outer.start_soon(ticker)
            async with trio.open_nursery() as n:
                for job in (source_qemu, destination_qemu, source, destination):
                    n.start_soon(job)
            took = time.perf_counter() - started
            outer.cancel_scope.cancel()
    finally:
        for end in (src_qemu, src_side, dst_side, dst_qemu, chan_src, chan_dst):
            await trio.aclose_forcefully(end)
    lateness.sort()
    return {
        "wall_s": took,
        "loop_late_max_ms": lateness[-1] * 1e3,
        "loop_late_p99_ms": lateness[int(len(lateness) * 0.99)] * 1e3,
        "loop_late_median_ms": statistics.median(lateness) * 1e3,
    }


def relayed(stream: bytes) -> dict[str, Any]:
    return trio.run(_relayed, stream)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--relayed", action="store_true", help="also time the relay loops")
    parser.add_argument("images", nargs="*", type=Path, help="memory images (else synthetic)")
    args = parser.parse_args(argv)
    random.seed(args.seed)
    if args.images:
        stream = precopy([pagebench.load(path) for path in args.images])
    else:
        stream = precopy(generate(args.mib, args.rounds, args.seed))
    runs = []
    for _ in range(args.repeat):
        send_s, wire = send(stream)
        receive_s = receive(wire, len(stream))
        runs.append({"send_s": send_s, "receive_s": receive_s, "wire": sum(map(len, wire))})
    best_send = min(r["send_s"] for r in runs)
    best_receive = min(r["receive_s"] for r in runs)
    mb = len(stream) / 1e6
    loops = [relayed(stream) for _ in range(args.repeat)] if args.relayed else []
    result: dict[str, Any] = {
        "logical_mb": round(mb, 1),
        "wire_per_logical": round(runs[0]["wire"] / len(stream), 4),
        "wire_by_frame": by_frame(wire),
        "send_mb_s": round(mb / best_send, 1),
        "receive_mb_s": round(mb / best_receive, 1),
        "runs": runs,
        "machine": platform.platform(),
    }
    if loops:
        result["relayed"] = {
            "wall_mb_s": round(mb / min(r["wall_s"] for r in loops), 1),
            "loop_late_max_ms": [round(r["loop_late_max_ms"], 2) for r in loops],
            "loop_late_p99_ms": [round(r["loop_late_p99_ms"], 2) for r in loops],
            "loop_late_median_ms": [round(r["loop_late_median_ms"], 3) for r in loops],
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
        if loops:
            r = result["relayed"]
            print(
                f"  both relay loops on one event loop:      {r['wall_mb_s']:.0f} MB/s wall clock; "
                f"the loop late by at most {r['loop_late_max_ms']} ms "
                f"(p99 {r['loop_late_p99_ms']}, median {r['loop_late_median_ms']})"
            )
    return result


if __name__ == "__main__":
    main()
