"""Time ONE forward of the full-size Wan-Animate 14B transformer (random bf16 weights) under each speed mode.

Builds WanAnimateTransformer3DModel with the config of Wan-AI/Wan2.2-Animate-14B-Diffusers/transformer directly on
the GPU, makes real-shaped inputs for one 77-frame clip, and for each resolution and mode reports the median forward
time (CUDA events, after warm-up), the first-call time (compile), peak GPU memory and the relative L2 deviation of the
output from diffusers' default (bf16, plain SDPA, no compile) on the same inputs. Writes results.json and
results.md under --out (default $OUT, else ./out) after every mode, so a run cut short keeps what it measured.

    python benchmarks/bench_forward.py --resolutions 480p,720p --modes all --reps 3

See benchmarks/README.md for the device run (wheels to carry) and BENCHMARKS.md for results.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

# (height, width): landscape, and the portrait 720p frame a 512x600 reference gives in animation mode (bench_run_job)
RESOLUTIONS = {"480p": (480, 832), "720p": (720, 1280), "720p_portrait": (1024, 880)}
NUM_FRAMES = 77

# Mode name -> SpeedOptions fields (None: diffusers' default, nothing applied). FP8 modes go last: quantizing is
# irreversible on the one model this script builds.
MODES: dict[str, dict[str, Any] | None] = {
    "diffusers_default": None,
    # Noise floor: diffusers' default again, with the latent input nudged by bf16-rounding-sized noise (relative
    # 2^-8), to show how much 40 random-weight layers amplify rounding-level differences.
    "diffusers_default_perturbed": None,
    "cudnn_eager": {"compile_blocks": False},
    "fast": {},
    # The fast path with torch's own SDPA dispatch (torch 2.11 picks the same cuDNN kernel) instead of diffusers'
    # forced "_native_cudnn", which copies q/k/v to contiguous memory first.
    "fast_sdpa": {"attention_backend": None},
    # The fast path with FlashAttention-4's bf16 kernel (PyPI flash-attn-4) for the blocks' self-attention.
    "fast_fa4": {"flash4_attention": True},
    # The same inside the denoising loop: the face motion features computed in an earlier step (wan/motion_cache.py).
    "fast_fa4_loop": {"flash4_attention": True, "reuse_motion": True},
    # The same compiled for any frame size (dynamic shapes): with --then-shape, what a frame size that no warm-up
    # compiled costs its first request, against the static graphs' recompile.
    "fast_fa4_loop_dynamic": {"flash4_attention": True, "reuse_motion": True, "compile_dynamic": True},
    # FlashAttention-3's bf16 forward (PyPI fa3-fwd), against FlashAttention-4.
    "fast_fa3": {"fa3_attention": True},
    # FP8 self-attention: FlashAttention-3's FP8 forward (the app's attention "fp8"), cuDNN's FP8 kernel (earlier).
    "fast_fp8attn": {"fp8_attention": True},
    "fast_cudnnfp8attn": {"cudnn_fp8_attention": True},
    "fast_fp8": {"fp8_linears": True},
    "fast_fp8_fa4": {"fp8_linears": True, "flash4_attention": True},
    "fast_fp8_cudnnfp8attn": {"fp8_linears": True, "cudnn_fp8_attention": True},
    "fast_fp8_fp8attn": {"fp8_linears": True, "fp8_attention": True},
    # The fastest combination as the loop runs it (motion features reused).
    "fast_fp8_fp8attn_loop": {"fp8_linears": True, "fp8_attention": True, "reuse_motion": True},
    # Self-attention's q/k/v projections as one GEMM (diffusers' `fuse_projections`): same math, one wider matmul
    # and (FP8) one activation quantisation instead of three.
    "fast_fa3_qkv": {"fa3_attention": True, "fuse_qkv": True},
    "fast_fp8_fp8attn_qkv_loop": {"fp8_linears": True, "fp8_attention": True, "reuse_motion": True, "fuse_qkv": True},
    # One FP8 scale per tensor (cuBLAS's FP8 GEMM) instead of per row (CUTLASS's rowwise GEMM): the model is rebuilt
    # (same seed, same weights) to quantise it the other way.
    "fast_fp8t_fp8attn_loop": {"fp8_linears": True, "fp8_granularity": "tensor", "fp8_attention": True,
                               "reuse_motion": True},
    "fast_fp8t_fp8attn_qkv_loop": {"fp8_linears": True, "fp8_granularity": "tensor", "fp8_attention": True,
                                   "reuse_motion": True, "fuse_qkv": True},
}
BENCH_ONLY_KEYS = ("reuse_motion", "fuse_qkv")  # mode keys this script handles itself, not SpeedOptions fields
COMPILE_ESTIMATE_S = 120.0  # budget guess for one regional compile before it has been measured


def load_app_modules() -> tuple[Any, Any, Any, Any, dict[str, Any]]:
    """wan/speed.py, wan/motion_cache.py, the attention kernels and the 14B transformer config, with the app folder
    imported as package `wan_animate` (torch, diffusers, transformers and opencv are all they need on the GPU
    machine)."""
    sys.path.insert(0, str(REPO_ROOT))
    from local_runner import load_app_package

    load_app_package()
    from wan_animate.wan import attention_kernels, cudnn_fp8, models, motion_cache, speed

    return speed, motion_cache, attention_kernels, cudnn_fp8, models.ANIMATE_14B_DIFFUSERS_CONFIG


# the config of Wan-AI/Wan2.2-Animate-14B-Diffusers/transformer, as the app's loader uses it
speed, motion_cache, attention_kernels, cudnn_fp8, FULL_CONFIG = load_app_modules()
sys.path.insert(0, str(Path(__file__).resolve().parent))
from forward_report import diffusers_sage_backend_status, environment, markdown, write_results  # noqa: E402
from kernel_profile import profile_kernels  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (on the CPU copies)."""
    out64, ref64 = out.double(), ref.double()
    return ((out64 - ref64).norm() / ref64.norm()).item()


def build_model() -> torch.nn.Module:
    """Full-size model with random weights, created in bf16 straight on the GPU (no 69 GB fp32 detour), then the
    modules diffusers keeps in fp32 when loading with torch_dtype=bf16 (`_keep_in_fp32_modules`) cast back up."""
    from diffusers import WanAnimateTransformer3DModel

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = WanAnimateTransformer3DModel(**FULL_CONFIG)
    finally:
        torch.set_default_dtype(previous)
    keep_fp32 = set(model._keep_in_fp32_modules)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if keep_fp32.intersection(name.split(".")):
                param.data = param.data.float()
    return model.eval().requires_grad_(False)


def reset_to_diffusers_default(model: torch.nn.Module) -> None:
    """Undo the bf16 speed options on the same model: drop compiled wrappers, plain SDPA, diffusers' processors."""
    from diffusers.models.transformers.transformer_wan_animate import WanAttnProcessor

    torch._dynamo.reset()
    for module in model.modules():
        if type(module).__name__ in speed.COMPILED_BLOCK_CLASSES:
            module._compiled_call_impl = None
    for block in model.blocks:
        block.attn1.set_processor(WanAttnProcessor())
        block.attn1.fused_projections = False
    model.set_attention_backend("native")


def build_fused_qkv(model: torch.nn.Module) -> None:
    """Give every block's self-attention a fused `to_qkv` (kept beside to_q/to_k/to_v, unused until
    `use_fused_qkv`); build it before FP8 quantisation so that it is quantised like the others."""
    for block in model.blocks:
        block.attn1.fuse_projections()
        block.attn1.fused_projections = False


def use_fused_qkv(model: torch.nn.Module, on: bool) -> None:
    """Make every block's self-attention use its fused `to_qkv` (`on`, where built) or its three projections."""
    for block in model.blocks:
        block.attn1.fused_projections = on and hasattr(block.attn1, "to_qkv")


def time_forwards(model: torch.nn.Module, inputs: dict[str, torch.Tensor], reps: int) -> list[float]:
    """Seconds of `reps` forwards, each timed with CUDA events; no host sync inside a forward."""
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        speed.run_forward(model, inputs)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000.0)
    return times


def count_host_syncs(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[str]:
    """Where one forward makes the host wait for the GPU (torch's sync debug mode), as 'file:line' strings."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            speed.run_forward(model, inputs)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    found = [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]
    if found:  # the first sync again, as an error, to record the Python stack that caused it
        torch.cuda.set_sync_debug_mode("error")
        try:
            speed.run_forward(model, inputs)
        except RuntimeError:
            frames = traceback.extract_tb(sys.exc_info()[2])
            found.append(" <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames[-6:])))
        finally:
            torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()
    return found


def attention_microbench(token_counts: dict[str, int], heads: int, head_dim: int, reps: int) -> list[dict]:
    """Self-attention kernels alone at the model's shapes: diffusers backends that need no extra install, plus
    the project's kernels (wan/attention_kernels.py, wan/cudnn_fp8.py). Deviation is against the `_native_flash`
    output (benchmarks/bench_attention.py compares against float32 attention, with outlier inputs too)."""
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    rows = []
    for res, tokens in token_counts.items():
        gen = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (
            torch.randn(1, tokens, heads, head_dim, device="cuda", dtype=torch.bfloat16, generator=gen)
            for _ in range(3)
        )
        kernels = {
            name: functools.partial(dispatch_attention_fn, backend=AttentionBackendName(name))
            for name in ("native", "_native_cudnn", "_native_flash", "_native_efficient")
        }
        kernels["cudnn_fp8 (wan/cudnn_fp8.py)"] = cudnn_fp8.cudnn_fp8_attention
        kernels["flash4 (wan/attention_kernels.py)"] = attention_kernels.flash4_attention
        kernels["fa3 bf16 (wan/attention_kernels.py)"] = attention_kernels.fa3_attention
        kernels["fa3 fp8 (wan/attention_kernels.py)"] = attention_kernels.fa3_fp8_attention
        ref = None
        flops = 4 * tokens * tokens * head_dim * heads
        for name, fn in kernels.items():
            row: dict[str, Any] = {"resolution": res, "tokens": tokens, "kernel": name}
            try:
                out = fn(q, k, v)
                torch.cuda.synchronize()
                times = []
                for _ in range(reps):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    fn(q, k, v)
                    end.record()
                    end.synchronize()
                    times.append(start.elapsed_time(end) / 1000.0)
                median = statistics.median(times)
                row.update(ms=round(median * 1000, 2), tflops=round(flops / median / 1e12, 1))
                if name == "_native_flash":
                    ref = out.float()
                if ref is not None:
                    row["rel_l2_vs_flash"] = round(rel_l2(out.float().cpu(), ref.cpu()), 5)
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            rows.append(row)
            log(f"attention {row}")
        del q, k, v, ref
        torch.cuda.empty_cache()
    return rows


def save(results: dict[str, Any], out_dir: Path) -> None:
    write_results(results, markdown(results), out_dir)


def perturbed(inputs: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    """`inputs` with hidden_states multiplied by (1 + 2^-8 * N(0, 1)), i.e. changed at the bf16 rounding level."""
    latents = inputs["hidden_states"]
    gen = torch.Generator(device=latents.device).manual_seed(seed)
    noise = torch.randn(latents.shape, generator=gen, device=latents.device, dtype=torch.float32)
    return {**inputs, "hidden_states": (latents.float() * (1 + 2**-8 * noise)).to(latents.dtype)}


def time_motion_encoding(model: torch.nn.Module, inputs: dict[str, torch.Tensor], reps: int = 3) -> float:
    """Median seconds of the part of a forward that depends only on the face video (motion encoder over the 77
    face crops + face encoder): the same for every denoising step of a clip."""
    faces = inputs["face_pixel_values"]  # [B, 3, F, H, W]
    batch, channels, frames = faces.shape[:3]
    flat = faces.permute(0, 2, 1, 3, 4).reshape(-1, channels, *faces.shape[-2:])
    times = []
    with torch.inference_mode():
        for _ in range(reps + 1):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            chunks = [model.motion_encoder(chunk) for chunk in flat.split(model.config.motion_encoder_batch_size)]
            model.face_encoder(torch.cat(chunks).view(batch, frames, -1))
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
    return statistics.median(times[1:])


def mode_options(mode: str, weights_are_fp8: bool) -> Any:
    """SpeedOptions for a mode (None for diffusers' default). Once the weights are FP8, quantizing is not redone."""
    overrides = MODES[mode]
    if overrides is None:
        return None
    overrides = {k: v for k, v in overrides.items() if k not in BENCH_ONLY_KEYS}
    if weights_are_fp8:
        overrides = {**overrides, "fp8_linears": False}
    return speed.SpeedOptions(**overrides)


@contextlib.contextmanager
def reused_motion(model: torch.nn.Module) -> Iterator[None]:
    """Forwards as in the app's denoising loop: the face motion features computed by the first forward, reused by
    the later ones (one branch; a forward pre-hook on the model plays the loop's `begin_forward`)."""
    cache = motion_cache.MotionFeatureCache()
    handle = model.register_forward_pre_hook(lambda *_args: cache.begin_forward("cond"))
    try:
        with motion_cache.installed(model, cache):
            yield
    finally:
        handle.remove()


def run_mode(
    model: torch.nn.Module,
    options: Any,
    inputs: dict[str, torch.Tensor],
    reps: int,
    check_syncs: bool,
    reuse_motion: bool = False,
    profile: bool = False,
) -> tuple[dict[str, Any], torch.Tensor]:
    """Apply `options` (None: nothing) to the reset model, warm up, time `reps` forwards; returns row and output."""
    with reused_motion(model) if reuse_motion else contextlib.nullcontext():
        return _run_mode(model, options, inputs, reps, check_syncs, profile)


def _run_mode(
    model: torch.nn.Module,
    options: Any,
    inputs: dict[str, torch.Tensor],
    reps: int,
    check_syncs: bool,
    profile: bool,
) -> tuple[dict[str, Any], torch.Tensor]:
    row: dict[str, Any] = {}
    setup_start = time.perf_counter()
    if options is not None:
        speed.apply_speed_options(model, options)
    row["setup_s"] = round(time.perf_counter() - setup_start, 2)
    torch.cuda.reset_peak_memory_stats()
    row["first_call_s"] = round(speed.warmup(model, inputs), 2)
    times = time_forwards(model, inputs, reps)
    row["times_s"] = [round(t, 4) for t in times]
    row["median_s"] = statistics.median(times)
    row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if check_syncs:
        row["host_syncs"] = count_host_syncs(model, inputs)
    if profile:
        row["profile"] = profile_kernels(lambda: speed.run_forward(model, inputs))
    output = speed.run_forward(model, inputs).float().cpu()
    row["finite"] = bool(torch.isfinite(output).all())
    return row, output


def then_shape(model: torch.nn.Module, resolution: str, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """One first call (a recompile for static graphs) and one timed forward at another frame size, same model."""
    first = speed.warmup(model, inputs)
    return {"resolution": resolution, "first_call_s": round(first, 2),
            "forward_s": round(time_forwards(model, inputs, 1)[0], 4)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", default="480p,720p")
    parser.add_argument("--modes", default="all", help=f"comma list of {list(MODES)} or 'all'")
    parser.add_argument("--then-shape", default=None, choices=list(RESOLUTIONS),
                        help="after each compiled mode's run, one first call and one timed forward at this frame size "
                             "on the same compiled model (no reset; motion features computed, not reused)")
    parser.add_argument("--reps", type=int, default=3, help="timed forwards per mode (after one warm-up)")
    parser.add_argument("--attention", default="", help="also time the attention kernels alone at these resolutions")
    parser.add_argument("--syncs", action="store_true", help="list host syncs in one forward per mode")
    parser.add_argument("--profile", action="store_true", help="GPU time by kernel kind in one forward per mode")
    parser.add_argument("--budget-s", type=float, default=540.0, help="skip modes that would not finish by then")
    parser.add_argument("--out", default=os.environ.get("OUT", "out"))
    args = parser.parse_args()

    started = time.perf_counter()
    out_dir = Path(args.out)
    resolutions = [r.strip() for r in args.resolutions.split(",") if r.strip()]
    modes = list(MODES) if args.modes == "all" else [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes + resolutions if m not in MODES and m not in RESOLUTIONS]
    shapes = resolutions + ([args.then_shape] if args.then_shape and args.then_shape not in resolutions else [])
    if unknown:
        parser.error(f"unknown modes/resolutions: {unknown}")

    results: dict[str, Any] = {"environment": environment(), "args": vars(args), "runs": [], "attention": []}
    results["diffusers_sage_backend"] = diffusers_sage_backend_status()
    log(json.dumps(results["environment"]))
    log(f"diffusers 'sage' backend: {results['diffusers_sage_backend']}")
    save(results, out_dir)

    if args.attention:
        attention_res = [r.strip() for r in args.attention.split(",") if r.strip()]
        tokens = {r: 21 * (RESOLUTIONS[r][0] // 16) * (RESOLUTIONS[r][1] // 16) for r in attention_res}
        results["attention"] = attention_microbench(tokens, heads=40, head_dim=128, reps=5)
        save(results, out_dir)

    build_start = time.perf_counter()
    model = build_model()
    torch.cuda.synchronize()
    results["build_s"] = round(time.perf_counter() - build_start, 1)
    results["params_billion"] = round(sum(p.numel() for p in model.parameters()) / 1e9, 2)
    results["weights_gib"] = round(torch.cuda.memory_allocated() / 2**30, 1)
    log(f"built model: {results['params_billion']}B params, {results['weights_gib']} GiB, {results['build_s']} s")

    inputs = {r: speed.make_example_inputs(model.config, *RESOLUTIONS[r], NUM_FRAMES, device="cuda") for r in shapes}
    results["motion_encoding_s"] = {r: round(time_motion_encoding(model, inputs[r]), 4) for r in resolutions}
    log(f"motion + face encoder per forward: {results['motion_encoding_s']}")
    references: dict[str, torch.Tensor] = {}
    baseline_s: dict[str, float] = {}
    last_forward_s: dict[str, float] = {r: 15.0 for r in resolutions}
    compile_s = COMPILE_ESTIMATE_S
    quantized: str | None = None  # the FP8 granularity the model's weights were quantised with
    fuse_any = any(MODES[m] and MODES[m].get("fuse_qkv") for m in modes)
    if fuse_any:
        build_fused_qkv(model)

    for mode in modes:
        wants_fp8 = bool(MODES[mode] and MODES[mode].get("fp8_linears"))
        granularity = (MODES[mode] or {}).get("fp8_granularity", "row")
        if wants_fp8 and quantized is not None and quantized != granularity:
            reset_to_diffusers_default(model)
            del model
            torch.cuda.empty_cache()
            model = build_model()  # same seed: the same bf16 weights, to quantise with the other granularity
            if fuse_any:
                build_fused_qkv(model)
            quantized = None
        if wants_fp8 and quantized is None:
            reset_to_diffusers_default(model)
            speed.quantize_block_linears_fp8(model, granularity)
            quantized = granularity
            results[f"fp8_{granularity}_weights_gib"] = round(torch.cuda.memory_allocated() / 2**30, 1)
        if quantized is not None and not wants_fp8:
            log(f"{mode}: skipped, the weights are already FP8 (list FP8 modes last)")
            continue
        options = mode_options(mode, weights_are_fp8=quantized is not None)
        for res in resolutions:
            tokens = math.prod(inputs[res]["hidden_states"].shape[2:]) // 4
            row: dict[str, Any] = {"resolution": res, "mode": mode, "tokens": tokens}
            compiles = options is not None and options.compile_blocks
            estimate = (args.reps + 2) * last_forward_s[res] + (compile_s if compiles else 0.0)
            if compiles and args.then_shape and args.then_shape != res:
                estimate += compile_s + 2 * last_forward_s[res]
            elapsed = time.perf_counter() - started
            if elapsed + estimate > args.budget_s:
                row["skipped"] = f"time budget: {elapsed:.0f} s used, ~{estimate:.0f} s needed"
                log(f"{res} {mode}: {row['skipped']}")
                results["runs"].append(row)
                save(results, out_dir)
                continue
            reset_to_diffusers_default(model)
            log(f"{res} {mode}: start")
            try:
                mode_inputs = perturbed(inputs[res]) if mode == "diffusers_default_perturbed" else inputs[res]
                reps = 1 if mode == "diffusers_default_perturbed" else args.reps
                reuse = bool(MODES[mode] and MODES[mode].get("reuse_motion"))
                use_fused_qkv(model, bool(MODES[mode] and MODES[mode].get("fuse_qkv")))
                measured, output = run_mode(model, options, mode_inputs, reps, args.syncs, reuse, args.profile)
                row.update(measured)
                if compiles and args.then_shape and args.then_shape != res:
                    row["then_shape"] = then_shape(model, args.then_shape, inputs[args.then_shape])
                last_forward_s[res] = row["median_s"]
                if compiles:
                    compile_s = max(5.0, row["first_call_s"] - row["median_s"])
                if mode == "diffusers_default":
                    references[res] = output
                    baseline_s[res] = row["median_s"]
                if res in references:
                    row["rel_l2"] = rel_l2(output, references[res])
                if res in baseline_s:
                    row["speedup"] = baseline_s[res] / row["median_s"]
                del output
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
                row["traceback"] = traceback.format_exc()[-3000:]
                torch.cuda.empty_cache()
            log(f"{res} {mode}: " + json.dumps({k: v for k, v in row.items() if k not in ("traceback", "profile")}))
            results["runs"].append(row)
            save(results, out_dir)

    results["total_s"] = round(time.perf_counter() - started, 1)
    save(results, out_dir)
    print(markdown(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
