"""Time whole denoising loops of the full-size Wan-Animate 14B transformer (random bf16 weights) with step caching.

Builds the transformer like bench_forward.py, times diffusers' default forward for the ratio, then per speed mode runs
the app's own sampler loop (`wan.generate._denoise`: 20 dpm++ steps, shift 5, guide 1 on one 77-frame clip) once per
step-cache threshold, and reports the loop's seconds, seconds per step, which steps skipped, peak memory and the
relative L2 deviation of the final latents from the same mode's uncached loop. The uncached loop also records block
0's step-to-step residual change (what the cache thresholds). Writes results.json / results.md under --out.

    python benchmarks/bench_step_cache.py --height 720 --width 1280 --modes fast_fp8_fp8attn --thresholds 0,0.1,1

    python benchmarks/bench_step_cache.py --tiny     # CPU smoke check: tiny random model, 64x64 pixels

Random weights: which steps a threshold skips says nothing about real weights (see BENCHMARKS.md); threshold 1
skips every step the cache's rules allow (the largest saving it can give on a 20-step schedule).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_forward  # noqa: E402  (builds the model and holds the app's speed module)

speed = bench_forward.speed


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class SkipLog(logging.Handler):
    """Keeps the loop's 'step cache: clip 1 skipped N of M forwards' lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "step cache" in record.getMessage():
            self.lines.append(record.getMessage())


class TracedHead(torch.nn.Module):
    """Block 0, recording mean|r_t - r_{t-1}| / mean|r_{t-1}| of its residual r between consecutive forwards (a
    wrapper, not a hook: a hook would enter block 0's fullgraph-compiled code)."""

    def __init__(self, block: torch.nn.Module) -> None:
        super().__init__()
        self.block = block
        self.changes: list[float] = []
        self.previous: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor, *args: Any) -> torch.Tensor:
        from wan_animate.wan.step_cache import relative_change

        out = self.block(hidden_states, *args)
        residual = out - hidden_states
        if self.previous is not None:
            self.changes.append(round(relative_change(residual, self.previous), 4))
        self.previous = residual
        return out


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_loop(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], steps: int, threshold: float, dtype: torch.dtype
) -> dict[str, Any]:
    """The app's sampler loop on one clip; per-step wall times (the GPU synchronised after each step)."""
    from wan_animate.wan.generate import GenerationOptions, _denoise

    latent_channels = model.config.latent_channels
    noise = inputs["hidden_states"][:, :latent_channels].float()
    y = inputs["hidden_states"][:, latent_channels:]
    options = GenerationOptions(sampling_steps=steps, step_cache=threshold)
    models = SimpleNamespace(transformer=model, dtype=dtype)
    stamps: list[float] = []

    def on_step(*_: int) -> None:
        synchronize()
        stamps.append(time.perf_counter())

    synchronize()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    latents = _denoise(
        models, noise, y, inputs["pose_hidden_states"], inputs["face_pixel_values"], inputs["encoder_hidden_states"],
        None, inputs["encoder_hidden_states_image"], options, (0, 1), on_step, None,
    )  # fmt: skip
    total = time.perf_counter() - start
    step_s = [b - a for a, b in zip([start, *stamps[:-1]], stamps, strict=True)]
    return {
        "threshold": threshold,
        "loop_s": round(total, 2),
        "step_s": [round(s, 3) for s in step_s],
        "mean_step_s": round(total / steps, 3),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if torch.cuda.is_available() else None,
        "latents": latents.float().cpu(),
    }


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        f"# Step cache: {results['args']['height']}x{results['args']['width']}, {results['args']['steps']} steps",
        f"{env.get('gpu', 'CPU')}, torch {env['torch']}, {env['date']}",
        f"diffusers default forward: {results.get('baseline_forward_s')} s",
        "",
        "| mode | threshold | skipped | loop s | s / step | vs uncached | vs diffusers default | peak GiB | rel L2 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["loops"]:
        lines.append(
            f"| {row['mode']} | {row['threshold']} | {row.get('skipped', '')} | {row['loop_s']} | "
            f"{row['mean_step_s']} | {row.get('vs_uncached', '')} | {row.get('vs_diffusers', '')} | "
            f"{row['peak_gib']} | {row.get('rel_l2', '')} |"
        )
    return "\n".join(lines) + "\n"


def save(results: dict[str, Any], out_dir: Path) -> None:
    bench_forward.write_results(results, markdown(results), out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--modes", default="fast_fp8_fp8attn", help="bench_forward.py modes, FP8 ones last")
    parser.add_argument("--thresholds", default="0,0.1,1", help="step-cache thresholds; 0 (uncached) first")
    parser.add_argument("--baseline-reps", type=int, default=1, help="timed diffusers-default forwards (0: none)")
    parser.add_argument("--budget-s", type=float, default=560.0, help="skip loops that would not finish by then")
    parser.add_argument("--tiny", action="store_true", help="tiny random model on the CPU, 64x64: a smoke check")
    parser.add_argument("--out", default=os.environ.get("OUT", "out"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.height, args.width, args.modes, args.baseline_reps = 64, 64, "fast", 0
    started = time.perf_counter()
    thresholds = [float(t) for t in args.thresholds.split(",")]
    if thresholds[0] != 0.0:
        parser.error("the first threshold must be 0 (the uncached loop every other is compared with)")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    out_dir = Path(args.out)
    skip_log = SkipLog()
    logging.getLogger("wan_animate.wan.generate").addHandler(skip_log)
    logging.getLogger("wan_animate.wan.generate").setLevel(logging.INFO)

    if args.tiny:
        from wan_animate.wan.models import build_tiny_models

        model, device, dtype = build_tiny_models(seed=0).transformer, "cpu", torch.float32
        results: dict[str, Any] = {"environment": {"torch": torch.__version__, "date": time.strftime("%F")}}
    else:
        model, device, dtype = bench_forward.build_model(), "cuda", torch.bfloat16
        results = {"environment": bench_forward.environment()}
    results.update({"args": vars(args), "loops": []})
    inputs = speed.make_example_inputs(model.config, args.height, args.width, 77, device=device, dtype=dtype)
    log(f"built model; {torch.cuda.memory_allocated() / 2**30 if device == 'cuda' else 0:.1f} GiB")
    if args.baseline_reps > 0:
        speed.warmup(model, inputs)
        times = bench_forward.time_forwards(model, inputs, args.baseline_reps)
        results["baseline_forward_s"] = round(statistics.median(times), 3)
        log(f"diffusers default forward {results['baseline_forward_s']} s")
    save(results, out_dir)

    quantized = False
    for mode in modes:
        bench_forward.reset_to_diffusers_default(model)
        wants_fp8 = bool(bench_forward.MODES[mode] and bench_forward.MODES[mode].get("fp8_linears"))
        if quantized and not wants_fp8:
            log(f"{mode}: skipped, the weights are already FP8")
            continue
        options = bench_forward.mode_options(mode, weights_are_fp8=quantized)
        quantized = quantized or wants_fp8
        if options is not None and args.tiny:
            options = speed.SpeedOptions(attention_backend=None, compile_backend="aot_eager")
        if options is not None:
            speed.apply_speed_options(model, options)
        warm_s = speed.warmup(model, inputs)
        log(f"{mode}: warm-up {warm_s:.1f} s")
        reference = None
        for threshold in thresholds:
            elapsed = time.perf_counter() - started
            per_step = results.get("baseline_forward_s", 15.0)  # the uncached loop is at most this per step
            expected = reference["loop_s"] if reference is not None else args.steps * per_step
            if elapsed + expected > args.budget_s:
                log(f"{mode} threshold {threshold}: skipped, {elapsed:.0f} s used, ~{expected:.0f} s needed")
                continue
            head = model.blocks[0]
            if threshold == 0.0:
                model.blocks[0] = TracedHead(head)
            skip_log.lines.clear()
            try:
                row = {"mode": mode, "warmup_s": round(warm_s, 1), **run_loop(model, inputs, args.steps, threshold, dtype)}
            finally:
                traced, model.blocks[0] = model.blocks[0], head
            if isinstance(traced, TracedHead):
                row["head_change_trace"] = traced.changes
            latents = row.pop("latents")
            row["skipped"] = skip_log.lines[-1].split("skipped ")[-1] if skip_log.lines else "0"
            if reference is None:
                reference = {"loop_s": row["loop_s"], "latents": latents}
            else:
                ref = reference["latents"].double()
                row["rel_l2"] = f"{((latents.double() - ref).norm() / ref.norm()).item():.2e}"
                row["vs_uncached"] = f"{reference['loop_s'] / row['loop_s']:.2f}x"
            if "baseline_forward_s" in results:
                row["vs_diffusers"] = f"{results['baseline_forward_s'] / row['mean_step_s']:.2f}x"
            results["loops"].append(row)
            log(json.dumps({k: v for k, v in row.items() if k != "step_s"}))
            save(results, out_dir)
    log(f"done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
