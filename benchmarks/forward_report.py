"""bench_forward.py's report: the software stack a run used, and its results as a markdown table.

`environment` and `write_results` are shared by the other full-model benchmarks (bench_step_cache, bench_parallel).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from kernel_profile import profile_markdown


def environment() -> dict[str, Any]:
    import diffusers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "diffusers": diffusers.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    for name in ("triton", "torchao", "fa3-fwd", "nvidia-cudnn-frontend", "flash-attn-4", "nvidia-cutlass-dsl"):
        try:
            from importlib.metadata import version

            info[name] = version(name)
        except Exception as exc:  # package missing: record why
            info[name] = f"missing ({type(exc).__name__})"
    return info


def diffusers_sage_backend_status() -> str:
    """Whether diffusers' own 'sage' backend accepts the installed sageattention (it wants >= 2.1.1)."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

    try:
        _check_attention_backend_requirements(AttentionBackendName.SAGE)
        return "usable"
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:300]}"


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        f"# Wan-Animate transformer forward: {env.get('gpu')}",
        "",
        f"torch {env.get('torch')} (CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}), diffusers "
        f"{env.get('diffusers')}, torchao {env.get('torchao')}, triton {env.get('triton')}, fa3-fwd "
        f"{env.get('fa3-fwd')}, flash-attn-4 {env.get('flash-attn-4')}; {env.get('date')}",
        "",
        "| resolution | mode | median s | speed-up vs diffusers | first call s | peak GiB | rel L2 vs diffusers |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["runs"]:
        if "error" in row or "skipped" in row:
            note = row.get("error") or row.get("skipped")
            lines.append(f"| {row['resolution']} | {row['mode']} | - | - | - | - | {note[:120]} |")
            continue
        lines.append(
            f"| {row['resolution']} | {row['mode']} | {row['median_s']:.3f} | {row.get('speedup', float('nan')):.2f}x"
            f" | {row['first_call_s']:.1f} | {row['peak_gib']:.1f} | {row.get('rel_l2', float('nan')):.2e} |"
        )
    then = [row for row in results["runs"] if "then_shape" in row]
    if then:
        lines += ["", "| mode (compiled at) | then at | first call s | forward s |", "| --- | --- | --- | --- |"]
        for row in then:
            shape = row["then_shape"]
            lines.append(f"| {row['mode']} ({row['resolution']}) | {shape['resolution']} | {shape['first_call_s']:.1f}"
                         f" | {shape['forward_s']:.3f} |")  # fmt: skip
    if results.get("attention"):
        lines += [
            "",
            "| tokens | attention kernel | ms | TFLOP/s | rel L2 vs flash |",
            "| --- | --- | --- | --- | --- |",
        ]
        for row in results["attention"]:
            lines.append(
                f"| {row['tokens']} | {row['kernel']} | {row.get('ms', '-')} | {row.get('tflops', '-')} | "
                f"{row.get('rel_l2_vs_flash', row.get('error', '-'))} |"
            )
    for row in results["runs"]:
        if "profile" in row:
            lines += profile_markdown(row["mode"], row["resolution"], row["profile"])
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], report: str, out_dir: Path) -> None:
    """`results` as out_dir/results.json and the markdown `report` as out_dir/results.md (every benchmark's layout)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    (out_dir / "results.md").write_text(report)
