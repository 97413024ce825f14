"""The cloud-init seed's ISO 9660 image, read back by an ISO reader of its own (pycdlib)
and by util-linux's blkid (what cloud-init asks for a disk's label): for any files, the
names, contents and label are what cloud-init's NoCloud looks for."""

from __future__ import annotations

import datetime as dt
import io
import subprocess
from pathlib import Path

import pycdlib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from novacron.vm import seed_iso


def read_back(image: bytes) -> tuple[str, dict[str, bytes]]:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    try:
        files = {}
        for child in iso.list_children(iso_path="/"):
            name = child.file_identifier().decode()
            if child.is_dir():
                continue
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, iso_path=f"/{name}")
            files[name] = out.getvalue()
        return iso.pvd.volume_identifier.decode().rstrip(), files
    finally:
        iso.close()


@settings(max_examples=60, deadline=None)
@given(
    user=st.binary(max_size=9000),
    meta=st.binary(max_size=3000),
    network=st.one_of(st.none(), st.binary(max_size=5000)),
)
def test_any_files_are_read_back_as_written(
    user: bytes, meta: bytes, network: bytes | None
) -> None:
    files = {"user-data": user, "meta-data": meta}
    if network is not None:
        files["network-config"] = network
    image = seed_iso.build(files)
    assert len(image) % seed_iso.SECTOR == 0
    label, found = read_back(image)
    assert label == "cidata"
    assert found == {seed_iso.FILES[k]: v for k, v in files.items()}


def test_blkid_sees_a_file_system_labelled_cidata(tmp_path: Path) -> None:
    when = dt.datetime(2026, 12, 6, 1, 2, 3, tzinfo=dt.UTC)
    image = tmp_path / "seed.iso"
    image.write_bytes(seed_iso.build({"user-data": b"#cloud-config\n", "meta-data": b""}, when))
    probed = subprocess.run(
        ["blkid", "-p", "-o", "export", str(image)], capture_output=True, text=True, check=True
    ).stdout
    fields = dict(line.split("=", 1) for line in probed.splitlines() if "=" in line)
    assert (fields["TYPE"], fields["LABEL"]) == ("iso9660", "cidata")
    assert fields["UUID"] == "2026-12-06-01-02-03-00"  # the volume's creation time


def test_only_seed_files_are_written() -> None:
    with pytest.raises(ValueError, match="not a seed file"):
        seed_iso.build({"user-data": b"", "vendor-data": b""})
