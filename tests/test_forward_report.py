"""benchmarks/forward_report.py: bench_forward's results as markdown rows and files (no GPU needed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import forward_report  # noqa: E402


def test_markdown_has_a_row_per_run_and_says_why_a_run_has_no_numbers(tmp_path: Path):
    results = {
        "environment": {"gpu": "NVIDIA H100", "torch": "2.11.0"},
        "runs": [
            {"resolution": "720p", "mode": "fast_fa4", "median_s": 10.018, "speedup": 1.274, "first_call_s": 27.2,
             "peak_gib": 39.0, "rel_l2": 1.7e-2,
             "then_shape": {"resolution": "720p_portrait", "first_call_s": 31.5, "forward_s": 10.2}},
            {"resolution": "720p", "mode": "fast_fp8", "skipped": "time budget: 400 s used, ~60 s needed"},
        ],
        "attention": [{"tokens": 75600, "kernel": "flash4", "ms": 168.7, "tflops": 694.0, "rel_l2_vs_flash": 0.0}],
    }  # fmt: skip
    report = forward_report.markdown(results)
    assert "# Wan-Animate transformer forward: NVIDIA H100" in report
    assert "| 720p | fast_fa4 | 10.018 | 1.27x | 27.2 | 39.0 | 1.70e-02 |" in report
    assert "| 720p | fast_fp8 | - | - | - | - | time budget: 400 s used, ~60 s needed |" in report
    assert "| 75600 | flash4 | 168.7 | 694.0 | 0.0 |" in report
    assert "| fast_fa4 (720p) | 720p_portrait | 31.5 | 10.200 |" in report  # --then-shape: a second frame size
    forward_report.write_results(results, report, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == results
    assert (tmp_path / "out" / "results.md").read_text() == report
