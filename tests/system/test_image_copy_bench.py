"""``bench/image_copy_bench.py`` on a small image through the real libvirtd: both copies
verified, the figures it prints there, holes and written zeros kept out of the data."""

from __future__ import annotations

from bench.image_copy_bench import run

from tests.system.libvirt_host import URI, LibvirtHost


def test_the_bench_copies_both_formats_and_reports_its_figures(libvirt_host: LibvirtHost) -> None:
    results = run(64, 3, URI)
    assert set(results["images"]) == {"raw", "qcow2"}
    for name, f in results["images"].items():
        assert f["verified"], name
        assert f["format"] == name
        assert f["data_bytes"] + f["hole_bytes"] == f["file_bytes"], name
        # the holes and the written zeros are not written (qcow2 keeps no zero clusters)
        assert f["data_bytes"] <= f["file_data_bytes"] and f["allocated_bytes"] < (64 << 20)
        for key in ("copy_s", "cp_sparse_s", "qemu_img_convert_s", "libvirt_copy_s"):
            assert f[key] > 0, (name, key)
    raw = results["images"]["raw"]
    assert raw["file_bytes"] == 64 << 20 and raw["hole_bytes"] > 0
