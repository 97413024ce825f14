"""The CLI's progress line for ``op.progress`` samples of each kind of move."""

from __future__ import annotations

from novacron.cli.migrate import progress_detail


def test_a_live_sample_shows_round_memory_and_the_disks_mirror() -> None:
    sample = {
        "phase": "migrating",
        "round": 2,
        "pages": 1000,
        "bytes_logical": 5_000_000,
        "bytes_wire": 1_000_000,
        "dirty_rate_bytes_s": 2_000_000,
    }
    assert progress_detail(sample) == ("round 2  1000 pages  5.0 -> 1.0 MB  dirty 2.0 MB/s")
    sample.update(disk_bytes=300_000_000, disk_bytes_wire=150_000_000, stall={"action": "cancel"})
    assert progress_detail(sample) == (
        "round 2  1000 pages  5.0 -> 1.0 MB  dirty 2.0 MB/s  disk 300.0 -> 150.0 MB"
        "  stalled: cancel"
    )


def test_a_volume_copy_shows_the_volumes_bytes_not_memorys() -> None:
    sample = {"phase": "copying", "disks": 2, "bytes": 1_073_741_824, "bytes_wire": 201_200_000}
    assert progress_detail(sample) == "2 volume(s) copied  1073.7 -> 201.2 MB"
