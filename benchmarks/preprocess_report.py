"""bench_preprocess.py's report: the environment it ran on, the markdown rows for BENCHMARKS.md, the result files."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from preprocess_stages import (
    BACKGROUND,
    DECODE,
    DETECTION,
    FACE,
    PARTS,
    POSE,
    PROBE,
    REFINE,
    RESIZE,
    SAM2,
    SKELETON,
    TOP_STAGES,
)

APP_ROOT = Path(__file__).resolve().parents[1]
CLIP_LEN, REFERT_NUM = 77, 1  # the app's defaults

def generation_estimate_s(frames: int, clip_s: float) -> float:
    """Generation time of `frames` output frames at 720p: clips (the app's segmenting, 77 frames, 1 carried) x clip_s.

    wan/segments.py is loaded on its own: the `wan` package itself imports diffusers, which preprocessing never needs.
    """
    spec = importlib.util.spec_from_file_location("wan_segments", APP_ROOT / "wan" / "segments.py")
    segments = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(segments)
    starts = segments.clip_starts(segments.valid_length(frames, CLIP_LEN, REFERT_NUM), CLIP_LEN, REFERT_NUM)
    return len(starts) * clip_s


def cell(seconds: float, frames: int) -> str:
    """'1.23 s (244/s)': a stage's seconds and frames per second ('-' when it did not run)."""
    if seconds <= 0:
        return "-"
    rate = frames / seconds
    return f"{seconds:.2f} s ({rate:,.0f}/s)" if rate >= 10 else f"{seconds:.2f} s ({rate:.2g}/s)"


def markdown(result: dict[str, Any]) -> str:
    """The rows for BENCHMARKS.md: one summary table, then every run's stages with their parts."""
    env = result["environment"]
    lines = [
        f"- Device: {env.get('gpu') or 'CPU'}, {env['date']}; torch {env['torch']}, onnxruntime {env['onnxruntime']}, "
        f"transformers {env['transformers']}; providers: detector {result['onnx']['detector']['active']}, pose "
        f"{result['onnx']['pose']['active']}; ONNX sessions hold {result['onnx'].get('gpu_gib_after_load', '-')} GiB "
        "of GPU memory after loading.",
        f"- Clip: {result['clip']['description']}; reference {result['clip']['reference']}. Models: "
        f"{result['models']}.",
        f"- Command: `{result['command']}`",
        "",
        "| run | frames | output | total s | frames/s | decode | detection | pose | face crops | skeleton | resize | SAM2 "
        "| refine + background | other | share of generation* |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["runs"]:
        s, n = row["stages_s"], row["frames"]
        lines.append(
            f"| {row['run']} | {n} | {row['output']} | {row['total_s']:.2f} | {row['frames_per_s']:.1f} | "
            f"{cell(s[DECODE], n)} | {cell(s[DETECTION], n)} | {cell(s[POSE], n)} | {cell(s[FACE], n)} | "
            f"{cell(s[SKELETON], n)} | {cell(s[RESIZE], n)} | {cell(s[SAM2], n)} | "
            f"{cell(s[REFINE] + s[BACKGROUND], n)} | {row['other_s'] + s[PROBE]:.2f} s | {row['share_of_generation']} |"
        )
    lines += [
        "",
        f"\\* preprocessing time / generation time of the same frames, the latter estimated as {result['clips']} clips "
        f"x {result['generation_clip_s']} s (one 720p clip of 77 frames, 20 steps, default fast path, measured above).",
        "",
        "| run | stage | s | frames/s |",
        "| --- | --- | --- | --- |",
    ]
    for row in result["runs"]:
        for stage in TOP_STAGES:
            seconds = row["stages_s"][stage]
            if seconds > 0:
                lines.append(f"| {row['run']} | {stage} | {seconds:.3f} | {row['frames'] / seconds:,.1f} |")
            for part in PARTS.get(stage, ()):
                part_s = row["parts_s"][part]
                if part_s > 0:
                    lines.append(f"| {row['run']} | {part.strip()} | {part_s:.3f} | {row['frames'] / part_s:,.1f} |")
    lines += ["", "| session | batch | s / run | frames/s |", "| --- | --- | --- | --- |"]
    for session, batches in result.get("onnx_throughput", {}).items():
        for batch, value in batches.items():
            lines.append(f"| {session} | {batch.split()[-1]} | {value['s_per_run']} | {value['frames_per_s']:,.1f} |")
    for pair, agreement in result.get("sam2_agreement", {}).items():
        lines += ["", f"SAM2 raw masks, {pair} (random weights): mean IoU {agreement['mean_iou']}, "
                      f"min {agreement['min_iou']}, {agreement['pixels_differing']:.3%} of pixels differ."]  # fmt: skip
    return "\n".join(lines) + "\n"


def environment(device: str) -> dict[str, Any]:
    import cv2
    import onnxruntime
    import torch
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opencv": cv2.__version__,
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
    }
    return info


def write_results(out: Path, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    if result["runs"]:
        (out / "results.md").write_text(markdown(result))
