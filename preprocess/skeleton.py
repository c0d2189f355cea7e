"""The skeleton image the model reads, drawn exactly as the official `draw_aapose_by_meta_new`.

Official drawing (human_visualization.py, stickwidth_type 'v2', threshold 0.5, hands on, head on):
- stick width s = max(int(min(H, W) / 200) - 1, 1) (2 px at 720p);
- 19 body limbs, each a filled ellipse (cv2.ellipse2Poly + fillConvexPoly) between its two joints,
  half-length int(length / 2), half-width s, angle int(degrees), centre int()-truncated, coloured
  with the limb's colour at 60 % (int(c * 0.6));
- then a filled circle of radius s in the joint's full colour on each of the 20 body joints;
- then both hands, left then right (retargeted poses: see draw_pose): 20 bones as cv2.line of
  thickness max(s // 2, 1) in rainbow HSV colours, and a blue (0, 0, 255) dot of that radius on each hand
  joint; hand points need x > 0.01 and y > 0.01;
- no face landmarks. A point is drawn when its score is >= 0.5.
Colours are RGB (the canvas is an RGB image that the official code writes as RGB video).
"""

from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np

from .pose_meta import PoseMeta

THRESHOLD = 0.5

# 1-based joint pairs (official limbSeq) over the body-20 layout of pose_meta.BODY_NAMES.
LIMBS: tuple[tuple[int, int], ...] = (
    (2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13), (13, 14),
    (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (14, 19), (11, 20),
)  # fmt: skip

# Limb i uses COLORS[i] at 60 %; joint j uses COLORS[j] at full intensity.
COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85), (200, 200, 0), (100, 100, 0),
)  # fmt: skip
LIMB_INTENSITY = 0.6

HAND_BONES: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
    (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
)  # fmt: skip  # wrist (0) to each finger tip
# Bone i: HSV hue i/20, full saturation and value, x255, as floats: cv2 rounds them (half to even).
HAND_BONE_COLORS: tuple[tuple[float, float, float], ...] = tuple(
    tuple(float(c) * 255 for c in colorsys.hsv_to_rgb(i / len(HAND_BONES), 1.0, 1.0)) for i in range(len(HAND_BONES))
)
HAND_POINT_COLOR = (0, 0, 255)
HAND_EPS = 0.01


def stick_width(height: int, width: int) -> int:
    """Official 'v2' body stick width: max(int(min(H, W) / 200) - 1, 1)."""
    return max(int(min(height, width) / 200) - 1, 1)


def hand_stick_width(height: int, width: int) -> int:
    """Official 'v2' hand line width and dot radius: max(body width // 2, 1)."""
    return max(stick_width(height, width) // 2, 1)


def draw_limb(canvas: np.ndarray, p1: np.ndarray, p2: np.ndarray, color: tuple[int, int, int], width: int) -> None:
    """One filled ellipse from p1 to p2 (x, y in pixels), official geometry and integer truncations."""
    mean_x = (float(p1[0]) + float(p2[0])) / 2
    mean_y = (float(p1[1]) + float(p2[1])) / 2
    length = math.hypot(float(p1[0]) - float(p2[0]), float(p1[1]) - float(p2[1]))
    angle = math.degrees(math.atan2(float(p1[1]) - float(p2[1]), float(p1[0]) - float(p2[0])))
    polygon = cv2.ellipse2Poly((int(mean_x), int(mean_y)), (int(length / 2), width), int(angle), 0, 360, 1)
    cv2.fillConvexPoly(canvas, polygon, [int(float(c) * LIMB_INTENSITY) for c in color])


def draw_hand(canvas: np.ndarray, hand: np.ndarray, threshold: float = THRESHOLD) -> None:
    """21 hand points (x, y, score): rainbow bones, then blue joint dots (official draw_handpose_new)."""
    width = hand_stick_width(*canvas.shape[:2])
    for (a, b), color in zip(HAND_BONES, HAND_BONE_COLORS, strict=True):
        k1, k2 = hand[a], hand[b]
        if k1[2] < threshold or k2[2] < threshold:
            continue
        x1, y1, x2, y2 = int(k1[0]), int(k1[1]), int(k2[0]), int(k2[1])
        if x1 > HAND_EPS and y1 > HAND_EPS and x2 > HAND_EPS and y2 > HAND_EPS:
            cv2.line(canvas, (x1, y1), (x2, y2), color, thickness=width)
    for point in hand:
        if point[2] < threshold:
            continue
        x, y = int(point[0]), int(point[1])
        if x > HAND_EPS and y > HAND_EPS:
            cv2.circle(canvas, (x, y), width, HAND_POINT_COLOR, thickness=-1)


def draw_pose(canvas: np.ndarray, meta: PoseMeta, threshold: float = THRESHOLD, draw_hands: bool = True,
              right_hand_first: bool = False) -> np.ndarray:  # fmt: skip
    """Draw one pose on an (H, W, 3) uint8 RGB canvas in place (and return it); coordinates in its pixels.

    Hands are drawn left then right, so the right one is on top where they overlap (official for detected
    poses). `right_hand_first` reverses that: the official retargeting stores the hand on the right wrist
    under its "left" label, so retargeted skeletons are painted right hand first.
    """
    width = stick_width(*canvas.shape[:2])
    body = meta.body
    for (a, b), color in zip(LIMBS, COLORS, strict=False):  # 19 limbs use the first 19 colours
        k1, k2 = body[a - 1], body[b - 1]
        if k1[2] < threshold or k2[2] < threshold:
            continue
        draw_limb(canvas, k1, k2, color, width)
    for point, color in zip(body, COLORS, strict=True):
        if point[2] < threshold:
            continue
        cv2.circle(canvas, (int(point[0]), int(point[1])), width, color, thickness=-1)
    if draw_hands:
        hands = (meta.right_hand, meta.left_hand) if right_hand_first else (meta.left_hand, meta.right_hand)
        for hand in hands:
            draw_hand(canvas, hand, threshold)
    return canvas


def render_pose(meta: PoseMeta, height: int | None = None, width: int | None = None, right_hand_first: bool = False
                ) -> np.ndarray:  # fmt: skip
    """A new black (H, W, 3) uint8 canvas with the pose drawn; size defaults to the pose's image size."""
    canvas = np.zeros((height or meta.height, width or meta.width, 3), np.uint8)
    return draw_pose(canvas, meta, right_hand_first=right_hand_first)
