"""One whole clip end to end on the GPU with the full-size architecture and random weights.

Builds every component at its real size (Wan-Animate DiT 17.3B, UMT5-XXL encoder, CLIP ViT-H/14, Wan 2.1 VAE)
straight on the GPU in its load dtype, then runs the app's own loop (`wan.generate`) on a synthetic 77-frame
conditioning: text/CLIP/VAE encode, N denoising steps, VAE decode. Prints per-stage times and peak memory, and
writes them as JSON under --out.

    python benchmarks/bench_clip_e2e.py --height 480 --width 832 --steps 4 [--fast] --out $OUT

`--runs default,distill` times clips one after the other in the same process: `default` is --steps steps of the
default sampler (dpm++), `distill` LightX2V's 4-step distillation LoRA path (a random rank-64 LoRA in the release's
layout, loaded the app's way before the speed options; the LoRA's 4 Euler steps, shift 5, guide 1). With --warmup each
run's adapter set is compiled / warmed with one forward first (the app does that at setup), so total_clip_s is what a
request sees. The two runs' outputs are NOT compared: with random weights the frames of either path are noise and their
difference says nothing about the real distilled model's fidelity.

    python benchmarks/bench_clip_e2e.py --height 720 --width 1280 --steps 20 --fast --warmup --runs default,distill --out $OUT

`--video-frames 305` times a ~10 s, 30 fps driving video the way a request generates it: 77-frame clips one after the
other (each later clip conditioned on the previous clip's last frames), so total_clip_s is the whole video's GPU time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

APP_ROOT = Path(__file__).resolve().parents[1]


def on_gpu(build: Any, dtype: torch.dtype) -> Any:
    """Construct a module directly on the GPU in `dtype` (no fp32 CPU detour for 17B parameters)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("cuda"):
            return build()
    finally:
        torch.set_default_dtype(previous)


def build_encoders() -> dict[str, Any]:
    """UMT5-XXL encoder (bf16), CLIP ViT-H/14 (fp16) and the Wan 2.1 VAE (fp32) at full size with random weights, on
    the GPU, as WanAnimateModels keyword arguments (everything but the transformer)."""
    from diffusers import AutoencoderKLWan
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel
    from wan_animate.wan.models import build_tiny_tokenizer
    from wan_animate.wan.vae_layout import set_vae_layout

    torch.manual_seed(1)
    # google/umt5-xxl encoder (what Wan-AI/Wan2.2-Animate-14B-Diffusers/text_encoder holds).
    text_config = UMT5Config(
        vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
        relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", dropout_rate=0.0,
    )  # fmt: skip
    text_encoder = on_gpu(lambda: UMT5EncoderModel(text_config), torch.bfloat16).eval().requires_grad_(False)
    # open-clip xlm-roberta-large-vit-huge-14 vision tower.
    clip_config = CLIPVisionConfig(
        hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, patch_size=14,
        image_size=224, projection_dim=1024, hidden_act="gelu",
    )  # fmt: skip
    image_encoder = on_gpu(lambda: CLIPVisionModel(clip_config), torch.float16).eval().requires_grad_(False)
    vae = on_gpu(lambda: AutoencoderKLWan(), torch.float32).eval().requires_grad_(False)
    set_vae_layout(vae, "cuda")  # as place_models lays it out in the app
    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": build_tiny_tokenizer(),  # token ids only; the real tokenizer does not change the cost
        "image_encoder": image_encoder,
        "image_processor": CLIPImageProcessor(),
    }


def build_full_models(bench_forward: Any) -> Any:
    """WanAnimateModels with the release's architecture and random weights, placed as load_models places them."""
    from diffusers import WanAnimateTransformer3DModel
    from wan_animate.wan.models import WanAnimateModels, keep_fp32_modules

    torch.manual_seed(0)
    transformer = on_gpu(lambda: WanAnimateTransformer3DModel(**bench_forward.FULL_CONFIG), torch.bfloat16)
    transformer = keep_fp32_modules(transformer).eval().requires_grad_(False)
    return WanAnimateModels(
        transformer=transformer, **build_encoders(), dtype=torch.bfloat16, device=torch.device("cuda")
    )


def synthetic_conditioning(num_frames: int, height: int, width: int, fps: float) -> Any:
    """Random-but-plausible uint8 conditioning of the shapes preprocessing produces."""
    from wan_animate.preprocess.conditioning import Conditioning

    rng = np.random.default_rng(0)
    return Conditioning(
        pose_frames=rng.integers(0, 255, (num_frames, height, width, 3), dtype=np.uint8),
        face_frames=rng.integers(0, 255, (num_frames, 512, 512, 3), dtype=np.uint8),
        reference=rng.integers(0, 255, (height, width, 3), dtype=np.uint8),
        fps=fps,
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--frames", type=int, default=77)
    parser.add_argument("--video-frames", type=int, default=None,
                        help="a driving video this long, generated clip by clip (--frames per clip), as a request runs it")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--fast", action="store_true", help="apply wan/speed.py's default fast path first")
    parser.add_argument("--fp8", action="store_true", help="with --fast: FP8 block linears too (torchao)")
    parser.add_argument("--no-compile", action="store_true", help="with --fast: skip regional compilation")
    parser.add_argument("--offload", action="store_true", help="offload 'model': encoders/VAE idle on CPU, blocks streamed")
    parser.add_argument("--offload-first", action="store_true",
                        help="with --offload --fp8: offload first, then FP8 block by block (the app's load order)")
    parser.add_argument("--runs", default="default",
                        help="comma list of 'default' (--steps steps, dpm++) and 'distill' (the distillation LoRA's path)")
    parser.add_argument("--warmup", action="store_true", help="one untimed forward per run's adapter set first")
    parser.add_argument("--attention", default="default", choices=["default", "cudnn", "fp8"],
                        help="with --fast: the app's attention choice (default: FlashAttention-4 where it runs)")
    parser.add_argument("--vae-bf16", action="store_true", help="the VAE in bf16 (the app's vae_bf16 opt-in)")
    parser.add_argument("--clips", type=int, default=1, help="time this many requests of one clip each, in a row")
    parser.add_argument("--then-vae-bf16", action="store_true",
                        help="after the --clips requests, one more with the VAE switched to bf16")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args()
    runs = [run.strip() for run in args.runs.split(",") if run.strip()]
    if not runs or set(runs) - {"default", "distill"}:
        parser.error("--runs takes 'default' and/or 'distill'")

    sys.path.insert(0, str(APP_ROOT))
    from local_runner import load_app_package

    load_app_package()
    sys.path.insert(0, str(APP_ROOT / "benchmarks"))
    import bench_forward
    from wan_animate.wan import GenerationOptions, generate
    from wan_animate.wan.vae_layout import set_vae_layout

    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    models = build_full_models(bench_forward)
    torch.cuda.synchronize()
    build_s = time.perf_counter() - t0
    weights_gib = torch.cuda.memory_allocated() / 2**30
    distill_load_s = None
    if "distill" in runs:  # loaded before the speed options and offloading, as load_models does
        distill_load_s = load_random_distill_lora(models)
        print(f"distillation LoRA (random, release layout) loaded in {distill_load_s:.1f} s", flush=True)
    compile_s = 0.0
    flash4 = False
    if args.offload_first:
        from wan_animate.wan.offload import place_models
        from wan_animate.wan.speed import quantize_offloaded_blocks_fp8

        place_models(models, "model")
        models.offload = "model"
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        if args.fp8:
            quantize_offloaded_blocks_fp8(models.transformer, torch.device("cuda"))
        compile_s = time.perf_counter() - t
        print(f"offload-first: FP8 per block in {compile_s:.1f} s, peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB",
              flush=True)  # fmt: skip
    elif args.fast:
        t = time.perf_counter()
        # The app's default kernel choice; its offloaded workers keep diffusers' attention backend.
        default = args.attention == "default" and not args.offload
        flash4 = default and bench_forward.attention_kernels.default_uses_flash4("cuda")
        options = bench_forward.speed.SpeedOptions(
            fp8_linears=args.fp8, compile_blocks=not args.no_compile, flash4_attention=flash4,
            fp8_attention=args.attention == "fp8",
        )  # fmt: skip
        models.transformer = bench_forward.speed.apply_speed_options(models.transformer, options)
        compile_s = time.perf_counter() - t  # compilation itself happens lazily, inside the first step
    if args.vae_bf16:
        models.vae.to(torch.bfloat16)
        set_vae_layout(models.vae, "cuda")  # the bf16 VAE runs contiguous, as in the app
    if args.offload and not args.offload_first:
        from wan_animate.wan.offload import place_models

        place_models(models, "model")
        models.offload = "model"
        torch.cuda.empty_cache()
    video_frames = args.video_frames or args.frames
    cond = synthetic_conditioning(video_frames, args.height, args.width, 30.0)
    setup = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "resolution": f"{args.width}x{args.height}",
        "frames": args.frames,
        "video_frames": video_frames,
        "fast_path": args.fast,
        "flash4_attention": flash4,
        "attention": args.attention,
        "vae_dtype": "bf16" if args.vae_bf16 else "fp32",
        "fp8_linears": args.fp8,
        "compiled": args.fast and not args.no_compile,
        "offload": args.offload,
        "build_s": round(build_s, 1),
        "weights_gib": round(weights_gib, 1),
        "apply_speed_s": round(compile_s, 2),
        "distill_lora_load_s": round(distill_load_s, 1) if distill_load_s is not None else None,
    }
    results = []
    for run in runs:
        options = run_options(run, args, GenerationOptions)
        warmup_s = warm_up(models, options, args) if args.warmup else None
        requests = args.clips + (1 if args.then_vae_bf16 else 0)
        for request in range(1, requests + 1):  # request 2..: the worker's caches (prompts, blank guide) warm
            if request > args.clips:
                models.vae.to(torch.bfloat16)
                set_vae_layout(models.vae, "cuda")  # the bf16 VAE runs contiguous, as in the app
                setup = {**setup, "vae_dtype": "bf16"}
            timing = time_clip(models, cond, options, generate, video_frames)
            result = {**setup, "run": run, "request": request, **timing, "warmup_s": warmup_s}
            if run == "distill":
                result["deviation"] = "not measured: random weights (both paths give noise; no fidelity signal)"
            results.append(result)
            (args.out / f"e2e_{run}_{request}.json").write_text(json.dumps(result, indent=2))
            print(json.dumps(result, indent=2), flush=True)
    if len(results) > 1:
        by_run = {r["run"]: r for r in results if r["request"] == 1}
        if {"default", "distill"} <= set(by_run):
            ratio = by_run["default"]["total_clip_s"] / by_run["distill"]["total_clip_s"]
            print(f"whole clip: default {by_run['default']['total_clip_s']} s, distill {by_run['distill']['total_clip_s']} s "
                  f"({ratio:.2f}x)", flush=True)  # fmt: skip
    (args.out / "e2e.json").write_text(json.dumps(results[0] if len(results) == 1 else results, indent=2))
    return 0


def load_random_distill_lora(models: Any, rank: int = 64, scale: float = 1e-3) -> float:
    """A random distillation LoRA in the release's layout (487 rank-64 pairs + 775 differences, bf16), made on the
    GPU and loaded through the app's loader; returns seconds."""
    from wan_animate.wan.distill import load_distill_lora
    from wan_animate.wan.smoke import lightx2v_lora_tensors

    start = time.perf_counter()
    state = lightx2v_lora_tensors(models.transformer, rank=rank, seed=0, scale=scale, device=models.device)
    models.distill = load_distill_lora(models.transformer, state)
    del state
    torch.cuda.synchronize()
    return time.perf_counter() - start


def run_options(run: str, args: argparse.Namespace, options_class: Any) -> Any:
    """GenerationOptions of one run: `default` at --steps, `distill` with the LoRA's recommended sampling."""
    common = dict(clip_len=args.frames, seed=0, color_match=False, offload="model" if args.offload else "none")
    if run == "distill":
        from wan_animate.wan.distill import RECOMMENDED_SAMPLING

        return options_class(distill=True, **common, **RECOMMENDED_SAMPLING)
    return options_class(sampling_steps=args.steps, **common)


def warm_up(models: Any, options: Any, args: argparse.Namespace) -> float:
    """One forward of the clip's shape with the run's adapters active (compiles that adapter set's graph)."""
    from wan_animate.wan.lora import request_adapters
    from wan_animate.wan.speed import make_example_inputs, warmup

    if args.offload:
        return 0.0  # offloaded blocks run eagerly: nothing to compile
    config = models.transformer.config
    inputs = make_example_inputs(config, args.height, args.width, args.frames, device=models.device, dtype=models.dtype)
    with request_adapters(models.transformer, None, False, [], models.distill if options.distill else None):
        return round(warmup(models.transformer, inputs), 2)


STAGES = ("encode_prompt", "clip_embedding", "reference_condition", "pose_latents", "clip_condition", "face_pixels",
          "vae_decode")  # fmt: skip


@contextlib.contextmanager
def stage_timers(seconds: dict[str, float], sync: bool = True) -> Iterator[None]:
    """Time each encode/decode function the loop calls (wan.generate's names), GPU synchronised (`sync`), into
    `seconds`."""
    loop = sys.modules["wan_animate.wan.generate"]  # the module (the package exports a function of that name)

    originals = {name: getattr(loop, name) for name in STAGES}

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if sync:
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            if sync:
                torch.cuda.synchronize()
            seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - start, 3)
            return out

        return wrapper

    for name, fn in originals.items():
        setattr(loop, name, timed(name, fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(loop, name, fn)


def time_clip(models: Any, cond: Any, options: Any, generate: Any, frames: int) -> dict[str, Any]:
    """Run one clip through the app's loop; stage times (each encode/decode function's seconds) and peak memory."""
    step_times: list[float] = []
    stages: dict[str, float] = {}

    def on_step(segment: int, num_segments: int, step: int, num_steps: int) -> None:
        torch.cuda.synchronize()
        step_times.append(time.perf_counter())

    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with stage_timers(stages):
        clips = [clip for clip in generate(models, cond, options, on_step=on_step)]
    torch.cuda.synchronize()
    end = time.perf_counter()
    out_frames = sum(int(c.shape[0]) for c in clips)
    assert out_frames == frames, (out_frames, frames)
    step_s = [b - a for a, b in zip(step_times[:-1], step_times[1:], strict=True)]
    return {
        "steps": options.sampling_steps,
        "sampler": options.sample_solver,
        "shift": options.shift,
        "guide_scale": options.guide_scale,
        "encode_s (text+clip+vae, to end of step 1)": round(step_times[0] - start, 2),
        "first_step_included_above": True,
        "median_step_s (steps 2..N)": round(float(np.median(step_s)), 3) if step_s else None,
        "decode_and_to_uint8_s": round(end - step_times[-1], 2),
        "total_clip_s": round(end - start, 2),
        "segments": len(clips),
        "gpu_s_per_output_s_at_30fps": round((end - start) / (frames / 30.0), 2),
        "stage_s": stages,
        # the clip less its steps, each counted at the median step time (step 1's own time is inside encode_s)
        "non_transformer_s": round(end - start - len(step_times) * float(np.median(step_s)), 2) if step_s else None,
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 1),
    }


if __name__ == "__main__":
    sys.exit(main())
