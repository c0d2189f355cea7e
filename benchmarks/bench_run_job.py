"""A whole request end to end through the app's `job.run_job`: raw driving video in, MP4 out, preprocessing included.

The released weights cannot be downloaded here, so every model is a random-weight stand-in of the release's
architecture and size: the preprocessing models written in the release's file formats and loaded by the app's loader
(bench_preprocess.py), the Wan-Animate DiT, UMT5-XXL, CLIP and the VAE built on the GPU (bench_clip_e2e.py). The
worker is then set up by the app's own `worker.prepare_full_runtime` (speed options, compile and encoder warm-ups of
the `--setup` fields, as a worker's setup does) and each request runs `run_job` on a driving clip made from the
repo's example video (default 10 s, 30 fps, 1280x720). Reports per request: wall seconds, run_job's own timings
(preprocess, generate + MP4 encode), the loop's encode/decode stages, peak GPU memory, and wall seconds per second of
output (on one GPU, its GPU-seconds). The output video is noise (random weights): only the time and memory mean
anything.

    python benchmarks/bench_run_job.py --setup '{"distill_lora": true, "fp8": true, "attention": "fp8"}' \\
        --request '{"distill": true}' --out $OUT/run_job
    python benchmarks/bench_run_job.py --tiny --out out/run_job_tiny    # smoke preset on the CPU (the tests run it)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

APP_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(APP_ROOT))
sys.path.insert(0, str(APP_ROOT / "benchmarks"))
REFERENCE_IMAGE = APP_ROOT / "examples" / "smoke" / "reference.jpg"


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def full_runtime(setup: Any, work: Path, probe: Any = None) -> tuple[Any, dict[str, float]]:
    """A full-preset Runtime of random-weight stand-ins, set up by the app's worker code; and the seconds it took.

    `probe(models)`, if given, runs right after the preprocessing models load, before the Wan models and the worker's
    compile and warm-ups exist (to tell preprocessing in a bare process from preprocessing in a set-up worker).
    """
    import bench_clip_e2e
    import bench_forward
    import bench_preprocess
    import torch
    from wan_animate import worker
    from wan_animate.preprocess import load_preprocess_models
    from wan_animate.wan.vae_layout import set_vae_layout

    device = torch.device("cuda")
    seconds: dict[str, float] = {}
    began = time.perf_counter()
    paths, _ = bench_preprocess.build_model_files(work, tiny=False, rebuild=False)
    preprocess_models = load_preprocess_models(paths, device, per_request=setup.offload_model)
    seconds["preprocess_models_s"] = round(time.perf_counter() - began, 1)
    if probe is not None:
        probe(preprocess_models)
    began = time.perf_counter()
    wan_models = bench_clip_e2e.build_full_models(bench_forward)
    if setup.vae_bf16:
        wan_models.vae.to(torch.bfloat16)
        set_vae_layout(wan_models.vae, device)  # the bf16 VAE runs contiguous, as in the app
    if setup.distill_lora:
        bench_clip_e2e.load_random_distill_lora(wan_models)
    torch.cuda.synchronize()
    seconds["wan_models_s"] = round(time.perf_counter() - began, 1)
    began = time.perf_counter()
    runtime = worker.prepare_full_runtime(setup, device, None, paths, preprocess_models, wan_models)
    torch.cuda.synchronize()
    seconds["worker_setup_s"] = round(time.perf_counter() - began, 1)  # speed options, compile, encoder warm-ups
    return runtime, seconds


def preprocess_stages_s(clock: Any) -> dict[str, float]:
    """The clock's seconds per preprocessing stage and part (bench_preprocess's stage names), those that ran."""
    from preprocess_stages import PARTS, TOP_STAGES

    names = [*TOP_STAGES, *(part for stage in PARTS for part in PARTS[stage])]
    return {name.strip(): round(clock.seconds[name], 3) for name in names if clock.seconds.get(name, 0.0) > 0}


def bare_preprocess(models: Any, inp: Any, driving: Path, cuda: bool) -> dict[str, Any]:
    """`preprocess()` alone on the request's options, per stage (bench_preprocess's measurement)."""
    import bench_preprocess
    from wan_animate.request_options import preprocess_options

    row, _ = bench_preprocess.run_preprocess("bare preprocess()", driving, preprocess_options(inp), models, cuda)
    return row


def run_request(runtime: Any, inp: Any, driving: Path, work: Path, cuda: bool) -> dict[str, Any]:
    """One run_job call; its timings, the loop's encode/decode stages, preprocessing per stage, frames and memory.

    Preprocessing stages come from bench_preprocess's clock; its skeleton stage also counts the drawing that
    generation does as it reads the pose frames.
    """
    import bench_clip_e2e
    import torch
    from preprocess_stages import StageClock, instrumentation, patched
    from wan_animate.job import run_job

    out_dir = work / f"out_{time.monotonic_ns()}"
    out_dir.mkdir(parents=True)
    stages: dict[str, float] = {}
    clock = StageClock(cuda)
    models = runtime.preprocess_models
    patches = instrumentation(models, clock) if models.pose_estimator is not None else []  # per-request models: none
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    with bench_clip_e2e.stage_timers(stages, sync=cuda), patched(patches):
        result = run_job(runtime, inp, driving=driving, reference=Path(inp.reference_image.path), seed=0,
                         work_dir=work, out_dir=out_dir)  # fmt: skip
    wall = time.perf_counter() - began
    output_s = result.num_frames / result.fps
    row: dict[str, Any] = {
        "wall_s": round(wall, 2),
        "timings": result.timings,
        "loop_stage_s": stages,
        "preprocess_stage_s": preprocess_stages_s(clock),
        "frames": result.num_frames,
        "size": f"{result.width}x{result.height}",
        "fps": result.fps,
        "output_s": round(output_s, 3),
        "wall_s_per_output_s": round(wall / output_s, 2),
        "mp4_bytes": result.video_path.stat().st_size if result.video_path else None,
    }
    if cuda:
        row["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
        row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 1)
    return row


def environment(cuda: bool) -> dict[str, Any]:
    """bench_preprocess's environment (python, torch, transformers, onnxruntime, opencv, GPU) plus the Wan side's."""
    from importlib.metadata import PackageNotFoundError, version

    import bench_preprocess

    info = bench_preprocess.environment("cuda" if cuda else "cpu")
    for name in ("diffusers", "torchao", "fa3-fwd", "flash-attn-4"):
        try:
            info[name] = version(name)
        except PackageNotFoundError:
            info[name] = None
    return info


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# run_job end to end: {result['environment'].get('gpu') or 'CPU'}",
        "",
        f"setup {json.dumps(result['setup'])}; request {json.dumps(result['request'])}; driving clip "
        f"{result['clip']}; worker setup {json.dumps(result['setup_s'])}",
        "",
        "| request | wall s | preprocess s | generate + MP4 s | output | wall s per output s | peak GiB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, row in enumerate(result["requests"], 1):
        t = row["timings"]
        lines.append(
            f"| {i} | {row['wall_s']:.1f} | {t.get('preprocess', float('nan')):.1f} | "
            f"{t.get('generate_and_encode', float('nan')):.1f} | {row['frames']} frames {row['size']} "
            f"@ {row['fps']:g} fps | {row['wall_s_per_output_s']:.1f} | {row.get('peak_allocated_gib', '-')} |"
        )
    for i, row in enumerate(result["requests"], 1):
        lines.append(f"\nrequest {i} loop stages (s): {json.dumps(row['loop_stage_s'])}")
        lines.append(f"\nrequest {i} preprocessing stages (s): {json.dumps(row['preprocess_stage_s'])}")
    for probe in result.get("bare_preprocess", []):
        lines.append(f"\n{probe['when']}: preprocess() alone {probe['total_s']} s, stages (s): "
                     f"{json.dumps(probe['stages_s'])}")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the smoke preset's tiny models on the CPU")
    parser.add_argument("--setup", default="{}", help="AppSetup fields as JSON (the worker's settings)")
    parser.add_argument("--request", default="{}", help="AppInput fields as JSON, besides the two files")
    parser.add_argument("--seconds", type=float, default=None, help="driving clip length (default 10, --tiny 1)")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--size", default=None, help="driving clip WxH (default 1280x720, --tiny 320x180)")
    parser.add_argument("--requests", type=int, default=1, help="requests in a row on the same worker")
    parser.add_argument("--bare-preprocess", action="store_true",
                        help="also time preprocess() alone, before the worker's setup and after it")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "wan_prebench")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "out") / "run_job")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from local_runner import load_app_package

    load_app_package()
    import bench_preprocess
    import torch  # before onnxruntime: its CUDA/cuDNN libraries are then the ones onnxruntime-gpu finds
    from wan_animate import worker
    from wan_animate.inference import AppInput, AppSetup

    cuda = not args.tiny
    if cuda and not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (or --tiny for the CPU smoke run)")
    seconds = args.seconds or (1.0 if args.tiny else 10.0)
    width, height = (int(v) for v in (args.size or ("320x180" if args.tiny else "1280x720")).split("x"))
    frames = int(round(seconds * args.fps))
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    clip = work / f"driving_{frames}f_{width}x{height}_{args.fps:g}fps.mp4"
    if not clip.exists():
        bench_preprocess.make_driving_clip(clip, frames, args.fps, width, height, grain=2.0)
    setup_fields = {"preset": "smoke" if args.tiny else "full", **json.loads(args.setup)}
    setup = AppSetup(**setup_fields)
    request_fields = {"fps": args.fps, **json.loads(args.request)}
    if args.tiny:
        request_fields = {"resolution_width": 256, "resolution_height": 256, "clip_len": 5, "sampling_steps": 2,
                          **request_fields}  # fmt: skip

    def request_input() -> Any:
        return AppInput(driving_video={"path": str(clip)}, reference_image={"path": str(REFERENCE_IMAGE)},
                        **request_fields)  # fmt: skip

    bare: list[dict[str, Any]] = []

    def probe(models: Any, when: str) -> None:
        row = bare_preprocess(models, request_input(), clip, cuda)
        bare.append({"when": when, "total_s": row["total_s"], "stages_s": row["stages_s"], "parts_s": row["parts_s"]})

    began = time.perf_counter()
    if args.tiny:
        runtime, setup_s = worker.load_runtime(setup), {}
    else:
        before = (lambda models: probe(models, "before the worker's setup")) if args.bare_preprocess else None
        runtime, setup_s = full_runtime(setup, work, probe=before)
    setup_s["total_s"] = round(time.perf_counter() - began, 1)
    say(f"worker ready in {setup_s}")
    if args.bare_preprocess:
        probe(runtime.preprocess_models, "after the worker's setup")
        say(f"preprocess() alone: {json.dumps(bare)}")
    result: dict[str, Any] = {
        "command": "python benchmarks/bench_run_job.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "environment": environment(cuda),
        "setup": setup_fields,
        "request": request_fields,
        "clip": f"{frames} frames, {width}x{height}, {args.fps:g} fps (examples/smoke/driving.mp4, ping-pong, upscaled)",
        "setup_s": setup_s,
        "bare_preprocess": bare,
        "requests": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for index in range(args.requests):
        row = run_request(runtime, request_input(), clip, work, cuda)
        say(f"request {index + 1}: {json.dumps(row)}")
        result["requests"].append(row)
        (args.out / "results.json").write_text(json.dumps(result, indent=2))
        (args.out / "results.md").write_text(markdown(result))
    (args.out / "results.json").write_text(json.dumps(result, indent=2))  # also with --requests 0
    (args.out / "results.md").write_text(markdown(result))
    print(markdown(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
