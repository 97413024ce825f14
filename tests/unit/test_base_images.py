"""Base images copied into new volumes: which files are copied and which refused (images
made by QEMU's own ``qemu-img``, and any bytes at all), the sizes a copy gets, and the
copy itself, piece by piece, into a writer that keeps what it is given (the volume end,
through libvirt, is in ``tests/system/test_disks.py``)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from novacron import errors
from novacron.vm import base_images
from novacron.vm.base_images import GIB, ImageCopy, ImageRefused, ImageSource, inspect
from novacron.vm.spec import DiskSpec


def qemu_img(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def head_of(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(base_images.HEAD)


class Kept:
    """The writer end: keeps the file the copy writes, holes as zeros."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.holes = 0

    def write(self, data: bytes) -> None:
        self.data += data

    def skip(self, length: int) -> None:
        self.data += bytes(length)
        self.holes += length


def copied(source: ImageSource, most: int = 64 * GIB) -> tuple[Kept, ImageCopy]:
    kept = Kept()
    copy = ImageCopy(source, kept, most)
    while copy.step():
        pass
    return kept, copy


def test_qcow2_images_of_both_versions_are_read_from_their_headers(tmp_path: Path) -> None:
    v3, v2 = tmp_path / "v3.qcow2", tmp_path / "v2.qcow2"
    qemu_img("create", "-f", "qcow2", v3, "3G")
    qemu_img("create", "-f", "qcow2", "-o", "compat=0.10", v2, "1536M")
    assert inspect(head_of(v3), v3.stat().st_size) == base_images.ImageHead("qcow2", 3 * GIB)
    two = inspect(head_of(v2), v2.stat().st_size)
    assert two == base_images.ImageHead("qcow2", 1536 << 20)
    assert two.size_gib == 2


def test_anything_without_qcow2s_magic_is_raw_of_its_files_size() -> None:
    assert inspect(b"\x00" * 4096, 5000) == base_images.ImageHead("raw", 5000)
    assert inspect(b"QFI", 3).format == "raw"
    assert base_images.ImageHead("raw", 1).size_gib == 1
    assert base_images.ImageHead("raw", GIB + 1).size_gib == 2


def test_images_that_reach_other_files_or_cannot_be_read_are_refused(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-f", "qcow2", base, "1M")
    over = tmp_path / "over.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", base, "-F", "qcow2", over)
    with pytest.raises(ImageRefused, match="backing file"):
        inspect(head_of(over), over.stat().st_size)
    data = tmp_path / "data.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path}/data.raw", data, "1M")
    with pytest.raises(ImageRefused, match="external data file"):
        inspect(head_of(data), data.stat().st_size)
    secret = bytearray(head_of(base))
    secret[32:36] = (2).to_bytes(4, "big")  # crypt_method: LUKS (qemu-img makes such an
    with pytest.raises(ImageRefused, match="encrypted"):  # image only after timing its KDF)
        inspect(bytes(secret), 1 << 20)
    head = bytearray(head_of(base))
    head[79] |= 0b10  # the corrupt bit (incompatible features, 8 bytes at 72)
    with pytest.raises(ImageRefused, match="corrupt"):
        inspect(bytes(head), 1 << 20)
    head[79] &= ~0b10
    head[72] |= 0x80  # a feature QEMU does not know
    with pytest.raises(ImageRefused, match="does not know"):
        inspect(bytes(head), 1 << 20)
    with pytest.raises(ImageRefused, match="cut short"):
        inspect(head_of(base)[:60], 60)
    zero = bytearray(head_of(base))
    zero[24:32] = bytes(8)  # no virtual size
    with pytest.raises(ImageRefused, match="no size"):
        inspect(bytes(zero), 1 << 20)
    version = bytearray(head_of(base))
    version[7] = 4
    with pytest.raises(ImageRefused, match="version 4"):
        inspect(bytes(version), 1 << 20)


@settings(max_examples=500)
@given(st.binary(max_size=200), st.integers(0, 1 << 50))
def test_any_bytes_are_an_image_or_refused_with_a_reason(tail: bytes, size: int) -> None:
    for head in (tail, b"QFI\xfb" + tail):
        try:
            found = inspect(head, size)
        except ImageRefused as exc:
            assert str(exc)
        else:
            assert found.format in ("raw", "qcow2") and found.virtual_size >= 0
            assert (found.format == "qcow2") == head.startswith(b"QFI\xfb")


def test_only_a_regular_file_is_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it must not wait for a writer
    for path, why in ((fifo, "not a regular file"), (tmp_path, "not a regular file")):
        with pytest.raises(errors.InvalidParams, match=why) as refused:
            ImageSource.open(str(path), "disks[0].image", None)
        assert refused.value.details == {"param": "disks[0].image", "path": str(path)}
    with pytest.raises(errors.InvalidParams, match="No such file"):
        ImageSource.open(str(tmp_path / "nothing"), "image", None)


def test_the_check_sees_the_file_that_is_open(tmp_path: Path) -> None:
    real = tmp_path / "images" / "debian.raw"
    real.parent.mkdir()
    real.write_bytes(b"x" * 4096)
    link = tmp_path / "link.raw"
    link.symlink_to(real)
    seen: list[str] = []
    source = ImageSource.open(str(link), "image", seen.append)
    try:
        assert seen == [str(real)] and source.real == str(real) and source.path == str(link)
        assert source.head == base_images.ImageHead("raw", 4096)
    finally:
        source.close()

    def refuse(real: str) -> None:
        raise errors.PermissionDenied(f"not {real}", {"path": real})

    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(errors.PermissionDenied):
        ImageSource.open(str(link), "image", refuse)
    assert set(os.listdir("/proc/self/fd")) == before  # nothing left open


def test_a_sparse_raw_file_is_copied_with_its_holes_as_holes(tmp_path: Path) -> None:
    image = tmp_path / "sparse.raw"
    with image.open("wb") as f:
        f.write(os.urandom(5000))
        f.seek(8 << 20)
        f.write(os.urandom(3 << 20))  # more than one piece
        f.seek(16 << 20)
        f.write(bytes(1 << 20))  # written zeros: sent as a hole too
        f.truncate(20 << 20)  # a hole at the end
    source = ImageSource.open(str(image), "image", None)
    try:
        # what the pool is asked to have room for: the file's blocks, not its length
        assert (4 << 20) <= source.allocated < (6 << 20)
        kept, copy = copied(source)
    finally:
        source.close()
    assert bytes(kept.data) == image.read_bytes()
    assert copy.data + copy.holes == 20 << 20
    assert copy.data < (4 << 20) + (1 << 20)  # the data runs (block-rounded), no more
    assert kept.holes >= 15 << 20


def test_a_qcow2_image_is_copied_byte_for_byte(tmp_path: Path) -> None:
    raw = tmp_path / "content.raw"
    raw.write_bytes(os.urandom(1 << 20) + bytes(1 << 20) + os.urandom(65536))
    image = tmp_path / "base.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", raw, image)
    source = ImageSource.open(str(image), "image", None)
    try:
        kept, _ = copied(source)
    finally:
        source.close()
    out = tmp_path / "copy.qcow2"
    out.write_bytes(bytes(kept.data))
    qemu_img("compare", "-f", "qcow2", "-F", "raw", out, raw)  # the same disk


def test_a_file_changed_while_it_is_copied_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "base.raw"
    image.write_bytes(b"\x01" * (3 << 20))
    source = ImageSource.open(str(image), "image", None)
    try:
        qcow = tmp_path / "other.qcow2"
        qemu_img("create", "-f", "qcow2", qcow, "1M")
        with image.open("r+b") as f:  # now it looks like a qcow2 image
            f.write(head_of(qcow))
        with pytest.raises(ImageRefused, match="header changed"):
            copied(source)
        image.write_bytes(b"\x01" * (1 << 20))  # now shorter than when opened
        with pytest.raises(ImageRefused, match="shrank"):
            copied(source)
    finally:
        source.close()
    # a qcow2 image whose disk grew past the volume's size meanwhile
    grown = tmp_path / "grown.qcow2"
    qemu_img("create", "-f", "qcow2", grown, "1G")
    source = ImageSource.open(str(grown), "image", None)
    try:
        qemu_img("resize", grown, "3G")
        with pytest.raises(ImageRefused, match="header changed"):
            copied(source, most=2 * GIB)
    finally:
        source.close()


def test_a_copys_size_and_format_follow_the_image(tmp_path: Path) -> None:
    image = tmp_path / "base.qcow2"
    qemu_img("create", "-f", "qcow2", image, "1536M")
    disks = (
        DiskSpec(size_gib=1),
        DiskSpec(image=str(image), format=""),
        DiskSpec(image=str(image), size_gib=8, format="qcow2"),
    )
    checked: list[tuple[str, str]] = []
    done, sources = base_images.open_images(
        disks, "disks[{}].image".format, lambda p, r: checked.append((p, r))
    )
    try:
        assert [(d.size_gib, d.format) for d in done] == [(1, "qcow2"), (2, "qcow2"), (8, "qcow2")]
        assert list(sources) == [str(image)]  # one file for both
        assert checked == [("disks[1].image", str(image))]
    finally:
        base_images.close_all(sources)
    assert all(s.fd == -1 for s in sources.values())
    huge = tmp_path / "huge.qcow2"
    qemu_img("create", "-f", "qcow2", huge, "65537G")  # (qcow2 holds it; a volume may not)
    for disk, match in (
        (DiskSpec(image=str(image), size_gib=1, format=""), "more than 1 GiB"),
        (DiskSpec(image=str(image), format="raw"), "is a qcow2 image"),
        (DiskSpec(image=str(huge), format=""), "more than a volume's 65536"),
    ):
        before = set(os.listdir("/proc/self/fd"))
        with pytest.raises(errors.InvalidParams, match=match) as refused:
            base_images.open_images((disk,), lambda i: "image", lambda p, r: None)
        assert refused.value.details["param"] == "image"
        assert set(os.listdir("/proc/self/fd")) == before
