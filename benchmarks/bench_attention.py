"""Self-attention kernels alone at the model's 720p / 480p shapes: time and deviation from float32 attention.

For each token count: [1, S, 40, 128] bf16 Q/K/V drawn N(0,1) and, for accuracy, the same with outlier channels (a
few channels per head x20 plus an offset, the pattern real Q/K show). Kernels: torch's cuDNN SDPA, FlashAttention-4,
FlashAttention-3 bf16, FlashAttention-3 FP8 (the app's quantisation, with and without the Hadamard rotation, and one
naive per-tensor scale), cuDNN FP8. Reference: float32 memory-efficient SDPA on the same (bf16-valued) inputs. The
FP8 quantisation is also timed alone, eager and compiled (what a compiled block pays before the kernel).

    python benchmarks/bench_attention.py --resolutions 720p --reps 10 --out $OUT/attention
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKENS = {"480p": 21 * 30 * 52, "720p": 21 * 45 * 80}
HEADS, HEAD_DIM = 40, 128


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref).norm() / ref.norm()).item()


def timed(fn: Any, reps: int) -> float:
    """Median milliseconds of `reps` calls after two warm-ups (CUDA events)."""
    fn()
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def make_inputs(tokens: int, outliers: bool, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    tensors = []
    for _ in range(3):
        x = torch.randn(1, tokens, HEADS, HEAD_DIM, device="cuda", generator=gen)
        if outliers:
            channels = torch.randperm(HEAD_DIM, generator=gen, device="cuda")[:4]
            x[..., channels] = x[..., channels] * 20.0 + 8.0
        tensors.append(x.bfloat16())
    return tensors


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        out = torch.nn.functional.scaled_dot_product_attention(
            q.float().transpose(1, 2), k.float().transpose(1, 2), v.float().transpose(1, 2)
        )
    return out.transpose(1, 2)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resolutions", default="720p")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")) / "attention")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    from local_runner import load_app_package

    load_app_package()
    from wan_animate.wan import attention_kernels as ak

    kernels: dict[str, Any] = {
        "sdpa (torch picks cuDNN)": ak.sdpa_attention,
    }
    if ak.flash4_available("cuda"):
        kernels["flash4 192x128 (app default)"] = ak.flash4_attention
    if ak.fa3_available("cuda"):
        ak.fa3_op()
        ak.fa3_fp8_op()
        kernels["fa3 bf16"] = ak.fa3_attention
        kernels["fa3 fp8, smooth K + Hadamard + per-head/channel (eager quant)"] = (
            lambda q, k, v: ak.fa3_fp8_attention(q, k, v, hadamard=True))  # fmt: skip
        kernels["fa3 fp8, smooth K + per-head/channel, no Hadamard (eager quant)"] = (
            lambda q, k, v: ak.fa3_fp8_attention(q, k, v, hadamard=False))  # fmt: skip
        kernels["fa3 fp8, compiled quant + Hadamard"] = torch.compile(
            lambda q, k, v: ak.fa3_fp8_attention(q, k, v, hadamard=True), fullgraph=True)  # fmt: skip
        kernels["fa3 fp8, compiled quant, no Hadamard"] = torch.compile(
            lambda q, k, v: ak.fa3_fp8_attention(q, k, v, hadamard=False), fullgraph=True)  # fmt: skip

        def naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            from wan_animate.wan.cudnn_fp8 import quantize_fp8_per_tensor

            parts = [quantize_fp8_per_tensor(x) for x in (q, k, v)]
            scales = [d.reshape(1, 1).expand(1, HEADS).contiguous() for _, d in parts]
            return ak.fa3_fp8_op()(parts[0][0], parts[1][0], parts[2][0], *scales)

        kernels["fa3 fp8, one per-tensor scale (naive)"] = naive
    try:
        import cudnn  # noqa: F401
        from wan_animate.wan.cudnn_fp8 import cudnn_fp8_attention, cudnn_fp8_op

        cudnn_fp8_op()
        kernels["cudnn fp8 per-tensor (earlier 'fp8')"] = cudnn_fp8_attention
    except ImportError:
        pass

    rows: list[dict[str, Any]] = []
    env = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    for res in [r.strip() for r in args.resolutions.split(",") if r.strip()]:
        tokens = TOKENS[res]
        flops = 4 * tokens * tokens * HEAD_DIM * HEADS
        inputs = {"normal": make_inputs(tokens, False, 0), "outliers": make_inputs(tokens, True, 1)}
        refs = {name: reference(*qkv) for name, qkv in inputs.items()}
        for name, fn in kernels.items():
            row: dict[str, Any] = {"resolution": res, "tokens": tokens, "kernel": name}
            try:
                for kind, qkv in inputs.items():
                    row[f"rel_l2_{kind}"] = round(rel_l2(fn(*qkv), refs[kind]), 5)
                q, k, v = inputs["normal"]
                ms = timed(lambda fn=fn, q=q, k=k, v=v: fn(q, k, v), args.reps)
                row.update(ms=round(ms, 2), tflops=round(flops / ms / 1e9, 1))
            except Exception as exc:  # a kernel missing or failing: recorded, the others still run
                row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            rows.append(row)
            log(json.dumps(row))
        if ak.fa3_available("cuda"):  # the quantisation alone, eager and compiled
            q, k, v = inputs["normal"]
            hadamard = ak.hadamard_matrix(HEAD_DIM, "cuda")
            for label, fn in (("eager", ak.quantize_qkv_fp8),
                              ("compiled", torch.compile(ak.quantize_qkv_fp8, fullgraph=True))):  # fmt: skip
                for rot in (None, hadamard):
                    ms = timed(lambda fn=fn, rot=rot, q=q, k=k, v=v: fn(q, k, v, rot), args.reps)
                    row = {"resolution": res, "kernel": f"quantize_qkv_fp8 {label}, hadamard={rot is not None}",
                           "ms": round(ms, 2)}  # fmt: skip
                    rows.append(row)
                    log(json.dumps(row))
        del inputs, refs
        torch.cuda.empty_cache()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attention.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=2))
    lines = ["| res | kernel | ms | TFLOP/s | rel L2 N(0,1) | rel L2 outliers |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['resolution']} | {r['kernel']} | {r.get('ms', '-')} | {r.get('tflops', '-')} | "
                     f"{r.get('rel_l2_normal', r.get('error', '-'))} | {r.get('rel_l2_outliers', '-')} |")  # fmt: skip
    (args.out / "attention.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
