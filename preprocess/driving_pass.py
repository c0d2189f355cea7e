"""One pass over the driving video: decode in chunks (frames reduced as they are decoded), follow the performer,
estimate their pose and crop their face per frame (replacement mode also keeps the resized frames).

pipeline.py calls `driving_pass` once per request and turns what it collects into the conditioning.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import InputError, check_cancel
from .detection import fallback_box
from .face import FACE_SIZE, crop_face, face_box, fill_missing_faces, nearest_good
from .frame_store import FrameStore
from .model_loading import PreprocessModels
from .person_choice import PersonChoice, scale_choice
from .pose import PoseEstimator, fill_invalid_bodies
from .pose_meta import PoseMeta
from .tracking import performer_boxes
from .video_decode import Transform, iter_frames, probe_video, read_frames
from .video_io import resize_by_area

# Animation mode: driving frames above this many pixels (and above the output area) are reduced as they are decoded,
# so memory follows the working size, not the upload's (a 4K frame is 25 MB); poses are mapped back to the source size.
ANIMATION_WORK_AREA = 1920 * 1080

POSE_CHUNK = 32  # frames decoded and pose-estimated per step


@dataclass
class DrivingPass:
    """What one pass over the driving frames collects."""

    poses: list[PoseMeta]
    faces: FrameStore  # (T, 512, 512, 3) uint8 on disk
    frames: FrameStore | None  # (T, H, W, 3) uint8 on disk, replacement mode only (resized frames)
    edit_frame: np.ndarray | None  # the frame FLUX edits for retargeting (official: the second one)
    frame_hw: tuple[int, int]  # size of the frames the poses refer to
    present: np.ndarray | None = None  # (T,) bool: the performer is in the frame; None: not tracked (official)



def _require_person(poses: list[PoseMeta]) -> None:
    if not any(p.has_person for p in poses):
        raise InputError(
            "no_person_in_video", "driving_video",
            "no person was detected in any frame. Use a video in which one person is clearly visible "
            "(body in frame, not too small or too dark).",
        )  # fmt: skip



def _chunks(path: Path, indices: list[int], transform: Transform | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(start, (n, h, w, 3) frames) for each chunk, each frame reduced by `transform` as it is decoded."""
    start = 0
    for frames in iter_frames(path, indices, chunk=POSE_CHUNK, transform=transform):
        yield start, frames
        start += len(frames)


def working_size(width: int, height: int, area: int) -> tuple[int, int]:
    """(w, h) animation mode estimates poses and crops faces at: the source size when it is at most
    max(area, ANIMATION_WORK_AREA) pixels, else the source scaled to that area, aspect kept (not letterboxed)."""
    limit = max(area, ANIMATION_WORK_AREA)
    if width * height <= limit:
        return width, height
    scale = (limit / (width * height)) ** 0.5
    return max(int(width * scale), 1), max(int(height * scale), 1)


def _shrink_to(width: int, height: int) -> Transform:
    """Per-frame reduction to width x height (INTER_AREA, the filter the official resize uses to shrink)."""
    return lambda frame: cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)


def _to_source(metas: list[PoseMeta], work_hw: tuple[int, int], source_hw: tuple[int, int]) -> list[PoseMeta]:
    """Poses found in frames reduced to work_hw, in the pixels of the source_hw frames."""
    sx, sy = source_hw[1] / work_hw[1], source_hw[0] / work_hw[0]
    return [_scaled_pose(m, sx, sy, source_hw[1], source_hw[0]) for m in metas]


def _scaled_pose(meta: PoseMeta, sx: float, sy: float, width: int, height: int) -> PoseMeta:
    """A pose found in a reduced frame, in the pixel coordinates of the width x height source frame."""
    scaled = meta.copy()
    for points in (scaled.body, scaled.left_hand, scaled.right_hand, scaled.face):
        points[:, 0] *= sx
        points[:, 1] *= sy
    for box in (scaled.person_box, scaled.face_box):
        if box is not None:
            box[[0, 2]] *= sx
            box[[1, 3]] *= sy
    scaled.width, scaled.height = width, height
    return scaled


def _tracks_people(estimator: PoseEstimator) -> bool:
    """True for estimators that can detect everyone first and estimate a chosen box later (WholeBodyPoseEstimator);
    others pick a person per frame themselves."""
    return callable(getattr(estimator, "detect_people", None)) and callable(getattr(estimator, "estimate", None))


def _performer(path: Path, indices: list[int], estimator: Any, transform: Transform | None,
               source_hw: tuple[int, int], person: PersonChoice, fps: float, log: logging.Logger,
               should_cancel: Callable[[], bool] | None = None) -> tuple[np.ndarray, list[str]]:  # fmt: skip
    """Detection over the whole video, then one performer followed through it: (T, 5) boxes and frame statuses
    (tracking.performer_boxes), in the pixels of the frames as `transform` reduces them. A point/box `person` is in
    source pixels (`source_hw`)."""
    detections: list[np.ndarray] = []
    frames = np.zeros((0, *source_hw, 3), np.uint8)
    for start, frames in _chunks(path, indices, transform):
        check_cancel(should_cancel, f"during person detection (frame {start} of {len(indices)})")
        detections.extend(estimator.detect_people(frames))
    scale = (frames.shape[2] / source_hw[1], frames.shape[1] / source_hw[0])  # frame pixels per source pixel, x and y
    boxes, statuses = performer_boxes(detections, scale_choice(person, *scale), fps)
    boxes[boxes[:, 4] <= 0] = fallback_box(*frames.shape[1:3])  # nobody / absent: the official whole-frame box
    counts = {s: statuses.count(s) for s in ("detected", "interpolated", "absent", "nobody")}
    log.info(
        "preprocess: performer (person=%s) detected in %d frames, box interpolated in %d, absent in %d, "
        "nobody detected in %d",
        person.kind if person.kind != "index" else person.index,
        *counts.values(),
    )
    return boxes, statuses


def _fill_absent(poses: list[PoseMeta], present: np.ndarray) -> list[PoseMeta]:
    """Frames without the performer take the nearest frame's pose that has them, marked as not detected there."""
    if present.all() or not present.any():
        return poses
    source = nearest_good(present)
    for i in np.flatnonzero(~present):
        meta = poses[int(source[i])].copy()
        meta.person_box = np.array([0.0, 0.0, meta.width, meta.height, -1.0])
        poses[i] = meta
    return poses


def driving_pass(path: Path, indices: list[int], models: PreprocessModels, resize_area: int | None,
                 keep_edit_frame: bool, log: logging.Logger, person: PersonChoice | None = None,
                 fps: float = 30.0, should_cancel: Callable[[], bool] | None = None,
                 work_hw: tuple[int, int] | None = None, source_hw: tuple[int, int] | None = None,
                 work_dir: Path | None = None) -> DrivingPass:  # fmt: skip
    """Decode, (replacement: resize and keep), estimate poses and crop faces, one chunk at a time (a cancel is
    checked before each chunk).

    The face crops, and in replacement mode the resized frames, go to FrameStores, unnamed files in `work_dir` (the
    system's temporary folder when None), as each chunk is done: 1800 crops are 1.4 GB, 1800 frames of 720p 5.0 GB.

    Frames are reduced as they are decoded: replacement mode to the output size (official resize_by_area), animation
    mode to `work_hw` when it is smaller than `source_hw` (poses are then mapped back to the source's pixels, so the
    skeletons are drawn as for the full-size frames; face crops come from the reduced frames).

    With an estimator that tracks (`_tracks_people`), a first pass detects everyone in every frame and chooses
    the performer (`person`), and the poses are then estimated on that person's box in each frame.
    """
    total = len(indices)
    estimator = models.pose_estimator
    reduced = resize_area is None and work_hw is not None and source_hw is not None and work_hw != source_hw
    transform: Transform | None = None
    if resize_area is not None:
        transform = partial(resize_by_area, area=resize_area)
    elif reduced:
        transform = _shrink_to(work_hw[1], work_hw[0])
    performer = None
    if _tracks_people(estimator):
        info = probe_video(path) if source_hw is None else None
        hw = source_hw if info is None else (info.height, info.width)
        performer = _performer(path, indices, estimator, transform, hw, person or PersonChoice(), fps, log,
                               should_cancel)  # fmt: skip
    poses: list[PoseMeta] = []
    faces = FrameStore(total, (FACE_SIZE, FACE_SIZE, 3), work_dir)
    has_face = np.zeros(total, bool)
    kept: FrameStore | None = None
    edit_frame: np.ndarray | None = None
    frame_hw = (0, 0)
    log.info("preprocess: poses and faces for %d frames started (chunks of %d)", total, POSE_CHUNK)
    began = time.perf_counter()
    for start, frames in _chunks(path, indices, transform):
        check_cancel(should_cancel, f"during pose estimation (frame {start} of {total})")
        if resize_area is not None:
            if kept is None:
                kept = FrameStore(total, frames.shape[1:], work_dir)
            kept[start : start + len(frames)] = frames
        frame_hw = frames.shape[1:3]
        if performer is None:
            metas = estimator(frames)
        else:
            metas = estimator.estimate(frames, performer[0][start : start + len(frames)])
        poses.extend(metas if not reduced else _to_source(metas, frame_hw, source_hw))
        chunk_faces = np.zeros((len(frames), FACE_SIZE, FACE_SIZE, 3), np.uint8)  # (n, 512, 512, 3)
        for j, (frame, meta) in enumerate(zip(frames, metas, strict=True)):
            if performer is not None and performer[1][start + j] == "absent":
                continue  # the performer is not seen here: the nearest face crop is used
            box = face_box(meta, *frame_hw)
            if box is not None:
                chunk_faces[j] = crop_face(frame, box)
                has_face[start + j] = True
        faces[start : start + len(frames)] = chunk_faces
        edit_index = min(1, total - 1)  # official: FLUX edits the second frame
        if keep_edit_frame and start <= edit_index < start + len(frames):
            edit_frame = frames[edit_index - start].copy()
        done = start + len(frames)
        if done == total or (start // POSE_CHUNK) % 8 == 7:  # progress every 256 frames
            eta = (time.perf_counter() - began) / done * (total - done)
            log.info("preprocess: poses and faces for %d of %d frames (about %.0f s left)", done, total, eta)
    if reduced:
        frame_hw = source_hw  # the poses are in the source's pixels
        if keep_edit_frame:  # FLUX edits the frame at the size the poses refer to: decode that one frame again
            edit_frame = read_frames(path, [indices[min(1, total - 1)]])[0]
    present = None
    if performer is not None:
        present = np.array([s != "absent" for s in performer[1]])
        poses = _fill_absent(poses, present)
    poses = fill_invalid_bodies(poses)
    _require_person(poses)
    fill_missing_faces(faces, has_face, log)
    return DrivingPass(poses, faces, kept, edit_frame, (int(frame_hw[0]), int(frame_hw[1])), present)

