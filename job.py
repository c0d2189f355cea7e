"""One request end to end on a loaded worker, and the app's output for it.

run_job: files -> preprocess.Conditioning -> wan.generate (streamed clips) -> MP4 on disk.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from inferencesh import File, OutputMeta, VideoMeta

from .app_logging import APP_LOGGER, progress_logger
from .compile_policy import blocks_for_request, runs_compiled
from .errors import InputError, check_cancel
from .inference import MAX_SEED, AppInput, AppOutput
from .limits import LIMITS
from .request_options import (
    generation_options,
    ignore_request_offload,
    preprocess_options,
    sampling_settings,
    target_resolution,
    user_loras,
    video_crf,
)
from .worker import Runtime, free_device_memory

logger = logging.getLogger(APP_LOGGER)


@dataclass
class JobResult:
    """What run_job hands back: the video on disk (rank 0) and what the output reports about it."""

    video_path: Path | None  # None on the torchrun ranks other than 0 (rank 0 alone writes the video)
    num_frames: int
    fps: float
    width: int
    height: int
    timings: dict[str, float]
    debug_files: dict[str, Path] = field(default_factory=dict)


def check_worker_can_run(runtime: Runtime, inp: AppInput) -> None:
    """InputError for a request that needs what this worker was not set up with (checked before decoding anything)."""
    if inp.use_flux and runtime.preprocess_models.flux is None:
        raise InputError(
            "flux_unavailable", "use_flux", "this worker has no FLUX Kontext model loaded; set use_flux=false"
        )
    if inp.distill and runtime.wan_models.distill is None:
        raise InputError(
            "distill_unavailable",
            "distill",
            "this worker has no distillation LoRA loaded (set up with distill_lora=false); set distill=false",
        )
    if inp.step_cache > 0 and runtime.context_parallel:
        raise InputError(
            "step_cache_unavailable",
            "step_cache",
            "step caching does not combine with this worker's context parallelism; set step_cache=0",
        )


def job_seed(runtime: Runtime, seed: int) -> int:
    """The request's seed, drawn when -1; under context parallel every process takes rank 0's (the same noise)."""
    seed = random.randint(0, MAX_SEED) if seed == -1 else seed
    if runtime.context_parallel:
        from .wan.distributed import broadcast_value

        seed = broadcast_value(seed)
    return seed


def _counted(frames: Iterator[np.ndarray], counter: list[int]) -> Iterator[np.ndarray]:
    """Pass clips through while counting their frames (for the output's metadata)."""
    for clip in frames:
        counter[0] += int(clip.shape[0])
        yield clip


def _oom_error(inp: AppInput) -> InputError:
    width, height = target_resolution(inp)
    return InputError(
        "gpu_out_of_memory",
        "resolution",
        f"the GPU ran out of memory at a {width}x{height} area, clip_len {inp.clip_len}. Ask for less: resolution "
        "'480p' (or a smaller resolution_width/resolution_height), or a lower clip_len (e.g. 49); or use a worker set "
        "up with offload_model (24-48 GB configuration).",
    )


def conditioning_checksum(cond: Any) -> int:
    """A cheap fingerprint to compare the processes' conditioning: the reference, every 8th face-crop pixel, and the
    skeletons' keypoints when they are drawn on demand (drawing every frame at once would hold T x H x W x 3 bytes;
    skeleton arrays, as tests and benchmarks build them, by every 8th pixel)."""
    from .preprocess.skeleton_video import SkeletonVideo

    total = int(cond.reference.sum(dtype=np.int64))
    total += sum(int(face[::8, ::8].sum(dtype=np.int64)) for face in cond.face_frames)  # a FrameStore: read in turn
    if isinstance(cond.pose_frames, SkeletonVideo):
        points = [np.concatenate([p.body, p.left_hand, p.right_hand]) for p in cond.pose_frames.poses]  # (62, 3) each
        weights = np.arange(1, len(points) + 1, dtype=np.float64)  # a pose moved to another frame changes the sum
        sums = np.array([a.sum(dtype=np.float64) for a in points])
        return total + round(float(weights @ sums) * 256)
    return total + int(cond.pose_frames[:, ::8, ::8].sum(dtype=np.int64))


def _split_conditioning(runtime: Runtime, cond: Any, clip_len: int) -> Any:
    """Context parallel: check every process preprocessed the same video, then crop it (by a few 16-pixel rows or
    columns, only when needed) to a size whose clip token count the process count divides."""
    from .wan.distributed import gather_values
    from .wan.parallel import center_crop_conditioning, parallel_frame_size

    shape = (cond.num_frames, cond.height, cond.width)
    seen = gather_values((shape, conditioning_checksum(cond)))
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
    loras = user_loras(inp)
    ignore_request_offload(runtime, inp)
    out_of_memory = False
    video_path: Path | None = None
    check_cancel(should_cancel, "before preprocessing")
    logger.info("preprocess: started (%s, %s)", inp.mode, driving.name)
    try:
        with models_for_request(runtime.preprocess_models, runtime.weight_paths, runtime.device) as models:
            cond = preprocess(driving, reference, preprocess_options(inp), models, should_cancel=should_cancel,
                              work_dir=work_dir)
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
            on_step=progress_logger(gen_start),
            should_cancel=should_cancel,
        )
        written = [0]
        with blocks_for_request(runtime, runs_compiled(runtime, inp, cond.height, cond.width, loras)):
            if runtime.is_main:
                video_path = out_dir / "wan_animate.mp4"
                write_video(
                    video_path,
                    _counted(clips, written),
                    fps=cond.fps,
                    audio_from=driving if inp.merge_audio else None,
                    audio_duration=cond.num_frames / cond.fps,
                    work_dir=work_dir,
                    crf=video_crf(inp),
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
        free_device_memory()
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


def job_output(result: JobResult, inp: AppInput, seed: int) -> AppOutput:
    """The app's output for a finished job: the video (and debug videos), the seed used, and the video's metadata."""
    sampling = sampling_settings(inp)
    meta = VideoMeta(
        width=result.width,
        height=result.height,
        resolution_mp=round(result.width * result.height / 1e6, 3),
        resolution=_resolution_label(result.width, result.height),
        seconds=round(result.num_frames / result.fps, 3),
        fps=int(round(result.fps)),
        extra={"mode": inp.mode, "sampling_steps": sampling["sampling_steps"],
               "guide_scale": sampling["guide_scale"], "distill": inp.distill},
    )  # fmt: skip
    debug = result.debug_files
    return AppOutput(
        video=File(path=str(result.video_path)),
        seed=seed,
        num_frames=result.num_frames,
        fps=result.fps,
        width=result.width,
        height=result.height,
        timings=result.timings,
        pose_video=File(path=str(debug["pose"])) if "pose" in debug else None,
        face_video=File(path=str(debug["face"])) if "face" in debug else None,
        mask_video=File(path=str(debug["mask"])) if "mask" in debug else None,
        output_meta=OutputMeta(outputs=[meta]),
    )


def _resolution_label(width: int, height: int) -> str:
    """The standard preset name for a frame size, by its short side."""
    short = min(width, height)
    for label, side in (("4k", 2160), ("1440p", 1440), ("1080p", 1080), ("720p", 720), ("480p", 480)):
        if short >= side * 0.9:
            return label
    return "480p"
