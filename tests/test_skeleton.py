"""skeleton: the official drawing rules checked pixel by pixel on hand-placed keypoints."""

from __future__ import annotations

import numpy as np
from wan_animate.preprocess import skeleton as S
from wan_animate.preprocess.pose_meta import PoseMeta

NECK, R_SHOULDER, R_ELBOW, NOSE = 1, 2, 3, 0


def _pose(points: dict[int, tuple[float, float, float]], width=1280, height=720) -> PoseMeta:
    meta = PoseMeta.empty(width, height)
    for index, (x, y, score) in points.items():
        meta.body[index] = (x, y, score)
    return meta


def test_stick_widths():
    assert S.stick_width(720, 1280) == 2  # int(3.6) - 1
    assert S.stick_width(480, 832) == 1  # int(2.4) - 1
    assert S.stick_width(1080, 1920) == 4  # int(5.4) - 1
    assert S.stick_width(100, 100) == 1  # never under 1
    assert S.hand_stick_width(720, 1280) == 1 and S.hand_stick_width(1080, 1920) == 2


def test_single_limb_colour_and_extent():
    # neck (100, 100) -> right shoulder (200, 100): limb 0, colour (255, 0, 0) at 60 % = (153, 0, 0)
    img = S.render_pose(_pose({NECK: (100, 100, 1.0), R_SHOULDER: (200, 100, 1.0)}))
    assert img.shape == (720, 1280, 3) and img.dtype == np.uint8
    assert img[100, 150].tolist() == [153, 0, 0]  # the midpoint
    assert img[100, 190].tolist() == [153, 0, 0]  # along the limb
    assert img[100, 100].tolist() == [255, 85, 0]  # joint circle: joint 1 colour, full intensity
    assert img[100, 200].tolist() == [255, 170, 0]  # joint 2 colour
    assert img[110, 150].tolist() == [0, 0, 0]  # 10 px off the limb: half-width is 2
    assert img[300:, :].max() == 0 and img[:, 300:].max() == 0  # nothing far away
    ys, xs = np.nonzero(img.any(axis=2))
    assert ys.min() >= 97 and ys.max() <= 103 and xs.min() >= 97 and xs.max() <= 203


def test_diagonal_limb_midpoint():
    # right shoulder (200, 100) -> right elbow (260, 180): limb 2, colour (255, 170, 0) -> (153, 102, 0)
    img = S.render_pose(_pose({R_SHOULDER: (200, 100, 0.9), R_ELBOW: (260, 180, 0.9)}))
    assert img[140, 230].tolist() == [153, 102, 0]
    assert img[100, 260].tolist() == [0, 0, 0]  # a corner of the bounding box, off the limb


def test_threshold():
    below = S.render_pose(_pose({NECK: (100, 100, 1.0), R_SHOULDER: (200, 100, 0.49)}))
    assert below[100, 150].tolist() == [0, 0, 0]  # limb not drawn
    assert below[100, 200].tolist() == [0, 0, 0]  # joint under threshold not drawn
    assert below[100, 100].tolist() == [255, 85, 0]  # the confident joint still is
    at = S.render_pose(_pose({NECK: (100, 100, 1.0), R_SHOULDER: (200, 100, 0.5)}))
    assert at[100, 150].tolist() == [153, 0, 0]  # score 0.5 is drawn (>= threshold)


def test_hands_drawn_and_face_not():
    meta = _pose({})
    meta.left_hand[0] = (300, 300, 0.9)  # wrist
    meta.left_hand[1] = (300, 340, 0.9)  # bone 0 (hue 0: red), 1 px wide at 720p
    meta.right_hand[5] = (0, 400, 0.9)  # x = 0: not drawn (official x > 0.01 rule)
    meta.face[:] = (640, 360, 1.0)  # face landmarks are never drawn
    img = S.render_pose(meta)
    assert img[320, 300].tolist() == [255, 0, 0]  # the bone's middle
    assert img[300, 300].tolist() == [0, 0, 255]  # joint dot: blue
    assert img[340, 300].tolist() == [0, 0, 255]
    assert img[400, 0:3].max() == 0
    assert img[355:366, 635:646].max() == 0
    meta.left_hand[:, 2] = 0.3  # hands under threshold: nothing at all
    assert S.render_pose(meta).max() == 0


def _crossing_hands() -> PoseMeta:
    """Left hand bone 0 (red) vertical through (300, 320); right hand bone 4 (hue 0.2) horizontal through it."""
    meta = _pose({})
    meta.left_hand[0], meta.left_hand[1] = (300, 300, 0.9), (300, 340, 0.9)
    meta.right_hand[0], meta.right_hand[5] = (280, 320, 0.9), (320, 320, 0.9)
    return meta


def test_overlapping_hands_paint_order():
    red, hue_02 = [255, 0, 0], [204, 255, 0]  # bone 0, bone 4: hsv(0.2, 1, 1) * 255
    assert S.render_pose(_crossing_hands())[320, 300].tolist() == hue_02  # default: right hand on top
    flipped = S.render_pose(_crossing_hands(), right_hand_first=True)
    assert flipped[320, 300].tolist() == red  # right hand first: the left hand is painted over it
    assert flipped[320, 290].tolist() == hue_02 and flipped[310, 300].tolist() == red  # both still drawn


def test_limbs_then_joints_order_and_canvas_in_place():
    canvas = np.zeros((720, 1280, 3), np.uint8)
    out = S.draw_pose(canvas, _pose({NOSE: (50, 50, 1.0), NECK: (50, 150, 1.0)}))
    assert out is canvas
    # limb 12 (neck -> nose) colour (0, 0, 255) at 60 %; the nose joint's circle on top in full colour 0
    assert canvas[100, 50].tolist() == [0, 0, 153]
    assert canvas[50, 50].tolist() == [255, 0, 0]
