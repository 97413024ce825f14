"""``novacron node info``'s storage line, from ``node.info``'s ``storage`` map."""

from __future__ import annotations

from typing import Any

from novacron.cli.node import _storage

GIB = 1 << 30


def storage(**more: Any) -> dict[str, Any]:
    return {
        "pool": "novacron",
        "path": "/var/lib/novacron/images",
        "capacity_bytes": 100 * GIB,
        "allocation_bytes": 40 * GIB,
        "available_bytes": 55 * GIB,
        "reserve_bytes": GIB,
        "volumes": 3,
        "committed_bytes": 120 * GIB,
        "overcommit": None,
        **more,
    }


def test_the_storage_line_says_free_kept_free_and_promised() -> None:
    assert _storage(storage()) == (
        "55.0 GiB free of 100.0 GiB (/var/lib/novacron/images), 1.0 GiB kept free; "
        "3 volumes of 120.0 GiB"
    )
    assert _storage(storage(overcommit=1.5)).endswith(
        "3 volumes of 120.0 GiB (at most 1.5x its size)"
    )
    assert _storage(None) == "-"  # (the pool undefined outside NovaCron)
    older = storage()
    del older["reserve_bytes"], older["overcommit"]  # (a daemon before them)
    assert _storage(older) == (
        "55.0 GiB free of 100.0 GiB (/var/lib/novacron/images); 3 volumes of 120.0 GiB"
    )
