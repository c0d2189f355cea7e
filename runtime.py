"""The app's moving parts between the schema and the models: load once per worker, run one job.

load_runtime: weights (Hub) -> preprocess models + Wan models on the device.
run_job: files -> preprocess.Conditioning -> wan.generate (streamed clips) -> MP4 on disk.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError
from .limits import LIMITS

if TYPE_CHECKING:
    from .inference import AppInput, AppSetup

logger = logging.getLogger("wan_animate")


@dataclass
class Runtime:
    """Everything a worker keeps loaded between jobs."""

    preset: str
    device: Any  # torch.device
    preprocess_models: Any  # preprocess.PreprocessModels
    wan_models: Any  # wan.WanAnimateModels
    speed: Any = None  # wan.speed.SpeedOptions applied at load

    def close(self) -> None:
        """Drop the models and give GPU memory back."""
        self.preprocess_models = None
        self.wan_models = None
        _free_device_memory()


@dataclass
class JobResult:
    video_path: Path
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


def load_runtime(setup: AppSetup) -> Runtime:
    """Build the smoke preset's tiny models, or fetch and load the full 14B model and its preprocessors."""
    import torch

    from .preprocess import load_preprocess_models, smoke_preprocess_models
    from .wan import build_tiny_models, load_models

    device = pick_device()
    if setup.preset == "smoke":
        logger.warning("preset 'smoke': tiny RANDOM weights, the output video is noise (for testing the path only)")
        wan_models = build_tiny_models(device=device, dtype=torch.float32)
        if setup.distill_lora:  # a random LoRA in the release's layout, through the real loader
            from .wan.distill import load_distill_lora
            from .wan.testing import lightx2v_lora_tensors

            wan_models.distill = load_distill_lora(wan_models.transformer, lightx2v_lora_tensors(wan_models.transformer))
        return Runtime(
            preset="smoke", device=device, preprocess_models=smoke_preprocess_models(device), wan_models=wan_models
        )

    from .weights import fetch_all

    cache_dir = Path(setup.cache_dir) if setup.cache_dir else None
    paths = fetch_all(cache_dir, with_flux=setup.enable_flux, with_distill=setup.distill_lora)
    preprocess_models = load_preprocess_models(paths, device)
    wan_models = load_models(
        paths, device=device, dtype=torch.bfloat16, offload="model" if setup.offload_model else "none"
    )
    speed = None
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
        from .wan.speed import SpeedOptions, apply_speed_options, make_example_inputs

        speed = SpeedOptions(
            fp8_linears=setup.fp8,
            compile_blocks=setup.compile,
            sage_attention=setup.attention == "sage",
            fp8_attention=setup.attention == "fp8",
        )
        wan_models.transformer = apply_speed_options(wan_models.transformer, speed)
        if setup.compile:  # pay compilation now for the default request shape (720p landscape, 77 frames)
            warm_up_adapter_sets(wan_models, make_example_inputs(wan_models.transformer.config, 720, 1280, device=device))
    return Runtime(preset="full", device=device, preprocess_models=preprocess_models, wan_models=wan_models, speed=speed)


def warm_up_adapter_sets(wan_models: Any, inputs: dict[str, Any]) -> list[tuple[bool, bool, float]]:
    """One forward per set of active adapters a request without user LoRAs can ask for: animation / replacement
    (relighting), each with and without the distillation LoRA when loaded. Each set is one more graph of the compiled
    blocks (relighting: measured ~8 s at 480p), paid here instead of by a first request; the distillation LoRA's
    parameter differences are values only and compile nothing. Returns (relighting, distillation, seconds) per set."""
    from .wan.lora import request_adapters
    from .wan.speed import warmup

    timings = []
    for distill in (None, wan_models.distill) if wan_models.distill is not None else (None,):
        for relight in (False, True):
            with request_adapters(wan_models.transformer, wan_models.relighting_adapter, relight, [], distill):
                seconds = warmup(wan_models.transformer, inputs)
            timings.append((relight, distill is not None, seconds))
            logger.info("compile warm-up (relighting %s, distillation %s): %.1f s",
                        "on" if relight else "off", "on" if distill else "off", seconds)  # fmt: skip
    return timings


def preprocess_options(inp: AppInput) -> Any:
    from .preprocess import PreprocessOptions

    return PreprocessOptions(
        mode=inp.mode,
        resolution_width=inp.resolution_width,
        resolution_height=inp.resolution_height,
        fps=inp.fps,
        retarget_flag=inp.retarget_flag,
        use_flux=inp.use_flux,
        mask_iterations=inp.mask_iterations,
        mask_kernel_size=inp.mask_kernel_size,
        mask_w_subdivisions=inp.mask_w_subdivisions,
        mask_h_subdivisions=inp.mask_h_subdivisions,
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
        offload=inp.offload_model,
        loras=loras,
        distill=inp.distill,
    )


def is_safetensors(path: Path) -> bool:
    """True when the file starts like a safetensors file: an 8-byte header length, then a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return 2 <= header_len <= 100_000_000 and head[8:9] == b"{"


def _user_loras(inp: AppInput) -> list[tuple[Path, float]]:
    """User LoRA files, accepted only as safetensors: user files are never unpickled."""
    loras = []
    for i, lora in enumerate(inp.loras):
        field = f"loras[{i}].file"
        if lora.file is None or not lora.file.path or not Path(lora.file.path).is_file():
            raise InputError("file_not_found", field, "could not read the LoRA file")
        path = Path(lora.file.path)
        if not is_safetensors(path):
            raise InputError("lora_not_safetensors", field, "LoRAs are accepted as .safetensors only; convert it")
        loras.append((path, lora.weight))
    return loras


def _progress_logger(start: float) -> Callable[[int, int, int, int], None]:
    def on_step(segment: int, num_segments: int, step: int, num_steps: int) -> None:
        done = segment * num_steps + step + 1
        total = num_segments * num_steps
        logger.info(
            "generate: clip %d/%d step %d/%d (%.0f%%, %.1f s)",
            segment + 1, num_segments, step + 1, num_steps, 100 * done / total, time.perf_counter() - start,
        )  # fmt: skip

    return on_step


def _counted(frames: Iterator[np.ndarray], counter: list[int]) -> Iterator[np.ndarray]:
    """Pass clips through while counting their frames (for the output's metadata)."""
    for clip in frames:
        counter[0] += int(clip.shape[0])
        yield clip


@contextmanager
def _eager_if_offloaded(runtime: Runtime, offload_model: bool) -> Iterator[None]:
    """A request with offload_model on a compiled worker runs its blocks eagerly (group offload and compiled
    blocks do not mix); the worker's compiled blocks come back for the next request."""
    if not (offload_model and runtime.speed is not None and runtime.speed.compile_blocks):
        yield
        return
    from .wan.speed import eager_blocks

    with eager_blocks(runtime.wan_models.transformer):
        yield


def _oom_error(inp: AppInput) -> InputError:
    hint = "set offload_model=true, " if not inp.offload_model else ""
    return InputError(
        "gpu_out_of_memory",
        "resolution_width",
        f"the GPU ran out of memory at {inp.resolution_width}x{inp.resolution_height}, clip_len {inp.clip_len}. "
        f"Lower resolution_width/resolution_height, {hint}or lower clip_len (e.g. 49), and try again.",
    )


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
    """One request end to end; user-fixable failures (out of memory included) raise InputError."""
    import torch

    from .preprocess import preprocess, save_debug_files
    from .preprocess.video_io import write_video
    from .wan import generate

    timings: dict[str, float] = {}
    start = time.perf_counter()
    loras = _user_loras(inp)
    out_of_memory = False
    try:
        cond = preprocess(driving, reference, preprocess_options(inp), runtime.preprocess_models)
        if cond.num_frames > LIMITS.max_output_frames:
            raise InputError(
                "too_many_frames",
                "fps",
                f"the video gives {cond.num_frames} frames at {cond.fps:g} fps; the limit is "
                f"{LIMITS.max_output_frames}. Use a shorter video or a lower fps.",
            )
        timings["preprocess"] = round(time.perf_counter() - start, 3)
        logger.info(
            "preprocess: %d frames at %g fps, %dx%d (%.1f s)",
            cond.num_frames, cond.fps, cond.width, cond.height, timings["preprocess"],
        )  # fmt: skip

        gen_start = time.perf_counter()
        clips = generate(
            runtime.wan_models,
            cond,
            generation_options(inp, seed, loras),
            on_step=_progress_logger(gen_start),
            should_cancel=should_cancel,
        )
        written = [0]
        video_path = out_dir / "wan_animate.mp4"
        with _eager_if_offloaded(runtime, inp.offload_model):
            write_video(
                video_path,
                _counted(clips, written),
                fps=cond.fps,
                audio_from=driving,
                audio_duration=cond.num_frames / cond.fps,
                work_dir=work_dir,
            )
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
    if inp.return_debug_videos:
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
