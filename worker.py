"""What a worker loads once and keeps between jobs (Runtime), and the checks on its setup before anything loads.

load_runtime: weights (Hub) -> preprocess models + Wan models on the device; under torchrun, the job's process group.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .app_logging import APP_LOGGER
from .compile_policy import warm_up_adapter_sets, warmup_size
from .errors import InputError

if TYPE_CHECKING:
    from .inference import AppSetup

logger = logging.getLogger(APP_LOGGER)


@dataclass
class Runtime:
    """Everything a worker keeps loaded between jobs."""

    preset: str
    device: Any  # torch.device
    preprocess_models: Any  # preprocess.PreprocessModels
    wan_models: Any  # wan.WanAnimateModels
    speed: Any = None  # wan.speed.SpeedOptions applied at load
    compile_budget: Any = None  # wan.speed.CompileBudget when the blocks are compiled
    dist: Any = None  # wan.distributed.DistributedEnv of a torchrun job; None: one process
    weight_paths: Any = None  # weights.WeightPaths (full preset): where per-request preprocessing models load from

    @property
    def context_parallel(self) -> bool:
        """True when each transformer forward is split across the processes of a torchrun job."""
        return self.dist is not None and self.dist.is_parallel

    @property
    def is_main(self) -> bool:
        """The process that writes the outputs (every process when there is only one)."""
        return self.dist is None or self.dist.is_main

    def close(self) -> None:
        """Drop the models, give GPU memory back and leave the torchrun job."""
        self.preprocess_models = None
        self.wan_models = None
        free_device_memory()
        if self.context_parallel:
            from .wan.distributed import destroy_process_group

            destroy_process_group()


def free_device_memory() -> None:
    """Collect garbage and hand cached CUDA memory back (after a job, when a worker drops its models)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def pick_device() -> Any:
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def start_distributed(setup: AppSetup) -> tuple[Any, Any]:
    """(DistributedEnv, device) for this process; under torchrun with several processes, joins the job.

    Each process takes the GPU of its LOCAL_RANK (NCCL between them), or the CPU (gloo) on a host without CUDA.
    Settings that cannot run split across processes are refused here, before any weights load.
    """
    from .wan.distributed import device_for, distributed_env, init_process_group

    env = distributed_env()
    if not env.is_parallel:
        return None, pick_device()
    device = device_for(env)
    _check_parallel_setup(setup, env.world_size, device)
    init_process_group(env, device)
    logger.info("rank %d of %d on %s: context parallel %r", env.rank, env.world_size, device, setup.context_parallel)
    return env, device


def _check_parallel_setup(setup: AppSetup, world_size: int, device: Any) -> None:
    """InputError for worker settings that a context-parallel job cannot run (checked before any weights load)."""
    from .wan.models import ANIMATE_14B_DIFFUSERS_CONFIG, tiny_transformer_config

    if setup.offload_model:
        raise InputError(
            "offload_unsupported", "offload_model",
            f"started on {world_size} processes (context parallel): each GPU holds the whole model, so offload_model "
            "is not available; set it false or start one process",
        )  # fmt: skip
    if setup.attention not in ("default", "cudnn"):
        raise InputError(
            "attention_unsupported", "attention",
            f"attention {setup.attention!r} bypasses diffusers' attention dispatcher, which splits attention across "
            "processes; use attention 'default' under torchrun",
        )  # fmt: skip
    config = tiny_transformer_config() if setup.preset == "smoke" else ANIMATE_14B_DIFFUSERS_CONFIG
    heads = int(config["num_attention_heads"])
    if setup.context_parallel == "ulysses" and heads % world_size:
        raise InputError(
            "gpu_count_unsupported", "context_parallel",
            f"'ulysses' splits the model's {heads} attention heads across processes; {world_size} does not divide "
            f"them. Use context_parallel 'ring' or a process count that divides {heads}.",
        )  # fmt: skip
    if setup.context_parallel == "ring" and (device.type != "cuda" or setup.preset == "smoke"):
        raise InputError(
            "ring_needs_gpu", "context_parallel",
            "'ring' needs an attention kernel returning the log-sum-exp: the full preset's cuDNN attention on GPUs "
            "(not the CPU, not the smoke preset's plain SDPA); use 'ulysses'",
        )  # fmt: skip


def load_runtime(setup: AppSetup) -> Runtime:
    """Build the smoke preset's tiny models, or fetch and load the full 14B model and its preprocessors.

    Under torchrun with several processes every process loads everything on its own device and the transformer's
    forwards are split across them (wan/parallel.py).
    """
    import torch

    from .preprocess import load_preprocess_models, smoke_preprocess_models
    from .wan import build_tiny_models, load_models

    dist, device = start_distributed(setup)
    context_parallel = setup.context_parallel if dist is not None else None
    if setup.preset == "smoke":
        logger.warning("preset 'smoke': tiny RANDOM weights, the output video is noise (for testing the path only)")
        wan_models = build_tiny_models(device=device, dtype=torch.float32)
        if setup.distill_lora:  # a random LoRA in the release's layout, through the real loader
            from .wan.distill import load_distill_lora
            from .wan.smoke import lightx2v_lora_tensors

            wan_models.distill = load_distill_lora(wan_models.transformer, lightx2v_lora_tensors(wan_models.transformer))
        if context_parallel is not None:
            from .wan.parallel import enable_context_parallel

            enable_context_parallel(wan_models.transformer, context_parallel)
        return Runtime(
            preset="smoke",
            device=device,
            preprocess_models=smoke_preprocess_models(device),
            wan_models=wan_models,
            dist=dist,
        )

    from .weights import fetch_all

    cache_dir = Path(setup.cache_dir) if setup.cache_dir else None
    paths = fetch_all(cache_dir, with_flux=setup.enable_flux, with_distill=setup.distill_lora)
    # Offloaded workers (24-48 GB cards) load the pose models and SAM2 per request: held through generation, their
    # ~4.4 GiB of GPU memory would not fit beside the loop's 20.7 GiB at 720p on a 24 GB card.
    preprocess_models = load_preprocess_models(paths, device, per_request=setup.offload_model)
    wan_models = load_models(
        paths, device=device, dtype=torch.bfloat16, offload="model" if setup.offload_model else "none",
        vae_dtype=torch.bfloat16 if setup.vae_bf16 else torch.float32,
    )  # fmt: skip
    return prepare_full_runtime(setup, device, dist, paths, preprocess_models, wan_models)


def prepare_full_runtime(
    setup: AppSetup, device: Any, dist: Any, paths: Any, preprocess_models: Any, wan_models: Any
) -> Runtime:
    """The full preset's Runtime from loaded models: the speed options, compile and encoder warm-ups of `setup`.

    Split from load_runtime so that benchmarks/bench_run_job.py sets up random-weight models of the release's
    architecture exactly as a worker sets up the downloaded ones.
    """
    context_parallel = setup.context_parallel if dist is not None else None
    speed = None
    budget = None
    if device.type == "cuda" and setup.offload_model:
        # Offloaded worker (24-48 GB cards): blocks stream from the CPU, so no compile (group offload and compiled
        # blocks do not mix) and no custom attention kernels (they need the weights resident); FP8 is applied block by
        # block so the bf16 model never has to fit on the card.
        from .wan.speed import quantize_offloaded_blocks_fp8

        if setup.fp8:
            quantize_offloaded_blocks_fp8(wan_models.transformer, device)
        if setup.compile or setup.attention != "default":
            logger.info("offloaded worker: compile and attention=%r are not applied", setup.attention)
    elif device.type == "cuda":
        from .wan.attention_kernels import default_uses_flash4
        from .wan.speed import (
            CompileBudget,
            SpeedOptions,
            apply_speed_options,
            make_example_inputs,
        )

        _check_attention_choice(setup, device)
        speed = SpeedOptions(
            fp8_linears=setup.fp8,
            compile_blocks=setup.compile,
            flash4_attention=setup.attention == "default" and default_uses_flash4(device, context_parallel),
            fp8_attention=setup.attention == "fp8",
            context_parallel=context_parallel,
        )
        wan_models.transformer = apply_speed_options(wan_models.transformer, speed)
        logger.info("self-attention kernel: %s", _self_attention_kernel(speed))
        if setup.compile:  # pay compilation now for the default request shape (720p landscape, 77 frames)
            budget = CompileBudget.below_recompile_limit()
            height, width = warmup_size(dist)
            inputs = make_example_inputs(wan_models.transformer.config, height, width, device=device)
            warm_up_adapter_sets(wan_models, inputs, budget)
        from .wan.generate import warm_up_encoders

        warm_up_encoders(wan_models, *warmup_size(dist))  # the default prompts and blank guide, cached for requests
    elif context_parallel is not None:  # full preset on CPU: only useful for tests
        from .wan.parallel import enable_context_parallel

        enable_context_parallel(wan_models.transformer, context_parallel)
    return Runtime(
        preset="full",
        device=device,
        preprocess_models=preprocess_models,
        wan_models=wan_models,
        speed=speed,
        compile_budget=budget,
        dist=dist,
        weight_paths=paths,
    )


def _check_attention_choice(setup: AppSetup, device: Any) -> None:
    """InputError when the worker's `attention` kernel cannot run on `device` (checked before compile and warm-up)."""
    import torch

    from .wan.attention_kernels import fa3_available

    if setup.attention == "fp8" and not fa3_available(device):
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
        raise InputError(
            "attention_unsupported", "attention",
            f"attention 'fp8' runs FlashAttention-3's FP8 kernel, which needs a Hopper GPU (H100/H200) and the "
            f"fa3-fwd package; this is {name}: use attention 'default'",
        )  # fmt: skip


def _self_attention_kernel(speed: Any) -> str:
    """The DiT blocks' self-attention kernel `speed` (a wan.speed.SpeedOptions) selects, for the log."""
    for field_name, kernel in (("flash4_attention", "FlashAttention-4"), ("fp8_attention", "FlashAttention-3 FP8")):
        if getattr(speed, field_name):
            return kernel
    return f"diffusers backend {speed.attention_backend!r}"
