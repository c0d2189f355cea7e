"""Real person detections of the two-person fixtures (tests/data/person_detections.json, recorded once with
YOLO11n-pose by tests/data/record_person_detections.py) and the scene facts the tracking tests check against."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data" / "person_detections.json"
SMALL = "driving_two_people_3s_small.mp4"  # 884x498, 90 frames: seconds 2-5 of the walk video
WALK = "driving_two_people_walk.mp4"  # 1768x994, 230 frames


@cache
def recorded(name: str) -> dict:
    return json.loads(DATA.read_text())["videos"][name]


def detections(name: str) -> list[np.ndarray]:
    """Per frame (M, 5) x1, y1, x2, y2, score of every recorded person, descending score."""
    return [np.array([p["box"] for p in frame], np.float64).reshape(-1, 5) for frame in recorded(name)["frames"]]


def keypoints(name: str) -> list[np.ndarray]:
    """Per frame (M, 17, 3) COCO keypoints x, y, score of the same people."""
    return [np.array([p["keypoints"] for p in frame], np.float32).reshape(-1, 17, 3)
            for frame in recorded(name)["frames"]]  # fmt: skip


def who(name: str, frame: int, box: np.ndarray) -> str:
    """Which of the two people a box is on, from the scene (independent of any tracker): "walker" (the woman
    walking right to left on the grass) or "jumper" (the man standing on the box, who jumps down at about frame
    150 of the walk video and ends at its right), "?" when the scene alone cannot tell."""
    width, height = recorded(name)["width"], recorded(name)["height"]
    cx, bottom = (box[0] + box[2]) / 2 / width, box[3] / height
    if name == SMALL or frame <= 140:  # the man is on the box: his feet are far above the woman's
        return "jumper" if bottom < 0.62 else "walker" if bottom > 0.75 else "?"
    if frame >= 181:  # both on the ground: she is at the left edge, he right of the middle
        return "walker" if cx < 0.3 else "jumper" if cx > 0.45 else "?"
    return "?"  # mid-jump


def only(name: str, person: str) -> list[np.ndarray]:
    """The recorded detections with everyone but `person` removed: a real one-person detection sequence."""
    return [dets[[who(name, t, d) == person for d in dets]] for t, dets in enumerate(detections(name))]
