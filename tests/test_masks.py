"""Replacement masks: refinement and background on hand-made arrays, key frames/clicks, chunking and fallbacks
with a fake segmenter, the tiny SAM2 on real frames (the SAM2 weights and segmenter pieces: test_sam2.py)."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
from conftest import fixture_path
from wan_animate.errors import InputError
from wan_animate.preprocess import mask_prompts as P
from wan_animate.preprocess import masks as M
from wan_animate.preprocess import sam2_video as V
from wan_animate.preprocess.frame_store import FrameStore
from wan_animate.preprocess.pose_meta import PoseMeta


def one_frame(mask: np.ndarray) -> np.ndarray:
    return mask[None].astype(np.uint8)


def stored(frames: np.ndarray, directory) -> FrameStore:
    store = FrameStore(len(frames), frames.shape[1:], directory)
    store[:] = frames
    return store


# ---------------------------------------------------------------------------------------------------
# refine_masks / grid_fill / remove_person


def test_dilation_of_a_single_pixel_grows_a_square_per_iteration():
    mask = np.zeros((11, 11), np.uint8)
    mask[5, 5] = 1
    once = M.refine_masks(one_frame(mask), iterations=1, kernel_size=3, w_subdivisions=1, h_subdivisions=1)[0]
    expected = np.zeros((11, 11), np.uint8)
    expected[4:7, 4:7] = 1
    np.testing.assert_array_equal(once, expected)
    twice = M.refine_masks(one_frame(mask), iterations=2, kernel_size=3, w_subdivisions=1, h_subdivisions=1)[0]
    expected[3:8, 3:8] = 1
    np.testing.assert_array_equal(twice, expected)
    k5 = M.refine_masks(one_frame(mask), iterations=1, kernel_size=5, w_subdivisions=1, h_subdivisions=1)[0]
    np.testing.assert_array_equal(k5, expected)  # one 5x5 pass = two 3x3 passes


def test_dilation_stops_at_the_border():
    mask = np.zeros((6, 6), np.uint8)
    mask[0, 0] = 1
    out = M.refine_masks(one_frame(mask), iterations=1, kernel_size=3, w_subdivisions=1, h_subdivisions=1)[0]
    expected = np.zeros((6, 6), np.uint8)
    expected[:2, :2] = 1
    np.testing.assert_array_equal(out, expected)


def test_zero_iterations_means_no_dilation_and_no_grid():
    masks = np.zeros((2, 6, 6), np.uint8)
    masks[0, 1, 1] = masks[0, 4, 4] = 1
    masks[1, 2, 3] = 255  # kept binary: any non-zero is 1
    out = M.refine_masks(masks, iterations=0, kernel_size=7, w_subdivisions=1, h_subdivisions=1)
    expected = (masks > 0).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8


def test_grid_1x1_fills_the_whole_bounding_rectangle():
    mask = np.zeros((8, 10), np.uint8)
    mask[1, 2] = mask[6, 7] = 1  # two opposite corners of the box rows 1-6, cols 2-7
    expected = np.zeros((8, 10), np.uint8)
    expected[1:7, 2:8] = 1  # last row and column included
    np.testing.assert_array_equal(M.grid_fill(mask, 1, 1), expected)


def test_grid_fills_only_cells_that_hold_mask():
    mask = np.zeros((6, 12), np.uint8)
    mask[1, 0] = mask[4, 9] = 1  # box rows 1-4 (height 4), cols 0-9 (width 10)
    # 2x2: cells cols [0,5) [5,10), rows [1,3) [3,5): only the top-left and bottom-right hold mask
    expected = np.zeros((6, 12), np.uint8)
    expected[1:3, 0:5] = 1
    expected[3:5, 5:10] = 1
    np.testing.assert_array_equal(M.grid_fill(mask, 2, 2), expected)
    # 3x1: column edges floor(i * 10 / 3) = 0, 3, 6; the middle third holds nothing
    expected = np.zeros((6, 12), np.uint8)
    expected[1:5, 0:3] = 1
    expected[1:5, 6:10] = 1
    np.testing.assert_array_equal(M.grid_fill(mask, 3, 1), expected)


def test_grid_finer_than_the_box_and_empty_frames_do_not_crash():
    mask = np.zeros((5, 5), np.uint8)
    mask[2, 1] = mask[2, 2] = 1  # a 1x2 box split 5 ways: every pixel its own cell
    np.testing.assert_array_equal(M.grid_fill(mask, 5, 5), mask)
    empty = np.zeros((2, 5, 5), np.uint8)
    out = M.refine_masks(empty, iterations=3, kernel_size=7, w_subdivisions=4, h_subdivisions=4)
    np.testing.assert_array_equal(out, empty)


def test_refine_masks_dilates_then_fills_the_grid():
    mask = np.zeros((12, 12), np.uint8)
    mask[3, 3] = mask[8, 8] = 1
    out = M.refine_masks(one_frame(mask), iterations=1, kernel_size=3, w_subdivisions=1, h_subdivisions=1)[0]
    expected = np.zeros((12, 12), np.uint8)
    expected[2:10, 2:10] = 1  # dilated to rows/cols 2-9, then the box is filled
    np.testing.assert_array_equal(out, expected)


def test_remove_person_zeroes_the_masked_pixels():
    frames = np.full((2, 3, 4, 3), 200, np.uint8)
    masks = np.zeros((2, 3, 4), np.uint8)
    masks[1, 0, 1] = 1
    out = M.remove_person(frames, masks)
    expected = frames.copy()
    expected[1, 0, 1] = 0
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8
    with pytest.raises(ValueError):
        M.remove_person(frames, masks[:, :2])


@pytest.mark.parametrize("on_disk", [False, True])
def test_in_place_refinement_and_background_equal_the_former_copies(on_disk, tmp_path):
    # the former eager code: binary copy, a new refined array, and frames * (masks == 0) as a new background
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (5, 40, 56, 3), dtype=np.uint8)
    masks = (rng.random((5, 40, 56)) > 0.99).astype(np.uint8) * rng.choice(np.array([1, 255], np.uint8), (5, 40, 56))
    kernel = np.ones((5, 5), np.uint8)
    binary = (masks > 0).astype(np.uint8)
    former_masks = np.stack([M.grid_fill(cv2.dilate(m, kernel, iterations=2), 2, 3) for m in binary])
    former_background = frames * (former_masks == 0)[..., None].astype(np.uint8)
    if on_disk:  # the pipeline's FrameStores take the same path, frame by frame
        frames, masks = (stored(a, tmp_path) for a in (frames, masks))
    refined = M.refine_masks(masks, iterations=2, kernel_size=5, w_subdivisions=2, h_subdivisions=3)
    assert refined is masks  # in place
    np.testing.assert_array_equal(refined, former_masks)
    background = M.remove_person(frames, refined)
    assert background is frames  # in place
    np.testing.assert_array_equal(background, former_background)
    assert 0 < former_masks.sum() < former_masks.size


def test_replacement_background_and_masks_equal_the_former_pipeline(monkeypatch):
    # the whole replacement path (real fixture, smoke poses, a stand-in segmenter) vs the former copies, from the same SAM2 masks
    from wan_animate.preprocess import PreprocessModels, PreprocessOptions, preprocess
    from wan_animate.preprocess.smoke_models import smoke_pose_estimator

    captured = {}
    person_masks = M.person_masks

    def capture(frames, *args, **kwargs):
        captured["frames"] = np.array(frames)  # a copy: both are changed in place afterwards
        masks = person_masks(frames, *args, **kwargs)
        captured["masks"] = np.array(masks)
        return masks

    class ClickBoxSegmenter:  # a stand-in SAM2: the clicks' bounding box in every frame, none in frame 1
        def segment(self, frames, clicks):
            points = np.concatenate([np.asarray(c) for c in clicks.values()]).astype(int)
            (x1, y1), (x2, y2) = points.min(axis=0), points.max(axis=0)
            out = np.zeros(frames.shape[:3], bool)
            out[:, y1 : y2 + 1, x1 : x2 + 1] = True
            out[1] = False
            return out

    monkeypatch.setattr(M, "person_masks", capture)
    options = PreprocessOptions(mode="replacement", resolution_width=256, resolution_height=256, fps=3,
                                mask_iterations=2, mask_kernel_size=5, mask_w_subdivisions=2)  # fmt: skip
    models = PreprocessModels(pose_estimator=smoke_pose_estimator(), segmenter=ClickBoxSegmenter())
    cond = preprocess(fixture_path("driving_two_people_3s_small.mp4"), fixture_path("reference_astronaut.png"),
                      options, models)  # fmt: skip
    # kept on disk, the frames (made the background in place) and the masks
    assert isinstance(cond.background_frames, FrameStore) and isinstance(cond.mask_frames, FrameStore)
    raw = captured["masks"]  # SAM2's, with frame 1 filled from its nearest frame
    kernel = np.ones((5, 5), np.uint8)
    former_masks = np.stack([M.grid_fill(cv2.dilate((m > 0).astype(np.uint8), kernel, iterations=2), 2, 1)
                             for m in raw])  # fmt: skip
    np.testing.assert_array_equal(cond.mask_frames, former_masks)
    np.testing.assert_array_equal(cond.background_frames,
                                  captured["frames"] * (former_masks == 0)[..., None].astype(np.uint8))  # fmt: skip
    assert 0 < former_masks.mean() < 1 and np.array_equal(raw[1], raw[0])  # partial masks; frame 1 took frame 0's


# ---------------------------------------------------------------------------------------------------
# key frames, clicks, fallbacks


def test_key_frames_follow_the_official_rule():
    assert P.key_frames(400) == [0, 100, 200, 300]
    assert P.key_frames(10) == [0, 2, 4, 6, 8]  # step 10 // 4 = 2
    assert P.key_frames(7) == list(range(7))  # step 1
    assert P.key_frames(4) == [0]
    assert P.key_frames(1) == [0]
    assert P.key_frames(0) == []


def pose_with(points: dict[int, tuple[float, float, float]], width: int = 64, height: int = 48) -> PoseMeta:
    pose = PoseMeta.empty(width, height)
    for index, value in points.items():
        pose.body[index] = value
    return pose


def test_click_points_keep_confident_in_frame_points_in_official_order():
    pose = pose_with({
        0: (10.7, 5.2, 0.9),  # nose
        1: (11.0, 9.9, 0.5),  # neck (exactly at the threshold: kept)
        2: (8.0, 10.0, 0.49),  # right shoulder: too unsure
        10: (12.0, 47.5, 0.9),  # right ankle
        13: (13.0, 48.0, 0.9),  # left ankle: y == height, outside the frame
        3: (20.0, 20.0, 1.0),  # elbow: not a click point
    })  # fmt: skip
    np.testing.assert_array_equal(P.click_points(pose, 48, 64), [[10, 5], [11, 9], [12, 47]])


class FakeSegmenter:
    """Returns preset masks per frame index and records every call."""

    def __init__(self, masks: np.ndarray) -> None:
        self.masks = masks
        self.calls: list[tuple[list[int], dict[int, list[list[int]]]]] = []

    def segment(self, frames: np.ndarray, clicks: dict[int, np.ndarray]) -> np.ndarray:
        indices = [int(f[0, 0, 0]) for f in frames]  # each test frame carries its index in pixel (0, 0)
        self.calls.append((indices, {k: np.asarray(v).tolist() for k, v in clicks.items()}))
        return self.masks[indices].astype(bool)


def indexed_frames(count: int, height: int = 48, width: int = 64) -> np.ndarray:
    frames = np.zeros((count, height, width, 3), np.uint8)
    frames[:, 0, 0, 0] = np.arange(count)
    return frames


def standing_pose(shift: int = 0) -> PoseMeta:
    return pose_with({0: (20 + shift, 5, 0.9), 1: (20 + shift, 10, 0.9), 8: (18 + shift, 25, 0.9)})


@pytest.fixture(params=["in memory", "on disk"])
def masks_into(request, tmp_path):
    """person_masks' `out`: None (a new array) or a FrameStore of zeros, as the pipeline passes."""
    return lambda count, height=48, width=64: (None if request.param == "in memory"
                                               else FrameStore(count, (height, width), tmp_path))  # fmt: skip


def test_person_masks_chunks_and_key_frames(masks_into):
    count = 20
    sam = np.zeros((count, 48, 64), bool)
    sam[:, 10:20, 10:30] = True
    poses = [standing_pose(i % 3) for i in range(count)]
    poses[2] = pose_with({0: (5, 5, 0.2)})  # a key frame without a confident point is not prompted
    fake = FakeSegmenter(sam)
    out = M.person_masks(indexed_frames(count), poses, fake, chunk_size=8, out=masks_into(count))
    assert [call[0] for call in fake.calls] == [list(range(0, 8)), list(range(8, 16)), list(range(16, 20))]
    assert list(fake.calls[0][1]) == [0, 4, 6]  # key frames 0, 2, 4, 6 of 8; frame 2 skipped
    assert list(fake.calls[1][1]) == [0, 2, 4, 6]
    assert list(fake.calls[2][1]) == [0]  # 4 frames: one key frame
    assert fake.calls[1][1][2] == [[21, 5], [21, 10], [19, 25]]  # frame 10 = standing_pose(1): local index 2
    np.testing.assert_array_equal(out, sam.astype(np.uint8))
    assert out.dtype == np.uint8


def test_empty_sam_frames_take_the_nearest_mask(caplog, masks_into):
    count = 6
    sam = np.zeros((count, 48, 64), bool)
    sam[1, 0:5, 0:5] = True
    sam[4, 10:15, 10:15] = True
    fake = FakeSegmenter(sam)
    with caplog.at_level(logging.WARNING, logger="wan_animate.preprocess.masks"):
        out = M.person_masks(indexed_frames(count), [standing_pose()] * count, fake, out=masks_into(count))
    # frame 0 <- 1; 2 <- 1 (1 away, 4 is 2 away); 3 <- 4; 5 <- 4
    for frame, source in ((0, 1), (1, 1), (2, 1), (3, 4), (4, 4), (5, 4)):
        np.testing.assert_array_equal(out[frame], sam[source])
    assert "0, 2-3, 5" in caplog.text


def test_no_sam_mask_anywhere_falls_back_to_pose_boxes(masks_into):
    count = 3
    fake = FakeSegmenter(np.zeros((count, 48, 64), bool))
    detector = standing_pose()
    detector.person_box = np.array([5.2, 6.0, 9.5, 12.0, 0.8], np.float32)
    keypoints_only = pose_with({0: (20, 10, 0.9), 1: (30, 30, 0.9), 5: (25, 20, 0.3)})
    nobody = PoseMeta.empty(64, 48)
    out = M.person_masks(indexed_frames(count), [detector, keypoints_only, nobody], fake, out=masks_into(count))
    expected_box = np.zeros((48, 64), np.uint8)
    expected_box[6:13, 5:11] = 1  # floor/ceil of the detector box, inclusive
    np.testing.assert_array_equal(out[0], expected_box)
    expected_points = np.zeros((48, 64), np.uint8)
    expected_points[8:33, 19:32] = 1  # x 20-30, y 10-30 grown by 10% per side: x 19-31, y 8-32
    np.testing.assert_array_equal(out[1], expected_points)
    np.testing.assert_array_equal(out[2], expected_points)  # nearest frame with a box


def test_nothing_to_mask_raises_input_error():
    fake = FakeSegmenter(np.zeros((2, 48, 64), bool))
    with pytest.raises(InputError) as error:
        M.person_masks(indexed_frames(2), [PoseMeta.empty(64, 48)] * 2, fake)
    assert error.value.code == "cannot_mask_person" and error.value.field == "driving_video"
    assert fake.calls == []  # no confident point: SAM2 is not even prompted


def test_chunk_without_any_confident_point_borrows_from_its_neighbours(masks_into):
    count = 6
    sam = np.zeros((count, 48, 64), bool)
    sam[:, 1:3, 1:3] = True
    poses = [standing_pose()] * 3 + [PoseMeta.empty(64, 48)] * 3
    fake = FakeSegmenter(sam)
    out = M.person_masks(indexed_frames(count), poses, fake, chunk_size=3, out=masks_into(count))
    assert [call[0] for call in fake.calls] == [[0, 1, 2]]
    np.testing.assert_array_equal(out[3:], np.broadcast_to(sam[2], (3, 48, 64)))


def test_a_chunk_whose_key_frames_are_unsure_is_prompted_on_its_first_confident_frame():
    poses = [PoseMeta.empty(64, 48)] * 9  # key frames 0, 2, 4, 6, 8
    poses[3] = standing_pose()
    assert list(P.chunk_clicks(poses, 48, 64)) == [3]


def test_nearest_filled():
    filled = np.array([False, True, False, False, True, False])
    np.testing.assert_array_equal(M.nearest_filled(filled), [1, 1, 1, 4, 4, 4])


# ---------------------------------------------------------------------------------------------------
# the tiny random SAM2 on real frames


def test_tiny_sam2_on_real_frames_gives_a_valid_mask_for_every_frame():
    import decord

    reader = decord.VideoReader(str(fixture_path("driving_two_people_3s_small.mp4")), width=160, height=96)
    frames = reader.get_batch([0, 20, 40, 60]).asnumpy()  # (4, 96, 160, 3)
    # The walking person, placed by hand (nose, neck, shoulders, hips, ankles) in frame 0's pixels.
    points = {0: (48, 22, 0.9), 1: (48, 30, 0.9), 2: (44, 31, 0.9), 5: (52, 31, 0.9), 8: (46, 52, 0.9),
              11: (50, 52, 0.9), 10: (46, 80, 0.9), 13: (51, 80, 0.9)}  # fmt: skip
    poses = [pose_with(points, 160, 96) for _ in frames]
    segmenter = V.tiny_sam2_video()
    out = M.person_masks(frames, poses, segmenter, chunk_size=3)  # two chunks: 3 frames + 1
    assert out.shape == (4, 96, 160) and out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 1}
    assert out.reshape(4, -1).any(axis=1).all()  # random weights: the fallback guarantees a mask
    low = segmenter.low_res_logits(frames[:3], {0: P.click_points(poses[0], 96, 160)})
    assert sorted(low) == [0, 1, 2] and low[0].shape == (32, 32)  # 128 px model: 32x32 logits
