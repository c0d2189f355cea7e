"""detection: official YOLOv10 pre/post-processing, the ONNX session path on hand-written graphs."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
from wan_animate.preprocess import detection as det
from wan_animate.preprocess.smoke_models import write_detector, write_vitpose

CPU = ["CPUExecutionProvider"]


def test_detector_input_is_stretched_rgb_in_unit_range():
    frame = np.zeros((100, 300, 3), np.uint8)
    frame[...] = (10, 20, 30)
    x = det.detector_input(frame)
    assert x.shape == (3, 640, 640) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 320, 320], [10 / 255, 20 / 255, 30 / 255], rtol=1e-6)  # channel 0 = R
    # stretched, not letterboxed: a 300x100 frame fills all 640 rows (no black bar rows)
    assert x[0, 0, 320] == pytest.approx(10 / 255) and x[0, 639, 320] == pytest.approx(10 / 255)


def test_detector_input_equals_the_official_float64_arithmetic():
    # official: (resized / 255.0) in float64, then cast to float32; ours divides in float32. Every level first
    # (a 640x640 frame is not resampled), then a resized camera-sized frame.
    levels = np.repeat(np.arange(256, dtype=np.uint8), 1600).reshape(640, 640, 1).repeat(3, axis=2)
    np.testing.assert_array_equal(det.detector_input(levels), (levels / 255.0).transpose(2, 0, 1).astype(np.float32))
    frame = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    official = (cv2.resize(frame, (640, 640)) / 255.0).transpose(2, 0, 1).astype(np.float32)
    ours = det.detector_input(frame)
    np.testing.assert_array_equal(ours, official)
    assert ours.flags.c_contiguous


def test_cuda_request_that_falls_back_to_cpu_is_an_error_in_the_log(tmp_path, caplog):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: onnxruntime would not fall back")
    path = write_detector(tmp_path / "d.onnx", np.zeros((1, 6), np.float32))
    providers = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    assert det.wants_cuda(providers) and not det.wants_cuda(CPU)
    with caplog.at_level(logging.ERROR, logger=det.logger.name):
        session = det.open_onnx_session(path, providers)
    assert not det.uses_cuda(session)
    assert "although CUDA was requested" in caplog.text


class RecordingSession:
    """A real onnxruntime session that records the input shapes it runs and can claim the CUDA provider (whose
    shape policy BatchedSession follows; this machine has no GPU)."""

    def __init__(self, session, claims_cuda: bool) -> None:
        self.session = session
        self.claims_cuda = claims_cuda
        self.shapes: list[tuple[int, ...]] = []

    def get_inputs(self):
        return self.session.get_inputs()

    def get_providers(self) -> list[str]:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if self.claims_cuda else self.session.get_providers()

    def get_provider_options(self) -> dict:
        return {"CUDAExecutionProvider": {"device_id": "0"}} if self.claims_cuda else self.session.get_provider_options()

    def run(self, names, feed, run_options=None):
        self.shapes.append(next(iter(feed.values())).shape)
        return self.session.run(names, feed, run_options)


@pytest.mark.parametrize(("batch_dim", "claims_cuda", "expected_batches"), [
    ("batch", False, [16, 4]),  # CPU, dynamic batch: the short chunk runs as it is (no wasted work)
    # CUDA: one constant shape (warm-up, then every chunk padded); the warm-up runs twice here because this CPU
    # session refuses the GPU arena release (test_cuda_session_that_cannot_release_its_arena_runs_on_and_says_so)
    ("batch", True, [16, 16, 16, 16]),
    (16, False, [16, 16]),  # a fixed-batch graph is padded wherever it runs
])  # fmt: skip
def test_batched_session_keeps_one_input_shape_where_it_pays(tmp_path, batch_dim, claims_cuda, expected_batches):
    weight = np.random.default_rng(0).standard_normal((133, 3)).astype(np.float32)
    path = write_vitpose(tmp_path / "pose", weight, batch=batch_dim)
    inputs = np.random.default_rng(1).standard_normal((20, 3, 256, 192)).astype(np.float32)
    dynamic = det.open_onnx_session(write_vitpose(tmp_path / "dynamic", weight), CPU)
    reference = dynamic.run(None, {"input": inputs})[0]
    session = RecordingSession(det.open_onnx_session(path, CPU), claims_cuda)
    runner = det.BatchedSession(session, max_batch=16)
    runner.warm_up((3, 256, 192))
    out = runner.run(inputs)
    assert [shape[0] for shape in session.shapes] == expected_batches
    assert out.shape == (20, 133, 64, 48)
    np.testing.assert_allclose(out, reference, rtol=1e-6, atol=1e-6)  # padding rows never reach the outputs


def test_arena_release_option_is_accepted_by_onnxruntime(tmp_path):
    # the same RunOptions key the CUDA sessions get ("gpu:<id>"), on the CPU arena this machine has
    path = write_vitpose(tmp_path / "pose", np.ones((133, 3), np.float32))
    session = det.open_onnx_session(path, CPU)
    options = det.arena_release_options("cpu:0")
    assert options.get_run_config_entry(det.ARENA_SHRINK_KEY) == "cpu:0"
    out = session.run(None, {"input": np.ones((2, 3, 256, 192), np.float32)}, options)[0]
    np.testing.assert_allclose(out[:, 0], 3.0)  # 1x1 conv of weight (1, 1, 1) over ones
    assert det.cuda_device_id(session) == 0


def test_cuda_session_that_cannot_release_its_arena_runs_on_and_says_so(tmp_path, caplog):
    # a session claiming CUDA whose onnxruntime has no "gpu:0" arena (here: a CPU session) refuses the release option
    path = write_vitpose(tmp_path / "pose", np.ones((133, 3), np.float32))
    session = RecordingSession(det.open_onnx_session(path, CPU), claims_cuda=True)
    runner = det.BatchedSession(session, max_batch=4)
    assert runner.run_options.get_run_config_entry(det.ARENA_SHRINK_KEY) == "gpu:0"
    with caplog.at_level(logging.WARNING, logger=det.logger.name):
        runner.warm_up((3, 256, 192))
    assert runner.run_options is None and "cannot release its CUDA arena" in caplog.text
    assert runner.run(np.ones((5, 3, 256, 192), np.float32)).shape == (5, 133, 64, 48)
    assert [shape[0] for shape in session.shapes] == [4, 4, 4, 4]  # refused try, warm-up, two padded chunks


def test_torch_cuda_library_dir_is_the_consolidated_folder_of_the_same_major(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch, "__file__", str(tmp_path / "torch" / "__init__.py"))
    assert det.torch_cuda_library_dir("13.0") is None  # no such folder
    folder = tmp_path / "nvidia" / "cu13" / "lib"
    folder.mkdir(parents=True)
    assert det.torch_cuda_library_dir("13.0") == folder
    assert det.torch_cuda_library_dir("12.8") is None  # onnxruntime built for another CUDA major
    assert det.torch_cuda_library_dir(None) is None


def test_decode_scales_truncates_and_filters():
    # values exact in binary; frame 1280 wide (x2), 960 high (x1.5)
    out = np.zeros((300, 6), np.float32)
    out[0] = [100.5, 50.25, 200.75, 350.5, 0.9, 0]
    out[1] = [400, 400, 500, 500, 0.04, 0]  # under the 0.05 score threshold: dropped
    dets = det.decode_end2end(out, 960, 1280)
    # x1 = 201, y1 = 75.375, w = 401.5 - 201 = 200.5, h = 525.75 - 75.375 = 450.375 -> int: 201, 75, 200, 450
    assert dets.tolist() == [[201, 75, 401, 525, pytest.approx(0.9), 0]]


def test_nms_is_class_agnostic_as_official():
    out = np.zeros((300, 6), np.float32)
    out[0] = [0, 0, 100, 100, 0.95, 16]  # a dog
    out[1] = [2, 2, 100, 100, 0.90, 0]  # a person almost on top of it (IoU > 0.5): suppressed
    dets = det.decode_end2end(out, 640, 640)
    assert len(dets) == 1 and dets[0, 5] == 16
    assert det.select_largest_person(dets) is None


def _rows(*boxes):
    return np.array([[*b, 0] if len(b) == 5 else b for b in boxes], dtype=np.float64)


def test_select_largest_person():
    dets = _rows((0, 0, 50, 100, 0.9), (10, 10, 110, 210, 0.8), (0, 0, 300, 300, 0.9, 2))  # third: not a person
    np.testing.assert_array_equal(det.select_largest_person(dets), [10, 10, 110, 210, 0.8])


def test_select_skips_boxes_with_a_short_longest_side():
    # A (100x10, area 1000, side 100) first; B (35x35, area 1225) has the larger area but its longest
    # side 35 is under 0.4 x 100, so the official rule keeps A.
    dets = _rows((0, 0, 100, 10, 0.9), (200, 200, 235, 235, 0.8))
    np.testing.assert_array_equal(det.select_largest_person(dets), [0, 0, 100, 10, 0.9])


def test_select_score_must_exceed_threshold():
    assert det.select_largest_person(_rows((0, 0, 10, 10, 0.05))) is None  # not > 0.05
    assert det.select_largest_person(np.zeros((0, 6))) is None


def test_fallback_box():
    np.testing.assert_array_equal(det.fallback_box(480, 640), [0, 0, 640, 480, -1])


@pytest.mark.parametrize("batch", ["batch", 1])
def test_onnx_detector_end_to_end(tmp_path, batch):
    rows = np.array([[100.5, 50.25, 200.75, 350.5, 0.9, 0], [10, 10, 20, 20, 0.8, 0]], np.float32)
    path = write_detector(tmp_path / "yolov10m.onnx", rows, batch=batch)
    detector = det.OnnxPersonDetector(path, providers=CPU)
    frames = np.zeros((3, 960, 1280, 3), np.uint8)
    boxes = detector(frames)
    assert boxes.shape == (3, 5)
    for box in boxes:
        np.testing.assert_allclose(box, [201, 75, 401, 525, 0.9], rtol=1e-6)


def test_onnx_detector_nobody_gives_fallback(tmp_path):
    path = write_detector(tmp_path / "d.onnx", np.array([[0, 0, 50, 50, 0.9, 3]], np.float32))  # a car only
    boxes = det.OnnxPersonDetector(path, providers=CPU)(np.zeros((2, 48, 64, 3), np.uint8))
    np.testing.assert_array_equal(boxes, [[0, 0, 64, 48, -1]] * 2)
