"""The page-engine benchmark harness runs end to end and prints the documented shape."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def pagebench(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """`python bench/pagebench.py ARGS` as a user runs it."""
    return subprocess.run(
        [sys.executable, str(ROOT / "bench/pagebench.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=check,
    )


@pytest.mark.parametrize("form", ["module", "script"])
def test_pagebench_json_shape_on_a_small_synthetic_guest(form: str, tmp_path: Path) -> None:
    # `python -m bench.pagebench` from the repository, or `python bench/pagebench.py` (as
    # issue #3 writes it) from anywhere
    command = ["-m", "bench.pagebench"] if form == "module" else [str(ROOT / "bench/pagebench.py")]
    done = subprocess.run(
        [
            sys.executable,
            *command,
            "--synthetic",
            "--mib",
            "8",
            "--rounds",
            "3",
            "--json",
        ],
        cwd=ROOT if form == "module" else tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(done.stdout)
    assert result["page_size"] == 4096
    assert result["threads"] == 1
    assert len(result["rounds"]) == 3
    for r in result["rounds"]:
        assert r["verified"] is True
        assert {"pages", "logical_bytes", "wire_bytes", "scan_s", "encode_s", "decode_s"} <= set(r)
        assert r["encode_unscanned_s"] > 0
        assert set(r["baselines"]) >= {
            "memcpy_s",
            "lz4_bytes",
            "lz4_s",
            "zstd1_bytes",
            "zstd1_s",
            "qemu_bytes",
        }
        assert r["wire_bytes"] < r["baselines"]["qemu_bytes"]
        assert sum(r["records"].values()) == r["pages"]  # what each page went as
    assert result["rounds"][0]["pages"] == 8 * 256  # round 0 offers every page
    assert 0 < result["rounds"][1]["pages"] < 8 * 256  # later rounds only the dirty ones
    assert result["all_cores"]["threads"] >= 1
    assert all(r["verified"] for r in result["all_cores"]["rounds"])
    # the targets, judged on the run's own figures
    targets = {t["target"]: t for t in result["targets"]}
    assert len(targets) == 10
    later = targets["later rounds wire ≤ 0.5x zstd-1"]
    assert later["rounds"] == [1, 2]
    assert later["values"] == [q["wire_vs_zstd1"] for q in result["ratios"][1:]]
    assert later["met"] == all(v <= 0.5 for v in later["values"])
    encode = targets["all cores ≥ 1.7x, encode"]
    assert encode["values"] == result["all_cores"]["encode_speedup"]


def test_pagebench_takes_the_engines_zstd_level() -> None:
    args = ("--synthetic", "--mib", "8", "--rounds", "2", "--passes", "1", "--json")
    at_1 = json.loads(pagebench(*args, "--compression", "zstd", check=True).stdout)
    at_9 = json.loads(
        pagebench(*args, "--compression", "zstd", "--zstd-level", "9", check=True).stdout
    )
    assert (at_1["zstd_level"], at_9["zstd_level"]) == (1, 9)
    assert all(r["verified"] for r in at_9["rounds"])
    # a higher level makes fewer bytes of the same images; the zstd-1 baseline stays as it is
    assert at_9["rounds"][0]["wire_bytes"] < at_1["rounds"][0]["wire_bytes"]
    assert [r["baselines"]["zstd1_bytes"] for r in at_9["rounds"]] == [
        r["baselines"]["zstd1_bytes"] for r in at_1["rounds"]
    ]
    for wrong, message in (("lz4", "is for --compression zstd"), ("zstd", "must be 1 to 19")):
        level = "3" if wrong == "lz4" else "20"
        done = pagebench(*args, "--compression", wrong, "--zstd-level", level)
        assert done.returncode == 2 and message in done.stderr


def test_pagebench_prints_a_verdict_for_each_target() -> None:
    done = pagebench("--synthetic", "--mib", "8", "--rounds", "2", "--passes", "1", check=True)
    lines = done.stdout.splitlines()
    sent = [line for line in lines if " pages sent as: " in line]
    assert [line.split()[1] for line in sent] == ["0", "1"]
    counts = dict(pair.rsplit(" ", 1) for pair in sent[0].split(": ", 1)[1].split(", "))
    assert sum(int(c) for c in counts.values()) == 8 * 256  # round 0: every page
    at = lines.index("issue #3's targets (bench/page_targets.py; * a round outside the limit):")
    verdicts = lines[at + 1 :]
    assert len(verdicts) == 10
    assert verdicts[0].split()[:6] == ["round", "0", "wire", "≤", "0.9x", "zstd-1"]
    for line in verdicts:
        assert (" met " in line) != (" MISSED " in line), line
        assert " r0 " in line or " r1 " in line


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ([4097], "4097 bytes is not a whole number"),
        ([0], "0 bytes is not a whole number"),
        ([4096, 8192], "8192 bytes, but"),
        ([None], "No such file"),
    ],
)
def test_pagebench_refuses_bad_images_clearly(
    sizes: list[int | None], message: str, tmp_path: Path
) -> None:
    paths = []
    for n, size in enumerate(sizes):
        path = tmp_path / f"image.{n}.raw"
        if size is not None:
            path.write_bytes(bytes(size))
        paths.append(str(path))
    done = pagebench(*paths, "--json")
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_the_memcpy_baseline_copies_once_into_its_own_buffer() -> None:
    # The baseline is "a copy of the bytes into memory already touched": a copy made on
    # the way (as `bytearray[:] = bytes` makes) would time a fresh allocation as well.
    import tracemalloc

    from bench.pagebench import memcpy_time

    data = bytes(range(256)) * (16 << 12)  # 16 MiB
    tracemalloc.start()
    try:
        seconds = memcpy_time(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seconds > 0
    assert len(data) <= peak < len(data) * 5 // 4


def test_pagebench_takes_elf_dumps_and_refuses_kdump_ones(tmp_path: Path) -> None:
    from tests.unit.test_memory_image import Load, core_dump, expected

    rng = random.Random(5)
    ram = [rng.randbytes(64 * 4096), rng.randbytes(4096) * 32]
    second = bytearray(ram[0])
    second[4096 * 7 : 4096 * 7 + 10] = b"0123456789"  # one page dirtied
    paths = []
    for n, low in enumerate([ram[0], bytes(second)]):
        loads = [Load(0, low, len(low)), Load(1 << 20, ram[1], len(ram[1]))]
        path = tmp_path / f"dump.{n}"
        path.write_bytes(core_dump(loads))
        paths.append(str(path))
        assert len(expected(loads)) == 96 * 4096
    done = pagebench(*paths, "--passes", "1", "--json", check=True)
    rounds = json.loads(done.stdout)["rounds"]
    assert [r["pages"] for r in rounds] == [96, 1]
    assert all(r["verified"] for r in rounds)
    kdump = tmp_path / "kdump"
    kdump.write_bytes(b"KDUMP   " + bytes(8192))
    refused = pagebench(str(kdump))
    assert refused.returncode == 2
    assert "kdump-compressed" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_pagebench_refuses_a_dump_claiming_more_memory_than_there_is(tmp_path: Path) -> None:
    from tests.unit.test_memory_image import Load, core_dump

    path = tmp_path / "core"
    path.write_bytes(core_dump([Load(0, bytes(4096), 2**62)]))
    done = pagebench(str(path))
    assert done.returncode == 2  # before anything is read
    assert "takes about" in done.stderr and "MiB is available" in done.stderr
    assert "Traceback" not in done.stderr


def test_verification_compares_every_slice_of_the_receivers_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bench import pagebench

    from novacron import _core

    monkeypatch.setattr(pagebench, "VERIFY_PAGES", 4)  # 11 pages: slices of 4, 4 and 3
    image = random.Random(7).randbytes(11 * 4096)
    dec = _core.PageDecoder(11)
    dec.decode(_core.PageEncoder(11).encode(image))
    assert pagebench.matches(dec, image)
    for page in (0, 5, 10):
        other = bytearray(image)
        other[page * 4096 + 99] ^= 1
        assert not pagebench.matches(dec, bytes(other))


def test_the_memory_estimate_counts_the_image_cache_receiver_and_a_copy() -> None:
    from bench import pagebench

    gib = 1 << 30
    assert pagebench.peak_memory(gib, gib // 4096) == 4 * gib + (256 << 20)
    assert pagebench.peak_memory(gib, 1024) == 3 * gib + 4 * 2**20 + (256 << 20)
    free = pagebench.available_memory()
    assert free is not None and 0 < free < 2**50
