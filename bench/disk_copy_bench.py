"""Storage-copy benchmark: a volume's file through NovaCron's copy path, against what a
plain copy costs.

    python bench/disk_copy_bench.py [--mib 1024] [--seed 1] [--json]

Needs a libvirtd (``qemu:///system``; the system tests start one). In a pool of its own
(a directory under /var/tmp, removed at the end) it writes a raw volume of the
documented mix, makes a qcow2 image of it (``qemu-img convert``), and copies each into
a new volume the way a stopped VM's move does: libvirt's sparse download, the sender's
frames (holes, zero blocks cut out, zstd-1 where it pays), the receiver's checks,
libvirt's sparse upload. The two ends run on two threads joined by a queue of frames,
as the two daemons run at once (no TLS, no network: the figures are the copy path's
own). The copy is verified byte for byte. The mix, in 1 MiB extents of the volume:

* 45 % never written (holes in the file);
* 10 % written with zeros (allocated: what a preallocated or wiped disk holds);
* 30 % text/code-like (files, logs, binaries: compress well);
* 15 % random (compressed or encrypted data).

Per image it prints the file's bytes, the copy's wire bytes and seconds, and baselines
on the same file: the data libvirt's sparse stream alone would carry (every byte that is
not a hole), zstd-1 alone over the whole file, and ``cp --sparse=always`` (a local copy:
the disk's own speed).
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import json
import os
import queue
import random
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import zstandard

from novacron.migration import disk_wire, frames
from novacron.vm.volume_stream import VolumeReader, VolumeWriter

EXTENT = 1 << 20
MIX = (("hole", 45), ("zero", 10), ("text", 30), ("random", 15))


def write_volume(path: Path, mib: int, seed: int) -> None:
    rng = random.Random(seed)
    words = b"int main return static struct GET /index.html HTTP/1.1 nginx kernel: eth0 up ".split()
    text = b" ".join(rng.choice(words) for _ in range(300_000))
    kinds = [k for k, share in MIX for _ in range(share)]
    with path.open("wb") as f:
        for i in range(mib):
            kind = rng.choice(kinds)
            f.seek(i * EXTENT)
            if kind == "zero":
                f.write(bytes(EXTENT))
            elif kind == "text":
                at = rng.randrange(len(text) - EXTENT)
                f.write(text[at : at + EXTENT])
            elif kind == "random":
                f.write(rng.randbytes(EXTENT))
        f.truncate(mib * EXTENT)


def data_bytes(path: Path) -> int:
    """Bytes of ``path`` that are not holes (what a sparse stream carries)."""
    total, size = 0, path.stat().st_size
    with path.open("rb") as f:
        fd, at = f.fileno(), 0
        while at < size:
            try:
                start = os.lseek(fd, at, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            total, at = total + end - start, end
    return total


@contextlib.contextmanager
def dir_pool(
    uri: str, prefix: str
) -> Iterator[tuple[libvirt.virConnect, libvirt.virStoragePool, Path]]:
    """A libvirt directory pool of its own in a new directory under /var/tmp named
    ``prefix``...: (connection, pool, directory); pool and directory removed at the end."""
    conn = libvirt.open(uri)
    where = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    where.chmod(0o755)
    pool = conn.storagePoolCreateXML(
        f"<pool type='dir'><name>{where.name}</name><target><path>{where}</path></target></pool>",
        0,
    )
    try:
        yield conn, pool, where
    finally:
        pool.destroy()
        conn.close()
        shutil.rmtree(where, ignore_errors=True)


@contextlib.contextmanager
def scratch_pool(
    uri: str, prefix: str, mib: int, seed: int
) -> Iterator[tuple[libvirt.virConnect, libvirt.virStoragePool, Path, Path]]:
    """A :func:`dir_pool` holding a raw image of the mix (``mib``, ``seed``) and a qcow2
    image of it: (connection, pool, raw, qcow2)."""
    with dir_pool(uri, prefix) as (conn, pool, where):
        raw = where / "source.raw"
        write_volume(raw, mib, seed)
        qcow2 = where / "source.qcow2"
        subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow2)], check=True)
        pool.refresh(0)
        yield conn, pool, raw, qcow2


def arguments(doc: str) -> argparse.Namespace:
    """The options both storage benches take."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--uri", default="qemu:///system")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


def copy(conn: libvirt.virConnect, source: str, target: str) -> dict[str, Any]:
    """``source`` into ``target`` (a new empty volume) through the copy path."""
    wire: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
    sender = disk_wire.DiskSender()
    failure: list[BaseException] = []

    def send() -> None:
        reader = VolumeReader(conn, source)
        try:
            wire.put(sender.begin(0))
            while True:
                got = reader.read()
                if got == b"":
                    break
                wire.put(sender.hole(got) if isinstance(got, int) else sender.data(got))
            wire.put(sender.end())
            reader.close(True)
        except BaseException as exc:
            failure.append(exc)
            reader.close(False)
        finally:
            wire.put(None)

    began = time.perf_counter()
    thread = threading.Thread(target=send)
    thread.start()
    receiver = disk_wire.DiskReceiver([1 << 40])
    decoder = frames.FrameDecoder()
    writer: VolumeWriter | None = None
    while (chunk := wire.get()) is not None:
        for frame in decoder.feed(chunk):
            action = receiver.feed(frame)
            if isinstance(action, disk_wire.Begin):
                writer = VolumeWriter(conn, target)
            elif isinstance(action, disk_wire.Data):
                assert writer is not None
                writer.write(action.data)
            elif isinstance(action, disk_wire.Hole):
                assert writer is not None
                writer.skip(action.length)
            else:
                assert writer is not None
                writer.close(True)
    thread.join()
    if failure:
        raise failure[0]
    assert receiver.done
    return {
        "copy_s": round(time.perf_counter() - began, 3),
        "wire_bytes": sender.wire,
        "zero_bytes": sender.zero,
        "logical_bytes": sender.logical,
    }


def baselines(path: Path) -> dict[str, Any]:
    began = time.perf_counter()
    with path.open("rb") as f:
        packed = zstandard.ZstdCompressor(level=1).compress(f.read())
    zstd_s = time.perf_counter() - began
    began = time.perf_counter()
    subprocess.run(["cp", "--sparse=always", str(path), f"{path}.cp"], check=True)
    cp_s = time.perf_counter() - began
    Path(f"{path}.cp").unlink()
    return {
        "sparse_stream_bytes": data_bytes(path),
        "zstd1_bytes": len(packed),
        "zstd1_s": round(zstd_s, 3),
        "cp_sparse_s": round(cp_s, 3),
    }


def run(mib: int, seed: int, uri: str) -> dict[str, Any]:
    results: dict[str, Any] = {"mib": mib, "seed": seed, "mix": dict(MIX), "images": {}}
    with scratch_pool(uri, "novacron-diskbench-", mib, seed) as (conn, pool, raw, qcow2):
        for image in (raw, qcow2):
            target = pool.createXML(
                f"<volume><name>copy-{image.name}</name><capacity>0</capacity>"
                "<target><format type='raw'/></target></volume>",
                0,
            ).path()
            figures = {"file_bytes": image.stat().st_size, **copy(conn, str(image), target)}
            figures["verified"] = filecmp.cmp(image, target, shallow=False)
            figures.update(baselines(image))
            figures["copy_mb_s"] = round(figures["file_bytes"] / figures["copy_s"] / 1e6, 1)
            results["images"][image.suffix[1:]] = figures
    return results


def main() -> None:
    args = arguments(__doc__)
    results = run(args.mib, args.seed, args.uri)
    if args.json:
        print(json.dumps(results, sort_keys=True))
        return
    print(f"{args.mib} MiB volume, mix {dict(MIX)} (seed {args.seed})")
    for kind, f in results["images"].items():
        print(
            f"{kind:6} file {f['file_bytes'] / 1e6:8.1f} MB | copy {f['copy_s']:6.2f} s "
            f"({f['copy_mb_s']} MB/s), wire {f['wire_bytes'] / 1e6:7.1f} MB | sparse stream "
            f"{f['sparse_stream_bytes'] / 1e6:7.1f} MB | zstd-1 {f['zstd1_bytes'] / 1e6:7.1f} MB "
            f"in {f['zstd1_s']:.2f} s | cp --sparse {f['cp_sparse_s']:.2f} s | "
            f"verified {f['verified']}"
        )


if __name__ == "__main__":
    main()
