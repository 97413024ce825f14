"""``vm.create``'s ``cloud_init``: which maps are taken, the meta data a VM gets when
none is given, and the seed image made ready to copy into a volume."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import pycdlib
import pytest

from novacron.errors import InvalidParams
from novacron.vm import cloud_init
from novacron.vm.base_images import ImageCopy


class Kept:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def skip(self, length: int) -> None:
        self.data += bytes(length)


def test_the_files_and_the_default_meta_data() -> None:
    assert cloud_init.parse("cloud_init", {}, "web1") == {}
    files = cloud_init.parse("cloud_init", {"user_data": "#cloud-config\n"}, "web1")
    assert files["user-data"] == b"#cloud-config\n"
    meta = files["meta-data"].decode()
    assert re.fullmatch(r"instance-id: [0-9a-f-]{36}\nlocal-hostname: web1\n", meta), meta
    again = cloud_init.parse("cloud_init", {"user_data": "#cloud-config\n"}, "web1")
    assert again["meta-data"] != files["meta-data"]  # an instance id of each VM's own
    given = cloud_init.parse(
        "cloud_init",
        {"user_data": b"\x00binary", "meta_data": "instance-id: x\n", "network_config": "v: 2"},
        "web1",
    )
    assert given == {
        "user-data": b"\x00binary",
        "meta-data": b"instance-id: x\n",
        "network-config": b"v: 2",
    }
    assert cloud_init.seed_disk().to_dict() == {"size_gib": 1, "path": None, "format": "raw"}


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ({"meta_data": "instance-id: x\n"}, "cloud_init.user_data"),
        ({"user_data": 5}, "cloud_init.user_data"),
        ({"user_data": "x" * (512 * 1024 + 1)}, "cloud_init.user_data"),
        ({"user_data": "x", "network_config": "y" * (64 * 1024 + 1)}, "cloud_init.network_config"),
        ({"user_data": "x", "vendor_data": "y"}, "cloud_init"),
    ],
)
def test_refusals(raw: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidParams) as refused:
        cloud_init.parse("cloud_init", raw, "web1")
    assert refused.value.details["param"] == param


def test_the_seed_is_an_unnamed_file_copied_like_an_image(tmp_path: Path) -> None:
    files = {"user-data": b"#cloud-config\n", "meta-data": b"instance-id: x\n"}
    source = cloud_init.seed(files, tmp_path)
    try:
        assert os.listdir(tmp_path) == []  # nothing left behind by name
        assert source.head.format == "raw" and source.length % 2048 == 0
        kept = Kept()
        copy = ImageCopy(source, kept, 1 << 30)
        while copy.step():
            pass
    finally:
        source.close()
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(bytes(kept.data)))
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, iso_path="/USER-DATA.;1")
    assert out.getvalue() == b"#cloud-config\n"
    iso.close()
