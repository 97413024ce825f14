"""pytest-benchmark view of ``placebench.py``: one placement decision on the 8-node,
256-thread host with 1,000 VMs placed, Rust engine against the plain-Python policy.

    .venv/bin/pytest bench/test_placement_decisions.py --benchmark-enable \
        --benchmark-columns=min,median,mean,iqr,ops
"""

from __future__ import annotations

from typing import Any

import pytest

from bench.placebench import build, requests

REQUESTS = requests(1000, seed=11)


@pytest.fixture(scope="module")
def placers() -> tuple[Any, Any]:
    return build(1000)


def cycle(placer: Any) -> Any:
    """Decides the next request of a fixed stream (refusals included)."""
    state = {"i": 0}

    def once() -> Any:
        req = REQUESTS[state["i"] % len(REQUESTS)]
        state["i"] += 1
        try:
            return placer.place(*req)
        except Exception:  # a refusal is a decision too
            return None

    return once


@pytest.mark.parametrize("engine", ["rust", "python"])
def test_one_decision(benchmark: Any, placers: tuple[Any, Any], engine: str) -> None:
    placer = placers[0] if engine == "rust" else placers[1]
    benchmark(cycle(placer))
