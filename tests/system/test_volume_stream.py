"""``novacron.vm.volume_stream`` against the real libvirtd: a volume's bytes read and
written through libvirt's sparse storage streams, holes as lengths, in pieces of at most
``READ_SIZE``, and copied whole with its holes kept."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from bench.disk_copy_bench import data_bytes, dir_pool

from novacron import errors
from novacron.vm import volume_stream
from novacron.vm.volume_stream import READ_SIZE, VolumeReader, VolumeWriter
from tests.system.libvirt_host import URI, LibvirtHost

KIB, MIB = 1024, 1024 * 1024
# (offset, bytes) of data; everything else a hole. A hole first, data that ends inside a
# filesystem block, data longer than READ_SIZE, a hole after it and one at the end.
LAYOUT = [(1 * MIB, 5000), (1 * MIB + 64 * KIB, READ_SIZE * 2 + 12345), (6 * MIB, 4 * KIB)]
SIZE = 8 * MIB


@pytest.fixture
def pool(libvirt_host: LibvirtHost) -> Iterator[tuple[libvirt.virConnect, Path]]:
    """A directory pool of its own under /var/tmp: (connection, its directory)."""
    with dir_pool(URI, "novacron-volstream-") as (conn, _, where):
        yield conn, where


def sparse_file(path: Path, layout: list[tuple[int, int]], size: int, seed: int) -> bytes:
    """A file of ``size`` bytes with random data at ``layout`` and holes elsewhere; its
    bytes (holes read as zeros)."""
    rng = random.Random(seed)
    image = bytearray(size)
    with path.open("wb") as f:
        for at, length in layout:
            data = rng.randbytes(length)
            image[at : at + length] = data
            f.seek(at)
            f.write(data)
        f.truncate(size)
    return bytes(image)


def source_volume(
    pool: tuple[libvirt.virConnect, Path], seed: int
) -> tuple[libvirt.virConnect, Path, Path, bytes]:
    """A sparse raw volume of :data:`LAYOUT` in ``pool``: (connection, the pool's
    directory, the volume's path, its bytes)."""
    conn, where = pool
    source = where / "source.raw"
    image = sparse_file(source, LAYOUT, SIZE, seed)
    conn.storagePoolLookupByName(where.name).refresh(0)
    return conn, where, source, image


def new_volume(conn: libvirt.virConnect, where: Path, name: str, size: int) -> Path:
    pool = conn.storagePoolLookupByName(where.name)
    xml = (
        f"<volume><name>{name}</name><capacity unit='bytes'>{size}</capacity>"
        "<allocation>0</allocation><target><format type='raw'/></target></volume>"
    )
    pool.createXML(xml, 0)
    return where / name


def test_a_volume_reads_as_its_data_and_its_holes_in_order(
    pool: tuple[libvirt.virConnect, Path],
) -> None:
    conn, _, source, image = source_volume(pool, seed=1)
    reader = VolumeReader(conn, str(source))
    pieces: list[bytes | int] = []
    while (piece := reader.read()) != b"":
        pieces.append(piece)
    reader.close(True)
    assert isinstance(pieces[0], int) and pieces[0] > 0  # the file starts with a hole
    assert isinstance(pieces[-1], int)  # and ends with one
    data = [p for p in pieces if isinstance(p, bytes)]
    assert all(0 < len(p) <= READ_SIZE for p in data)
    assert any(len(p) == READ_SIZE for p in data)  # the long extent came in full pieces
    rebuilt = b"".join(p if isinstance(p, bytes) else bytes(p) for p in pieces)
    assert rebuilt == image
    # the holes are the file's, no more (a hole inside a block is data to the file system)
    holes = sum(p for p in pieces if isinstance(p, int))
    assert holes == SIZE - data_bytes(source)


def test_a_copy_is_byte_for_byte_and_keeps_the_holes(
    pool: tuple[libvirt.virConnect, Path],
) -> None:
    conn, where, source, image = source_volume(pool, seed=2)
    dest = new_volume(conn, where, "copy.raw", SIZE)
    volume_stream.copy(conn, str(source), str(dest))
    assert dest.read_bytes() == image
    assert data_bytes(dest) <= data_bytes(source)


def test_a_writer_takes_data_and_holes_and_an_abandoned_one_says_nothing(
    pool: tuple[libvirt.virConnect, Path],
) -> None:
    conn, where = pool
    dest = new_volume(conn, where, "written.raw", 3 * MIB)
    writer = VolumeWriter(conn, str(dest))
    writer.skip(MIB)
    writer.write(b"\x01" * (MIB + 7))
    writer.skip(MIB - 7)
    writer.close(True)
    assert dest.read_bytes() == bytes(MIB) + b"\x01" * (MIB + 7) + bytes(MIB - 7)
    assert data_bytes(dest) < 2 * MIB  # the leading hole stayed one
    abandoned = VolumeWriter(conn, str(new_volume(conn, where, "abandoned.raw", MIB)))
    abandoned.write(b"\x02" * 4096)
    abandoned.close(False)  # (libvirt's word on an aborted stream is not raised)


def test_a_path_no_pool_holds_is_not_found(pool: tuple[libvirt.virConnect, Path]) -> None:
    conn, where = pool
    with pytest.raises(errors.NotFound):
        VolumeReader(conn, str(where / "no-such.raw"))
    with pytest.raises(errors.NotFound):
        VolumeWriter(conn, "/nowhere/at-all.raw")
