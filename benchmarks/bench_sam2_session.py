"""SAM2's frames in memory: transformers' float32 session against the app's uint8 one (`preprocess/sam2_session.py`).

The full-size hiera-large model (random weights, the same in both runs: seeded) segments one chunk of 1280x720
frames (the official chunk is 400) from a click on frame 0, through `Sam2VideoSegmenter.segment` as the app runs it;
`--session float` swaps in transformers' `Sam2VideoInferenceSession` fed the float32 frames (the app's code before
the uint8 session). Each session runs in a fresh process (peak RSS is per process) and records the growth of peak
RSS over the segmentation, the time it took, peak GPU memory, and its masks; the parent checks the masks are equal.
Both run the segmenter's matmuls in TF32 on CUDA, the app's default since 2026-12-08 (the 2026-12-07 rows in
BENCHMARKS.md ran them in float32).

    python benchmarks/bench_sam2_session.py --frames 400 --out out/sam2

Needs a CUDA GPU (or `--device cpu` with few frames), torch, transformers with Sam2VideoModel, pillow and opencv;
not the app's other dependencies (the preprocess package's __init__ is skipped).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

APP_ROOT = Path(__file__).resolve().parents[1]
SESSIONS = ("float", "uint8")


def load_sam2_modules() -> tuple:
    """sam2_video and sam2_session, imported without running the preprocess package's __init__ (PyAV, onnxruntime)."""
    for name, folder in (("wan_animate", APP_ROOT), ("wan_animate.preprocess", APP_ROOT / "preprocess")):
        if name not in sys.modules:
            spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
            spec.submodule_search_locations = [str(folder)]
            sys.modules[name] = importlib.util.module_from_spec(spec)
    from wan_animate.preprocess import sam2_session, sam2_video

    return sam2_video, sam2_session


def moving_ellipse(count: int, height: int = 720, width: int = 1280) -> np.ndarray:
    """(count, H, W, 3) uint8: a light ellipse crossing a dark gradient, the object the click is on."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    background = np.stack([xs / width * 80, ys / height * 80, np.full_like(xs, 40)], axis=-1).astype(np.uint8)
    frames = np.empty((count, height, width, 3), np.uint8)
    for t in range(count):
        cx = width * (0.3 + 0.4 * t / max(count - 1, 1))
        inside = ((xs - cx) / (width * 0.08)) ** 2 + ((ys - height / 2) / (height * 0.3)) ** 2 <= 1
        frames[t] = background
        frames[t][inside] = (220, 200, 180)
    return frames


def run_child(session: str, count: int, device_name: str, out: Path) -> dict:
    import resource

    import torch
    from transformers import Sam2VideoModel
    from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

    sam2_video, sam2_session = load_sam2_modules()
    from wan_animate.preprocess.sam2_checkpoint import sam2_config

    device = torch.device(device_name)
    torch.manual_seed(0)
    model = Sam2VideoModel(sam2_config("hiera_large")).eval().to(device)
    segmenter = sam2_video.Sam2VideoSegmenter(model=model, device=device, dtype=torch.float32)
    if session == "float":  # the code before the uint8 session: float32 frames stored in transformers' session
        sam2_session.Uint8FrameSession = lambda table, **kwargs: Sam2VideoInferenceSession(**kwargs)
        segmenter.pixel_frames = lambda frames: [segmenter._pixels(frame) for frame in frames]
    frames = moving_ellipse(count)
    clicks = {0: np.array([[1280 * 0.3, 360.0]], np.float32)}
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    began = time.perf_counter()
    masks = segmenter.segment(frames, clicks)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.save(out / f"masks_{session}.npy", np.packbits(masks))
    gpu = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    return {"session": session, "frames": count, "seconds": round(seconds, 2), "rss_before_mb": round(before_mb),
            "rss_peak_mb": round(peak_mb), "rss_growth_mb": round(peak_mb - before_mb),
            "gpu_peak_gib": round(gpu, 2), "mask_fraction": round(float(masks.mean()), 4),
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path("out/sam2"))
    parser.add_argument("--child", choices=SESSIONS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.child:
        print(json.dumps(run_child(args.child, args.frames, args.device, args.out)))
        return
    rows = []
    for session in SESSIONS:
        cmd = [sys.executable, __file__, "--child", session, "--frames", str(args.frames), "--device", args.device,
               "--out", str(args.out)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            rows.append({"session": session, "error": done.stderr[-1500:]})
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    masks = [args.out / f"masks_{s}.npy" for s in SESSIONS]
    equal = all(m.exists() for m in masks) and np.array_equal(np.load(masks[0]), np.load(masks[1]))
    result = {"rows": rows, "masks_equal": bool(equal)}
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
