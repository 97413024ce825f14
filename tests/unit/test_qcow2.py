"""Backing chains read from qcow2 headers: images made by QEMU's own ``qemu-img``, and
headers of any bytes."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from novacron.vm import qcow2


def qemu_img(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def overlay(path: Path, backing: str, backing_format: str = "qcow2") -> Path:
    """A qcow2 image over ``backing`` (as written: relative names stay relative); the
    backing file need not exist (``-u``)."""
    qemu_img("create", "-f", "qcow2", "-u", "-b", backing, "-F", backing_format, path, "1M")
    return path


def test_a_chain_is_followed_through_relative_and_absolute_names(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    base = tmp_path / "base" / "base.raw"
    qemu_img("create", "-f", "raw", base, "1M")
    middle = overlay(tmp_path / "base" / "middle.qcow2", "base.raw", "raw")
    top = overlay(tmp_path / "top.qcow2", str(middle))
    assert qcow2.backing_name(str(top)) == str(middle)
    assert qcow2.backing_name(str(middle)) == "base.raw"  # relative to middle's directory
    assert qcow2.backing_name(str(base)) is None  # raw: no header
    assert qcow2.first_missing(str(top)) is None
    base.unlink()
    gone = qcow2.Needed(str(tmp_path / "base" / "base.raw"), "backing")
    assert qcow2.first_missing(str(top)) == gone
    assert qcow2.first_missing(str(middle)) == gone


def test_an_image_without_a_backing_file_needs_nothing(tmp_path: Path) -> None:
    alone = tmp_path / "alone.qcow2"
    qemu_img("create", "-f", "qcow2", alone, "1M")
    assert qcow2.backing_name(str(alone)) is None
    assert qcow2.first_missing(str(alone)) is None
    # a relative name is looked for beside the image that names it, not in the cwd
    named = overlay(tmp_path / "named.qcow2", "elsewhere.qcow2")
    assert qcow2.first_missing(str(named)) == qcow2.Needed(
        str(tmp_path / "elsewhere.qcow2"), "backing"
    )


def test_protocols_loops_and_unreadable_headers_are_left_to_qemu(tmp_path: Path) -> None:
    nbd = overlay(tmp_path / "nbd.qcow2", "nbd://127.0.0.1:10809/export", "raw")
    assert qcow2.first_missing(str(nbd)) is None
    a = tmp_path / "a.qcow2"
    qemu_img("create", "-f", "qcow2", a, "1M")
    b = overlay(tmp_path / "b.qcow2", "a.qcow2")
    qemu_img("rebase", "-u", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", a)
    assert qcow2.backing_name(str(a)) == "b.qcow2"
    assert qcow2.first_missing(str(b)) is None  # a loop: not followed forever
    # a header whose name runs past the image's end
    cut = tmp_path / "cut.qcow2"
    cut.write_bytes(struct.pack(">4sIQI", b"QFI\xfb", 3, 4096, 20))
    with pytest.raises(qcow2.UnreadableImage, match="past the image's end"):
        qcow2.backing_name(str(cut))
    assert qcow2.first_missing(str(cut)) is None
    assert qcow2.first_missing(str(tmp_path / "no-such-image")) is None


def test_an_external_data_file_is_needed_where_its_absolute_name_says(tmp_path: Path) -> None:
    data = tmp_path / "data.raw"
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={data}", base, "1M")
    top = overlay(tmp_path / "top.qcow2", "base.qcow2")
    assert qcow2.data_file_name(str(base)) == str(data)
    assert qcow2.data_file_name(str(top)) is None
    assert qcow2.first_missing(str(top)) is None
    data.unlink()
    # the base's data file, found through the chain
    assert qcow2.first_missing(str(top)) == qcow2.Needed(str(data), "data_file")
    assert qcow2.first_missing(str(base)) == qcow2.Needed(str(data), "data_file")
    # an image's own data file comes before its backing file
    both = tmp_path / "both.qcow2"
    qemu_img(
        "create", "-f", "qcow2", "-u", "-b", "gone.qcow2", "-F", "qcow2",
        "-o", f"data_file={tmp_path / 'both.raw'}", both, "1M",
    )  # fmt: skip
    (tmp_path / "both.raw").unlink()
    assert qcow2.first_missing(str(both)) == qcow2.Needed(str(tmp_path / "both.raw"), "data_file")


def test_a_relative_data_file_name_is_left_to_qemu(tmp_path: Path) -> None:
    # QEMU opens it from its own working directory, not the image's
    image = tmp_path / "rel.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", "-o", "data_file=rel.raw", str(image), "1M"],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    assert qcow2.data_file_name(str(image)) == "rel.raw"
    (tmp_path / "rel.raw").unlink()
    assert qcow2.first_missing(str(image)) is None


def v3_header(incompatible: int, extensions: list[tuple[int, bytes]], length: int = 112) -> bytes:
    """A version 3 header with no backing file and these extensions (then the end)."""
    fields = (qcow2.MAGIC, 3, 0, 0, 16, 1 << 20, 0, 0, 0, 0, 0, 0, 0)  # up to byte 72
    head = struct.pack(">4sIQIIQIIQQIIQQQQII", *fields, incompatible, 0, 0, 4, length)
    head = head.ljust(length, b"\0")
    for kind, data in [*extensions, (0, b"")]:
        head += struct.pack(">II", kind, len(data)) + data.ljust((len(data) + 7) // 8 * 8, b"\0")
    return head


def test_a_data_file_is_named_by_its_header_extension() -> None:
    table = (0x6803F857, b"\0" * 48)
    name = (qcow2.DATA_FILE, b"/images/d.raw")
    assert qcow2.data_file_field(v3_header(qcow2.EXTERNAL_DATA, [table, name])) == "/images/d.raw"
    # without the feature bit an extension names nothing QEMU opens
    assert qcow2.data_file_field(v3_header(0, [name])) is None
    with pytest.raises(qcow2.UnreadableImage, match="do not name"):
        qcow2.data_file_field(v3_header(qcow2.EXTERNAL_DATA, [table]))
    with pytest.raises(qcow2.UnreadableImage, match="header length"):
        qcow2.data_file_field(v3_header(qcow2.EXTERNAL_DATA, [name], length=100))
    with pytest.raises(qcow2.UnreadableImage, match="UTF-8"):
        qcow2.data_file_field(v3_header(qcow2.EXTERNAL_DATA, [(qcow2.DATA_FILE, b"\xff")]))


@given(st.binary(max_size=300), st.integers(min_value=0, max_value=200))
def test_any_extensions_are_read_or_refused_with_a_clear_error(tail: bytes, cut: int) -> None:
    head = v3_header(qcow2.EXTERNAL_DATA, [])[:112] + tail
    try:
        name = qcow2.data_file_field(head[: len(head) - cut])
    except qcow2.UnreadableImage:
        return
    assert name is None or 0 < len(name.encode()) <= qcow2.MAX_NAME


def test_a_name_that_is_not_utf8_is_unreadable(tmp_path: Path) -> None:
    bad = tmp_path / "bad.qcow2"
    bad.write_bytes(struct.pack(">4sIQI", b"QFI\xfb", 2, 20, 2) + b"\xff\xfe")
    with pytest.raises(qcow2.UnreadableImage, match="UTF-8"):
        qcow2.backing_name(str(bad))


@pytest.mark.parametrize(
    ("name", "protocol"),
    [
        ("nbd:localhost:10809", True),
        ('json:{"driver": "raw"}', True),
        ("rbd:pool/image", True),
        ("/images/a:b.qcow2", False),
        ("base.qcow2", False),
        ("dir/with:colon", False),
        (":leading", False),
    ],
)
def test_what_qemu_reads_as_a_protocol(name: str, protocol: bool) -> None:
    assert qcow2.is_protocol(name) is protocol


@given(st.binary(max_size=40))
def test_any_header_is_read_or_refused_with_a_clear_error(head: bytes) -> None:
    try:
        field = qcow2.backing_field(head)
    except qcow2.UnreadableImage:
        assert head.startswith(qcow2.MAGIC)
        return
    if field is not None:
        offset, length = field
        assert head.startswith(qcow2.MAGIC)
        assert offset >= qcow2.HEADER.size and 0 < length <= qcow2.MAX_NAME


@given(
    st.sampled_from([2, 3]),
    st.integers(min_value=24, max_value=1 << 40),
    st.integers(min_value=1, max_value=qcow2.MAX_NAME),
)
def test_a_valid_header_gives_its_field(version: int, offset: int, length: int) -> None:
    head = struct.pack(">4sIQI", qcow2.MAGIC, version, offset, length) + os.urandom(8)
    assert qcow2.backing_field(head) == (offset, length)
    no_backing = struct.pack(">4sIQI", qcow2.MAGIC, version, 0, 0)
    assert qcow2.backing_field(no_backing) is None


def test_a_version_2_image_with_snapshots_is_told_apart(tmp_path: Path) -> None:
    """Only a version 2 image holding snapshots counts: QEMU grows the others."""
    counts = {}
    for compat, snapshots in (("0.10", 2), ("0.10", 0), ("1.1", 2)):
        path = tmp_path / f"{compat}-{snapshots}.qcow2"
        qemu_img("create", "-f", "qcow2", "-o", f"compat={compat}", path, "1M")
        for i in range(snapshots):
            qemu_img("snapshot", "-c", f"s{i}", path)
        counts[compat, snapshots] = qcow2.v2_snapshots_of(str(path))
    assert counts == {("0.10", 2): 2, ("0.10", 0): 0, ("1.1", 2): 0}
    raw = tmp_path / "plain.raw"
    qemu_img("create", "-f", "raw", raw, "1M")
    assert qcow2.v2_snapshots_of(str(raw)) == 0
    # what QEMU says of the one counted, and of the same image once it is version 3
    held = tmp_path / "0.10-2.qcow2"
    refused = subprocess.run(["qemu-img", "resize", str(held), "2M"], capture_output=True)
    assert refused.returncode != 0 and b"v2 image which has snapshots" in refused.stderr
    qemu_img("amend", "-o", "compat=1.1", held)
    assert qcow2.v2_snapshots_of(str(held)) == 0
    qemu_img("resize", held, "2M")


@given(st.binary(max_size=80))
def test_any_header_gives_a_snapshot_count_only_for_version_2(head: bytes) -> None:
    count = qcow2.v2_snapshots(head)
    assert count >= 0
    if count:
        assert head.startswith(qcow2.MAGIC) and qcow2.HEADER.unpack_from(head)[1] == 2
