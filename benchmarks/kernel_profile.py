"""Where one forward's GPU time goes: CUDA kernel time summed by kind (attention, GEMM, fused elementwise, ...).

Used by bench_forward.py's `--profile`: it runs one forward under torch.profiler (CUDA activity only) and sorts every
kernel into a kind by its name, so a table says how much of a step attention, the linears and the rest each cost.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

# Kernel kind -> pattern on the kernel's name, tried in this order (the first match wins). Inductor's Triton kernels
# come first: their names list the ops they feed (e.g. `fused__scaled_mm_...` quantises a GEMM's input), not a GEMM.
# cuBLAS's FP8 GEMMs are `nvjet_..._qq...` (both operands quantised).
KERNEL_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("triton_fused", re.compile(r"^triton_", re.IGNORECASE)),
    ("attention", re.compile(r"flash|fmha|attn|attention|sdpa|cudnn.*(fprop|sm90)", re.IGNORECASE)),
    ("gemm_fp8", re.compile(r"f8|fp8|e4m3|rowwise|scaled_mm|nvjet\w*_qq", re.IGNORECASE)),
    ("gemm", re.compile(r"gemm|xmma|nvjet|cutlass|cublas|sm90_|sm80_|matmul", re.IGNORECASE)),
    ("conv", re.compile(r"conv|implicit|wgrad|dgrad", re.IGNORECASE)),
    ("copy", re.compile(r"copy|memcpy|memset|cat|fill", re.IGNORECASE)),
)


def kernel_kind(name: str) -> str:
    """The kind of a CUDA kernel from its (demangled) name; 'other' when no pattern matches."""
    for kind, pattern in KERNEL_KINDS:
        if pattern.search(name):
            return kind
    return "other"


def _device_time_us(event: Any) -> float:
    """Self GPU time of a profiler aggregate in microseconds (the attribute was renamed across torch versions)."""
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        value = getattr(event, attr, None)
        if value:
            return float(value)
    return 0.0


def profile_kernels(run: Callable[[], Any], top: int = 25) -> dict[str, Any]:
    """Run `run()` once under torch.profiler and return the GPU time by kernel kind and the `top` kernels.

    Seconds are summed kernel times (their overlap across streams is not removed); `wall_s` is the call's CUDA-event
    time, so `wall_s - total_kernel_s` is roughly the time the GPU sat idle.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start.record()
        run()
        end.record()
        end.synchronize()
    kernels = []
    for event in prof.key_averages():
        if getattr(event, "device_type", None) != DeviceType.CUDA:
            continue
        seconds = _device_time_us(event) / 1e6
        if seconds > 0:
            kernels.append({"name": event.key[:160], "kind": kernel_kind(event.key), "calls": event.count,
                            "s": round(seconds, 4)})
    kernels.sort(key=lambda row: row["s"], reverse=True)
    by_kind: dict[str, float] = {}
    for row in kernels:
        by_kind[row["kind"]] = by_kind.get(row["kind"], 0.0) + row["s"]
    total = sum(by_kind.values())
    return {
        "wall_s": round(start.elapsed_time(end) / 1000.0, 4),
        "total_kernel_s": round(total, 4),
        "by_kind_s": {kind: round(s, 4) for kind, s in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "top_kernels": kernels[:top],
    }


def profile_markdown(mode: str, resolution: str, profile: dict[str, Any]) -> list[str]:
    """Markdown lines for one mode's profile: kinds with their share, then the top kernels."""
    total = profile["total_kernel_s"] or 1.0
    lines = [
        "",
        f"### {resolution} {mode}: GPU time by kernel kind (one forward, wall {profile['wall_s']:.3f} s, "
        f"kernels {profile['total_kernel_s']:.3f} s)",
        "",
        "| kind | s | share |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {kind} | {s:.3f} | {s / total:.1%} |" for kind, s in profile["by_kind_s"].items()]
    lines += ["", "| kernel | kind | calls | s |", "| --- | --- | --- | --- |"]
    lines += [f"| `{row['name'][:90]}` | {row['kind']} | {row['calls']} | {row['s']:.4f} |"
              for row in profile["top_kernels"]]
    return lines
