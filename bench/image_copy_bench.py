"""Base-image copy benchmark: a new volume made from a base image through NovaCron's copy
path (``vm.create`` with ``disks: [{"image": ...}]``), against the copies an operator
would otherwise make.

    python bench/image_copy_bench.py [--mib 1024] [--seed 1] [--json]

Needs a libvirtd (``qemu:///system``; the system tests start one). In a pool of its own
(a directory under /var/tmp, removed at the end) it writes a raw image of the mix of
``bench/disk_copy_bench.py`` (45 % holes, 10 % written zeros, 30 % text-like, 15 %
random, in 1 MiB extents), makes a qcow2 image of it (``qemu-img convert``), and copies
each into a new volume as the daemon does: the file opened and checked
(:class:`~novacron.vm.base_images.ImageSource`), read with its holes skipped and zero
pieces sent as holes (:class:`~novacron.vm.base_images.ImageCopy`), written through
libvirt's sparse upload, the pool refreshed. Each copy is verified byte for byte.

Per image it prints the file's bytes, the bytes sent as data and as holes, the copy's
seconds and MB/s of the file, the new volume's allocation, and baselines on the same
file: ``cp --sparse=always`` (the disk's own speed), ``qemu-img convert`` to the same
format (the operator's copy by hand) and libvirt's own pool copy (``createXMLFrom``,
which ``vm.clone`` uses), each with its seconds and its file's allocation.
"""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import libvirt

if not __package__:  # run as `python bench/image_copy_bench.py`: the repository's packages first
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.disk_copy_bench import MIX, arguments, data_bytes, scratch_pool
from novacron.vm.base_images import ImageCopy, ImageSource
from novacron.vm.volume_stream import VolumeWriter


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def timed(argv: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - began


def copy(conn: libvirt.virConnect, pool: libvirt.virStoragePool, image: Path) -> dict[str, Any]:
    """``image`` into a new volume of ``pool`` through the daemon's copy path."""
    began = time.perf_counter()
    source = ImageSource.open(str(image), "image", None)
    target = pool.createXML(
        f"<volume><name>copy-{image.name}</name><capacity>0</capacity>"
        "<target><format type='raw'/></target></volume>",
        0,
    ).path()
    try:
        writer = VolumeWriter(conn, target)
        copier = ImageCopy(source, writer, 1 << 50)
        while copier.step():
            pass
        writer.close(True)
        pool.refresh(0)
    finally:
        source.close()
    seconds = time.perf_counter() - began
    return {
        "format": source.head.format,
        "copy_s": round(seconds, 3),
        "copy_mb_s": round(source.length / seconds / 1e6, 1),
        "data_bytes": copier.data,
        "hole_bytes": copier.holes,
        "allocated_bytes": allocated(Path(target)),
        "verified": filecmp.cmp(image, target, shallow=False),
    }


def baselines(pool: libvirt.virStoragePool, image: Path, fmt: str) -> dict[str, Any]:
    where = image.parent
    cp_s = timed(["cp", "--sparse=always", str(image), str(where / "by-cp")])
    convert_s = timed(
        ["qemu-img", "convert", "-f", fmt, "-O", fmt, str(image), str(where / "by-convert")]
    )
    pool.refresh(0)
    began = time.perf_counter()
    made = pool.createXMLFrom(
        f"<volume><name>by-libvirt.{fmt}</name><capacity>0</capacity>"
        f"<target><format type='{fmt}'/></target></volume>",
        pool.storageVolLookupByName(image.name),
        0,
    )
    libvirt_s = time.perf_counter() - began
    figures = {
        "cp_sparse_s": round(cp_s, 3),
        "cp_sparse_allocated_bytes": allocated(where / "by-cp"),
        "qemu_img_convert_s": round(convert_s, 3),
        "qemu_img_convert_allocated_bytes": allocated(where / "by-convert"),
        "libvirt_copy_s": round(libvirt_s, 3),
        "libvirt_copy_allocated_bytes": allocated(Path(made.path())),
    }
    for name in ("by-cp", "by-convert", f"by-libvirt.{fmt}"):
        (where / name).unlink()
    return figures


def run(mib: int, seed: int, uri: str) -> dict[str, Any]:
    results: dict[str, Any] = {"mib": mib, "seed": seed, "mix": dict(MIX), "images": {}}
    with scratch_pool(uri, "novacron-imagebench-", mib, seed) as (conn, pool, raw, qcow2):
        for image in (raw, qcow2):
            subprocess.run(["sync"], check=True)
            figures: dict[str, Any] = {
                "file_bytes": image.stat().st_size,
                "file_data_bytes": data_bytes(image),
            }
            figures.update(copy(conn, pool, image))
            figures.update(baselines(pool, image, figures["format"]))
            results["images"][image.suffix[1:]] = figures
    return results


def main() -> None:
    args = arguments(__doc__)
    results = run(args.mib, args.seed, args.uri)
    if args.json:
        print(json.dumps(results, sort_keys=True))
        return
    print(f"base image of {args.mib} MiB (mix {results['mix']}, seed {args.seed})")
    for name, f in results["images"].items():
        print(
            f"{name:6} file {f['file_bytes']:>12,} B ({f['file_data_bytes']:,} B not holes)"
            f"  copy {f['copy_s']:.3f} s = {f['copy_mb_s']} MB/s, data {f['data_bytes']:,} B,"
            f" holes {f['hole_bytes']:,} B, allocated {f['allocated_bytes']:,} B,"
            f" verified {f['verified']}"
        )
        print(
            f"{'':6} cp --sparse=always {f['cp_sparse_s']:.3f} s"
            f" ({f['cp_sparse_allocated_bytes']:,} B)"
            f"  qemu-img convert {f['qemu_img_convert_s']:.3f} s"
            f" ({f['qemu_img_convert_allocated_bytes']:,} B)"
            f"  libvirt createXMLFrom {f['libvirt_copy_s']:.3f} s"
            f" ({f['libvirt_copy_allocated_bytes']:,} B)"
        )


if __name__ == "__main__":
    main()
