"""benchmarks/bench_run_job.py: a whole request through job.run_job with the smoke preset on the CPU, so that the
GPU benchmark's path (driving clip, worker setup, run_job, report) keeps working where CI can run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_run_job.py"


def test_tiny_run_job_bench_writes_a_whole_request(tmp_path: Path):
    out = tmp_path / "out"
    command = [sys.executable, str(BENCH), "--tiny", "--seconds", "0.4", "--fps", "10", "--requests", "2",
               "--bare-preprocess", "--work", str(tmp_path / "work"), "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert [row["frames"] for row in result["requests"]] == [4, 4]  # 0.4 s at 10 fps, every frame generated
    for row in result["requests"]:
        assert row["timings"]["preprocess"] > 0 and row["timings"]["generate_and_encode"] > 0
        assert row["mp4_bytes"] > 0
        assert row["loop_stage_s"]["vae_decode"] > 0  # the loop's stages were timed inside run_job
        assert row["preprocess_stage_s"]["pose"] > 0 and row["preprocess_stage_s"]["decode"] > 0
    (bare,) = result["bare_preprocess"]  # the smoke worker loads in one go: only the probe after its setup
    assert bare["when"] == "after the worker's setup" and bare["stages_s"]["detection"] > 0
    assert "| 2 |" in (out / "results.md").read_text()
