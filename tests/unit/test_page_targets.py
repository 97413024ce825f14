"""Issue #3's targets judged on a pagebench result (bench/page_targets.py)."""

from __future__ import annotations

from typing import Any

from bench.page_targets import TARGETS, table, verdicts
from hypothesis import given
from hypothesis import strategies as st

RATIO_KEYS = (
    "wire_vs_zstd1",
    "wire_vs_qemu",
    "encode_vs_zstd1_time",
    "scan_vs_image_memcpy_time",
    "decode_speedup_vs_encode",
)


def result(rounds: list[dict[str, float]], encode: list[float], decode: list[float]) -> Any:
    return {
        "ratios": rounds,
        "all_cores": {"encode_speedup": encode, "decode_speedup": decode},
    }


def good_round(**changes: float) -> dict[str, float]:
    r = {
        "wire_vs_zstd1": 0.4,
        "wire_vs_qemu": 0.2,
        "encode_vs_zstd1_time": 0.5,
        "scan_vs_image_memcpy_time": 1.0,
        "decode_speedup_vs_encode": 3.0,
    }
    r.update(changes)
    return r


def by_name(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["target"]: e for e in entries}


def test_every_target_met_by_figures_inside_every_limit() -> None:
    entries = verdicts(result([good_round()] * 3, [1.9] * 3, [1.8] * 3))
    assert [e["target"] for e in entries] == [t.name for t in TARGETS]
    assert all(e["met"] is True and e["missed"] == [] for e in entries)


def test_round_0_and_later_rounds_are_judged_by_their_own_limits() -> None:
    # 0.6x zstd-1 meets round 0's 0.9 but not the later rounds' 0.5
    rounds = [good_round(wire_vs_zstd1=0.6), good_round(wire_vs_zstd1=0.6), good_round()]
    entries = by_name(verdicts(result(rounds, [2.0] * 3, [2.0] * 3)))
    first = entries["round 0 wire ≤ 0.9x zstd-1"]
    assert (first["rounds"], first["values"], first["met"]) == ([0], [0.6], True)
    later = entries["later rounds wire ≤ 0.5x zstd-1"]
    assert (later["rounds"], later["missed"], later["met"]) == ([1, 2], [1], False)


def test_a_figure_at_its_limit_meets_it_and_speedups_are_at_least() -> None:
    rounds = [good_round(encode_vs_zstd1_time=0.75, decode_speedup_vs_encode=2.0)] * 2
    entries = by_name(verdicts(result(rounds, [1.7, 1.69], [1.71, 1.7])))
    assert entries["round 0 encode ≤ 0.75x zstd-1"]["met"] is True
    assert entries["decode ≥ 2x faster than encode"]["met"] is True
    assert entries["all cores ≥ 1.7x, encode"]["missed"] == [1]
    assert entries["all cores ≥ 1.7x, decode"]["met"] is True


def test_one_image_leaves_the_later_rounds_not_measured() -> None:
    entries = by_name(verdicts(result([good_round()], [1.8], [1.8])))
    for name, entry in entries.items():
        if name.startswith("later rounds"):
            assert entry["met"] is None and entry["rounds"] == []
        else:
            assert entry["met"] is True


def test_the_table_names_each_verdict_and_marks_the_rounds_missed() -> None:
    rounds = [good_round(), good_round(wire_vs_qemu=0.31)]
    lines = table(verdicts(result(rounds, [1.8, 1.8], [1.8, 1.8])))
    assert len(lines) == len(TARGETS)
    qemu = next(line for line in lines if line.startswith("later rounds wire ≤ 0.3x QEMU"))
    assert "MISSED" in qemu and "r1 0.310*" in qemu
    only_first = table(verdicts(result([good_round()], [1.8], [1.8])))
    assert any("not measured" in line for line in only_first)


figure = st.floats(min_value=0.0, max_value=10.0, allow_nan=False)


@given(
    st.lists(st.fixed_dictionaries(dict.fromkeys(RATIO_KEYS, figure)), min_size=1, max_size=5),
    st.data(),
)
def test_a_target_is_met_exactly_when_no_round_it_judges_is_outside_its_limit(
    rounds: list[dict[str, float]], data: st.DataObject
) -> None:
    n = len(rounds)
    encode = data.draw(st.lists(figure, min_size=n, max_size=n))
    decode = data.draw(st.lists(figure, min_size=n, max_size=n))
    doc = result(rounds, encode, decode)
    for target, entry in zip(TARGETS, verdicts(doc), strict=True):
        if target.source == "ratios":
            values = [r[target.key] for r in rounds]
        else:
            values = encode if target.key == "encode_speedup" else decode
        judged = {"first": [0], "later": list(range(1, n)), "all": list(range(n))}[target.rounds]
        assert entry["rounds"] == judged
        outside = [
            i
            for i in judged
            if (values[i] > target.limit if target.at_most else values[i] < target.limit)
        ]
        assert entry["missed"] == outside
        assert entry["met"] == (None if not judged else not outside)
