"""``bench.pagebench``'s speedups (each pass on one thread is set against the pass on
all cores that ran right after it) and the record counts of its rounds (the whole bench
runs in tests/integration)."""

from __future__ import annotations

from typing import Any

import pytest
from bench.pagebench import RECORD_KINDS, paired_speedups, records_line, run
from bench.synth import generate


def passes(*times: tuple[float, ...]) -> list[list[dict[str, Any]]]:
    """Passes of rounds with these ``decode_s`` times (one tuple per pass)."""
    return [[{"decode_s": t} for t in rounds] for rounds in times]


def test_each_rounds_speedup_is_the_median_of_its_passes_ratios() -> None:
    single = passes((4.0, 1.0), (6.0, 1.0), (3.0, 1.0))
    multi = passes((2.0, 1.0), (2.0, 0.5), (3.0, 0.25))
    assert paired_speedups(single, multi, "decode_s") == [2.0, 2.0]


def test_a_machine_that_slows_between_passes_does_not_skew_the_speedup() -> None:
    # every pass on all cores is twice as fast as the one-thread pass before it, while the
    # machine as a whole gets slower pass by pass: the ratio of the medians would say 1.0
    single = passes((1.0,), (2.0,), (4.0,), (8.0,), (16.0,))
    multi = passes((0.5,), (1.0,), (2.0,), (4.0,), (8.0,))
    assert paired_speedups(single, multi, "decode_s") == [2.0]


def test_passes_must_pair_up() -> None:
    with pytest.raises(ValueError, match="shorter"):
        paired_speedups(passes((1.0,), (1.0,)), passes((1.0,)), "decode_s")


def test_each_round_counts_what_its_pages_were_sent_as() -> None:
    # the documented synthetic mix, 4 MiB: zero, duplicated, compressible and random
    # pages, then rounds that dirty a few, some with small changes
    images = list(generate(4, 3, seed=1))
    pages = len(images[0]) // 4096
    with_cache = run(images, threads=1, compression="lz4", cache_pages=pages)
    for r in with_cache:
        assert set(r["records"]) == set(RECORD_KINDS)
        assert sum(r["records"].values()) == r["pages"]  # every offered page, once
    first = with_cache[0]["records"]
    assert min(first["zero"], first["dup"], first["compressed"], first["raw"]) > 0
    assert first["delta"] == first["delta_from"] == first["unchanged"] == 0  # nothing to refer to
    assert all(r["records"]["delta"] > 0 for r in with_cache[1:])
    # without a delta cache the same pages go otherwise, and the counts say so
    without = run(images, threads=1, compression="lz4", cache_pages=0)
    assert without[0]["records"] == first
    for cached, uncached in zip(with_cache[1:], without[1:], strict=True):
        assert uncached["records"]["delta"] == 0
        assert sum(uncached["records"].values()) == cached["pages"]
        assert uncached["wire_bytes"] > cached["wire_bytes"]


def test_a_rounds_counts_are_printed_in_one_line() -> None:
    records = dict.fromkeys(RECORD_KINDS, 0) | {"zero": 358, "raw": 7}
    assert records_line(2, records) == (
        "round 2 pages sent as: zero 358, unchanged 0, dup 0, delta 0, delta_from 0, "
        "compressed 0, raw 7"
    )


def test_each_round_counts_its_compressed_pages_sent_with_a_filter() -> None:
    # page tables (8-byte entries growing by 4096, each page its own) among text: the
    # tables go filtered
    def table(p: int) -> bytes:
        start = 0x8000_0000_0010_0067 + p * (2 << 20)
        return b"".join((start + k * 4096).to_bytes(8, "little") for k in range(512))

    text = (b"kernel: eth0 link up, 1000 Mbps full duplex " * 100)[:4096]
    image = b"".join(table(p) if p % 2 else text[p:] + text[:p] for p in range(32))
    r = run([image], threads=1, compression="lz4", cache_pages=0)[0]
    assert r["filtered"] == 16
    assert r["records"]["compressed"] >= r["filtered"]
