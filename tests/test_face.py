"""face: the official face box rule on hand-built landmarks, 512x512 crops, frames without a usable face."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from wan_animate.errors import InputError
from wan_animate.preprocess import face as F
from wan_animate.preprocess.pose_meta import PoseMeta


def _meta_with_face(x0, y0, x1, y1, score=0.9, width=640, height=480) -> PoseMeta:
    """68 landmarks spread over the rectangle (x0, y0)-(x1, y1), its corners included."""
    meta = PoseMeta.empty(width, height)
    xs = np.linspace(x0, x1, 68)
    ys = np.concatenate([np.linspace(y0, y1, 34), np.linspace(y1, y0, 34)])
    meta.face = np.stack([xs, ys, np.full(68, score)], axis=1).astype(np.float32)
    return meta


def test_face_box_exact_values():
    # landmarks span x 100..140 (w 40), y 200..250 (h 50); area x1.3 at the same aspect:
    # new_w = sqrt(2600 * 0.8) = 45.6070, new_h = sqrt(2600 * 1.25) = 57.0088
    # dw = (45.6070 - 40) / 2 = 2.8035; dh = (57.0088 - 50) / 4 = 1.7522
    # x1 = int(97.196) = 97, x2 = int(142.804) = 142, y1 = int(200 - 3 * 1.7522) = int(194.74) = 194,
    # y2 = int(251.75) = 251
    assert F.face_box(_meta_with_face(100, 200, 140, 250), 480, 640) == (97, 194, 142, 251)


def test_face_box_clipped_to_image():
    # near the top-left corner: x 2..42, y 3..53 -> x1 = max(2 - 2.8, 0) = 0, y1 = max(3 - 5.26, 0) = 0
    assert F.face_box(_meta_with_face(2, 3, 42, 53), 480, 640)[:2] == (0, 0)
    # image only 44 px wide: x2 = min(42 + 2.8035, 44) = 44
    assert F.face_box(_meta_with_face(2, 3, 42, 53, width=44), 480, 44)[2] == 44


def test_unusable_faces():
    assert F.face_box(_meta_with_face(100, 200, 140, 250, score=0.29), 480, 640) is None  # low confidence
    assert F.face_box(_meta_with_face(100, 200, 100.5, 250), 480, 640) is None  # degenerate (0.5 px wide)
    assert F.face_box(_meta_with_face(700, 200, 740, 250), 480, 640) is None  # outside the frame


def test_face_box_override_for_smoke_poses():
    meta = PoseMeta.empty(640, 480)  # no landmarks at all
    meta.face_box = np.array([100, 200, 140, 250, 0.8])
    assert F.face_box(meta, 480, 640) == (97, 194, 142, 251)  # same growth rule as from landmarks


def test_crop_face_stretches_to_512():
    frame = np.zeros((100, 100, 3), np.uint8)
    frame[10:90, 20:40] = (255, 0, 0)  # a 20 wide x 80 tall box: left half red, right half blue
    frame[10:90, 40:60] = (0, 0, 255)
    crop = F.crop_face(frame, (20, 10, 60, 90))
    assert crop.shape == (512, 512, 3)
    assert crop[256, 100].tolist() == [255, 0, 0] and crop[256, 400].tolist() == [0, 0, 255]
    assert crop[5, 5].tolist() == [255, 0, 0]  # no bars: stretched to fill the square


def test_nearest_good():
    ok = np.array([False, True, False, False, True, False])
    # 0 -> 1; 2 -> 1 (distance 1 vs 2); 3 -> 4; 5 -> 4
    assert F.nearest_good(ok).tolist() == [1, 1, 1, 4, 4, 4]
    assert F.nearest_good(np.array([True, False, True])).tolist() == [0, 0, 2]  # tie: the earlier


def test_face_crops_carry_nearest_and_warn(caplog):
    frames = np.zeros((4, 480, 640, 3), np.uint8)
    for i in range(4):
        frames[i, 180:260, 80:160] = 50 * (i + 1)  # each frame's face region has its own grey level
    metas = [_meta_with_face(100, 200, 140, 250) for _ in range(4)]
    metas[0].face[:, 2] = 0.1  # frames 0 and 2: no usable face
    metas[2].face[:, 2] = 0.0
    with caplog.at_level(logging.WARNING):
        crops = F.face_crops(frames, metas)
    assert crops.shape == (4, 512, 512, 3) and crops.dtype == np.uint8
    assert [int(c[256, 256, 0]) for c in crops] == [100, 100, 100, 200]  # 0 <- 1; 2 <- 1 (tie with 3: the earlier)
    assert "2 of 4 output frames (0, 2)" in caplog.text


def test_no_face_anywhere_is_an_input_error():
    frames = np.zeros((2, 480, 640, 3), np.uint8)
    metas = [_meta_with_face(100, 200, 140, 250, score=0.0) for _ in range(2)]
    with pytest.raises(InputError) as err:
        F.face_crops(frames, metas)
    assert (err.value.code, err.value.field) == ("no_face_in_video", "driving_video")
