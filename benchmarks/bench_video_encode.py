"""The output's H.264 encode beside the generation loop: how much of it the writer thread hides (CPU only).

Frames of a real video from tests/fixtures, resized to the output size, are cut into clips as the loop yields them;
a GPU stand-in sleeps `--gpu-s` before each clip (the caller waits on CUDA the same way, without holding the GIL).
Measured: the encode alone (E), the stand-in alone (P), and both through `encode_h264` (T). Fed from the caller's
thread, as before 2026-12-07, a request paid about E + P; the writer thread brings it to T.

    python benchmarks/bench_video_encode.py --clips 4 --gpu-s 5 --out out/video_encode
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE = REPO_ROOT / "tests" / "fixtures" / "driving_two_people_walk.mp4"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--clip-frames", type=int, default=77)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--gpu-s", type=float, default=5.0, help="GPU stand-in seconds before each clip")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")) / "video_encode")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    from local_runner import load_app_package

    load_app_package()
    import cv2
    from wan_animate.preprocess.video_decode import probe_video, read_frames
    from wan_animate.preprocess.video_encode import encode_h264

    width, height = (int(v) for v in args.size.split("x"))
    total = args.clips * args.clip_frames
    source = read_frames(SOURCE, list(range(min(total, probe_video(SOURCE).frames))))
    frames = np.stack([cv2.resize(source[i % len(source)], (width, height)) for i in range(total)])
    clips = np.split(frames, args.clips)

    def loop(gpu_s: float) -> Iterator[np.ndarray]:
        for clip in clips:
            time.sleep(gpu_s)
            yield clip

    def wall(fn) -> float:
        start = time.perf_counter()
        fn()
        return round(time.perf_counter() - start, 2)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v.mp4"
        encode_s = wall(lambda: encode_h264(path, loop(0.0), fps=30, crf=18))
        producer_s = wall(lambda: list(loop(args.gpu_s)))
        together_s = wall(lambda: encode_h264(path, loop(args.gpu_s), fps=30, crf=18))
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"), "cpu_cores": os.cpu_count(), "size": args.size,
        "clips": args.clips, "clip_frames": args.clip_frames, "gpu_s_per_clip": args.gpu_s,
        "encode_alone_s": encode_s, "gpu_stand_in_alone_s": producer_s,
        "serial_s (encode + stand-in)": round(encode_s + producer_s, 2), "writer_thread_s": together_s,
        "hidden_s": round(encode_s + producer_s - together_s, 2),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "video_encode.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
