"""Live storage-copy benchmark: a volume written over NBD through NovaCron's relay of
QEMU's NBD connections, raw and packed, against NBD without a relay.

    python bench/nbd_relay_bench.py [--mib 1024] [--seed 1] [--modes direct,none,lz4,zstd] [--json]

A raw volume of the documented mix (``bench/disk_copy_bench.py``: 45 % holes, 10 %
zeros, 30 % text/code-like, 15 % random, in 1 MiB extents) is written by QEMU's NBD
client (``qemu-img convert -n`` to an ``nbd+unix://`` target, the block layer's NBD
driver a mirror uses: data as ``NBD_CMD_WRITE``, zero runs as ``WRITE_ZEROES``) into
an empty raw file served by ``qemu-nbd``. Modes:

* ``direct`` — the client on ``qemu-nbd``'s socket (no relay: NBD's own speed here);
* ``none`` / ``lz4`` / ``zstd`` — the client on the source end of the relay
  (:func:`novacron.migration.nbd_relay.serve_source`), one mutual-TLS 1.3 channel on
  loopback per connection (certificates of a CA made for the run), the destination end
  (:func:`~novacron.migration.nbd_relay.relay_in`) on ``qemu-nbd``'s socket; the
  channel carries NBD as it is (``none``) or packed (``disk_compression``).

Per mode: seconds, NBD bytes to the destination, bytes on the channel (TLS payload)
and their ratio; the written file is compared with the source byte for byte.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import multiprocessing
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import trio

if __package__ in (None, ""):  # run as a script: bench/ is a package of the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.disk_copy_bench import MIX, data_bytes, write_volume
from novacron.blocking import Pool
from novacron.migration import nbd_relay, qemu_socket
from novacron.migration.nbd_relay import NbdStats
from novacron.pki.ca import CertificateAuthority
from novacron.server.tls import server_context
from novacron.sync_client import TlsFiles

MODES = ("direct", "none", "lz4", "zstd")


def contexts(where: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Server and client contexts of two node certificates of a CA made here."""
    ca = CertificateAuthority.init(where / "ca")
    ca.issue("dest", "node", where, node=True, addresses=("127.0.0.1",))
    ca.issue("source", "node", where, node=True, addresses=("127.0.0.1",))
    server = server_context(where / "dest.crt", where / "dest.key", where / "ca" / "ca.crt", None)
    client = TlsFiles(where / "source.crt", where / "source.key", where / "ca" / "ca.crt")
    return server, client.context()


def convert(source: Path, socket: Path) -> float:
    began = time.perf_counter()
    subprocess.run(
        ["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(source),
         f"nbd+unix:///?socket={socket}"],
        check=True,
    )  # fmt: skip
    return time.perf_counter() - began


def one_run(
    mode: str, source: Path, target: Path, where: Path, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> dict[str, Any]:
    target.unlink(missing_ok=True)
    target.touch()
    os.truncate(target, source.stat().st_size)
    dest_dir = qemu_socket.make_dir(where / "dest", "0123456789abcdef")
    src_dir = qemu_socket.make_dir(where / "source", "0123456789abcdef")
    served = nbd_relay.socket_path(dest_dir.path)
    nbd = subprocess.Popen(
        ["qemu-nbd", "-f", "raw", "--cache=writeback", "-k", str(served), str(target)]
    )
    try:
        if mode == "direct":
            while not served.exists():
                time.sleep(0.01)
            stats, seconds = NbdStats(last_moved=0.0), convert(source, served)
        else:
            stats, seconds = relayed(mode, source, src_dir, dest_dir, nbd.pid, tls)
        nbd.wait(30)
    finally:
        if nbd.poll() is None:
            nbd.kill()
        dest_dir.remove()
        src_dir.remove()
    out: dict[str, Any] = {"seconds": round(seconds, 3)}
    if mode != "direct":
        out.update(
            nbd_bytes=stats.to_destination,
            wire_bytes=stats.wire_to_destination,
            wire_ratio=round(stats.wire_to_destination / max(1, stats.to_destination), 3),
            nbd_bytes_back=stats.to_source,
            wire_bytes_back=stats.wire_to_source,
        )
    out["mb_s"] = round(source.stat().st_size / seconds / 1e6, 1)
    out["verified"] = filecmp.cmp(source, target, shallow=False)
    return out


def relayed(
    mode: str,
    source: Path,
    src_dir: qemu_socket.StreamDir,
    dest_dir: qemu_socket.StreamDir,
    nbd_pid: int,
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> tuple[NbdStats, float]:
    """The relay's two ends in two processes, as two daemons run them."""
    ours, theirs = multiprocessing.get_context("fork").Pipe()
    dest = multiprocessing.get_context("fork").Process(
        target=destination, args=(mode, dest_dir.path, nbd_pid, tls[0], theirs)
    )
    dest.start()
    try:
        port = ours.recv()
        return trio.run(source_end, mode, source, src_dir, port, tls[1])
    finally:
        ours.send("stop")
        dest.join(30)


def destination(mode: str, path: Path, nbd_pid: int, ctx: ssl.SSLContext, conn: Connection) -> None:
    """The destination daemon's end: a TLS listener whose channels go to qemu-nbd."""

    async def main() -> None:
        stats, engine = NbdStats(packing=mode), Pool("bench-engine", 2)

        async def qemu_pid() -> int | None:
            return nbd_pid

        async def serve_channel(stream: trio.SSLStream[trio.SocketStream]) -> None:
            await nbd_relay.relay_in(stream, path, os.getuid(), qemu_pid, stats, engine)

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_ssl_over_tcp, serve_channel, 0, ctx, host="127.0.0.1")
            )
            conn.send(listeners[0].transport_listener.socket.getsockname()[1])
            await trio.to_thread.run_sync(conn.recv)
            nursery.cancel_scope.cancel()

    trio.run(main)


async def source_end(
    mode: str, source: Path, src_dir: qemu_socket.StreamDir, port: int, ctx: ssl.SSLContext
) -> tuple[NbdStats, float]:
    """The source daemon's end: qemu-img's connection relayed to the destination's."""
    stats, engine = NbdStats(packing=mode), Pool("bench-engine", 2)

    async def no_pid() -> int | None:
        return None  # (qemu-img's pid is not known before it connects: uid only)

    async def open_channel() -> trio.abc.Stream:
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, ctx, server_hostname="dest")
        await stream.do_handshake()
        return stream

    listener = await nbd_relay.listen(src_dir.path, (os.getuid(), os.getgid()))
    async with listener, trio.open_nursery() as nursery:
        serve = partial(
            nbd_relay.serve_source, listener, os.getuid(), no_pid, open_channel, stats, engine
        )
        nursery.start_soon(serve)
        sock = nbd_relay.socket_path(src_dir.path)
        seconds = await trio.to_thread.run_sync(convert, source, sock)
        nursery.cancel_scope.cancel()
    return stats, seconds


def run(mib: int, seed: int, modes: list[str]) -> dict[str, Any]:
    where = Path(tempfile.mkdtemp(prefix="novacron-nbdbench-", dir="/var/tmp"))
    results: dict[str, Any] = {"mib": mib, "seed": seed, "mix": dict(MIX), "modes": {}}
    try:
        source = where / "source.raw"
        write_volume(source, mib, seed)
        results["file_bytes"] = source.stat().st_size
        results["data_bytes"] = data_bytes(source)
        tls = contexts(where)
        for mode in modes:
            results["modes"][mode] = one_run(mode, source, where / "target.raw", where, tls)
    finally:
        shutil.rmtree(where, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if unknown := [m for m in modes if m not in MODES]:
        parser.error(f"unknown modes {unknown}; modes: {', '.join(MODES)}")
    results = run(args.mib, args.seed, modes)
    if args.json:
        print(json.dumps(results, sort_keys=True))
        return
    print(
        f"{args.mib} MiB raw volume, mix {dict(MIX)} (seed {args.seed}): "
        f"{results['data_bytes'] / 1e6:.1f} MB of data"
    )
    for mode, f in results["modes"].items():
        line = f"{mode:6} {f['seconds']:6.2f} s ({f['mb_s']} MB/s of volume)"
        if "nbd_bytes" in f:
            line += (
                f" | NBD {f['nbd_bytes'] / 1e6:7.1f} MB -> channel {f['wire_bytes'] / 1e6:7.1f} MB"
                f" ({f['wire_ratio']})"
            )
        print(f"{line} | verified {f['verified']}")


if __name__ == "__main__":
    main()
