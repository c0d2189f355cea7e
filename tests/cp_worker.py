"""One rank of a context-parallel check, started by tests/test_wan_parallel.py through torchrun.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/cp_worker.py OUT_DIR \
        [--device cpu|cuda] [--mode ulysses|ring] [--checks forward,compile,generate]

Every rank computes the one-process result first (no hooks yet), then switches context parallelism on and computes
it again; each rank saves both to OUT_DIR/<check>.rank<r>.pt for the test to compare. The tiny shapes put the
shard boundary inside a latent frame (30 tokens of 6 per frame: 15 per rank). Imports only torch, diffusers,
transformers and the app's wan/ package (no pydantic), so it also runs on the GPU machines.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

APP_ROOT = Path(__file__).resolve().parents[1]

# 13 frames -> 1 reference + 4 latent frames; 32x48 pixels -> 2x3 tokens per frame: 30 tokens, 15 per rank of 2.
HEIGHT, WIDTH, NUM_FRAMES = 32, 48, 13


def tiny_transformer(device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The tiny random WanAnimateTransformer3DModel, seeded; on CUDA with head dim 64 (cuDNN wants a multiple of 8)."""
    from diffusers import WanAnimateTransformer3DModel
    from wan_animate.wan.models import keep_fp32_modules, tiny_transformer_config

    config = tiny_transformer_config()
    if device.type == "cuda":
        config.update(attention_head_dim=64, added_kv_proj_dim=128)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = WanAnimateTransformer3DModel(**config)
    model = model.to(device=device, dtype=dtype)
    if dtype != torch.float32:
        model = keep_fp32_modules(model)
    return model.eval().requires_grad_(False)


def record_local_tokens(transformer: torch.nn.Module, result: dict) -> torch.utils.hooks.RemovableHandle:
    """Store in result["local_tokens"] how many tokens reach the output norm on this rank (the shard's length)
    until the returned handle is removed."""

    def hook(module: torch.nn.Module, args: tuple) -> None:
        result["local_tokens"] = int(args[0].shape[1])

    return transformer.norm_out.register_forward_pre_hook(hook)


def check_forward(args: argparse.Namespace, device: torch.device, compile_backend: str | None) -> dict:
    """One transformer forward: one process, context parallel, and (compile_backend None) context parallel with
    diffusers' own face-adapter processor, which is wrong under a mid-frame split."""
    from diffusers.models.transformers.transformer_wan_animate import WanAnimateFaceBlockAttnProcessor
    from wan_animate.wan import parallel, speed

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = tiny_transformer(device, dtype)
    if device.type == "cuda":
        model.set_attention_backend("_native_cudnn")
    inputs = speed.make_example_inputs(model.config, HEIGHT, WIDTH, NUM_FRAMES, device=device, dtype=dtype)
    result = {"reference": speed.run_forward(model, inputs).float().cpu()}
    parallel.enable_context_parallel(model, args.mode)
    recorder = record_local_tokens(model, result)
    if compile_backend is not None:
        torch._dynamo.reset()
        speed.compile_blocks(model, backend=compile_backend)
        result["parallel"] = speed.run_forward(model, inputs).float().cpu()
        result["parallel_again"] = speed.run_forward(model, inputs).float().cpu()  # the compiled graphs reused
        torch._dynamo.reset()
        return result
    result["parallel"] = speed.run_forward(model, inputs).float().cpu()
    recorder.remove()
    for adapter in model.face_adapter:
        adapter.set_processor(WanAnimateFaceBlockAttnProcessor())
    result["unpatched"] = speed.run_forward(model, inputs).float().cpu()
    parallel.disable_context_parallel(model)
    result["disabled"] = speed.run_forward(model, inputs).float().cpu()  # back to one process's model
    return result


def check_generate(args: argparse.Namespace, device: torch.device) -> dict:
    """A whole generate() on tiny models: 2 clips of 13 frames, 2 steps, guidance on (cond + uncond passes)."""
    from tiny_conditioning import tiny_conditioning
    from wan_animate.wan import GenerationOptions, build_tiny_models, generate_clips, parallel

    models = build_tiny_models(device=device)
    cond = tiny_conditioning(21, height=HEIGHT, width=WIDTH, seed=3)
    options = GenerationOptions(clip_len=NUM_FRAMES, refert_num=1, sampling_steps=2, guide_scale=1.5, seed=7)
    result = {"reference": torch.cat(list(generate_clips(models, cond, options)))}
    parallel.enable_context_parallel(models.transformer, args.mode)
    record_local_tokens(models.transformer, result)
    result["parallel"] = torch.cat(list(generate_clips(models, cond, options)))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--mode", choices=("ulysses", "ring"), default="ulysses")
    parser.add_argument("--checks", default="forward,compile,generate")
    args = parser.parse_args()

    sys.path.insert(0, str(APP_ROOT))
    from local_runner import load_app_package

    load_app_package()
    from wan_animate.wan import distributed

    torch.set_num_threads(1)
    env = distributed.distributed_env()
    device = distributed.device_for(env) if args.device == "cuda" else torch.device("cpu")
    distributed.init_process_group(env, device)
    try:
        for check in args.checks.split(","):
            if check == "forward":
                result = check_forward(args, device, compile_backend=None)
            elif check == "compile":  # aot_eager traces what inductor would get (fullgraph), without C++ builds
                result = check_forward(
                    args, device, compile_backend="aot_eager" if args.device == "cpu" else "inductor"
                )
            elif check == "generate":
                result = check_generate(args, device)
            else:
                raise SystemExit(f"unknown check {check!r}")
            args.out_dir.mkdir(parents=True, exist_ok=True)
            torch.save(result, args.out_dir / f"{check}.rank{env.rank}.pt")
    finally:
        distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
