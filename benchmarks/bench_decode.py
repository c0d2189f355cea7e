"""Driving-video decoding: speed of each candidate reader at 1080p, and peak memory of the decode + reduce path at 4K.

`speed`: frames per second decoding 1920x1080 clips (H.264, HEVC, VP9, AV1; made with imageio-ffmpeg's ffmpeg) to
(32, H, W, 3) uint8 RGB chunk arrays (what the pipeline consumes), all frames in order, with: decord as the app used it (num_threads=0, get_batch of 32),
decord single-threaded (the retry policy candidate), the bundled ffmpeg binary piping rawvideo, and PyAV
(the app's reader, preprocess/video_decode.py). Best of `--reps` runs, candidates interleaved.

`memory`: peak RSS (ru_maxrss) of a fresh process that runs one path over the first N frames of a 3840x2160 60 fps
clip: `decode` (iter_frames, every frame reduced to 1280x720 as decoded), `animation` (the pipeline's driving pass,
default 1280x720 area, with a stand-in pose estimator that returns one fixed person per frame: decode, reduce, face
crops) and `replacement` (the same pass keeping the frames resized to the output size, as SAM2 needs them).
`--old SRC` also runs `decode_old` from an app folder at SRC (e.g. `git archive <commit> | tar -x -C SRC`):
the previous decord reader with the resize after each 32-frame chunk. `--preprocess also|only` adds (or runs only)
`preprocess_animation` and `preprocess_replacement`: the whole preprocess() on the first N frames (stream-copied
into their own file) at the source's 60 fps, 1280x720 output, the same stand-in pose estimator and, for
replacement, a stand-in segmenter whose mask is that pose's person box (no SAM2), default mask refinement.

    python benchmarks/bench_decode.py speed --work /tmp/bench-decode
    python benchmarks/bench_decode.py memory --work /tmp/bench-decode --frames 16 1800
    python benchmarks/bench_decode.py memory --work /tmp/bench-decode --frames 16 1800 --preprocess only
Results: `--out` (default ./out) as results.json and results.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

APP_ROOT = Path(__file__).resolve().parents[1]
CODECS = {  # name -> (file name, ffmpeg encoder options)
    "h264": ("h264_1080.mp4", ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"]),
    "hevc": ("hevc_1080.mp4", ["-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error"]),
    "vp9": ("vp9_1080.webm", ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "4M"]),
    "av1": ("av1_1080.mp4", ["-c:v", "libaom-av1", "-usage", "realtime", "-cpu-used", "8", "-b:v", "3M"]),
}


def load_app(root: Path = APP_ROOT) -> None:
    sys.path.insert(0, str(root))
    from local_runner import load_app_package

    load_app_package()


def ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def make_clip(path: Path, size: str, rate: int, frames: int, options: list[str]) -> Path:
    """A testsrc2 clip (moving pattern and counter), made once and reused."""
    if not path.exists():
        cmd = [ffmpeg(), "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}",
               "-frames:v", str(frames), *options, str(path.with_suffix(".part" + path.suffix))]  # fmt: skip
        subprocess.run(cmd, check=True)
        path.with_suffix(".part" + path.suffix).rename(path)
    return path


# ---------------------------------------------------------------------------------------------------
# speed


def decode_decord(path: Path, threads: int) -> int:
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads)
    total = len(reader)
    for start in range(0, total, 32):
        reader.get_batch(list(range(start, min(total, start + 32)))).asnumpy()
    return total


def decode_ffmpeg_pipe(path: Path) -> int:
    from wan_animate.preprocess.video_decode import probe_video

    info = probe_video(path)
    size = info.width * info.height * 3
    cmd = [ffmpeg(), "-v", "error", "-nostdin", "-i", str(path), "-map", "0:v:0", "-fps_mode", "passthrough",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]  # fmt: skip
    count = 0
    with subprocess.Popen(cmd, stdout=subprocess.PIPE) as proc:
        while count < info.frames:  # chunks of 32 frames in one array, as the other readers deliver them
            chunk = np.empty((min(32, info.frames - count), info.height, info.width, 3), np.uint8)
            got = proc.stdout.readinto(memoryview(chunk).cast("B"))  # BufferedReader: reads until full or EOF
            count += got // size
            if got < chunk.nbytes:
                break
    return count


def decode_pyav(path: Path) -> int:
    from wan_animate.preprocess.video_decode import iter_frames, probe_video

    return sum(len(c) for c in iter_frames(path, list(range(probe_video(path).frames))))


def run_speed(work: Path, frames: int, reps: int) -> dict:
    readers: dict[str, Callable[[Path], int]] = {
        "decord (num_threads=0)": lambda p: decode_decord(p, 0),
        "decord (num_threads=1)": lambda p: decode_decord(p, 1),
        "ffmpeg binary, rawvideo pipe": decode_ffmpeg_pipe,
        "PyAV (the app's reader)": decode_pyav,
    }
    rows = []
    for codec, (name, options) in CODECS.items():
        clip = make_clip(work / name, "1920x1080", 30, frames, options)
        best: dict[str, float | str] = {}
        for _ in range(reps):
            for reader, fn in readers.items():
                if isinstance(best.get(reader), str):
                    continue
                began = time.perf_counter()
                try:
                    count = fn(clip)
                except Exception as error:  # decord refuses VP9 (EAGAIN) and AV1: recorded, not fatal
                    best[reader] = f"fails: {type(error).__name__}"
                    continue
                fps = count / (time.perf_counter() - began)
                best[reader] = max(fps, best.get(reader, 0.0))
        rows.append({"codec": codec, "frames": frames, **best})
        print(rows[-1], flush=True)
    return {"speed_1080p_fps": rows}


# ---------------------------------------------------------------------------------------------------
# memory


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_path(path_name: str, clip: Path, frames: int) -> dict:
    """In this (fresh) process: run one path over `frames` frames; peak RSS before and after."""
    import cv2
    from wan_animate.preprocess import video_decode as vdec
    from wan_animate.preprocess import video_io as vio

    indices = list(range(frames))
    vdec.probe_video(clip)
    base = _rss_mb()
    began = time.perf_counter()
    if path_name == "decode_old":  # the previous app: decord chunks of 32 at the source size, resized after
        for chunk in vdec.iter_frames(clip, indices, chunk=32):
            np.stack([vio.resize_by_area(f, 1280 * 720) for f in chunk])
    elif path_name == "decode":
        shrink = lambda f: cv2.resize(f, (1280, 720), interpolation=cv2.INTER_AREA)  # noqa: E731
        for _ in vdec.iter_frames(clip, indices, chunk=32, transform=shrink):
            pass
    else:
        from wan_animate.preprocess import driving_pass, model_loading

        info = vdec.probe_video(clip)
        models = model_loading.PreprocessModels(pose_estimator=StandInPose())
        area = 1280 * 720
        if path_name.startswith("preprocess_"):  # the whole preprocess(): driving pass, skeletons, masks, background
            return measure_preprocess(path_name, clip, frames, info.fps)
        if path_name == "animation":
            work_w, work_h = driving_pass.working_size(info.width, info.height, area)
            driving_pass.driving_pass(clip, indices, models, None, False, _quiet(),
                                      work_hw=(work_h, work_w), source_hw=(info.height, info.width))  # fmt: skip
        else:
            driving_pass.driving_pass(clip, indices, models, area, False, _quiet())
    return {"path": path_name, "frames": frames, "baseline_rss_mb": round(base), "peak_rss_mb": round(_rss_mb()),
            "seconds": round(time.perf_counter() - began, 1)}  # fmt: skip


def measure_preprocess(path_name: str, clip: Path, frames: int, source_fps: float) -> dict:
    """In this (fresh) process: the whole preprocess() over the first `frames` frames at the source rate (animation:
    a 1280x720 reference, so a 1280x720 output; replacement: a stand-in segmenter), and what its result holds."""
    from PIL import Image
    from wan_animate.preprocess import PreprocessModels, PreprocessOptions, preprocess

    reference = clip.with_name("reference_1280x720.png")
    if not reference.exists():  # a grey gradient: the stand-ins never look at its content
        Image.fromarray(np.tile(np.linspace(40, 220, 1280, dtype=np.uint8)[None, :, None], (720, 1, 3))).save(reference)
    trimmed = clip.with_name(f"{clip.stem}_first{frames}.mp4")
    if not trimmed.exists():  # the first N frames, stream-copied (no re-encode): preprocess() takes whole videos
        cmd = [ffmpeg(), "-v", "error", "-y", "-i", str(clip), "-frames:v", str(frames), "-c", "copy", str(trimmed)]
        subprocess.run(cmd, check=True)
    mode = path_name.removeprefix("preprocess_")
    models = PreprocessModels(pose_estimator=StandInPose(), segmenter=BoxSegmenter() if mode == "replacement" else None)
    options = PreprocessOptions(mode=mode, fps=-1)  # every source frame, 1280x720 area, default mask refinement
    base = _rss_mb()
    began = time.perf_counter()
    cond = preprocess(trimmed, reference, options, models, log=_quiet())
    arrays = [cond.face_frames, cond.background_frames, cond.mask_frames]
    held = sum(a.nbytes for a in arrays if isinstance(a, np.ndarray))  # in memory
    on_disk = sum(a.disk_bytes for a in arrays if a is not None and not isinstance(a, np.ndarray))  # FrameStores
    return {"path": path_name, "frames": cond.num_frames, "baseline_rss_mb": round(base),
            "peak_rss_mb": round(_rss_mb()), "seconds": round(time.perf_counter() - began, 1),
            "output": f"{cond.width}x{cond.height}", "result_arrays_mb": round(held / 2**20),
            "result_on_disk_mb": round(on_disk / 2**20),
            "skeletons": type(cond.pose_frames).__name__}  # fmt: skip


class BoxSegmenter:
    """Stand-in SAM2 (no model): every frame's mask is StandInPose's person box (x 0.3-0.7, y 0.1-0.95)."""

    def segment(self, frames: np.ndarray, clicks: dict) -> np.ndarray:
        count, height, width = frames.shape[:3]
        masks = np.zeros((count, height, width), bool)
        masks[:, int(height * 0.1) : int(height * 0.95), int(width * 0.3) : int(width * 0.7)] = True
        return masks


def _quiet():
    import logging

    return logging.getLogger("bench_decode")


class StandInPose:
    """frames (n, H, W, 3) -> one PoseMeta per frame: a person in the middle with a face box (no model)."""

    def __call__(self, frames: np.ndarray) -> list:
        from wan_animate.preprocess.pose_meta import PoseMeta

        height, width = frames.shape[1:3]
        out = []
        for _ in frames:
            meta = PoseMeta.empty(width, height)
            meta.body[:, :2] = (width / 2, height / 2)
            meta.body[:, 2] = 0.9
            meta.person_box = np.array([width * 0.3, height * 0.1, width * 0.7, height * 0.95, 0.9], np.float32)
            meta.face_box = np.array([width * 0.45, height * 0.12, width * 0.55, height * 0.3, 0.9], np.float32)
            out.append(meta)
        return out


def run_memory(work: Path, counts: list[int], old: Path | None, preprocess_too: str | None = None) -> dict:
    """Each path x frame count in a fresh process. `preprocess_too`: "also" adds the whole preprocess() in both
    modes, "only" runs just those."""
    clip = make_clip(work / f"4k60_{max(counts)}.mp4", "3840x2160", 60, max(counts), ["-c:v", "libx264", "-preset", "ultrafast",
                                                                        "-crf", "30", "-pix_fmt", "yuv420p"])  # fmt: skip
    rows = []
    paths = ["decode", "animation", "replacement"] + (["decode_old"] if old else [])
    paths = paths if preprocess_too in (None, "also") else []
    paths += ["preprocess_animation", "preprocess_replacement"] if preprocess_too else []
    for path_name in paths:
        for frames in counts:
            root = old if path_name == "decode_old" else APP_ROOT
            cmd = [sys.executable, __file__, "_child", "--root", str(root), "--path", path_name, "--clip", str(clip),
                   "--frames", str(frames)]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                rows.append({"path": path_name, "frames": frames, "error": done.stderr.strip().splitlines()[-1:]})
            else:
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    return {"memory_4k": rows}


# ---------------------------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    lines = []
    if "speed_1080p_fps" in results:
        rows = results["speed_1080p_fps"]
        readers = [k for k in rows[0] if k not in ("codec", "frames")]
        lines += ["Decode speed, 1920x1080 to RGB arrays, frames per second (2 CPU cores):", "",
                  "| codec | " + " | ".join(readers) + " |", "|---" * (len(readers) + 1) + "|"]  # fmt: skip
        for row in rows:
            cells = [f"{row[r]:.0f}" if isinstance(row[r], float) else str(row[r]) for r in readers]
            lines.append(f"| {row['codec']} | " + " | ".join(cells) + " |")
        lines.append("")
    if "memory_4k" in results:
        lines += ["Peak RSS, 3840x2160 60 fps H.264 clip:", "",
                  "| path | frames | baseline MB | peak MB | s | result in memory MB | result on disk MB |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for row in results["memory_4k"]:
            if "error" in row:
                lines.append(f"| {row['path']} | {row['frames']} | failed: {row['error']} | | | | |")
            else:
                lines.append(f"| {row['path']} | {row['frames']} | {row['baseline_rss_mb']} | {row['peak_rss_mb']} "
                             f"| {row['seconds']} | {row.get('result_arrays_mb', '')} "
                             f"| {row.get('result_on_disk_mb', '')} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["speed", "memory", "_child"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-decode"), help="where test clips are made")
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--speed-frames", type=int, default=150)
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 1800])
    parser.add_argument("--old", type=Path, default=None, help="an app folder with the previous reader")
    parser.add_argument("--preprocess", choices=["also", "only"], default=None,
                        help="memory: also (or only) the whole preprocess() in both modes")  # fmt: skip
    parser.add_argument("--root", type=Path, default=APP_ROOT)
    parser.add_argument("--path", default="decode")
    parser.add_argument("--clip", type=Path)
    args = parser.parse_args()
    load_app(args.root)
    if args.what == "_child":
        print(json.dumps(measure_path(args.path, args.clip, args.frames[0])))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    results = run_speed(args.work, args.speed_frames, args.reps) if args.what == "speed" else (
        run_memory(args.work, args.frames, args.old, args.preprocess))  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"results_{args.what}.json").write_text(json.dumps(results, indent=2))
    (args.out / f"results_{args.what}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
