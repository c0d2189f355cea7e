"""Does the compiled (and optionally FP8) transformer keep its speed when requests switch the relighting LoRA on
and off? Full-size random weights, a rank-128 random relighting LoRA loaded the app's way (unmerged PEFT adapter),
then forwards at 480p in the order animation, replacement, animation, replacement, animation: prints each forward's
time and the number of graphs dynamo compiled so far.

    python benchmarks/bench_lora_compile.py [--fp8] --out $OUT
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

APP_ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fp8", action="store_true")
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args()
    sys.path.insert(0, str(APP_ROOT / "benchmarks"))
    import bench_forward  # registers the app package; full-size model builder
    from wan_animate.wan.lora import load_relighting_lora, request_adapters
    from wan_animate.wan.testing import write_relighting_checkpoint

    speed = bench_forward.speed
    model = bench_forward.build_model()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_relighting_checkpoint(model, Path(tmp) / "relighting_lora.ckpt", rank=args.rank)
        adapter = load_relighting_lora(model, path)
    model = speed.apply_speed_options(model, speed.SpeedOptions(fp8_linears=args.fp8))
    inputs = speed.make_example_inputs(model.config, 480, 832, device="cuda")
    from torch._dynamo.utils import counters

    rows = []
    for mode in ("animation", "replacement", "animation", "replacement", "animation"):
        with request_adapters(model, adapter, mode == "replacement", []):
            torch.cuda.synchronize()
            start = time.perf_counter()
            out = speed.run_forward(model, inputs)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        rows.append({"mode": mode, "seconds": round(seconds, 3), "graphs_so_far": counters["stats"]["unique_graphs"],
                     "finite": bool(torch.isfinite(out).all())})  # fmt: skip
        print(rows[-1], flush=True)
    result = {"fp8": args.fp8, "rank": args.rank, "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "forwards": rows}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"lora_compile{'_fp8' if args.fp8 else ''}.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
