"""The placement benchmark runs and the Rust engine and the plain-Python policy agree
on every decision (a cross-check of the engine against an independent implementation)."""

from __future__ import annotations

from bench.placebench import main


def test_placebench_reports_figures_and_both_sides_agree(capsys) -> None:  # type: ignore[no-untyped-def]
    result = main(["--decisions", "3000", "--vms", "1000", "--passes", "2", "--json"])
    assert result["mismatches"] == 0
    assert len(result["passes"]) == 2
    assert result["host"] == {"nodes": 8, "threads": 256, "vms_placed": 1000}
    assert 0 < result["placed"] < result["decisions"] and result["split"] > 0
    for key in ("rust_per_s", "python_per_s", "speedup", "batch_rust_per_s", "batch_speedup"):
        assert result[key] > 0
    assert '"rust_per_s"' in capsys.readouterr().out
