"""Request knobs end to end through job.run_job: the `resolution` preset reaches preprocessing, merge_audio and
video_quality reach the MP4 writer, a request's offload_model changes nothing. Preprocessing and the diffusion loop
are stand-ins here (frames of the asked size), except in the frame-size checks, which run the real preprocessing
with a scripted pose model."""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import fixture_path
from PIL import Image
from test_preprocess_pipeline import ScriptedEstimator

from local_runner import import_app_module

inference = import_app_module("inference")
request_options = import_app_module("request_options")
job = import_app_module("job")
request_options = import_app_module("request_options")
worker = import_app_module("worker")
pp = import_app_module("preprocess")
wan = import_app_module("wan")
vio = import_app_module("preprocess.video_io")
vdec = import_app_module("preprocess.video_decode")

AUDIO_VIDEO = "driving_face_closeup.mp4"  # 640x360, 2.4 s, H.264 + MP3 audio
SILENT_VIDEO = "driving_two_people_3s_small.mp4"  # 884x498, 3 s, no audio
SMALL = {"resolution_width": 256, "resolution_height": 256}  # 336x192 frames: quick to encode


def request(**overrides: object) -> object:
    files = {"driving_video": {"path": str(fixture_path(AUDIO_VIDEO))},
             "reference_image": {"path": str(fixture_path("reference_astronaut.png"))}}  # fmt: skip
    return inference.AppInput(**{**files, "fps": 8, "clip_len": 5, "seed": 1, **overrides})


class Recorder:
    """Stand-ins for preprocess() and generate(): frames of the size preprocessing would give, options recorded."""

    def __init__(self) -> None:
        self.preprocess_options: list[object] = []
        self.generation_options: list[object] = []
        self.work_dirs: list[object] = []

    def preprocess(self, driving: Path, reference: Path, options: object, models: object, should_cancel: object = None,
                   work_dir: object = None) -> object:  # fmt: skip
        self.preprocess_options.append(options)
        self.work_dirs.append(work_dir)
        width, height = vio.target_size(16, 9, options.resolution_width * options.resolution_height)
        frames = 6
        noise = np.random.default_rng(0).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
        return pp.Conditioning(pose_frames=noise, face_frames=np.zeros((frames, 512, 512, 3), np.uint8),
                               reference=noise[0], fps=8.0)  # fmt: skip

    def generate(self, models: object, cond: object, options: object, **kwargs: object):
        self.generation_options.append(options)
        yield cond.pose_frames  # textured frames: the CRF changes the file size


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setattr(pp, "preprocess", rec.preprocess)
    monkeypatch.setattr(wan, "generate", rec.generate)
    return rec


def stub_runtime(offload: str = "none") -> object:
    """A single-process worker as far as run_job looks at it (no real models)."""
    return worker.Runtime(
        preset="smoke", device=torch.device("cpu"), preprocess_models=pp.PreprocessModels(ScriptedEstimator()),
        wan_models=SimpleNamespace(offload=offload, relighting_adapter=None, distill=None),
    )  # fmt: skip


def run(inp: object, tmp_path: Path, rt: object | None = None) -> object:
    out_dir = Path(tempfile.mkdtemp(prefix="out-", dir=tmp_path))
    return job.run_job(
        rt or stub_runtime(), inp, driving=Path(inp.driving_video.path), reference=Path(inp.reference_image.path),
        seed=1, work_dir=tmp_path, out_dir=out_dir,
    )  # fmt: skip


def x264_crf(path: Path) -> float:
    """The rate factor x264 wrote into the stream's settings SEI ("... crf=18.0 ...")."""
    found = re.search(rb"crf=([0-9.]+)", path.read_bytes())
    assert found, "no x264 settings in the file"
    return float(found.group(1))


# --- merge_audio, video_quality ----------------------------------------------------------------------


def test_merge_audio_false_gives_a_silent_mp4_from_a_driving_video_with_audio(recorder, tmp_path) -> None:
    assert vdec.probe_video(fixture_path(AUDIO_VIDEO)).has_audio
    with_audio = run(request(**SMALL), tmp_path)  # default: today's behaviour, the driving audio is kept
    assert vdec.probe_video(with_audio.video_path).has_audio
    silent = run(request(merge_audio=False, **SMALL), tmp_path)
    info = vdec.probe_video(silent.video_path)
    assert info.has_audio is False and info.frames == 6


def test_video_quality_sets_the_crf_the_encoder_used(recorder, tmp_path) -> None:
    sizes = {}
    for quality, crf in request_options.VIDEO_QUALITY_CRF.items():
        result = run(request(video_quality=quality, merge_audio=False, **SMALL), tmp_path)
        assert x264_crf(result.video_path) == crf, quality
        sizes[quality] = result.video_path.stat().st_size
    assert x264_crf(run(request(merge_audio=False, **SMALL), tmp_path).video_path) == 18  # the default: 'high', as before
    assert sizes["low"] < sizes["medium"] < sizes["high"] < sizes["maximum"]


# --- resolution -----------------------------------------------------------------------------------------


def test_the_resolution_preset_reaches_preprocessing(recorder, tmp_path) -> None:
    for inp, area in (
        (request(resolution="480p"), (854, 480)),
        (request(resolution="480p", resolution_width=1280, resolution_height=720), (854, 480)),  # a form's defaults
        (request(resolution="480p", resolution_width=832, resolution_height=480), (832, 480)),  # explicit override
        (request(resolution_width=1024, resolution_height=576), (1024, 576)),  # a request from before presets
        (request(), (1280, 720)),
    ):
        result = run(inp, tmp_path)
        options = recorder.preprocess_options[-1]
        assert (options.resolution_width, options.resolution_height) == area
        assert (result.width, result.height) == vio.target_size(16, 9, area[0] * area[1])
        assert recorder.work_dirs[-1] == tmp_path  # preprocessing keeps its frames on disk in the run's work folder


def _reference(tmp_path: Path, width: int, height: int) -> str:
    """The astronaut photo stretched to width x height (the aspect ratio is what matters here)."""
    path = tmp_path / f"reference_{width}x{height}.png"
    Image.open(fixture_path("reference_astronaut.png")).convert("RGB").resize((width, height)).save(path)
    return str(path)


@pytest.mark.parametrize(
    ("reference_size", "overrides", "frame_size"),
    [
        ((1280, 720), {"resolution": "480p"}, (848, 480)),  # 16:9: 480 lines
        ((1664, 960), {"resolution": "480p"}, (832, 480)),  # Wan's 832:480 aspect: exactly 832x480
        ((1664, 960), {"resolution_width": 832, "resolution_height": 480}, (832, 480)),  # the custom 832x480 area
        ((1280, 720), {"resolution_width": 832, "resolution_height": 480}, (832, 464)),  # 16:9, official flooring
        ((1280, 720), {"resolution": "580p"}, (1024, 576)),
        ((720, 1280), {"resolution": "480p"}, (480, 848)),  # portrait
        ((1280, 720), {}, (1280, 720)),  # the default, as before
        ((1280, 720), {"resolution": "480p", "resolution_width": 1280, "resolution_height": 720}, (848, 480)),
    ],
)
def test_frame_size_through_real_preprocessing(tmp_path, reference_size, overrides, frame_size) -> None:
    inp = inference.AppInput(
        driving_video={"path": str(fixture_path(SILENT_VIDEO))},
        reference_image={"path": _reference(tmp_path, *reference_size)},
        fps=2, **overrides,
    )  # fmt: skip
    cond = pp.preprocess(Path(inp.driving_video.path), Path(inp.reference_image.path),
                         request_options.preprocess_options(inp), pp.PreprocessModels(ScriptedEstimator()))  # fmt: skip
    assert (cond.width, cond.height) == frame_size
    assert cond.pose_frames.shape[1:3] == (frame_size[1], frame_size[0])


# --- offload_model in a request ------------------------------------------------------------------------


def test_a_requests_offload_model_is_ignored_with_a_warning_on_a_resident_worker(recorder, tmp_path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="wan_animate"):
        run(request(offload_model=True, merge_audio=False, **SMALL), tmp_path)
    assert recorder.generation_options[-1].offload == "none"  # the worker's own placement, not 'model'
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "offload_model" in r.getMessage()]
    assert len(warnings) == 1 and "ignored" in warnings[0].getMessage()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="wan_animate"):
        run(request(merge_audio=False, **SMALL), tmp_path)  # not asked: nothing said
    assert not [r for r in caplog.records if "offload_model" in r.getMessage()]


def test_an_offloaded_worker_stays_offloaded_and_does_not_warn(recorder, tmp_path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="wan_animate"):
        run(request(offload_model=True, merge_audio=False, **SMALL), tmp_path, stub_runtime(offload="model"))
    messages = [r for r in caplog.records if "offload_model" in r.getMessage()]
    assert [r.levelno for r in messages] == [logging.INFO] and "offloaded already" in messages[0].getMessage()
    # 'none' in the options never lowers the loaded placement (wan.offload.offload_session keeps the stricter one).
    assert recorder.generation_options[-1].offload == "none"
