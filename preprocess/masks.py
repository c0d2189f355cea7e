"""Replacement mode: the driving person's mask per frame (SAM2 video), refined, and the background frames.

Official flow (process_pipepline.py `get_mask`, utils.py `get_mask_body_img`/`get_aug_mask`): SAM2 hiera-large
segments the resized driving frames in chunks of 400, prompted on a few key frames per chunk with positive
clicks at 8 body keypoints; each mask is dilated (`iterations` x a `k` x `k` square kernel), turned into
filled grid cells over its bounding box, and the background is the frame with the mask zeroed.

Modules: mask_prompts.py (key frames and clicks), sam2_video.py (the segmenter), sam2_checkpoint.py (its weights);
here the per-frame masks with their fallbacks, their refinement and the background frames.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import cv2
import numpy as np

from ..errors import InputError, check_cancel
from .frame_store import Frames, FrameStore
from .frame_threads import map_frames
from .mask_prompts import CLICK_MIN_SCORE, chunk_clicks
from .pose_meta import PoseMeta
from .sam2_video import VideoSegmenter

logger = logging.getLogger("wan_animate.preprocess.masks")

OFFICIAL_CHUNK = 400  # frames per SAM2 session (official th_step)
BOX_MARGIN = 0.1  # keypoint fallback box grows by this fraction of its size on each side


# ---------------------------------------------------------------------------------------------------
# person masks


def keypoint_box_mask(pose: PoseMeta, height: int, width: int) -> np.ndarray:
    """(H, W) bool box: the detector's person box when it found one, else the confident body points'
    bounding box grown by BOX_MARGIN per side. All False when the pose has neither."""
    mask = np.zeros((height, width), bool)
    box = pose.person_box
    if box is not None and float(box[4]) > 0:
        x1, y1, x2, y2 = (float(v) for v in box[:4])
    else:
        points = pose.body[pose.body[:, 2] >= CLICK_MIN_SCORE, :2]
        if len(points) == 0:
            return mask
        (x1, y1), (x2, y2) = points.min(axis=0), points.max(axis=0)
        grow_x, grow_y = BOX_MARGIN * (x2 - x1), BOX_MARGIN * (y2 - y1)
        x1, x2, y1, y2 = x1 - grow_x, x2 + grow_x, y1 - grow_y, y2 + grow_y
    left, top = max(int(math.floor(x1)), 0), max(int(math.floor(y1)), 0)
    right, bottom = min(int(math.ceil(x2)), width - 1), min(int(math.ceil(y2)), height - 1)
    if right >= left and bottom >= top:
        mask[top : bottom + 1, left : right + 1] = True
    return mask


def nearest_filled(filled: np.ndarray) -> np.ndarray:
    """(T,) index of the nearest True entry for every position (ties: the earlier one). `filled` needs a True."""
    indices = np.flatnonzero(filled)
    positions = np.arange(len(filled))
    after = np.clip(np.searchsorted(indices, positions), 0, len(indices) - 1)
    before = np.clip(after - 1, 0, len(indices) - 1)
    take_before = np.abs(positions - indices[before]) <= np.abs(indices[after] - positions)
    return np.where(take_before, indices[before], indices[after])


def _ranges(indices: np.ndarray) -> str:
    """[3, 4, 5, 9] -> '3-5, 9' (for log lines)."""
    parts, start = [], None
    for i, value in enumerate(indices):
        if start is None:
            start = value
        if i + 1 == len(indices) or indices[i + 1] != value + 1:
            parts.append(f"{start}" if start == value else f"{start}-{value}")
            start = None
    return ", ".join(parts)


def person_masks(frames: Frames, poses: list[PoseMeta], segmenter: VideoSegmenter,
                 chunk_size: int = OFFICIAL_CHUNK, log: logging.Logger = logger,
                 should_cancel: Callable[[], bool] | None = None, out: Frames | None = None) -> Frames:  # fmt: skip
    """(T, H, W) uint8 {0, 1} masks of the driving person, SAM2 in chunks as official.

    `frames` (T, H, W, 3) uint8 is read one SAM2 chunk at a time; the masks are written into `out` ((T, H, W) uint8
    zeros: a FrameStore keeps them on disk) or a new array. should_cancel() is asked before each chunk (True raises
    errors.Cancelled): a chunk of 400 frames takes minutes.

    Frames where SAM2 finds nothing take the nearest frame's SAM2 mask; if SAM2 found nothing anywhere,
    a box from each frame's pose (detector box, else confident keypoints), spread to frames without one.
    Raises InputError("cannot_mask_person") when no frame can be masked at all.
    """
    count, height, width = frames.shape[:3]
    if len(poses) != count:
        raise ValueError(f"{len(poses)} poses for {count} frames")
    masks = np.zeros((count, height, width), np.uint8) if out is None else out
    if masks.shape != (count, height, width) or masks.dtype != np.uint8:
        raise ValueError(f"masks {masks.shape} {masks.dtype} for frames {frames.shape}: need uint8 (T, H, W)")
    found = np.zeros(count, bool)
    chunks = math.ceil(count / chunk_size)
    began = time.perf_counter()
    for index, start in enumerate(range(0, count, chunk_size)):
        check_cancel(should_cancel, f"during the person masks (SAM2 chunk {index + 1}/{chunks})")
        eta = (time.perf_counter() - began) / index * (chunks - index) if index else None
        log.info("masks: SAM2 chunk %d/%d (frames %d-%d) started%s", index + 1, chunks, start,
                 min(start + chunk_size, count) - 1, f", about {eta:.0f} s left" if eta is not None else "")  # fmt: skip
        chunk_poses = poses[start : start + chunk_size]
        clicks = chunk_clicks(chunk_poses, height, width)
        if not clicks:
            log.warning("masks: no confident body point in frames %d-%d; nothing to prompt SAM2 with",
                        start, start + len(chunk_poses) - 1)  # fmt: skip
            continue
        stop = start + len(chunk_poses)
        # a FrameStore's chunk goes as a view: the segmenter reads its frames a few at a time
        chunk = frames.span(start, stop) if isinstance(frames, FrameStore) else frames[start:stop]
        chunk_masks = segmenter.segment(chunk, clicks).astype(bool)
        masks[start:stop] = chunk_masks
        found[start:stop] = chunk_masks.reshape(len(chunk_masks), -1).any(axis=1)
        del chunk, chunk_masks
    if found.all():
        return masks
    if found.any():
        empty = np.flatnonzero(~found)
        log.warning("masks: SAM2 found no person in %d frame(s) (%s); using the nearest frame's mask",
                    len(empty), _ranges(empty))  # fmt: skip
        return _fill_from_nearest(masks, found)
    for index, pose in enumerate(poses):
        box = keypoint_box_mask(pose, height, width)
        masks[index] = box
        found[index] = box.any()
    if not found.any():
        raise InputError(
            "cannot_mask_person", "driving_video",
            "the person to replace could not be located in any frame (no segmentation and no confident body "
            "keypoints). Use a video in which one person is clearly visible, or use mode=animation.",
        )  # fmt: skip
    log.warning("masks: SAM2 found no person in any frame; using pose boxes (%d of %d frames have one)",
                int(found.sum()), count)  # fmt: skip
    return _fill_from_nearest(masks, found)


def _fill_from_nearest(masks: Frames, found: np.ndarray) -> Frames:
    """`masks` with each frame not `found` replaced, in place, by the nearest found frame's mask (no full copy:
    the sources are found frames, which are never overwritten, so this equals masks[nearest_filled(found)])."""
    source = nearest_filled(found)
    for index in np.flatnonzero(~found):
        masks[index] = masks[source[index]]
    return masks


# ---------------------------------------------------------------------------------------------------
# refinement and background


def grid_fill(mask: np.ndarray, w_subdivisions: int, h_subdivisions: int) -> np.ndarray:
    """(H, W) {0,1}: the mask's bounding box cut into w x h cells; every cell holding mask is filled.

    Deliberate differences from the official get_aug_mask: the box includes its last row and column
    (official ranges stop one short, so 1x1 left them unfilled), there are exactly w x h cells with
    integer edges floor(i * size / n) (official steps by int(size / n), which can give an extra thin
    cell and crashes when the box is narrower than n), and an empty mask is returned as is (official
    crashes).
    """
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return mask.copy()
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = mask[top:bottom, left:right].astype(bool)
    box_h, box_w = crop.shape
    starts_y = np.unique((np.arange(h_subdivisions) * box_h) // h_subdivisions)  # zero-height cells dropped
    starts_x = np.unique((np.arange(w_subdivisions) * box_w) // w_subdivisions)
    cells = np.logical_or.reduceat(np.logical_or.reduceat(crop, starts_y, axis=0), starts_x, axis=1)
    sizes_y = np.diff(np.append(starts_y, box_h))
    sizes_x = np.diff(np.append(starts_x, box_w))
    out = mask.copy()
    out[top:bottom, left:right] = np.repeat(np.repeat(cells, sizes_y, axis=0), sizes_x, axis=1)
    return out


def refine_masks(masks: Frames, iterations: int, kernel_size: int, w_subdivisions: int, h_subdivisions: int
                 ) -> Frames:  # fmt: skip
    """`masks`, (T, H, W) uint8 (an array or a FrameStore), refined IN PLACE and returned: dilated `iterations`
    times by a kernel_size x kernel_size square, then grid-filled, as {0, 1}.

    iterations 0 leaves the masks as they are (official: no dilation and no grid then), only made binary (the
    official code round-trips them through H.264 and never re-binarises). In place, frame by frame: 1800 masks at
    1280x720 are 1.7 GB, and no second copy is made.
    """
    if masks.dtype != np.uint8:
        raise ValueError(f"masks must be uint8, not {masks.dtype}")
    if iterations > 0 and (kernel_size < 1 or w_subdivisions < 1 or h_subdivisions < 1):
        raise ValueError("kernel_size and subdivisions must be >= 1")
    kernel = np.ones((kernel_size, kernel_size), np.uint8) if iterations > 0 else None

    def refine(index: int) -> None:  # frames side by side: each reads and writes only its own slice
        binary = (masks[index] > 0).astype(np.uint8)
        if iterations > 0:
            binary = grid_fill(cv2.dilate(binary, kernel, iterations=iterations), w_subdivisions, h_subdivisions)
        masks[index] = binary

    map_frames(refine, range(len(masks)))
    return masks


def remove_person(frames: Frames, masks: Frames) -> Frames:
    """`frames`, (T, H, W, 3) uint8 (an array or a FrameStore), made the background IN PLACE and returned: the
    masked pixels set to 0 (official). In place, frame by frame: the pipeline needs the frames no more, and 1800 of
    them at 1280x720 are 5.0 GB."""
    if frames.shape[:3] != masks.shape:
        raise ValueError(f"frames {frames.shape} and masks {masks.shape} differ in size")

    def zero(index: int) -> None:  # read, zero, write back: a FrameStore's frames are copies
        frame = frames[index]
        frame[masks[index] != 0] = 0
        frames[index] = frame

    map_frames(zero, range(len(frames)))
    return frames
