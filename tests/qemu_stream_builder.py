"""Writes QEMU 7.2 precopy streams the way savevm.c / ram.c do (for tests)."""

from __future__ import annotations

import struct

PAGE = 4096
# the destination QEMU's last message on the return path (MIG_RP_MSG_SHUT, status 0)
SHUT = b"\x00\x01\x00\x04\x00\x00\x00\x00"
FLAG_ZERO, FLAG_MEM_SIZE, FLAG_PAGE, FLAG_EOS, FLAG_CONTINUE = 0x02, 0x04, 0x08, 0x10, 0x20


class StreamBuilder:
    def __init__(self) -> None:
        self.out = bytearray()
        self.blocks: dict[bytes, tuple[int, int]] = {}  # name -> (length, first page)

    def put(self, data: bytes) -> StreamBuilder:
        self.out += data
        return self

    def name(self, n: bytes) -> StreamBuilder:
        return self.put(bytes([len(n)]) + n)

    def header(self) -> StreamBuilder:
        self.put(struct.pack(">II", 0x5145564D, 3))
        return self.put(b"\x07" + struct.pack(">I", 3) + b"pc0")

    def ram_setup(self, blocks: list[tuple[bytes, int]], section: int = 2) -> StreamBuilder:
        self.put(b"\x01" + struct.pack(">I", section)).name(b"ram").put(struct.pack(">II", 0, 4))
        self.put(struct.pack(">Q", sum(length for _, length in blocks) | FLAG_MEM_SIZE))
        first = 0
        for n, length in blocks:
            self.name(n).put(struct.pack(">Q", length))
            self.blocks[n] = (length, first)
            first += length // PAGE
        return self.eos(section)

    def part(self, section: int = 2) -> StreamBuilder:
        return self.put(b"\x02" + struct.pack(">I", section))

    def record(self, block: bytes, number: int, flags: int, cont: bool) -> StreamBuilder:
        """A RAM record's header; ``cont``: with ``CONTINUE`` and no block name, as QEMU
        writes every record after the first of a block."""
        if cont:
            return self.put(struct.pack(">Q", number * PAGE | flags | FLAG_CONTINUE))
        return self.put(struct.pack(">Q", number * PAGE | flags)).name(block)

    def page(self, block: bytes, number: int, data: bytes, cont: bool = False) -> StreamBuilder:
        return self.record(block, number, FLAG_PAGE, cont).put(data)

    def zero(self, block: bytes, number: int, cont: bool = False) -> StreamBuilder:
        return self.record(block, number, FLAG_ZERO, cont).put(b"\x00")

    def eos(self, section: int = 2) -> StreamBuilder:
        return self.put(struct.pack(">Q", FLAG_EOS) + b"\x7e" + struct.pack(">I", section))

    def device_and_eof(self) -> StreamBuilder:
        self.put(b"\x04" + struct.pack(">I", 3)).name(b"cpu").put(struct.pack(">II", 0, 1))
        return self.put(b"\xde\xad\xbe\xef\x00" + b"\x06\x00\x00\x00\x02{}")

    def index(self, block: bytes, number: int) -> int:
        return self.blocks[block][1] + number
