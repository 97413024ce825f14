"""The relay benchmark runs end to end (small sizes) and reports its figures."""

from __future__ import annotations

from pathlib import Path

from bench.relay_bench import main
from bench.synth import generate


def test_relay_bench_reports_figures() -> None:
    result = main(["--mib", "8", "--rounds", "2", "--repeat", "1"])
    assert result["send_mb_s"] > 0 and result["receive_mb_s"] > 0
    # zero pages, duplicates and text compress: far fewer bytes on the wire
    assert 0 < result["wire_per_logical"] < 0.8
    assert result["logical_mb"] > 4


def test_relay_bench_relays_through_both_loops() -> None:
    """``--relayed``: the stream crosses both relay loops whole (the bench's QEMU
    stand-in counts every byte) and the event loop's lateness is reported."""
    result = main(["--mib", "8", "--rounds", "2", "--repeat", "1", "--relayed"])
    relayed = result["relayed"]
    assert relayed["wall_mb_s"] > 0
    late = relayed["loop_late_max_ms"][0]
    assert 0 <= relayed["loop_late_median_ms"][0] <= relayed["loop_late_p99_ms"][0] <= late


def test_relay_bench_takes_memory_images(tmp_path: Path) -> None:
    """Images given: the stream is theirs (round 0 the first image, then what changed),
    and the channel's bytes are reported by frame type, adding up to the wire's."""
    images = generate(8, 2, 5)
    paths = []
    for n, image in enumerate(images):
        paths.append(tmp_path / f"round{n}.raw")
        paths[-1].write_bytes(image)
    result = main(["--repeat", "1", *map(str, paths)])
    # round 0 is every page (zero pages as 9-byte records), record headers included
    first = images[0]
    nonzero = sum(first[at : at + 4096] != bytes(4096) for at in range(0, len(first), 4096))
    assert result["logical_mb"] * 1e6 > nonzero * 4096 + (len(first) // 4096 - nonzero) * 9
    by_frame = result["wire_by_frame"]
    head = by_frame.pop("pages_head")
    assert sum(by_frame.values()) == result["runs"][0]["wire"]
    # batches of 1,024 pages: their entries go packed, and are a small part of the frames
    assert by_frame["packed_pages"] > 0
    assert 0 < head < by_frame["packed_pages"] / 20
