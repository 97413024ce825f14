"""bench.guest_images against libvirt's test driver (its reading of a running guest's
memory is tested on a real TCG guest in tests/system/test_page_engine_guest.py)."""

from __future__ import annotations

import libvirt
from bench.guest_images import memory_bytes


def test_an_image_spans_the_machines_memory_not_what_the_balloon_leaves() -> None:
    conn = libvirt.open("test:///default")
    try:
        dom = conn.lookupByName("test")  # the driver's domain: 8 GiB, ballooned to 2 GiB
        _, max_kib, current_kib, *_ = dom.info()
        assert current_kib < max_kib
        assert memory_bytes(dom) == max_kib * 1024
    finally:
        conn.close()
