"""Preprocessing speed: the app's own `preprocess()` on a 10 s, 30 fps, 1280x720 clip, per stage, both modes.

The released preprocessing weights cannot be downloaded here, so this builds stand-ins of the same architecture and
size with random weights (benchmarks/preprocess_models.py), writes them in the release's file formats and layout
(`process_checkpoint/det/yolov10m.onnx`, `process_checkpoint/pose2d/vitpose_h_wholebody.onnx/end2end.onnx` + external
weights, `process_checkpoint/sam2/sam2_hiera_large.pt`), loads them with the app's loader
(`preprocess.load_preprocess_models`: onnxruntime on CUDA, SAM2 on the GPU) and times `preprocess()`:

1. animation mode, cold (the first request after loading: CUDA/cuDNN initialisation, onnxruntime's algorithm search);
2. animation mode, warm (and again with the app's per-frame CPU thread pool off, `--serial-too`, default on CUDA);
3. replacement mode (SAM2 hiera-large masks), SAM2 in float32 (as official), then with TF32 matmuls (the app's
   default on CUDA since 2026-12-08) and in bfloat16 (`--sam2-dtypes`), each warmed up on 4 frames first and compared
   with float32's raw masks. Random weights make that agreement a rough guide only: real masks need the real weights
   to judge.

Stages are timed by wrapping the pipeline's own functions (decode, detection, pose, face crops, skeleton drawing,
resizing, SAM2, mask refinement, background; the skeletons are drawn when read, so each run draws them once after
preprocess() and counts that in its total, as before), with a CUDA synchronisation after every GPU stage; onnxruntime's
active providers are checked and the run stops if a GPU run would silently use the CPU. Results: per-stage seconds
and frames/s, model-only throughput of both ONNX sessions, GPU memory, and markdown rows for BENCHMARKS.md, printed
and written to --out (default $OUT, else ./out/preprocess) as results.json and results.md after every run.

    python benchmarks/bench_preprocess.py                  # full size, on the GPU (see benchmarks/README.md)
    python benchmarks/bench_preprocess.py --tiny           # tiny random models, 6 frames: a CPU smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from onnx_checks import check_providers, gpu_free_gib, onnx_gpu_gib, onnx_sessions, onnx_throughput
from preprocess_report import environment, generation_estimate_s, markdown, write_results
from preprocess_stages import PARTS, TOP_STAGES, StageClock, instrumentation, patched

APP_ROOT = Path(__file__).resolve().parents[1]
SOURCE_VIDEO = APP_ROOT / "examples" / "smoke" / "driving.mp4"  # 448x252, 15 fps, 2 s (in the repo: travels)
REFERENCE_IMAGE = APP_ROOT / "examples" / "smoke" / "reference.jpg"  # 512x600 portrait
# One whole 720p clip (77 frames, 20 steps, default fast path) on the H100: BENCHMARKS.md, "one whole clip end to end".
GENERATION_CLIP_S = 255.6

log = logging.getLogger("bench_preprocess")


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------------
# the driving clip


def make_driving_clip(path: Path, frames: int, fps: float, width: int, height: int, grain: float,
                      source: Path = SOURCE_VIDEO) -> Path:  # fmt: skip
    """An H.264 clip of `frames` frames at `fps`, `width` x `height`, made from the repo's example video.

    The 2 s source is played forwards and backwards (ping-pong, so the motion stays continuous), resampled to `fps`,
    upscaled (bicubic), given Gaussian grain of `grain` levels (upscaled video is smoother, so cheaper to decode, than
    camera footage; grain brings the bitrate nearer a real clip's), and encoded by the app's own writer.
    """
    import cv2
    from wan_animate.preprocess.video_decode import probe_video, read_frames
    from wan_animate.preprocess.video_io import write_video

    info = probe_video(source)
    src = read_frames(source, list(range(info.frames)))
    period = 2 * (len(src) - 1)
    rng = np.random.default_rng(0)

    def frames_iter() -> Iterator[np.ndarray]:
        for i in range(frames):
            step = int(round(i / fps * info.fps)) % period
            index = step if step < len(src) else period - step
            frame = cv2.resize(src[index], (width, height), interpolation=cv2.INTER_CUBIC)
            if grain > 0:
                frame = np.clip(frame + rng.normal(0.0, grain, frame.shape), 0, 255).astype(np.uint8)
            yield frame

    return write_video(path, frames_iter(), fps)


# ---------------------------------------------------------------------------------------------------
# model files


def build_model_files(work: Path, tiny: bool, rebuild: bool) -> tuple[SimpleNamespace, dict[str, float]]:
    """Random-weight preprocessing models in the release's layout under `work` (reused when already built), built on
    the CPU (a few seconds more than on the GPU, and no device-specific initialisation paths to trip over).

    Returns weights.WeightPaths-like paths for `load_preprocess_models` and the seconds each build took.
    """
    sys.path.insert(0, str(APP_ROOT / "benchmarks"))
    import preprocess_models as pm
    import random_yolov10 as yolo

    root = work / ("tiny" if tiny else "full") / "process_checkpoint"
    paths = SimpleNamespace(
        detector_onnx=root / "det" / "yolov10m.onnx",
        pose_onnx=root / "pose2d" / "vitpose_h_wholebody.onnx",  # a folder holding end2end.onnx, as released
        sam2_checkpoint=root / "sam2" / "sam2_hiera_large.pt",
        flux_kontext_dir=None,
    )
    seconds: dict[str, float] = {}
    jobs: list[tuple[str, Path, Callable[[], Any]]] = [
        ("yolov10m onnx", paths.detector_onnx,
         lambda: pm.write_yolov10_onnx(paths.detector_onnx, yolo.YOLOV10_TINY if tiny else yolo.YOLOV10M)),
        ("vitpose-h onnx", paths.pose_onnx / "end2end.onnx",
         lambda: pm.write_vitpose_onnx(paths.pose_onnx, pm.VITPOSE_TINY if tiny else pm.VITPOSE_H)),
        ("sam2 checkpoint", paths.sam2_checkpoint,
         lambda: pm.write_sam2_release_checkpoint(paths.sam2_checkpoint, "hiera_tiny" if tiny else "hiera_large")),
    ]  # fmt: skip
    for name, target, build in jobs:
        if target.exists() and not rebuild:
            say(f"{name}: reusing {target}")
            continue
        began = time.perf_counter()
        build()
        seconds[name] = round(time.perf_counter() - began, 1)
        say(f"{name}: built in {seconds[name]} s -> {target}")
    return paths, seconds


def file_mib(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 2**20, 1)


# ---------------------------------------------------------------------------------------------------
# runs


def run_preprocess(name: str, clip: Path, options: Any, models: Any, cuda: bool,
                   keep_masks: bool = False) -> tuple[dict[str, Any], np.ndarray | None]:  # fmt: skip
    """One timed `preprocess()`; returns its row (seconds per stage) and, if asked, SAM2's raw masks."""
    import torch
    from wan_animate.preprocess import masks as masks_module
    from wan_animate.preprocess import preprocess

    clock = StageClock(cuda)
    captured: dict[str, np.ndarray] = {}
    patches = instrumentation(models, clock)
    if keep_masks:
        timed_masks = dict((attr, value) for obj, attr, value in patches if obj is masks_module)["person_masks"]

        def capture(*args: Any, **kwargs: Any) -> np.ndarray:
            masks = timed_masks(*args, **kwargs)
            captured["masks"] = masks.copy()  # SAM2's raw masks: the pipeline refines `masks` in place
            return masks

        patches.append((masks_module, "person_masks", capture))
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    say(f"{name}: preprocess() ...")
    began = time.perf_counter()
    with patched(patches):
        cond = preprocess(clip, REFERENCE_IMAGE, options, models, log=log)
        for _ in cond.pose_frames:  # skeletons are drawn when read: once here, as generation will (timed as before)
            pass
    if cuda:
        torch.cuda.synchronize()
    total = time.perf_counter() - began
    frames = cond.num_frames
    stages = {stage: round(clock.seconds.get(stage, 0.0), 3) for stage in TOP_STAGES}
    parts = {part: round(clock.seconds.get(part, 0.0), 3) for stage in PARTS for part in PARTS[stage]}
    row = {
        "run": name,
        "mode": options.mode,
        "frames": frames,
        "output": f"{cond.width}x{cond.height}",
        "total_s": round(total, 2),
        "frames_per_s": round(frames / total, 1),
        "stages_s": stages,
        "parts_s": parts,
        "other_s": round(total - sum(stages.values()), 3),
        "peak_torch_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }
    say(f"{name}: {frames} frames in {total:.2f} s ({frames / total:.1f} frames/s)")
    return row, captured.get("masks")


def warm_up_segmenter(segmenter: Any, clip: Path, frames: int = 4) -> float:
    """One short SAM2 segmentation (a click in the middle of the first frame): pays the first-use costs of this
    precision's kernels outside the timed run. Returns its seconds."""
    from wan_animate.preprocess.video_decode import read_frames

    images = read_frames(clip, list(range(frames)))
    began = time.perf_counter()
    segmenter.segment(images, {0: np.array([[images.shape[2] // 2, images.shape[1] // 2]])})
    return round(time.perf_counter() - began, 2)


def mask_agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Mean per-frame IoU of two (T, H, W) mask stacks, and the fraction of pixels that differ."""
    a, b = a.astype(bool), b.astype(bool)
    inter = (a & b).reshape(len(a), -1).sum(1)
    union = (a | b).reshape(len(a), -1).sum(1)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return {"mean_iou": round(float(iou.mean()), 4), "min_iou": round(float(iou.min()), 4),
            "pixels_differing": round(float((a != b).mean()), 5)}  # fmt: skip


SAM2_PRECISIONS = ("float32", "tf32", "bfloat16")  # tf32: float32 weights, TF32 tensor-core matmuls


def segmenter_in(segmenter: Any, precision: str) -> Any:
    """The loaded SAM2 segmenter with its model (and session dtype) cast for `precision` (one of SAM2_PRECISIONS)."""
    import torch

    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    model = segmenter.model.to(dtype)  # .to() casts in place
    return dataclasses.replace(segmenter, model=model, dtype=dtype, matmul_tf32=precision == "tf32")


@contextlib.contextmanager
def cpu_threads(count: int) -> Iterator[None]:
    """The app's per-frame thread pool size (WAN_ANIMATE_CPU_THREADS) set to `count` for a run."""
    from wan_animate.preprocess.frame_threads import ENV_THREADS

    previous = os.environ.get(ENV_THREADS)
    os.environ[ENV_THREADS] = str(count)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ENV_THREADS, None)
        else:
            os.environ[ENV_THREADS] = previous


# ---------------------------------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random models (CPU smoke test of this script)")
    parser.add_argument("--frames", type=int, default=None, help="clip frames (default 300, with --tiny 6)")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--size", default=None, help="clip WxH (default 1280x720, with --tiny 640x360)")
    parser.add_argument("--grain", type=float, default=2.0, help="Gaussian grain (levels) added to the clip")
    parser.add_argument("--modes", default="animation,replacement")
    parser.add_argument("--sam2-dtypes", default=None,
                        help="replacement runs, one per SAM2 precision: float32 (official), tf32 (the app's), "
                             "bfloat16 (default: all three on CUDA, float32 on CPU)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="after this many seconds, skip the remaining extra runs (SAM2 precisions, throughput)")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold animation run")
    parser.add_argument("--serial-too", action=argparse.BooleanOptionalAction, default=None,
                        help="also run animation with the app's per-frame thread pool off (default: on CUDA)")
    parser.add_argument("--unpadded-too", action=argparse.BooleanOptionalAction, default=None,
                        help="also run animation with the ONNX sessions' short last chunks not padded, i.e. with "
                             "input shapes that change (the app before it padded them; default: on CUDA)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "wan_prebench",
                        help="where the clip and the model files are built (reused on the next run)")  # fmt: skip
    parser.add_argument("--rebuild", action="store_true", help="rebuild the clip and model files")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "out") / "preprocess")
    parser.add_argument("--generation-clip-s", type=float, default=GENERATION_CLIP_S)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    sys.path.insert(0, str(APP_ROOT))
    from local_runner import load_app_package

    load_app_package()
    import torch  # before onnxruntime: its CUDA/cuDNN libraries are then the ones onnxruntime-gpu finds

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    frames = args.frames or (6 if args.tiny else 300)
    sam2_dtypes = args.sam2_dtypes or (",".join(SAM2_PRECISIONS) if cuda else "float32")
    if args.serial_too is None:
        args.serial_too = cuda
    if args.unpadded_too is None:
        args.unpadded_too = cuda
    width, height = (int(v) for v in (args.size or ("640x360" if args.tiny else "1280x720")).split("x"))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("wan_animate").setLevel(logging.INFO)  # the app's loader lines (onnxruntime providers)
    if cuda:
        torch.cuda.init()
        free_before = gpu_free_gib()

    from wan_animate.preprocess import PreprocessOptions, load_preprocess_models
    from wan_animate.preprocess.frame_threads import thread_count

    work = args.work
    clip = work / f"driving_{frames}f_{width}x{height}_{args.fps:g}fps.mp4"
    if not clip.exists() or args.rebuild:
        began = time.perf_counter()
        make_driving_clip(clip, frames, args.fps, width, height, args.grain)
        say(f"clip: {clip} in {time.perf_counter() - began:.1f} s")
    paths, build_s = build_model_files(work, args.tiny, args.rebuild)

    began = time.perf_counter()
    models = load_preprocess_models(paths, torch.device(device))
    if cuda:
        torch.cuda.synchronize()
    load_s = round(time.perf_counter() - began, 1)
    onnx = check_providers(onnx_sessions(models), want_cuda=cuda)
    if cuda:
        onnx["gpu_gib_after_load"] = onnx_gpu_gib(free_before)
    say(f"models loaded in {load_s} s; onnxruntime providers: detector {onnx['detector']['active']}, "
        f"pose {onnx['pose']['active']}")  # fmt: skip

    size_mb = clip.stat().st_size / 1e6
    duration = frames / args.fps
    result: dict[str, Any] = {
        "command": "python benchmarks/bench_preprocess.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "environment": environment(device),
        "clip": {
            "description": f"{frames} frames, {width}x{height}, {args.fps:g} fps, H.264 "
            f"{size_mb * 8 / duration:.1f} Mbit/s (from examples/smoke/driving.mp4, ping-pong, upscaled, grain "
            f"{args.grain:g})",
            "reference": "examples/smoke/reference.jpg (512x600)",
        },
        "models": "tiny random stand-ins" if args.tiny else (
            f"YOLOv10m ({file_mib(paths.detector_onnx)} MiB ONNX), ViTPose-H whole-body "
            f"({file_mib(paths.pose_onnx)} MiB ONNX + data), SAM2 hiera-large ({file_mib(paths.sam2_checkpoint)} MiB), "
            "random weights"),  # fmt: skip
        "build_s": build_s,
        "load_s": load_s,
        "onnx": onnx,
        "generation_clip_s": args.generation_clip_s,
        "clips": None,
        "runs": [],
        "sam2_agreement": {},
    }
    gen_s = generation_estimate_s(frames, args.generation_clip_s)
    result["clips"] = round(gen_s / args.generation_clip_s)
    modes = [m for m in args.modes.split(",") if m]

    def record(row: dict[str, Any]) -> None:
        row["share_of_generation"] = f"{row['total_s'] / gen_s:.1%}"
        result["runs"].append(row)
        write_results(args.out, result)

    base = PreprocessOptions(resolution_width=1280, resolution_height=720, fps=args.fps)
    if "animation" in modes:
        animation = dataclasses.replace(base, mode="animation")
        if not args.no_cold:
            record(run_preprocess("animation (cold)", clip, animation, models, cuda)[0])
        record(run_preprocess(f"animation ({thread_count()} CPU threads)", clip, animation, models, cuda)[0])
        if args.serial_too and thread_count() > 1 and time.perf_counter() - started < args.budget_s:
            with cpu_threads(1):
                record(run_preprocess("animation (1 CPU thread)", clip, animation, models, cuda)[0])
        if args.unpadded_too and time.perf_counter() - started < args.budget_s:
            estimator = models.pose_estimator
            with patched([(estimator.detector.runner, "pad", False), (estimator.pose.runner, "pad", False)]):
                record(run_preprocess("animation (batches not padded)", clip, animation, models, cuda)[0])
    if "replacement" in modes:
        replacement = dataclasses.replace(base, mode="replacement")
        first_masks, first_name = None, None
        loaded = models.segmenter
        for precision in [d for d in sam2_dtypes.split(",") if d]:
            if precision not in SAM2_PRECISIONS:
                raise SystemExit(f"--sam2-dtypes: {precision!r} is not one of {SAM2_PRECISIONS}")
            if first_name is not None and time.perf_counter() - started > args.budget_s:
                say(f"budget of {args.budget_s:.0f} s spent: skipping replacement with SAM2 {precision}")
                continue
            models.segmenter = segmenter_in(loaded, precision)
            if cuda:
                say(f"SAM2 {precision} warm-up (4 frames): {warm_up_segmenter(models.segmenter, clip)} s")
            row, raw = run_preprocess(f"replacement, SAM2 {precision}", clip, replacement, models, cuda,
                                      keep_masks=True)  # fmt: skip
            if first_masks is None:
                first_masks, first_name = raw, precision
            elif raw is not None:
                result["sam2_agreement"][f"{precision} vs {first_name}"] = mask_agreement(first_masks, raw)
            record(row)
    if cuda:  # before the throughput runs below, which call the sessions without the arena-shrinking run option
        result["onnx"]["gpu_gib_after_runs"] = onnx_gpu_gib(free_before)
    sessions = onnx_sessions(models)
    batches = (1, 16, 32) if not args.tiny else (1, 4)
    if time.perf_counter() - started < args.budget_s:
        result["onnx_throughput"] = {
            "detector (640x640)": onnx_throughput(sessions["detector"], (3, 640, 640), batches, reps=3),
            "pose (256x192)": onnx_throughput(sessions["pose"], (3, 256, 192), batches, reps=3),
        }
    if cuda:
        result["onnx"]["gpu_gib_at_end"] = onnx_gpu_gib(free_before)
    result["script_s"] = round(time.perf_counter() - started, 1)
    write_results(args.out, result)
    print(markdown(result), flush=True)
    say(f"results in {args.out} after {result['script_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
