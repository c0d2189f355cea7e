"""pose: crop maths, DARK decoding on synthetic heatmaps, 133 -> PoseMeta, the ONNX path end to end."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from wan_animate.preprocess import pose as P
from wan_animate.preprocess.detection import OnnxPersonDetector
from wan_animate.preprocess.smoke_models import write_detector, write_vitpose

CPU = ["CPUExecutionProvider"]


# --- crop maths ------------------------------------------------------------------------------------


def test_box_to_center_scale():
    # 100x300 box: aspect 256/192 = 4/3; size = max(100 * 4/3, 300) = 300 -> [225, 300] / 200 * 1.25
    center, scale = P.box_to_center_scale(np.array([100, 50, 200, 350]))
    np.testing.assert_allclose(center, [150, 200])
    np.testing.assert_allclose(scale, [1.40625, 1.875])
    # a wide box: size = max(400 * 4/3, 100) = 533.33 -> [400, 533.33] / 200 * 1.25
    _, scale = P.box_to_center_scale(np.array([0, 0, 400, 100]))
    np.testing.assert_allclose(scale, [2.5, 533.3333333 / 160], rtol=1e-6)


def test_crop_window_corners():
    # box [100, 50, 201, 357]: centre (150.5, 203.5), size 307 -> crop 287.8125 x 383.75 px
    center, scale = P.box_to_center_scale(np.array([100, 50, 201, 357]))
    ul, br = P.crop_window(center, scale[1])
    # 150.5 - 143.90625 = 6.59 -> 7; 203.5 - 191.875 = 11.63 -> 12; 294.41 -> 294; 395.38 -> 395
    assert ul.tolist() == [7, 12] and br.tolist() == [294, 395]


def test_crop_person_centres_the_box():
    img = np.zeros((400, 300, 3), np.uint8)
    img[198:203, 148:153] = 255  # a 5x5 white square centred on (150, 200)
    center, scale = P.box_to_center_scale(np.array([100, 50, 200, 350]))
    crop = P.crop_person(img, center, scale)
    assert crop.shape == (256, 192, 3) and crop.dtype == np.float32
    ys, xs = np.nonzero(crop[..., 0] > 100)
    assert abs(xs.mean() - 96) < 1.5 and abs(ys.mean() - 128) < 1.5


def test_crop_outside_image_is_black_not_an_error():
    crop = P.crop_person(np.full((50, 50, 3), 255, np.uint8), np.array([500.0, 500.0]), np.array([0.5, 0.5]))
    assert crop.shape == (256, 192, 3) and crop.max() == 0


def test_pose_input_normalisation_and_channel_order():
    red = np.zeros((64, 48, 3), np.uint8)
    red[...] = (255, 0, 0)
    box = np.array([0, 0, 48, 64, 0.9])
    x_bgr, _, _ = P.pose_input(red, box, "bgr")
    x_rgb, _, _ = P.pose_input(red, box, "rgb")
    assert x_bgr.shape == (3, 256, 192) and x_bgr.dtype == np.float32
    mid = (slice(None), 128, 96)
    # BGR (official): channel 0 holds blue (0) normalised with the R mean/std, channel 2 holds red.
    np.testing.assert_allclose(x_bgr[mid], [(0 - 0.485) / 0.229, (0 - 0.456) / 0.224, (1 - 0.406) / 0.225], rtol=1e-5)
    np.testing.assert_allclose(x_rgb[mid], [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0 - 0.406) / 0.225], rtol=1e-5)


@pytest.mark.parametrize("box", [None, np.array([0, 0, 9, 100, 0.9]), np.array([5, 5, 40, 40, -1.0])])
def test_pose_input_falls_back_to_whole_image(box):
    # no box, a box under 10 px wide, or the detector's "nobody" score: crop around the whole 100x60 image
    _, center, scale = P.pose_input(np.zeros((60, 100, 3), np.uint8), box)
    np.testing.assert_allclose(center, [50, 30])
    np.testing.assert_allclose(scale, [100 / 160, 100 * 4 / 3 / 160])


# --- heatmap decoding ------------------------------------------------------------------------------


def test_dark_refine_recovers_quadratic_peak_exactly():
    # log-heatmap = a concave quadratic with a cross term: finite differences are exact on it, so one
    # Newton step from the integer argmax lands exactly on the true peak.
    h, w = 64, 48
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    peaks = [(20.3, 30.7), (10.8, 40.2), (33.45, 7.6)]
    maps = np.zeros((1, len(peaks), h, w))
    for k, (mx, my) in enumerate(peaks):
        dx, dy = xx - mx, yy - my
        maps[0, k] = 10.0 - (0.30 * dx**2 + 0.10 * dx * dy + 0.20 * dy**2)
    coords, _ = P.argmax_heatmaps(maps)
    refined = P.dark_refine(maps, coords)
    np.testing.assert_allclose(refined[0], peaks, atol=1e-4)


def _gaussian_maps(peaks, h=64, w=48, sigma=2.0):
    yy, xx = np.mgrid[0:h, 0:w]
    maps = np.zeros((1, len(peaks), h, w), np.float32)
    for k, (mx, my) in enumerate(peaks):
        maps[0, k] = np.exp(-((xx - mx) ** 2 + (yy - my) ** 2) / (2 * sigma**2))
    return maps


def test_decode_heatmaps_sub_pixel_and_mapping():
    peaks = [(20.3, 30.7), (10.75, 40.2), (40.1, 5.9)]
    maps = _gaussian_maps(peaks) * np.array([0.9, 0.6, 0.3], np.float32)[None, :, None, None]
    center = np.array([[300.0, 200.0]])
    scale = np.array([[1.5, 2.0]])  # crop 300 x 400 px
    out = P.decode_heatmaps(maps, center, scale)
    assert out.shape == (1, 3, 3)
    # heatmap (x, y) -> image: x * 300 / 48 + 300 - 150, y * 400 / 64 + 200 - 200
    expected = [(mx * 300 / 48 + 150, my * 400 / 64) for mx, my in peaks]
    np.testing.assert_allclose(out[0, :, :2], expected, atol=0.05)  # argmax alone would be off by up to 3 px
    # score = the map's maximum, i.e. its value at the nearest grid point: a * exp(-d^2 / 8)
    grid_d2 = [(round(mx) - mx) ** 2 + (round(my) - my) ** 2 for mx, my in peaks]
    expected_scores = [a * np.exp(-d2 / 8) for a, d2 in zip([0.9, 0.6, 0.3], grid_d2, strict=True)]
    np.testing.assert_allclose(out[0, :, 2], expected_scores, rtol=1e-5)


def test_decode_heatmaps_equals_logging_whole_maps():
    # decode_heatmaps takes the log only at DARK's stencil points; the official code logs the whole modulated maps
    rng = np.random.default_rng(0)
    noisy = (0.6 + 0.02 * rng.standard_normal((3, 133, 64, 48))).astype(np.float32)
    peaked = _gaussian_maps([(rng.random() * 48, rng.random() * 64) for _ in range(133)]) * 0.8
    signed = rng.standard_normal((2, 133, 64, 48)).astype(np.float32)  # negative maxima: -1 coordinates
    # frames share one padded buffer in modulate_heatmaps: a frame's result must not depend on its neighbours
    np.testing.assert_array_equal(P.modulate_heatmaps(noisy)[2], P.modulate_heatmaps(noisy[2:])[0])
    for maps in (noisy, peaked, signed):
        n = len(maps)
        centers, scales = rng.random((n, 2)) * 500, rng.random((n, 2)) * 3 + 0.1
        coords, maxvals = P.argmax_heatmaps(maps)
        whole = P.dark_refine(np.log(np.maximum(P.modulate_heatmaps(maps), 1e-10)), coords)
        xy = P.heatmap_to_image(whole, centers, scales, (48, 64))
        official = np.concatenate([xy, maxvals[..., None].astype(np.float32)], axis=2)
        np.testing.assert_array_equal(P.decode_heatmaps(maps, centers, scales), official)


def test_modulate_heatmaps_equals_one_map_at_a_time():
    # 133 maps go to cv2 in channel chunks (OpenCV 5 takes at most 128 channels): each map must come out as if
    # blurred alone, zero-padded by the kernel's reach, and rescaled to its own maximum
    rng = np.random.default_rng(1)
    maps = rng.random((2, 133, 64, 48)).astype(np.float32)
    maps[1, 130] = 0.0  # an empty map keeps ratio 1
    border = (P.DARK_KERNEL - 1) // 2
    out = P.modulate_heatmaps(maps)
    for i, j in [(0, 0), (0, 127), (0, 128), (1, 130), (1, 132)]:
        alone = cv2.copyMakeBorder(maps[i, j], border, border, border, border, cv2.BORDER_CONSTANT, value=0.0)
        blurred = cv2.GaussianBlur(alone, (P.DARK_KERNEL, P.DARK_KERNEL), 0)[border:-border, border:-border]
        expected = blurred * (maps[i, j].max() / blurred.max()) if blurred.max() > 0 else blurred
        np.testing.assert_allclose(out[i, j], expected, rtol=1e-6, atol=0)


def test_positive_peak_with_an_all_negative_blur_is_flipped_and_still_refined():
    # Official DARK: the modulated map is blurred * (original max / blurred max). Here the peak is +0.5 but the
    # blurred map is all negative, so the factor is negative: the map is flipped and the Newton step is taken on
    # log(max(flipped, 1e-10)) at the original peak. (Without the flip the log is flat: no step at all.)
    h, w = 64, 48
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    heatmap = -1.0 - 0.01 * xx - 0.02 * yy  # an uneven negative background
    heatmap[30, 20], heatmap[30, 21], heatmap[31, 20] = 0.5, 0.2, 0.1  # asymmetric positive peak at (20, 30)
    maps = heatmap[None, None].astype(np.float32)
    border = (P.DARK_KERNEL - 1) // 2
    padded = cv2.copyMakeBorder(maps[0, 0], border, border, border, border, cv2.BORDER_CONSTANT, value=0.0)
    blurred = cv2.GaussianBlur(padded, (P.DARK_KERNEL, P.DARK_KERNEL), 0)[border:-border, border:-border]
    assert blurred.max() < 0
    flipped = blurred * (np.float32(0.5) / blurred.max())
    np.testing.assert_allclose(P.modulate_heatmaps(maps)[0, 0], flipped, rtol=1e-6)

    coords, maxvals = P.argmax_heatmaps(maps)
    assert coords[0, 0].tolist() == [20, 30] and maxvals[0, 0] == pytest.approx(0.5)
    log_map = np.log(np.maximum(flipped, 1e-10)).astype(np.float64)

    def v(dy: int, dx: int) -> float:
        return float(log_map[30 + dy, 20 + dx])

    gradient = np.array([0.5 * (v(0, 1) - v(0, -1)), 0.5 * (v(1, 0) - v(-1, 0))])
    dxx = 0.25 * (v(0, 2) - 2 * v(0, 0) + v(0, -2))
    dyy = 0.25 * (v(2, 0) - 2 * v(0, 0) + v(-2, 0))
    dxy = 0.25 * (v(1, 1) - v(-1, 1) - v(1, -1) + v(-1, -1))
    hessian = np.array([[dxx, dxy], [dxy, dyy]])
    expected = np.array([20.0, 30.0]) - np.linalg.solve(hessian, gradient)
    refined = P.decode_heatmaps(maps, np.array([[24.0, 32.0]]), np.array([[48 / 200, 64 / 200]]))  # identity mapping
    np.testing.assert_allclose(refined[0, 0, :2], expected, atol=1e-4)
    assert np.abs(expected - [20, 30]).max() > 0.05  # the step really moves the point


def test_decode_border_peak_and_empty_map():
    maps = _gaussian_maps([(1.3, 30.0), (20.0, 20.0)])
    maps[0, 1] = 0.0  # an empty map: argmax -1, score 0, no refinement
    coords, maxvals = P.argmax_heatmaps(maps)
    assert coords[0, 1].tolist() == [-1, -1] and maxvals[0, 1] == 0
    refined = P.dark_refine(np.log(np.maximum(P.modulate_heatmaps(maps), 1e-10)), coords)
    assert refined[0, 0].tolist() == [1.0, 30.0]  # within 2 px of the border: integer position kept
    assert refined[0, 1].tolist() == [-1.0, -1.0]


# --- 133 points -> PoseMeta ------------------------------------------------------------------------


def _indexed_kps() -> np.ndarray:
    kps = np.zeros((133, 3), np.float32)
    kps[:, 0] = np.arange(133)
    kps[:, 1] = 2 * np.arange(133)
    kps[:, 2] = 0.8
    kps[5, 2], kps[6, 2] = 0.6, 1.0
    return kps


def test_wholebody_to_pose_meta_layout():
    meta = P.wholebody_to_pose_meta(_indexed_kps(), 640, 480, person_box=np.array([1, 2, 3, 4, 0.9]))
    assert (meta.width, meta.height) == (640, 480)
    assert meta.body.shape == (20, 3) and meta.face.shape == (68, 3) and meta.left_hand.shape == (21, 3)
    np.testing.assert_allclose(meta.body[1], [5.5, 11.0, 0.8])  # neck: mean of shoulders 5 and 6, score too
    np.testing.assert_allclose(meta.body[2, :2], [6, 12])  # right shoulder = COCO 6
    np.testing.assert_allclose(meta.body[5, :2], [5, 10])  # left shoulder = COCO 5
    np.testing.assert_allclose(meta.body[14, :2], [2, 4])  # right eye = COCO 2
    np.testing.assert_allclose(meta.body[18, :2], [17.5, 35])  # left toe: big toe 17 + small toe 18
    np.testing.assert_allclose(meta.body[19, :2], [20.5, 41])  # right toe: 20 + 21
    assert meta.face[0, 0] == 23 and meta.face[-1, 0] == 90
    assert meta.left_hand[0, 0] == 91 and meta.right_hand[0, 0] == 112 and meta.right_hand[-1, 0] == 132
    assert meta.has_person


def test_fill_invalid_bodies_reuses_previous():
    good = P.wholebody_to_pose_meta(_indexed_kps(), 64, 64)
    bad_kps = _indexed_kps()
    bad_kps[:, 0] = -5  # every point has a negative coordinate
    bad = P.wholebody_to_pose_meta(bad_kps, 64, 64)
    half = _indexed_kps()
    half[:10, 0] = -5  # some points still valid: kept as is
    partial = P.wholebody_to_pose_meta(half, 64, 64)
    metas = P.fill_invalid_bodies([good, bad, bad.copy(), partial])
    np.testing.assert_array_equal(metas[1].body, good.body)
    np.testing.assert_array_equal(metas[2].body, good.body)
    assert metas[3].body[0, 0] == -5


def test_resolve_pose_onnx_official_folder(tmp_path):
    folder = tmp_path / "pose2d" / "vitpose_h_wholebody.onnx"
    path = write_vitpose(folder, np.zeros((133, 3)))
    assert P.resolve_pose_onnx(folder) == path
    assert P.resolve_pose_onnx(tmp_path / "pose2d") == path
    assert P.resolve_pose_onnx(path) == path
    with pytest.raises(FileNotFoundError):
        P.resolve_pose_onnx(tmp_path / "missing")


# --- ONNX end to end -------------------------------------------------------------------------------


def _blob_frame(h=240, w=320, x0=200.0, y0=100.0, sigma=12.0) -> np.ndarray:
    """Red Gaussian blob on a background at the ImageNet mean (so the normalised background is ~0)."""
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2))
    frame = np.empty((h, w, 3), np.uint8)
    frame[..., 0] = np.clip(0.485 * 255 + blob * 120, 0, 255)
    frame[..., 1] = round(0.456 * 255)
    frame[..., 2] = round(0.406 * 255)
    return frame


@pytest.mark.parametrize("batch", ["batch", 1])
def test_onnx_pose_finds_blob_through_the_official_channel(tmp_path, batch):
    # Every heatmap = the pooled input channel 2. With the official BGR input, channel 2 is red, so all
    # 133 keypoints land on the red blob at (200, 100); with RGB input channel 2 is flat blue.
    weight = np.zeros((133, 3))
    weight[:, 2] = 1.0
    path = write_vitpose(tmp_path / "vitpose_h_wholebody.onnx", weight, batch=batch)
    frames = np.stack([_blob_frame(), _blob_frame(x0=120.0, y0=150.0)])
    boxes = np.array([[0, 0, 320, 240, -1.0]] * 2)  # nobody detected: whole image (official fallback)
    kps = P.OnnxWholeBodyPose(tmp_path / "vitpose_h_wholebody.onnx", providers=CPU)(frames, boxes)
    assert kps.shape == (2, 133, 3) and kps.dtype == np.float32
    np.testing.assert_allclose(kps[0, :, :2], np.tile([200.0, 100.0], (133, 1)), atol=1.5)
    np.testing.assert_allclose(kps[1, :, :2], np.tile([120.0, 150.0], (133, 1)), atol=1.5)
    assert path.name == "end2end.onnx"
    rgb = P.OnnxWholeBodyPose(path, providers=CPU, channel_order="rgb")(frames, boxes)
    assert np.abs(rgb[0, 0, :2] - [200.0, 100.0]).max() > 20  # the blob is invisible in channel 2 now


def test_whole_body_estimator_with_detector(tmp_path):
    det_path = write_detector(tmp_path / "det.onnx", np.array([[64, 0, 576, 640, 0.9, 0]], np.float32))
    weight = np.zeros((133, 3))
    weight[:, 2] = 1.0
    pose = P.OnnxWholeBodyPose(write_vitpose(tmp_path / "pose", weight), providers=CPU)
    estimator = P.WholeBodyPoseEstimator(OnnxPersonDetector(det_path, providers=CPU), pose)
    metas = estimator(np.stack([_blob_frame()]))
    [meta] = metas
    # detector box in 640 space -> frame 320x240: (32, 0, 288, 240)
    np.testing.assert_allclose(meta.person_box, [32, 0, 288, 240, 0.9], rtol=1e-6)
    np.testing.assert_allclose(meta.body[0, :2], [200, 100], atol=1.5)  # the nose sits on the blob too
    assert (meta.width, meta.height) == (320, 240)
