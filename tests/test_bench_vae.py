"""benchmarks/bench_vae.py --tiny: the VAE variants timed and compared on the CPU, so the GPU bench keeps working."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_vae.py"


def test_tiny_vae_bench_compares_a_variant_with_eager(tmp_path: Path):
    command = [sys.executable, str(BENCH), "--tiny", "--variants", "eager_strict,eager,channels_last,app",
               "--reps", "1", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "vae.json").read_text())
    names = ["eager_strict", "eager", "channels_last", "app"]
    assert [row["variant"] for row in result["variants"]] == names
    strict, eager, channels_last, app = result["variants"]
    assert eager["encode_s"] > 0 and eager["decode_s"] > 0
    assert strict["rel_l2_vs_first"] == {"latents": 0.0, "frames": 0.0}
    assert eager["rel_l2_vs_first"]["frames"] < 1e-5  # TF32 does not exist on the CPU: the same float32 math
    assert channels_last["rel_l2_vs_first"]["frames"] < 1e-5  # a layout change, float32 math
    assert app["rel_l2_vs_first"]["frames"] < 1e-5  # the lean modules: float32 math to rounding
