"""benchmarks/preprocess_models.py and bench_preprocess.py: the random-weight stand-ins are the released
architectures in the released formats (YOLOv10m against ultralytics' own model, the SAM2 checkpoint through the
app's loader, the ONNX exports through the app's sessions), and the benchmark's timing helpers."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_preprocess as bench  # noqa: E402
import preprocess_models as pm  # noqa: E402
import preprocess_report  # noqa: E402
import preprocess_stages  # noqa: E402
import random_yolov10 as yolo  # noqa: E402

CPU = ["CPUExecutionProvider"]


# --- YOLOv10m ----------------------------------------------------------------------------------------


def test_yolov10m_has_the_released_size_and_output():
    """The benchmark's YOLOv10m stand-in: YOLOv10-M's 15.4M parameters and the end-to-end (N, 300, 6) output.

    (It was also compared against ultralytics' own yolov10m on shared weights while ultralytics was installed;
    ultralytics is AGPL-3.0 and no longer a dependency of the app or its tests.)"""
    ours = yolo.YoloV10(yolo.YOLOV10M).eval()
    assert sum(p.numel() for p in ours.parameters()) == 15_389_952
    with torch.no_grad():
        got = ours(torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(0)))
    assert got.shape == (1, 300, 6)


def test_random_yolo_finds_people_and_nothing_else():
    model = yolo.random_yolov10(yolo.YOLOV10_TINY)
    with torch.no_grad():
        out = model(yolo.smooth_random_images(2, 640))
    assert out.shape == (2, 300, 6)
    assert (out[..., 5] == 0).all() and (out[..., 4] > 0.05).all()  # all person boxes above the threshold
    assert out[..., 4].std() > 1e-3 and out[..., :4].std() > 1.0  # distinct scores and boxes: NMS has work


# --- ViTPose-H -----------------------------------------------------------------------------------------


def test_vitpose_h_size_and_heatmaps():
    with torch.device("meta"):
        huge = pm.ViTPoseWholeBody(pm.VITPOSE_H)
    assert 632e6 < sum(p.numel() for p in huge.parameters()) < 640e6  # ViTPose-H: ~632M backbone + head
    tiny = pm.random_vitpose(pm.VITPOSE_TINY)
    with torch.no_grad():
        heatmaps = tiny(torch.randn(2, 3, 256, 192))
    assert heatmaps.shape == (2, 133, 64, 48)
    assert 0.5 < heatmaps.amax(dim=(2, 3)).min() < 0.7  # every point over the 0.5 drawing threshold


# --- SAM2 ------------------------------------------------------------------------------------------


def test_sam2_release_checkpoint_loads_in_the_app(tmp_path):
    from wan_animate.preprocess import sam2_video

    path = pm.write_sam2_release_checkpoint(tmp_path / "sam2" / "sam2_hiera_large.pt", "hiera_tiny")
    raw = torch.load(path, weights_only=True)["model"]
    assert sorted(raw) == sorted(json.loads(pm.SAM2_KEYS["hiera_tiny"].read_text())["keys"])
    segmenter = sam2_video.load_segmenter(path, "cpu")
    loaded = segmenter.model.state_dict()
    torch.testing.assert_close(loaded["vision_encoder.backbone.blocks.3.mlp.proj_in.weight"],
                               raw["image_encoder.trunk.blocks.3.mlp.layers.0.weight"])  # fmt: skip
    assert raw["image_encoder.trunk.blocks.3.mlp.layers.0.weight"].std() > 0.01  # really initialised


# --- ONNX exports through the app's loaders ----------------------------------------------------------


@pytest.mark.slow
def test_onnx_exports_run_in_the_app_loaders(tmp_path):
    pytest.importorskip("onnxscript")
    from wan_animate.preprocess.detection import OnnxPersonDetector, detector_input
    from wan_animate.preprocess.pose import OnnxWholeBodyPose

    folder = tmp_path / "pose2d" / "vitpose_h_wholebody.onnx"
    pm.write_vitpose_onnx(folder, pm.VITPOSE_TINY)
    assert sorted(p.name for p in folder.iterdir()) == ["end2end.onnx", "end2end.onnx.data"]  # the release's layout
    pose = OnnxWholeBodyPose(folder, providers=CPU)
    assert pose.runner.batch == 16 and not pose.runner.pad  # dynamic batch on the CPU: 16 crops per run, none padded
    crops = np.random.default_rng(0).standard_normal((3, 3, 256, 192)).astype(np.float32)
    with torch.no_grad():
        expected = pm.random_vitpose(pm.VITPOSE_TINY)(torch.from_numpy(crops)).numpy()
    np.testing.assert_allclose(pose.heatmaps(crops), expected, atol=1e-5)

    detector = OnnxPersonDetector(pm.write_yolov10_onnx(tmp_path / "yolov10m.onnx", yolo.YOLOV10_TINY), providers=CPU)
    frames = (yolo.smooth_random_images(2, 640).numpy().transpose(0, 2, 3, 1) * 255).astype(np.uint8)
    raw = detector.raw_outputs(frames)
    with torch.no_grad():
        expected = yolo.random_yolov10(yolo.YOLOV10_TINY)(torch.from_numpy(np.stack([detector_input(f) for f in frames])))
    assert raw.shape == (2, 300, 6)
    np.testing.assert_allclose(raw[:, :20], expected.numpy()[:, :20], rtol=1e-4, atol=1e-2)  # the best 20
    boxes = detector(frames)
    assert (boxes[:, 4] > 0.05).all()  # a person chosen in every frame


# --- the benchmark's helpers ------------------------------------------------------------------------


def test_stage_clock_and_patching():
    clock = preprocess_stages.StageClock(cuda=False)

    def slow(x):
        time.sleep(0.01)
        return x

    def frames():
        for i in range(3):
            time.sleep(0.01)
            yield i

    holder = type("Holder", (), {"fn": staticmethod(slow), "gen": staticmethod(frames)})
    patches = [(holder, "fn", clock.wrap("a", slow)), (holder, "gen", clock.wrap_iterator("b", frames))]
    with preprocess_stages.patched(patches):
        assert holder.fn(5) == 5
        assert list(holder.gen()) == [0, 1, 2]
    assert holder.fn is slow and holder.gen is frames  # restored
    assert 0.009 < clock.seconds["a"] < 0.1 and clock.calls["a"] == 1
    assert 0.029 < clock.seconds["b"] < 0.2 and clock.calls["b"] == 4  # three items and the final StopIteration


def test_mask_agreement_and_generation_estimate():
    a = np.zeros((2, 4, 4), np.uint8)
    b = a.copy()
    a[0, :2] = b[0, :1] = 1  # frame 0: IoU 4/8; frame 1: both empty, IoU 1
    agreement = bench.mask_agreement(a, b)
    assert agreement == {"mean_iou": 0.75, "min_iou": 0.5, "pixels_differing": 0.125}
    assert preprocess_report.generation_estimate_s(300, 10.0) == 40.0  # 300 frames: 4 clips of 77 frames (1 carried)


def test_driving_clip_is_made_from_the_example(tmp_path):
    from wan_animate.preprocess.video_decode import probe_video

    clip = bench.make_driving_clip(tmp_path / "clip.mp4", frames=20, fps=30.0, width=320, height=180, grain=2.0)
    info = probe_video(clip)
    assert (info.frames, info.width, info.height, info.fps) == (20, 320, 180, 30.0)


@pytest.mark.slow
def test_tiny_benchmark_end_to_end(tmp_path):
    pytest.importorskip("onnxscript")
    from wan_animate.preprocess.frame_threads import thread_count

    out = tmp_path / "out"
    args = ["--tiny", "--modes", "animation", "--device", "cpu", "--work", str(tmp_path / "work"), "--out", str(out)]
    assert bench.main(args) == 0
    result = json.loads((out / "results.json").read_text())
    warm = f"animation ({thread_count()} CPU threads)"
    assert [run["run"] for run in result["runs"]] == ["animation (cold)", warm]  # no serial run on a CPU by default
    run = result["runs"][1]
    assert run["frames"] == 6 and all(run["stages_s"][s] > 0 for s in ("decode", "detection", "pose", "face"))
    assert result["onnx"]["pose"]["active"] == CPU
    assert f"| {warm} | 6 |" in (out / "results.md").read_text()
