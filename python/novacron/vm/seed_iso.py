"""A cloud-init NoCloud seed: an ISO 9660 image labelled ``cidata`` holding the files
``user-data``, ``meta-data`` and, when given, ``network-config`` in its root directory
(cloud-init's NoCloud datasource looks for a file system of that label on any disk).

Written here, byte for byte, from ECMA-119 (ISO 9660): 2,048-byte sectors; sectors
0-15 unused; the primary volume descriptor at 16 and the set terminator at 17; the
little- and big-endian path tables at 18 and 19 (one entry: the root); the root
directory at 20 (one sector: ``.``, ``..`` and up to three file records, far below a
sector's 2,048 bytes); each file's data from sector 21 on, a file starting on a sector
boundary. Numbers of both byte orders are written as ECMA-119 7.2.3 and 7.3.3 say
(little-endian, then big-endian). File names are level-1 identifiers with the version
``;1`` and the separator ECMA-119 requires (``USER-DATA.;1``); Linux shows them in
lower case without either (``user-data``), as cloud-init reads them. No Rock Ridge or
Joliet extensions: nothing here needs long or mixed-case names.

Pure: :func:`build` returns the image's bytes.
"""

from __future__ import annotations

import datetime as dt
import struct

SECTOR = 2048
PVD_AT = 16
L_PATH_AT = 18
M_PATH_AT = 19
ROOT_AT = 20
FIRST_FILE_AT = 21
LABEL = "cidata"
# the files cloud-init's NoCloud reads, and their names on the image
FILES = {
    "user-data": "USER-DATA.;1",
    "meta-data": "META-DATA.;1",
    "network-config": "NETWORK-CONFIG.;1",
}


def _both16(value: int) -> bytes:
    return struct.pack("<H", value) + struct.pack(">H", value)


def _both32(value: int) -> bytes:
    return struct.pack("<I", value) + struct.pack(">I", value)


def _text(value: str, size: int) -> bytes:
    return value.encode("ascii").ljust(size, b" ")


def _record_date(when: dt.datetime) -> bytes:
    """A directory record's 7-byte date (ECMA-119 9.1.5), UTC."""
    return bytes([when.year - 1900, when.month, when.day, when.hour, when.minute, when.second, 0])


def _volume_date(when: dt.datetime) -> bytes:
    """A volume descriptor's 17-byte date (ECMA-119 8.4.26.1), UTC."""
    return when.strftime("%Y%m%d%H%M%S00").encode("ascii") + b"\x00"


def _record(name: bytes, sector: int, length: int, directory: bool, when: dt.datetime) -> bytes:
    """A directory record (ECMA-119 9.1), padded to an even length."""
    size = 33 + len(name) + (1 - len(name) % 2)
    record = (
        bytes([size, 0])
        + _both32(sector)
        + _both32(length)
        + _record_date(when)
        + bytes([2 if directory else 0, 0, 0])
        + _both16(1)
        + bytes([len(name)])
        + name
    )
    return record.ljust(size, b"\x00")


def _path_table(sector: int, order: str) -> bytes:
    """The one-entry path table (ECMA-119 9.4): the root, its own parent."""
    return bytes([1, 0]) + struct.pack(f"{order}IH", sector, 1) + b"\x00\x00"


def build(files: dict[str, bytes], when: dt.datetime | None = None) -> bytes:
    """The seed image holding ``files`` (keys of :data:`FILES`; each file at most 4 GiB:
    far more than a seed holds)."""
    unknown = set(files) - set(FILES)
    if unknown:
        raise ValueError(f"not a seed file: {sorted(unknown)}")
    when = when or dt.datetime.now(dt.UTC)
    sector = FIRST_FILE_AT
    placed: list[tuple[bytes, int, bytes]] = []
    for key in sorted(files, key=lambda k: FILES[k]):  # records in order of their names
        data = files[key]
        placed.append((FILES[key].encode("ascii"), sector, data))
        sector += max(1, -(-len(data) // SECTOR))
    total = sector
    itself = _record(b"\x00", ROOT_AT, SECTOR, True, when)  # "." (and the PVD's root)
    root = itself + _record(b"\x01", ROOT_AT, SECTOR, True, when)
    for name, at, data in placed:
        root += _record(name, at, len(data), False, when)
    assert len(root) <= SECTOR
    path_table_size = 10
    date = _volume_date(when)
    pvd = (
        b"\x01CD001\x01\x00"
        + _text("LINUX", 32)
        + _text(LABEL, 32)
        + bytes(8)
        + _both32(total)
        + bytes(32)
        + _both16(1)
        + _both16(1)
        + _both16(SECTOR)
        + _both32(path_table_size)
        + struct.pack("<I", L_PATH_AT)
        + bytes(4)
        + struct.pack(">I", M_PATH_AT)
        + bytes(4)
        + itself
        + _text("", 128)  # volume set
        + _text("", 128)  # publisher
        + _text("", 128)  # data preparer
        + _text("NOVACRON", 128)  # application
        + _text("", 37 * 3)  # copyright, abstract, bibliographic files
        + date
        + date
        + b"0" * 16
        + b"\x00"
        + date
        + b"\x01\x00"
    )
    assert len(pvd) == 883
    image = bytearray(total * SECTOR)
    image[PVD_AT * SECTOR : PVD_AT * SECTOR + len(pvd)] = pvd
    terminator = b"\xffCD001\x01"
    image[(PVD_AT + 1) * SECTOR : (PVD_AT + 1) * SECTOR + len(terminator)] = terminator
    image[L_PATH_AT * SECTOR : L_PATH_AT * SECTOR + 10] = _path_table(ROOT_AT, "<")
    image[M_PATH_AT * SECTOR : M_PATH_AT * SECTOR + 10] = _path_table(ROOT_AT, ">")
    image[ROOT_AT * SECTOR : ROOT_AT * SECTOR + len(root)] = root
    for _, at, data in placed:
        image[at * SECTOR : at * SECTOR + len(data)] = data
    return bytes(image)
