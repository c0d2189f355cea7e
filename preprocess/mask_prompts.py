"""What SAM2 is prompted with: the official key frames of a chunk and positive clicks at confident body points."""

from __future__ import annotations

import numpy as np

from .pose_meta import PoseMeta

CLICK_POINTS = (0, 1, 2, 5, 8, 11, 10, 13)  # nose, neck, shoulders, hips, ankles (official order)
CLICK_MIN_SCORE = 0.5  # deliberate: the official code clicks every point, however unsure (see click_points)


def key_frames(count: int) -> list[int]:
    """Prompted frames of a chunk, exactly the official rule: step = count // (4 if count > 4 else 1).

    So 400 frames -> 0, 100, 200, 300; but 10 frames -> 0, 2, 4, 6, 8 and 7 frames -> all 7 (the official
    range() gives more than 4 when count is not a multiple of 4).
    """
    if count <= 0:
        return []
    step = count // (4 if count > 4 else 1)
    return list(range(0, count, step))


def click_points(pose: PoseMeta, height: int, width: int, min_score: float = CLICK_MIN_SCORE) -> np.ndarray:
    """(K, 2) int32 pixel clicks at the official 8 body points that are confident and inside the frame.

    Deliberate: the official code clicks all 8 points whatever their score; a low-score point is a guess
    (often on the background, e.g. an ankle outside the frame), and a positive click there makes SAM2
    segment the background too. Coordinates are int()-truncated as official.
    """
    points = pose.body[list(CLICK_POINTS)]
    keep = (points[:, 2] >= min_score) & (points[:, 0] >= 0) & (points[:, 1] >= 0)
    keep &= (points[:, 0] < width) & (points[:, 1] < height)
    return points[keep, :2].astype(np.int32)


def chunk_clicks(poses: list[PoseMeta], height: int, width: int) -> dict[int, np.ndarray]:
    """Clicks for one chunk: the official key frames that have confident points; if none has any, the
    first frame of the chunk that does (the official code would click uncertain points). Empty if none."""
    clicks = {k: pts for k in key_frames(len(poses)) if len(pts := click_points(poses[k], height, width))}
    if clicks:
        return clicks
    for index, pose in enumerate(poses):
        points = click_points(pose, height, width)
        if len(points):
            return {index: points}
    return {}
