"""frame_threads.map_frames: threads give the serial results, in order, for every per-frame preparation."""

from __future__ import annotations

import numpy as np
import pytest
from wan_animate.preprocess import frame_threads
from wan_animate.preprocess.detection import detector_input, detector_inputs
from wan_animate.preprocess.pose import pose_input, pose_inputs


def test_map_frames_keeps_order_and_zips(monkeypatch):
    monkeypatch.setenv(frame_threads.ENV_THREADS, "4")
    assert frame_threads.map_frames(lambda a, b: a * 10 + b, range(50), range(50)) == [11 * i for i in range(50)]
    monkeypatch.setenv(frame_threads.ENV_THREADS, "1")  # serial path
    assert frame_threads.map_frames(lambda a: -a, [3, 1, 2]) == [-3, -1, -2]
    with pytest.raises(ValueError):
        frame_threads.map_frames(lambda a, b: a, [1, 2], [1])


@pytest.mark.parametrize("threads", ["1", "3"])
def test_batched_preparation_equals_frame_by_frame(monkeypatch, threads):
    monkeypatch.setenv(frame_threads.ENV_THREADS, threads)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 120, 200, 3), dtype=np.uint8)
    boxes = np.array([[10, 5, 90, 110, 0.9], [0, 0, 200, 120, -1], [50, 20, 60, 25, 0.8], [-20, -10, 150, 140, 0.7],
                      [100, 10, 190, 115, 0.6]])  # fmt: skip
    np.testing.assert_array_equal(detector_inputs(frames), np.stack([detector_input(f) for f in frames]))
    inputs, centers, scales = pose_inputs(frames, boxes, "bgr")
    serial = [pose_input(f, b, "bgr") for f, b in zip(frames, boxes, strict=True)]
    np.testing.assert_array_equal(inputs, np.stack([s[0] for s in serial]))
    np.testing.assert_array_equal(centers, np.stack([s[1] for s in serial]))
    np.testing.assert_array_equal(scales, np.stack([s[2] for s in serial]))


def test_sam2_pixel_frames_equal_frame_by_frame(monkeypatch):
    from wan_animate.preprocess.sam2_video import tiny_sam2_video

    monkeypatch.setenv(frame_threads.ENV_THREADS, "3")
    segmenter = tiny_sam2_video()
    frames = np.random.default_rng(1).integers(0, 256, (4, 90, 160, 3), dtype=np.uint8)
    got = segmenter.pixel_frames(frames)
    assert len(got) == len(frames)
    for planes, frame in zip(got, frames, strict=True):
        np.testing.assert_array_equal(planes, segmenter._planes(frame))


def test_skeletons_and_mask_refinement_equal_serial(monkeypatch):
    from wan_animate.preprocess import masks
    from wan_animate.preprocess.pose import wholebody_to_pose_meta
    from wan_animate.preprocess.skeleton_video import SkeletonVideo

    rng = np.random.default_rng(2)
    poses = []
    for _ in range(6):
        kps = np.zeros((133, 3), np.float32)
        kps[:, 0], kps[:, 1], kps[:, 2] = rng.random(133) * 320, rng.random(133) * 180, 0.6
        poses.append(wholebody_to_pose_meta(kps, 320, 180))
    binary = (rng.random((6, 180, 320)) > 0.995).astype(np.uint8)
    results = {}
    for threads in ("1", "3"):  # refine_masks refines in place: each run gets its own copy
        monkeypatch.setenv(frame_threads.ENV_THREADS, threads)
        results[threads] = (SkeletonVideo(poses, (256, 224), canvas_hw=(180, 320))[:],
                            SkeletonVideo(poses, (180, 320))[:], masks.refine_masks(binary.copy(), 2, 5, 2, 2))  # fmt: skip
    for serial, threaded in zip(results["1"], results["3"], strict=True):
        np.testing.assert_array_equal(serial, threaded)
    assert results["3"][0].max() > 0 and results["3"][2].sum() > binary.sum()  # something was drawn and dilated
