"""The storage copy's bounds and figures (the copy itself, through two real libvirtds:
tests/system/test_offline_migration.py)."""

from __future__ import annotations

from novacron.migration import disk_copy


def test_a_volume_may_exceed_its_disk_only_by_an_images_tables() -> None:
    assert disk_copy.limit_of(0) == disk_copy.SLACK_BYTES
    assert disk_copy.limit_of(8) == (8 << 30) + (1 << 30) + disk_copy.SLACK_BYTES


def test_the_figures_an_operation_reports() -> None:
    stats = disk_copy.CopyStats(disks=2, logical=10, zero=4, wire=3, seconds=1.23456)
    assert stats.to_dict() == {
        "disks": 2,
        "bytes": 10,
        "zero_bytes": 4,
        "bytes_wire": 3,
        "seconds": 1.235,
    }
