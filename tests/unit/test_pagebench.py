"""``bench.pagebench``'s speedups: each pass on one thread is set against the pass on
all cores that ran right after it (the whole bench runs in tests/integration)."""

from __future__ import annotations

from typing import Any

import pytest
from bench.pagebench import paired_speedups


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
