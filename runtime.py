"""The app's moving parts between the schema and the models: load once per worker, run one job.

load_runtime: weights (Hub) -> preprocess models + Wan models on the device.
run_job: files -> preprocess.Conditioning -> wan.generate (streamed clips) -> MP4 on disk.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError, check_cancel
from .limits import LIMITS

if TYPE_CHECKING:
    from .inference import AppInput, AppSetup

APP_LOGGER = "wan_animate"  # the app's loggers: "wan_animate" and its children ("wan_animate.preprocess", ...)
logger = logging.getLogger(APP_LOGGER)


def _root_has_no_handlers(record: logging.LogRecord) -> bool:
    return not logging.getLogger().handlers


def configure_logging() -> logging.Logger:
    """Make the app's INFO lines reach stdout, which the hosted task log records (Python's default shows WARNING+).

    Only when the root logger has no handler: a runner that configured logging itself (local_runner's basicConfig)
    keeps its format and levels. The handler also stays silent if the root logger gains a handler later, so no line
    is written twice. Idempotent (setup may run more than once per process)."""
    app_logger = logging.getLogger(APP_LOGGER)
    if logging.getLogger().handlers or any(getattr(h, "wan_animate_stdout", False) for h in app_logger.handlers):
        return app_logger
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler.addFilter(_root_has_no_handlers)
    handler.wan_animate_stdout = True  # type: ignore[attr-defined]
    app_logger.addHandler(handler)
    if app_logger.level == logging.NOTSET:
        app_logger.setLevel(logging.INFO)
    return app_logger



@dataclass
class Runtime:
    """Everything a worker keeps loaded between jobs."""

    preset: str
    device: Any  # torch.device
    preprocess_models: Any  # preprocess.PreprocessModels
    wan_models: Any  # wan.WanAnimateModels
    speed: Any = None  # wan.speed.SpeedOptions applied at load
    compile_budget: Any = None  # wan.speed.CompileBudget when the blocks are compiled
    dist: Any = None  # wan.parallel.DistributedEnv of a torchrun job; None: one process
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
        _free_device_memory()
        if self.context_parallel:
            from .wan.parallel import destroy_process_group

            destroy_process_group()


@dataclass
class JobResult:
    video_path: Path | None  # None on the torchrun ranks other than 0 (rank 0 alone writes the video)
    num_frames: int
    fps: float
    width: int
    height: int
    timings: dict[str, float]
    debug_files: dict[str, Path] = field(default_factory=dict)


def _free_device_memory() -> None:
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
    from .wan.parallel import device_for, distributed_env, init_process_group

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


def _warmup_size(dist: Any) -> tuple[int, int]:
    """The compile warm-up's frame size: the default request (720p landscape, 77 frames), as the ranks split it."""
    if dist is None or not dist.is_parallel:
        return 720, 1280
    from .wan.parallel import parallel_frame_size

    return parallel_frame_size(720, 1280, 77, dist.world_size)


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
            height, width = _warmup_size(dist)
            inputs = make_example_inputs(wan_models.transformer.config, height, width, device=device)
            warm_up_adapter_sets(wan_models, inputs, budget)
        from .wan.generate import warm_up_encoders

        warm_up_encoders(wan_models, *_warmup_size(dist))  # the default prompts and blank guide, cached for requests
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


def warm_up_adapter_sets(
    wan_models: Any, inputs: dict[str, Any], budget: Any = None
) -> list[tuple[bool, bool, float]]:
    """One forward per set of active adapters a request without user LoRAs can ask for: animation / replacement
    (relighting), each with and without the distillation LoRA when loaded. Each set is one more graph of the compiled
    blocks (relighting: measured ~8 s at 480p), paid here instead of by a first request, and recorded in `budget`
    (a wan.speed.CompileBudget) as compiled; the distillation LoRA's parameter differences are values only and
    compile nothing. Returns (relighting, distillation, seconds) per set."""
    from .wan.conditioning import VAE_STRIDE_HW
    from .wan.lora import request_adapters
    from .wan.speed import warmup

    latent_h, latent_w = inputs["hidden_states"].shape[-2:]  # [B, C, T, h, w]
    height, width = latent_h * VAE_STRIDE_HW, latent_w * VAE_STRIDE_HW
    clip_len = inputs["face_pixel_values"].shape[2]  # [B, 3, clip_len, S, S]
    timings = []
    for distill in (None, wan_models.distill) if wan_models.distill is not None else (None,):
        for relight in (False, True):
            if relight and wan_models.relighting_adapter is None:
                continue
            if budget is not None:
                adapters = request_adapter_names(wan_models, relight, distill is not None)
                budget.admit(forward_signature(height, width, clip_len, adapters))
            last = f"; about {timings[-1][2]:.0f} s, as the last graph" if timings else ""
            logger.info("compile warm-up (relighting %s, distillation %s): started (%dx%d, %d frames%s)",
                        "on" if relight else "off", "on" if distill else "off", width, height, clip_len,
                        last)  # fmt: skip
            with request_adapters(wan_models.transformer, wan_models.relighting_adapter, relight, [], distill):
                seconds = warmup(wan_models.transformer, inputs)
            timings.append((relight, distill is not None, seconds))
            logger.info("compile warm-up (relighting %s, distillation %s): %.1f s",
                        "on" if relight else "off", "on" if distill else "off", seconds)  # fmt: skip
    return timings


def preprocess_options(inp: AppInput) -> Any:
    from .preprocess import PreprocessOptions

    width, height = inp.target_resolution()  # the `resolution` preset, or the custom width/height
    return PreprocessOptions(
        mode=inp.mode,
        resolution_width=width,
        resolution_height=height,
        fps=inp.fps,
        retarget_flag=inp.retarget_flag,
        use_flux=inp.use_flux,
        mask_iterations=inp.mask_iterations,
        mask_kernel_size=inp.mask_kernel_size,
        mask_w_subdivisions=inp.mask_w_subdivisions,
        mask_h_subdivisions=inp.mask_h_subdivisions,
        person=inp.person,
    )


def generation_options(inp: AppInput, seed: int, loras: list[tuple[Path, float]]) -> Any:
    from .wan import GenerationOptions

    sampling = inp.sampling_settings()  # with distill: the LoRA's settings where the request set none
    if inp.distill and sampling["guide_scale"] > 1.0:
        logger.warning("distill with guide_scale %g: the LoRA is CFG-distilled (its authors: guidance off)",
                       sampling["guide_scale"])  # fmt: skip
    return GenerationOptions(
        mode=inp.mode,
        clip_len=inp.clip_len,
        refert_num=inp.refert_num,
        shift=sampling["shift"],
        sample_solver=sampling["sample_solver"],
        sampling_steps=sampling["sampling_steps"],
        guide_scale=sampling["guide_scale"],
        seed=seed,
        prompt=inp.input_prompt,
        n_prompt=inp.n_prompt,
        color_match=inp.color_match,
        offload="none",  # the worker's placement (its setup) decides; the request's offload_model is ignored
        loras=loras,
        distill=inp.distill,
        step_cache=inp.step_cache,
    )


def _user_loras(inp: AppInput) -> list[tuple[Path, float]]:
    """User LoRA files, accepted only as safetensors (user files are never unpickled) whose header shows Wan LoRA
    tensors: checked here, before preprocessing, from the header alone, so a wrong file costs no GPU time."""
    from .input_files import check_local_file
    from .wan.lora import lora_file_problem

    loras = []
    for i, lora in enumerate(inp.loras):
        field = f"loras[{i}].file"
        path = check_local_file(lora.file, field)
        problem = lora_file_problem(path)
        if problem is not None:
            code, reason = problem
            raise InputError(code, field, reason)
        loras.append((path, lora.weight))
    return loras


def _interval(seconds: float) -> str:
    """tqdm's time format: mm:ss, or h:mm:ss from an hour on."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def progress_line(done: int, total: int, elapsed: float, width: int = 20) -> str:
    """tqdm's meter, ` 45%|█████████           | 9/20 [00:12<00:14, 1.33s/step]`: hosted clients parse `NN%|...| n/N`
    from the task log into a progress value. The ETA is the mean step time so far times the steps left."""
    fraction = done / total if total else 1.0
    filled = int(width * fraction)
    per_step = elapsed / done if done else 0.0
    remaining = per_step * (total - done)
    return (f"{100 * fraction:3.0f}%|{'█' * filled}{' ' * (width - filled)}| {done}/{total} "
            f"[{_interval(elapsed)}<{_interval(remaining)}, {per_step:.2f}s/step]")  # fmt: skip


def _progress_logger(start: float) -> Callable[[int, int, int, int], None]:
    """on_step for wan.generate: one line per denoising step, `generate: clip 1/2 step 3/4 ( 38%|...| 3/8 [..])`,
    the meter counting all clips' steps together."""

    def on_step(segment: int, num_segments: int, step: int, num_steps: int) -> None:
        done = segment * num_steps + step + 1
        total = num_segments * num_steps
        meter = progress_line(done, total, time.perf_counter() - start)
        logger.info("generate: clip %d/%d step %d/%d (%s)", segment + 1, num_segments, step + 1, num_steps, meter)

    return on_step


def _counted(frames: Iterator[np.ndarray], counter: list[int]) -> Iterator[np.ndarray]:
    """Pass clips through while counting their frames (for the output's metadata)."""
    for clip in frames:
        counter[0] += int(clip.shape[0])
        yield clip


def forward_signature(height: int, width: int, clip_len: int, adapters: tuple[str, ...]) -> tuple:
    """What decides the compiled blocks' graph for a request: frame size, clip length and the active setup adapters
    (their names; each has a fixed rank and scale)."""
    return (height, width, clip_len, tuple(sorted(adapters)))


def request_adapter_names(wan_models: Any, relighting: bool, distill: bool) -> tuple[str, ...]:
    """The setup adapters a request switches on (relighting in replacement mode, the distillation LoRA's adapter)."""
    names = []
    if relighting and wan_models.relighting_adapter is not None:
        names.append(wan_models.relighting_adapter)
    if distill and wan_models.distill is not None:
        names.append(wan_models.distill.adapter_name or "distill-differences")
    return tuple(names)


def ignore_request_offload(runtime: Runtime, inp: AppInput) -> bool:
    """Log what a request's `offload_model: true` does: nothing. Returns True when it was set (and ignored).

    Where the model lives is the worker's setup (AppSetup.offload_model). Honoured per request, it would make a
    resident worker move the transformer and encoders (~46 GB) to the CPU and back and stream the 40 blocks uncompiled,
    many times slower, for no gain; clients copying the seed app's requests send it. An offloaded worker is
    offloaded already; a torchrun worker's GPUs each hold the whole model.
    """
    if not inp.offload_model:
        return False
    if getattr(runtime.wan_models, "offload", "none") == "model":
        logger.info("offload_model: this worker is offloaded already (its setup); nothing changes for this request")
    else:
        logger.warning(
            "offload_model=true in the request is ignored: this worker keeps the whole model on the GPU, and "
            "streaming its blocks from the CPU would only make this request slower. Offloading is a worker setting "
            "(AppSetup.offload_model, the 24-48 GB configuration)."
        )
    return True


def runs_compiled(runtime: Runtime, inp: AppInput, height: int, width: int, loras: list[tuple[Path, float]]) -> bool:
    """Whether this request may use the compiled blocks, or must run them eagerly (they come back after it).

    Eager: user LoRAs (every rank set and scale would compile a new graph that no later request is likely to reuse);
    a new signature once the worker's compile budget is spent (see wan.speed.CompileBudget). The request's
    offload_model is no reason: it is ignored (see ignore_request_offload).
    """
    if runtime.speed is None or not runtime.speed.compile_blocks or runtime.compile_budget is None:
        return True
    if loras:
        logger.info("user LoRAs: the transformer blocks run uncompiled for this request")
        return False
    adapters = request_adapter_names(runtime.wan_models, inp.mode == "replacement", inp.distill)
    if runtime.compile_budget.admit(forward_signature(height, width, inp.clip_len, adapters)):
        return True
    logger.info(
        "compile budget spent (%d shapes compiled): %dx%d, clip_len %d runs uncompiled",
        len(runtime.compile_budget.compiled), width, height, inp.clip_len,
    )  # fmt: skip
    return False


@contextmanager
def _blocks_for_request(runtime: Runtime, compiled: bool) -> Iterator[None]:
    """The compiled blocks as they are, or suspended for the request (compiled again after it)."""
    if compiled:
        yield
        return
    from .wan.speed import eager_blocks

    with eager_blocks(runtime.wan_models.transformer):
        yield


def _oom_error(inp: AppInput) -> InputError:
    width, height = inp.target_resolution()
    return InputError(
        "gpu_out_of_memory",
        "resolution",
        f"the GPU ran out of memory at a {width}x{height} area, clip_len {inp.clip_len}. Ask for less: resolution "
        "'480p' (or a smaller resolution_width/resolution_height), or a lower clip_len (e.g. 49); or use a worker set "
        "up with offload_model (24-48 GB configuration).",
    )


def _split_conditioning(runtime: Runtime, cond: Any, clip_len: int) -> Any:
    """Context parallel: check every process preprocessed the same video, then crop it (by a few 16-pixel rows or
    columns, only when needed) to a size whose clip token count the process count divides."""
    from .wan.parallel import center_crop_conditioning, gather_values, parallel_frame_size

    shape = (cond.num_frames, cond.height, cond.width)
    pose_sum, reference_sum = cond.pose_frames[:, ::8, ::8].sum(dtype=np.int64), cond.reference.sum(dtype=np.int64)
    checksum = int(pose_sum) + int(reference_sum)
    seen = gather_values((shape, checksum))
    if any(s != seen[0][0] for s, _ in seen):
        raise RuntimeError(f"the processes preprocessed different videos (frames, height, width): {seen}")
    if any(c != seen[0][1] for _, c in seen):
        logger.warning("the processes' conditioning differs slightly (GPU nondeterminism in preprocessing)")
    height, width = parallel_frame_size(cond.height, cond.width, clip_len, runtime.dist.world_size)
    if (height, width) != (cond.height, cond.width):
        logger.info(
            "context parallel: %dx%d cropped to %dx%d so that %d processes get equal shares of each clip",
            cond.width, cond.height, width, height, runtime.dist.world_size,
        )  # fmt: skip
    return center_crop_conditioning(cond, height, width)


def _drain(frames: Iterator[np.ndarray], counter: list[int]) -> None:
    """Run the generation to its end without writing it (torchrun ranks other than 0)."""
    for _ in _counted(frames, counter):
        pass


def run_job(
    runtime: Runtime,
    inp: AppInput,
    *,
    driving: Path,
    reference: Path,
    seed: int,
    work_dir: Path,
    out_dir: Path,
    should_cancel: Callable[[], bool] | None = None,
) -> JobResult:
    """One request end to end; user-fixable failures (out of memory included) raise InputError.

    Under torchrun every process runs the whole job in step (the transformer's collectives need it); only rank 0
    writes the video and debug files, the others return a JobResult without a video_path.
    """
    import torch

    from .preprocess import models_for_request, preprocess, save_debug_files
    from .preprocess.video_io import write_video
    from .wan import generate

    timings: dict[str, float] = {}
    start = time.perf_counter()
    loras = _user_loras(inp)
    ignore_request_offload(runtime, inp)
    out_of_memory = False
    video_path: Path | None = None
    check_cancel(should_cancel, "before preprocessing")
    logger.info("preprocess: started (%s, %s)", inp.mode, driving.name)
    try:
        with models_for_request(runtime.preprocess_models, runtime.weight_paths, runtime.device) as models:
            cond = preprocess(driving, reference, preprocess_options(inp), models, should_cancel=should_cancel)
        if cond.num_frames > LIMITS.max_output_frames:
            raise InputError(
                "too_many_frames",
                "fps",
                f"the video gives {cond.num_frames} frames at {cond.fps:g} fps; the limit is "
                f"{LIMITS.max_output_frames}. Use a shorter video or a lower fps.",
            )
        if runtime.context_parallel:
            cond = _split_conditioning(runtime, cond, inp.clip_len)
        timings["preprocess"] = round(time.perf_counter() - start, 3)
        logger.info(
            "preprocess: %d frames at %g fps, %dx%d (%.1f s)",
            cond.num_frames, cond.fps, cond.width, cond.height, timings["preprocess"],
        )  # fmt: skip

        check_cancel(should_cancel, "after preprocessing")
        gen_start = time.perf_counter()
        clips = generate(
            runtime.wan_models,
            cond,
            generation_options(inp, seed, loras),
            on_step=_progress_logger(gen_start),
            should_cancel=should_cancel,
        )
        written = [0]
        with _blocks_for_request(runtime, runs_compiled(runtime, inp, cond.height, cond.width, loras)):
            if runtime.is_main:
                video_path = out_dir / "wan_animate.mp4"
                write_video(
                    video_path,
                    _counted(clips, written),
                    fps=cond.fps,
                    audio_from=driving if inp.merge_audio else None,
                    audio_duration=cond.num_frames / cond.fps,
                    work_dir=work_dir,
                    crf=inp.video_crf(),
                    should_cancel=should_cancel,
                )
            else:
                _drain(clips, written)
        timings["generate_and_encode"] = round(time.perf_counter() - gen_start, 3)
    except torch.cuda.OutOfMemoryError:
        # Raised below, not chained: the OOM traceback's frames hold the loop's GPU tensors, and a warm worker
        # must get that memory back before the next job.
        out_of_memory = True
    finally:
        _free_device_memory()
    if out_of_memory:
        raise _oom_error(inp)

    debug_files: dict[str, Path] = {}
    if inp.return_debug_videos and runtime.is_main:
        debug_files = save_debug_files(cond, out_dir / "debug")
    timings["total"] = round(time.perf_counter() - start, 3)
    return JobResult(
        video_path=video_path,
        num_frames=written[0],
        fps=cond.fps,
        width=cond.width,
        height=cond.height,
        timings=timings,
        debug_files=debug_files,
    )
