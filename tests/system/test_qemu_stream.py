"""QEMU's real migration stream (QEMU 7.2, via libvirt's save image of a running TCG
guest): split into RAM pages and verbatim bytes, carried by the migration data path
(sender -> frames -> receiver, pages through the page engine), rebuilt byte for byte —
and QEMU restores the guest from the rebuilt stream, which keeps running."""

from __future__ import annotations

import struct
from pathlib import Path

import libvirt

from novacron import _core
from novacron.migration import frames
from novacron.migration.stream import StreamReceiver, StreamSender
from tests.daemon_harness import Daemon
from tests.system import guest
from tests.system.libvirt_host import URI
from tests.system.test_guest_lifecycle import console, wait_console

SAVE_HEADER = struct.Struct("=16s5I56x")  # libvirt's virQEMUSaveHeader: magic + 5 u32 + 14 unused
PAGE = _core.PAGE_SIZE


def split_save_image(path: Path) -> tuple[bytes, bytes]:
    """(libvirt's header and domain XML, QEMU's stream) of a save image."""
    data = path.read_bytes()
    magic, _version, data_len, _running, compressed, _cookie = SAVE_HEADER.unpack_from(data)
    assert magic == b"LibvirtQemudSave" and compressed == 0
    start = SAVE_HEADER.size + data_len
    assert data[start : start + 4] == b"QEVM", "the QEMU stream follows libvirt's header"
    return data[:start], data[start:]


def test_a_saved_guest_restores_from_the_rebuilt_stream(
    system_daemon: Daemon, guest_images: guest.GuestImages, tmp_path: Path
) -> None:
    with system_daemon.client(timeout=300) as c:
        vm = c.call("vm.create", **guest_images.vm("streamed", options="novacron.workload"))
        wait_console(c, "streamed", guest.WORKLOAD_MARKER, timeout=180)
        saved = tmp_path / "streamed.save"
        conn = libvirt.open(URI)
        try:
            conn.lookupByName("streamed").save(str(saved))
            head, stream = split_save_image(saved)

            # split in odd-sized chunks, as a socket would deliver it
            splitter = _core.QemuStreamSplitter()
            pieces: list[tuple[int | None, bytes]] = []
            for at in range(0, len(stream), 65521):
                pieces.extend(splitter.feed(stream[at : at + 65521]))
            pieces.extend(splitter.finish())
            assert b"".join(p for _, p in pieces) == stream, "pieces join back exactly"
            assert splitter.passthrough_reason == "device state (passed through)"
            names = [b[0] for b in splitter.blocks]
            assert b"pc.ram" in names
            stats = splitter.stats
            assert stats["pages"] > 1000 and stats["zero_pages"] > 1000
            ram = next(b for b in splitter.blocks if b[0] == b"pc.ram")
            assert ram[1] == 128 * 1024 * 1024

            # the data path of a migration: sender and receiver, frames in between
            sender, receiver = StreamSender(), StreamReceiver()
            channel = frames.FrameDecoder()
            rebuilt = bytearray()
            for at in range(0, len(stream), 65536):
                for frame in channel.feed(b"".join(sender.feed(stream[at : at + 65536]))):
                    rebuilt += receiver.apply(frame)
            for frame in channel.feed(b"".join(sender.finish())):
                rebuilt += receiver.apply(frame)
            assert receiver.ended and bytes(rebuilt) == stream
            assert sender.wire_bytes < len(stream) / 2, "zero pages, dedup and lz4 pay off"
            print(f"qemu stream {len(stream)} bytes -> {sender.wire_bytes} on the channel")

            # QEMU takes the rebuilt stream: the guest goes on where it was
            before = console(vm).count(guest.TICK)
            restored = tmp_path / "rebuilt.save"
            restored.write_bytes(head + bytes(rebuilt))
            conn.restore(str(restored))
            assert conn.lookupByName("streamed").info()[0] == libvirt.VIR_DOMAIN_RUNNING
        finally:
            conn.close()
        wait_console(c, "streamed", f"{guest.TICK} {before + 2}", timeout=120)
        c.call("vm.delete", name="streamed", force=True)
