"""Where a clip's non-transformer time goes: text encoder, CLIP, VAE encodes and decode, per call, at full size.

Builds UMT5-XXL (bf16), CLIP ViT-H/14 (fp16) and the Wan 2.1 VAE at full size with random weights on the GPU (no
transformer) and times, for one 77-frame clip, each encode/decode the loop runs (wan.conditioning's functions,
GPU synchronised): the prompt, the reference's CLIP tokens and latents, the pose video, the first clip's guide (grey;
cached after the first request since 2026-12-04) and a later clip's guide (carried frames), and the decode of one
clip's latents. Two "requests" in a row show what a worker's first request pays once. Then the VAE in bf16 against
float32 on the same inputs: time, and the deviation of the latents and the decoded frames (rel L2, and uint8 levels).

    python benchmarks/bench_encode.py --height 720 --width 1280 --out $OUT/encode
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Any) -> tuple[float, Any]:
    """(seconds, fn()) with the GPU synchronised before and after (bench_vae's --tiny runs it on the CPU)."""
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return round(time.perf_counter() - start, 3), out


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def uint8_levels(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Max and mean |difference| of two [-1, 1] videos once converted to uint8 as wan.generate converts them."""
    to_u8 = lambda x: ((x.clamp(-1, 1) + 1) / 2 * 255).to(torch.uint8).int()  # noqa: E731
    diff = (to_u8(out) - to_u8(ref)).abs()
    return {"max": int(diff.max()), "mean": round(float(diff.float().mean()), 4)}


def one_request(models: Any, wc: Any, frames: int, height: int, width: int, use_cache: bool) -> tuple[dict, dict]:
    """Each encode/decode of a one-clip request plus a later clip's guide; (seconds, outputs)."""
    device = models.device
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    pose = rng.integers(0, 255, (frames, height, width, 3), dtype=np.uint8)
    if not use_cache:
        models.blank_guide_cache.clear()
    seconds: dict[str, float] = {}
    outs: dict[str, torch.Tensor] = {}
    seconds["encode_prompt"], _ = timed(lambda: wc.encode_prompt(models, "a person dancing", device))
    seconds["clip_embedding"], _ = timed(lambda: wc.clip_embedding(models, reference, device))
    seconds["reference_condition"], outs["reference"] = timed(lambda: wc.reference_condition(models, reference, device))
    seconds["pose_latents"], outs["pose"] = timed(lambda: wc.pose_latents(models, pose, device))
    seconds["guide_first_clip"], outs["guide_first"] = timed(
        lambda: wc.clip_condition(models, frames, height, width, device))  # fmt: skip
    carried = torch.rand(1, 3, height, width, device=device, generator=torch.Generator(device).manual_seed(0)) * 2 - 1
    seconds["guide_later_clip"], outs["guide_later"] = timed(
        lambda: wc.clip_condition(models, frames, height, width, device, carried=carried))  # fmt: skip
    latents = torch.randn(outs["pose"].shape, generator=torch.Generator(device).manual_seed(1), device=device)
    seconds["vae_decode"], decoded = timed(lambda: wc.vae_decode(models, latents))
    outs["decoded"] = decoded
    seconds["total"] = round(sum(seconds.values()), 3)
    return seconds, outs


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--frames", type=int, default=77)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")) / "encode")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from local_runner import load_app_package

    load_app_package()
    import bench_clip_e2e
    from wan_animate.wan import conditioning as wc
    from wan_animate.wan.models import WanAnimateModels
    from wan_animate.wan.vae_layout import set_vae_layout

    t = time.perf_counter()
    models = WanAnimateModels(
        transformer=None, **bench_clip_e2e.build_encoders(), dtype=torch.bfloat16, device=torch.device("cuda")
    )
    results: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "size": f"{args.width}x{args.height}x{args.frames}", "build_s": round(time.perf_counter() - t, 1), "runs": [],
    }  # fmt: skip
    log(f"built encoders in {results['build_s']} s")
    runs = [
        ("fp32 VAE, request 1 (first in the process)", torch.float32, True, False),
        ("fp32 VAE, request 2 (blank guide cached)", torch.float32, True, False),
        ("fp32 VAE, request 3, cudnn.benchmark on (autotunes)", torch.float32, True, True),
        ("fp32 VAE, request 4, cudnn.benchmark on (tuned)", torch.float32, True, True),
        ("bf16 VAE, request 1", torch.bfloat16, True, False),
        ("bf16 VAE, request 2", torch.bfloat16, True, False),
    ]
    reference_outs = None
    for label, dtype, use_cache, benchmark in runs:
        models.vae.to(dtype)
        set_vae_layout(models.vae, "cuda")  # the app's layout for this dtype
        torch.backends.cudnn.benchmark = benchmark
        seconds, outs = one_request(models, wc, args.frames, args.height, args.width, use_cache)
        row: dict[str, Any] = {"run": label, "seconds": seconds}
        if reference_outs is None:
            reference_outs = {k: v.float().cpu() for k, v in outs.items()}
        elif dtype != torch.float32 or benchmark:
            row["rel_l2_vs_fp32"] = {k: round(rel_l2(v.float().cpu(), reference_outs[k]), 6) for k, v in outs.items()}
            row["decoded_uint8_levels"] = uint8_levels(outs["decoded"].float().cpu(), reference_outs["decoded"])
        results["runs"].append(row)
        log(json.dumps(row))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "encode.json").write_text(json.dumps(results, indent=2))
    torch.backends.cudnn.benchmark = False
    return 0


if __name__ == "__main__":
    sys.exit(main())
