"""Face crops for the motion encoder: the official box rule around the 68 face landmarks, stretched to 512x512.

Official rule (`get_face_bboxes`, the second definition in utils.py, which is the one in effect): the
box around the 68 landmarks, its area grown x1.3 at the same aspect; of the extra height 3/4 goes up
and 1/4 down (of the extra width half each side); clipped to the image; each side int()-truncated.
The crop is resized (stretched, not letterboxed) to 512x512 with cv2's default bilinear filter.

Our addition: the official code crops wherever the landmarks are, whatever their confidence, and
crashes on a degenerate box. Here a frame whose face is not usable (mean landmark score under
FACE_MIN_SCORE, or an empty/degenerate box) takes the crop of the nearest frame that has one, with a
warning naming the frames; a video with no usable face at all is an InputError.
"""

from __future__ import annotations

import logging
import math

import cv2
import numpy as np

from ..errors import InputError
from .frame_store import Frames
from .pose_meta import PoseMeta

logger = logging.getLogger(__name__)

FACE_SIZE = 512
FACE_AREA_SCALE = 1.3
FACE_MIN_SCORE = 0.3  # ours, not official: mean score of the 68 landmarks below this = no usable face
MIN_FACE_SIDE = 2  # pixels: a landmark box narrower or shorter than this is degenerate


def expand_face_box(min_x: float, min_y: float, max_x: float, max_y: float, height: int, width: int
                    ) -> tuple[int, int, int, int] | None:  # fmt: skip
    """The official growth of a tight face box -> (x1, y1, x2, y2) ints, or None when degenerate.

    (The official function returns the same numbers in the order x1, x2, y1, y2.)
    """
    init_w = max_x - min_x
    init_h = max_y - min_y
    if not (math.isfinite(init_w) and math.isfinite(init_h)) or init_w < MIN_FACE_SIDE or init_h < MIN_FACE_SIDE:
        return None
    area = init_w * init_h * FACE_AREA_SCALE
    new_w = math.sqrt(area * (init_w / init_h))
    new_h = math.sqrt(area * (init_h / init_w))
    delta_w = (new_w - init_w) / 2
    delta_h = (new_h - init_h) / 4
    x1 = int(max(min_x - delta_w, 0))
    x2 = int(min(max_x + delta_w, width))
    y1 = int(max(min_y - 3 * delta_h, 0))
    y2 = int(min(max_y + delta_h, height))
    if x2 - x1 < 1 or y2 - y1 < 1:  # landmarks outside the image: nothing to crop
        return None
    return x1, y1, x2, y2


def face_box(meta: PoseMeta, height: int, width: int, min_score: float = FACE_MIN_SCORE
             ) -> tuple[int, int, int, int] | None:  # fmt: skip
    """(x1, y1, x2, y2) of the face crop for one pose, or None when the face is not usable.

    Uses the 68 landmarks (all of them, as official); a pose with a `face_box` (smoke backend only,
    no landmarks) uses that tight box instead, grown by the same rule.
    """
    if meta.face_box is not None:
        x0, y0, x1, y1, score = (float(v) for v in meta.face_box)
    else:
        pts = meta.face[:, :2].astype(np.float64)
        score = float(meta.face[:, 2].mean())
        x0, y0 = pts.min(axis=0)
        x1, y1 = pts.max(axis=0)
    if not score >= min_score:
        return None
    return expand_face_box(x0, y0, x1, y1, height, width)


def crop_face(frame: np.ndarray, box: tuple[int, int, int, int], size: int = FACE_SIZE) -> np.ndarray:
    """(H, W, 3) frame -> (size, size, 3) crop of box x1, y1, x2, y2, stretched (official cv2 default filter)."""
    x1, y1, x2, y2 = box
    return cv2.resize(frame[y1:y2, x1:x2], (size, size))


def _ranges(indices: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7' for log messages."""
    parts: list[str] = []
    start = prev = None
    for i in indices:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            parts.append(f"{start}-{prev}" if prev != start else str(start))
            start = prev = i
    if start is not None:
        parts.append(f"{start}-{prev}" if prev != start else str(start))
    return ", ".join(parts)


def nearest_good(ok: np.ndarray) -> np.ndarray:
    """For each index, the nearest index where `ok` is True (the earlier one on ties)."""
    good = np.flatnonzero(ok)
    if len(good) == 0:
        raise ValueError("no good index")
    idx = np.arange(len(ok))
    pos = np.clip(np.searchsorted(good, idx), 0, len(good) - 1)
    before = good[np.clip(pos - 1, 0, len(good) - 1)]
    after = good[pos]
    return np.where(np.abs(idx - before) <= np.abs(after - idx), before, after)


def fill_missing_faces(crops: Frames, ok: np.ndarray, log: logging.Logger = logger, first_frame: int = 0
                       ) -> Frames:  # fmt: skip
    """Give frames without a usable face the crop of the nearest frame with one (in place, frame by frame; returns
    crops).

    crops (T, 512, 512, 3) uint8, an array or a FrameStore; ok (T,) bool. Raises InputError(no_face_in_video) when
    no frame has a face.
    """
    if not ok.any():
        raise InputError(
            "no_face_in_video", "driving_video",
            "no usable face was found in any frame. Use a video where the person's face is visible "
            "(facing the camera, lit, not too small).",
        )  # fmt: skip
    if ok.all():
        return crops
    missing = [int(i) for i in np.flatnonzero(~ok)]
    log.warning("no usable face in %d of %d output frames (%s): using the nearest frame's face crop",
                len(missing), len(ok), _ranges([i + first_frame for i in missing]))  # fmt: skip
    source = nearest_good(ok)
    for i in missing:
        crops[i] = crops[source[i]]
    return crops


def face_crops(frames: np.ndarray, metas: list[PoseMeta], log: logging.Logger = logger) -> np.ndarray:
    """(T, H, W, 3) frames + their poses -> (T, 512, 512, 3) uint8 face crops (missing faces carried)."""
    height, width = frames.shape[1:3]
    crops = np.zeros((len(frames), FACE_SIZE, FACE_SIZE, 3), np.uint8)
    ok = np.zeros(len(frames), bool)
    for i, (frame, meta) in enumerate(zip(frames, metas, strict=True)):
        box = face_box(meta, height, width)
        if box is not None:
            crops[i] = crop_face(frame, box)
            ok[i] = True
    return fill_missing_faces(crops, ok, log)
