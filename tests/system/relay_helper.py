"""One end of NovaCron's migration data path as a standalone process, for the
two-host tests (run inside a host's namespaces). The daemon will run the same loops
(``novacron.migration.relay``); this wires them to sockets and TLS by hand.

    python -m tests.system.relay_helper source HOST:PORT PEER:PORT CERT KEY CA STATS [THREADS]
    python -m tests.system.relay_helper destination LISTEN:PORT QEMU:PORT CERT KEY CA STATS \
        [THREADS]

THREADS: the page engine's (``[migration] engine_threads``), 1 by default.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import trio

from novacron.client import TlsFiles, split_address
from novacron.migration.relay import RelayStats, relay_destination, relay_source
from novacron.migration.stream import StreamReceiver, StreamSender
from novacron.server.tls import server_context


async def connect_when_listening(host: str, port: int, timeout_s: float) -> trio.SocketStream:
    """Connects to ``host:port``, retrying until something listens there (QEMU's
    incoming socket appears only once libvirt started the destination QEMU)."""
    with trio.fail_after(timeout_s):
        while True:
            try:
                return await trio.open_tcp_stream(host, port)
            except OSError:
                await trio.sleep(0.05)


async def source(
    qemu_at: str, peer: str, cert: Path, key: Path, ca: Path, out: Path, threads: int
) -> None:
    host, port = split_address(qemu_at)
    listeners = await trio.open_tcp_listeners(port, host=host)
    print("READY", flush=True)
    qemu = await listeners[0].accept()
    peer_host, peer_port = split_address(peer)
    tcp = await connect_when_listening(peer_host, peer_port, 60)
    context = TlsFiles(cert, key, ca).context()
    channel = trio.SSLStream(tcp, context, server_hostname="hostb")
    await channel.do_handshake()
    stats = RelayStats()
    try:
        await relay_source(qemu, channel, StreamSender(threads=threads), stats)
    finally:
        await trio.to_thread.run_sync(out.write_text, json.dumps(asdict(stats)))
        await channel.aclose()
        await qemu.aclose()


async def destination(
    listen: str, qemu_at: str, cert: Path, key: Path, ca: Path, out: Path, threads: int
) -> None:
    host, port = split_address(listen)
    listeners = await trio.open_tcp_listeners(port, host=host)
    print("READY", flush=True)
    raw = await listeners[0].accept()
    channel = trio.SSLStream(raw, server_context(cert, key, ca, None), server_side=True)
    await channel.do_handshake()
    qhost, qport = split_address(qemu_at)
    qemu = await connect_when_listening(qhost, qport, 60)
    stats = RelayStats()
    try:
        await relay_destination(channel, qemu, StreamReceiver(threads=threads), stats)
    finally:
        await trio.to_thread.run_sync(out.write_text, json.dumps(asdict(stats)))
        await channel.aclose()
        await qemu.aclose()


def main() -> None:
    role, a, b, cert, key, ca, out = sys.argv[1:8]
    threads = int(sys.argv[8]) if len(sys.argv) > 8 else 1
    fn = source if role == "source" else destination
    trio.run(fn, a, b, Path(cert), Path(key), Path(ca), Path(out), threads)


if __name__ == "__main__":
    main()
