"""skeleton_video: frames drawn on demand are byte for byte the eager drawing (both ways, with and without a crop),
on poses the smoke pose path finds in the real fixture; indexing, iteration and the pipeline's use."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import fixture_path
from wan_animate.preprocess import PreprocessModels, PreprocessOptions, preprocess
from wan_animate.preprocess import skeleton_video as SV
from wan_animate.preprocess import video_decode as vdec
from wan_animate.preprocess import video_io as vio
from wan_animate.preprocess.skeleton import render_pose

VIDEO = "driving_two_people_3s_small.mp4"  # 884x498, 30 fps, 90 frames
CANVAS_HW, OUT_HW = (498, 884), (256, 224)


def eager_direct(poses, out_hw, right_hand_first=False) -> np.ndarray:
    """What the pipeline's eager `_draw` gave: each pose on a black canvas of the output size."""
    return np.stack([render_pose(m, *out_hw, right_hand_first=right_hand_first) for m in poses])


def eager_letterboxed(poses, canvas_hw, out_hw) -> np.ndarray:
    """What the pipeline's eager `_draw_letterboxed` gave: drawn at the video's size, letterboxed bilinear."""
    return np.stack([vio.letterbox(render_pose(m, *canvas_hw), *out_hw, interpolation=cv2.INTER_LINEAR)
                     for m in poses])  # fmt: skip


@pytest.fixture(scope="module")
def poses():
    from wan_animate.preprocess.smoke_models import smoke_pose_estimator

    frames = vdec.read_frames(fixture_path(VIDEO), vio.frame_indices_for_fps(90, 30.0, 5))  # 15 frames
    found = smoke_pose_estimator()(frames)
    assert sum(p.has_person for p in found) >= 5
    return found


@pytest.mark.parametrize("way", ["direct", "right_hand_first", "letterboxed"])
@pytest.mark.parametrize("crop", [False, True])
def test_drawn_on_demand_equals_the_eager_drawing(poses, way, crop):
    if way == "letterboxed":
        video = SV.SkeletonVideo(poses, OUT_HW, canvas_hw=CANVAS_HW)
        expected = eager_letterboxed(poses, CANVAS_HW, OUT_HW)
    else:
        video = SV.SkeletonVideo(poses, CANVAS_HW, right_hand_first=way == "right_hand_first")
        expected = eager_direct(poses, CANVAS_HW, right_hand_first=way == "right_hand_first")
    if crop:  # an off-centre box around the middle: rows from 1/4 down, columns from 1/5 across
        full_h, full_w = expected.shape[1:3]
        top, left, height, width = full_h // 4, full_w // 5, full_h // 2, full_w * 3 // 5
        video = video.cropped(top, left, height, width)
        expected = expected[:, top : top + height, left : left + width]
    assert expected.max() > 0  # something is drawn
    assert video.shape == expected.shape and video.ndim == 4 and video.dtype == np.uint8 and len(video) == 15
    np.testing.assert_array_equal(np.asarray(video), expected)
    np.testing.assert_array_equal(video[:], expected)
    np.testing.assert_array_equal(video[3:11:2], expected[3:11:2])
    np.testing.assert_array_equal(video[[4, 0, 4, 14]], expected[[4, 0, 4, 14]])
    np.testing.assert_array_equal(video[np.array([2, -1])], expected[[2, -1]])
    np.testing.assert_array_equal(video[7], expected[7])
    np.testing.assert_array_equal(video[-2], expected[-2])
    np.testing.assert_array_equal(video[:, ::8, ::8], expected[:, ::8, ::8])
    np.testing.assert_array_equal(video[5, 20:40], expected[5, 20:40])
    np.testing.assert_array_equal(np.stack(list(video)), expected)
    assert video[[]].shape == (0, *expected.shape[1:])


def test_crop_of_a_crop_and_bad_indices(poses):
    video = SV.SkeletonVideo(poses, CANVAS_HW)
    twice = video.cropped(20, 30, 400, 600).cropped(5, 7, 100, 200)
    np.testing.assert_array_equal(twice[:3], eager_direct(poses[:3], CANVAS_HW)[:, 25:125, 37:237])
    with pytest.raises(ValueError):
        video.cropped(0, 0, 499, 884)  # taller than the frames
    with pytest.raises(IndexError):
        video[15]
    with pytest.raises(IndexError):
        video[[0, 15]]
    with pytest.raises(TypeError):
        video[np.ones(15, bool)]
    with pytest.raises(ValueError):
        np.array(video, copy=False)  # nothing stored to view


def test_iteration_draws_chunks_never_the_whole_video(poses, monkeypatch):
    many = (poses * 3)[:40]
    video = SV.SkeletonVideo(many, OUT_HW, canvas_hw=CANVAS_HW)
    drawn: list[int] = []
    original = SV.SkeletonVideo.draw

    def counted(self, indices):
        drawn.append(len(indices))
        return original(self, indices)

    monkeypatch.setattr(SV.SkeletonVideo, "draw", counted)
    frames = [frame.copy() for frame in video]
    assert drawn == [SV.ITER_CHUNK, 40 - SV.ITER_CHUNK]
    np.testing.assert_array_equal(np.stack(frames), eager_letterboxed(many, CANVAS_HW, OUT_HW))


def test_preprocess_gives_a_skeleton_video_drawn_as_before():
    from wan_animate.preprocess.smoke_models import smoke_pose_estimator

    options = PreprocessOptions(resolution_width=256, resolution_height=256, fps=5)
    cond = preprocess(fixture_path(VIDEO), fixture_path("reference_astronaut.png"), options,
                      PreprocessModels(pose_estimator=smoke_pose_estimator()))  # fmt: skip
    assert isinstance(cond.pose_frames, SV.SkeletonVideo)  # the poses, not 15 drawn frames
    assert cond.pose_frames.canvas_hw == CANVAS_HW and cond.pose_frames.shape == (15, 256, 256, 3)
    drawn = eager_letterboxed(cond.pose_frames.poses, CANVAS_HW, (256, 256))
    assert drawn.max() > 0
    np.testing.assert_array_equal(np.asarray(cond.pose_frames), drawn)
