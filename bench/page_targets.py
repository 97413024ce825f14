"""Issue #3's targets, read off one ``pagebench`` result: per target, the figures it
is judged on, and whether every one of them is within its limit.

The targets (ratios from the same run, one thread unless said):

- round 0: wire ≤ 0.9x zstd-1 alone's and ≤ 0.55x QEMU's; encode ≤ 0.75x zstd-1's time;
- later rounds: wire ≤ 0.5x zstd-1's and ≤ 0.3x QEMU's; encode ≤ 0.75x zstd-1's time;
- every round: the dirty scan of the whole image within 2x a memcpy of it; decode at
  least 2x faster than encode; all cores at least 1.7x one thread, encoding and
  decoding.

A target whose rounds the run does not have (later rounds, from one image) is
reported as not measured (``met`` is ``None``), never as met. A figure exactly at its
limit meets it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Target:
    """``key`` of every round in ``rounds`` must be at most (``at_most``) or at least
    ``limit``. ``source``: ``ratios`` (one thread) or ``all_cores`` (a speedup list)."""

    name: str
    source: str
    key: str
    rounds: str  # "first", "later" or "all"
    limit: float
    at_most: bool


TARGETS = (
    Target("round 0 wire ≤ 0.9x zstd-1", "ratios", "wire_vs_zstd1", "first", 0.9, True),
    Target("round 0 wire ≤ 0.55x QEMU", "ratios", "wire_vs_qemu", "first", 0.55, True),
    Target("round 0 encode ≤ 0.75x zstd-1", "ratios", "encode_vs_zstd1_time", "first", 0.75, True),
    Target("later rounds wire ≤ 0.5x zstd-1", "ratios", "wire_vs_zstd1", "later", 0.5, True),
    Target("later rounds wire ≤ 0.3x QEMU", "ratios", "wire_vs_qemu", "later", 0.3, True),
    Target(
        "later rounds encode ≤ 0.75x zstd-1",
        "ratios",
        "encode_vs_zstd1_time",
        "later",
        0.75,
        True,
    ),
    Target(
        "dirty scan ≤ 2x an image memcpy", "ratios", "scan_vs_image_memcpy_time", "all", 2.0, True
    ),
    Target(
        "decode ≥ 2x faster than encode", "ratios", "decode_speedup_vs_encode", "all", 2.0, False
    ),
    Target("all cores ≥ 1.7x, encode", "all_cores", "encode_speedup", "all", 1.7, False),
    Target("all cores ≥ 1.7x, decode", "all_cores", "decode_speedup", "all", 1.7, False),
)


def _figures(result: dict[str, Any], target: Target) -> list[tuple[int, float]]:
    if target.source == "ratios":
        per_round = [r[target.key] for r in result["ratios"]]
    else:
        per_round = list(result["all_cores"][target.key])
    numbered = list(enumerate(per_round))
    if target.rounds == "first":
        return numbered[:1]
    if target.rounds == "later":
        return numbered[1:]
    return numbered


def verdicts(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per target: ``target``, ``limit``, ``at_most``, ``rounds`` (the round
    numbers judged), ``values`` (their figures, in that order), ``missed`` (the
    round numbers outside the limit) and ``met`` (``True``, ``False``, or ``None`` when
    the run has none of the target's rounds)."""
    out = []
    for target in TARGETS:
        figures = _figures(result, target)
        missed = [
            n
            for n, value in figures
            if (value > target.limit if target.at_most else value < target.limit)
        ]
        out.append(
            {
                "target": target.name,
                "limit": target.limit,
                "at_most": target.at_most,
                "rounds": [n for n, _ in figures],
                "values": [value for _, value in figures],
                "missed": missed,
                "met": None if not figures else not missed,
            }
        )
    return out


def table(entries: list[dict[str, Any]]) -> list[str]:
    """The verdicts as text lines: the target, met / MISSED / not measured, and each
    round's figure (a missed one marked ``*``)."""
    lines = []
    width = max(len(e["target"]) for e in entries)
    for e in entries:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[e["met"]]
        cells = [
            f"r{n} {value:.3f}{'*' if n in e['missed'] else ''}"
            for n, value in zip(e["rounds"], e["values"], strict=True)
        ]
        lines.append(f"{e['target']:<{width}}  {verdict:<12}  {'  '.join(cells)}".rstrip())
    return lines
