"""Time ONE forward of the full-size Wan-Animate 14B transformer split across the GPUs of one host (context parallel).

Started with torchrun, one process per GPU. Every rank builds the full-size model with the same random bf16 weights
on its own GPU (bench_forward.build_model) and the default fast path (cuDNN attention, regional compile; --eager
for none), then per resolution (77-frame clip, guide 1.0 = one forward per step):

1. each rank times the forward on its own GPU, unsplit: the one-GPU baseline (all GPUs at once, no communication);
2. for each --modes (ulysses, ring) the forward split across all ranks (wan/parallel.py), timed the same way.

It reports the median of --reps forwards after one warm-up (CUDA events; the slowest rank's median), the first call
(compile), the peak GPU memory of the busiest rank, the speed-up over one GPU and the relative L2 deviation of the
split output from the one-GPU output on rank 0. With one process only the baseline runs. Rank 0 prints markdown
rows and writes results.json / results.md under --out (default $OUT, else ./out) after every measurement.

    torchrun --standalone --nproc-per-node 2 benchmarks/bench_parallel.py --resolutions 720p,480p --modes ulysses,ring
    torchrun --standalone --nproc-per-node 2 benchmarks/bench_parallel.py --tiny     # CPU smoke check (gloo)

--tiny builds the tiny random model on the CPU (gloo, float32, eager) at 64x96 pixels, 13 frames, and checks the
split output against the unsplit one (ring is skipped there: no CPU attention kernel returns the log-sum-exp).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import bench_forward  # registers the app package as `wan_animate`; full-size model builder and timers
import torch
import torch.distributed as dist

speed = bench_forward.speed
parallel = importlib.import_module("wan_animate.wan.parallel")
distributed = importlib.import_module("wan_animate.wan.distributed")
TINY_SIZE = (64, 96, 13)  # height, width, frames: 4 x 6 tokens per frame, 5 latent frames = 120 tokens


def log(msg: str) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        bench_forward.log(msg)


def build_tiny_model() -> torch.nn.Module:
    """The tiny random WanAnimateTransformer3DModel (wan/models.py), float32 on the CPU, same weights on every rank."""
    from wan_animate.wan.models import build_tiny_models

    return build_tiny_models(seed=0).transformer


def time_cpu_forwards(model: torch.nn.Module, inputs: dict[str, torch.Tensor], reps: int) -> list[float]:
    """Wall seconds of `reps` forwards (the CPU has no events to time with)."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        speed.run_forward(model, inputs)
        times.append(time.perf_counter() - start)
    return times


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0


def slowest(value: float) -> float:
    """The largest `value` over the ranks (the split forward is as fast as its slowest rank)."""
    return max(distributed.gather_values(value))


def measure(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], reps: int, device: torch.device
) -> tuple[dict[str, Any], torch.Tensor]:
    """Warm up (compile), time `reps` forwards; returns the row (slowest rank's numbers) and rank 0's output."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    first = speed.warmup(model, inputs)
    if device.type == "cuda":
        times = bench_forward.time_forwards(model, inputs, reps)
    else:
        times = time_cpu_forwards(model, inputs, reps)
    output = speed.run_forward(model, inputs).float().cpu()
    row = {
        "first_call_s": round(slowest(first), 2),
        "median_s": slowest(statistics.median(times)),
        "times_s": [round(t, 4) for t in times],
        "peak_gib": round(slowest(peak_gib(device)), 2),
        "finite": bool(torch.isfinite(output).all()),
    }
    return row, output


def prepare(model: torch.nn.Module, compile_backend: str | None) -> None:
    """Drop compiled code and compile the blocks again (after the hooks or processors changed)."""
    torch._dynamo.reset()
    for module in model.modules():
        module._compiled_call_impl = None
    if compile_backend is not None:
        speed.compile_blocks(model, backend=compile_backend)


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        f"# Wan-Animate transformer forward, context parallel: {results['world_size']} x {env.get('gpu', 'CPU')}",
        "",
        f"torch {env.get('torch')}, diffusers {env.get('diffusers')}, compile {results['compile']}; {env.get('date')}",
        "",
        "| GPUs | resolution | tokens | mode | s / forward | speed-up vs 1 GPU | first call s | peak GiB / GPU "
        "| rel L2 vs 1 GPU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["runs"]:
        if "error" in row or "skipped" in row:
            note = (row.get("error") or row.get("skipped"))[:120]
            lines.append(f"| {row['gpus']} | {row['resolution']} | {row['tokens']} | {row['mode']} | - | - | - | - "
                         f"| {note} |")  # fmt: skip
            continue
        speedup = f"{row['speedup']:.2f}x" if "speedup" in row else "-"
        deviation = f"{row['rel_l2']:.2e}" if "rel_l2" in row else "-"
        lines.append(
            f"| {row['gpus']} | {row['resolution']} | {row['tokens']} | {row['mode']} | {row['median_s']:.3f} "
            f"| {speedup} | {row['first_call_s']:.1f} | {row['peak_gib']:.1f} | {deviation} |"
        )
    return "\n".join(lines) + "\n"


def save(results: dict[str, Any], out_dir: Path) -> None:
    if dist.get_rank() != 0:
        return
    bench_forward.write_results(results, markdown(results), out_dir)


def environment(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return bench_forward.environment()
    import diffusers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", default="720p,480p", help=f"comma list of {list(bench_forward.RESOLUTIONS)}")
    parser.add_argument("--modes", default="ulysses,ring", help="comma list of ulysses, ring")
    parser.add_argument("--reps", type=int, default=3, help="timed forwards per measurement (after one warm-up)")
    parser.add_argument("--eager", action="store_true", help="no regional compile")
    parser.add_argument("--no-single", action="store_true", help="skip the one-GPU baseline")
    parser.add_argument("--tiny", action="store_true", help="tiny random model on the CPU (gloo): a smoke check")
    parser.add_argument("--budget-s", type=float, default=540.0, help="skip measurements that would not finish")
    parser.add_argument("--out", default=os.environ.get("OUT", "out"))
    args = parser.parse_args()
    started = time.perf_counter()

    env = distributed.distributed_env()
    device = torch.device("cpu") if args.tiny else distributed.device_for(env)
    if device.type == "cpu" and not args.tiny:
        parser.error("no CUDA GPU: use --tiny for the CPU smoke check")
    if not env.is_parallel:  # one process: a group of one keeps the code below uniform
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29561")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=env.rank, world_size=env.world_size, device_id=device,
                                timeout=timedelta(minutes=30))  # fmt: skip
    else:
        dist.init_process_group("gloo", rank=env.rank, world_size=env.world_size)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()] if env.is_parallel else []
    resolutions = [r.strip() for r in args.resolutions.split(",") if r.strip()]
    compile_backend = None if (args.eager or args.tiny) else "inductor"
    results: dict[str, Any] = {
        "environment": environment(device), "args": vars(args), "world_size": env.world_size,
        "compile": compile_backend or "off", "runs": [],
    }  # fmt: skip
    out_dir = Path(args.out)

    build_start = time.perf_counter()
    model = build_tiny_model() if args.tiny else bench_forward.build_model()
    speed.apply_speed_options(model, speed.SpeedOptions(compile_blocks=False))  # cuDNN attention on the GPU
    results["build_s"] = round(time.perf_counter() - build_start, 1)
    # Same seed on every GPU should give the same weights; the deviation column assumes it, so check it.
    checksum = sum(float(p.float().sum()) for p in (model.blocks[0].attn1.to_q.weight, model.proj_out.weight))
    results["same_weights_on_all_ranks"] = len(set(distributed.gather_values(checksum))) == 1
    log(f"rank 0 of {env.world_size} on {device}: model built in {results['build_s']} s, same weights on all "
        f"ranks: {results['same_weights_on_all_ranks']}")  # fmt: skip
    sizes = {"tiny": TINY_SIZE} if args.tiny else {r: (*bench_forward.RESOLUTIONS[r], bench_forward.NUM_FRAMES)
                                                     for r in resolutions}  # fmt: skip
    inputs = {
        name: speed.make_example_inputs(model.config, h, w, frames, device=device, dtype=next(model.parameters()).dtype)
        for name, (h, w, frames) in sizes.items()
    }
    last_s = {name: 15.0 for name in sizes}
    compile_s = 0.0 if compile_backend is None else bench_forward.COMPILE_ESTIMATE_S

    def run(name: str, mode: str, model_prepared: bool) -> torch.Tensor | None:
        nonlocal compile_s
        h, w, frames = sizes[name]
        tokens = math.prod(inputs[name]["hidden_states"].shape[2:]) // 4
        row: dict[str, Any] = {"gpus": 1 if mode == "unsplit" else env.world_size, "resolution": name,
                               "tokens": tokens, "mode": mode}  # fmt: skip
        estimate = (args.reps + 2) * last_s[name] + (0.0 if model_prepared else compile_s)
        elapsed = slowest(time.perf_counter() - started)
        if elapsed + estimate > args.budget_s:
            row["skipped"] = f"time budget: {elapsed:.0f} s used, ~{estimate:.0f} s needed"
            results["runs"].append(row)
            log(f"{name} {mode}: {row['skipped']}")
            save(results, out_dir)
            return None
        log(f"{name} {mode}: start")
        measured, output = measure(model, inputs[name], args.reps, device)
        row.update(measured)
        if mode != "unsplit":
            last_s[name] = row["median_s"]
        if compile_backend is not None:
            compile_s = max(5.0, row["first_call_s"] - row["median_s"])
        results["runs"].append(row)
        log(f"{name} {mode}: {json.dumps(row)}")
        return output

    references: dict[str, torch.Tensor] = {}
    baseline_s: dict[str, float] = {}
    if not args.no_single or not env.is_parallel:
        prepare(model, compile_backend)
        for name in sizes:
            output = run(name, "unsplit", model_prepared=False)
            if output is not None:
                references[name] = output
                baseline_s[name] = results["runs"][-1]["median_s"]
                last_s[name] = baseline_s[name] / env.world_size
            save(results, out_dir)
    for mode in modes:
        if mode == "ring" and device.type == "cpu":
            log("ring: skipped on the CPU (no CPU attention kernel returns the log-sum-exp)")
            continue
        try:
            parallel.enable_context_parallel(model, mode)
        except ValueError as error:
            log(f"{mode}: {error}")
            continue
        prepare(model, compile_backend)
        for name in sizes:
            output = run(name, mode, model_prepared=False)
            if output is None:
                continue
            row = results["runs"][-1]
            if name in baseline_s:
                row["speedup"] = baseline_s[name] / row["median_s"]
            if name in references:
                row["rel_l2"] = bench_forward.rel_l2(output, references[name])
            save(results, out_dir)
        parallel.disable_context_parallel(model)

    results["total_s"] = round(time.perf_counter() - started, 1)
    save(results, out_dir)
    if env.is_main:
        print(markdown(results), flush=True)
    dist.destroy_process_group()
    if args.tiny:  # the smoke check: the split forward must equal the unsplit one up to float32 rounding
        deviations = [row["rel_l2"] for row in results["runs"] if "rel_l2" in row]
        if env.is_parallel and (not deviations or max(deviations) > 1e-5):
            print(f"tiny check failed: rel L2 vs one process {deviations}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
