"""A cancel (the platform's context.cancel_requested, or on_cancel) stops a request at the stage it is in:
pose chunks, SAM2 chunks, denoising steps, the VAE decode, the mux; no temp folder stays, and the same warm worker
runs the next request."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from local_runner import APP_ROOT, import_app_module

inference = import_app_module("inference")
errors = import_app_module("errors")
job = import_app_module("job")  # run_job looks progress_logger up in job
driving_pass = import_app_module("preprocess.driving_pass")
masks_module = import_app_module("preprocess.masks")
video_io = import_app_module("preprocess.video_io")
EXAMPLE = APP_ROOT / "examples" / "smoke"


def smoke_input(**overrides: object) -> object:
    values = dict(
        driving_video={"path": str(EXAMPLE / "driving.mp4")}, reference_image={"path": str(EXAMPLE / "reference.jpg")},
        resolution_width=512, resolution_height=512, fps=2, clip_len=5, sampling_steps=1, seed=1,
    )  # fmt: skip
    values.update(overrides)
    return inference.AppInput(**values)


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "tmproot"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def cancel_from_another_thread(app: object) -> None:
    """What the platform does: call on_cancel off the thread that runs the request."""
    answers = []
    thread = threading.Thread(target=lambda: answers.append(asyncio.run(app.on_cancel())))
    thread.start()
    thread.join()
    assert answers == [True]


def wrap_pose(app: object, monkeypatch: pytest.MonkeyPatch, calls: list[int], cancel) -> Callable | None:
    monkeypatch.setattr(driving_pass, "POSE_CHUNK", 1)  # 4 frames -> 4 chunks
    models = app.runtime.preprocess_models
    estimator = models.pose_estimator

    def counted(frames: np.ndarray) -> list:
        calls.append(len(frames))
        cancel()
        return estimator(frames)

    monkeypatch.setattr(models, "pose_estimator", counted)


def wrap_sam2(app: object, monkeypatch: pytest.MonkeyPatch, calls: list[int], cancel) -> Callable | None:
    segmenter = app.runtime.preprocess_models.segmenter
    segment = segmenter.segment

    def counted(frames: np.ndarray, clicks: dict) -> np.ndarray:
        calls.append(len(frames))
        cancel()
        return segment(frames, clicks)

    monkeypatch.setattr(segmenter, "segment", counted)


def wrap_step(app: object, monkeypatch: pytest.MonkeyPatch, calls: list[int], cancel) -> Callable | None:
    progress_logger = job.progress_logger

    def make(start: float):
        log_step = progress_logger(start)

        def on_step(*args: int) -> None:
            calls.append(args[2])
            cancel()
            log_step(*args)

        return on_step

    monkeypatch.setattr(job, "progress_logger", make)


def wrap_decode(app: object, monkeypatch: pytest.MonkeyPatch, calls: list[int], cancel) -> Callable | None:
    decoder = app.runtime.wan_models.vae.decoder
    handle = decoder.register_forward_hook(lambda *args: (calls.append(1), cancel()))
    return handle.remove


def wrap_encode(app: object, monkeypatch: pytest.MonkeyPatch, calls: list[int], cancel) -> Callable | None:
    encode = video_io.encode_h264

    def counted(*args: object) -> int:
        count = encode(*args)
        calls.append(count)
        cancel()  # the video stream is written: the audio mux comes next
        return count

    monkeypatch.setattr(video_io, "encode_h264", counted)


STAGES = {  # stage -> (wrapper returning its undo or None, request overrides, where Cancelled says it stopped,
    # calls of the stage made before it stopped)
    "pose": (wrap_pose, {}, "during pose estimation", 1),  # 1 of 4 chunks
    "sam2": (wrap_sam2, {"mode": "replacement"}, "after preprocessing", 1),
    "step": (wrap_step, {"sampling_steps": 3}, "at clip 1/1, step 2/3", 1),
    "decode": (wrap_decode, {}, "during the VAE decode of clip 1/1", 1),  # 1 of 2 latent frames
    "mux": (wrap_encode, {}, "before muxing the audio", 1),
}


@pytest.mark.parametrize(("stage", "how"), [(stage, "context") for stage in STAGES] + [("step", "on_cancel")])
def test_cancel_stops_at_the_stage_and_the_next_request_runs(
    smoke_app: object, private_tmp: Path, monkeypatch: pytest.MonkeyPatch, stage: str, how: str
) -> None:
    wrap, overrides, where, expected_calls = STAGES[stage]
    context = SimpleNamespace(cancel_requested=False)
    monkeypatch.setattr(smoke_app, "context", context, raising=False)

    def cancel() -> None:
        if how == "context":
            context.cancel_requested = True  # the platform sets it from another thread
        else:
            cancel_from_another_thread(smoke_app)

    calls: list[int] = []
    undo = wrap(smoke_app, monkeypatch, calls, cancel)
    try:
        with pytest.raises(errors.Cancelled, match=where):
            asyncio.run(smoke_app.run(smoke_input(**overrides)))
    finally:
        if undo is not None:
            undo()
    assert len(calls) == expected_calls
    assert [p.name for p in private_tmp.iterdir()] == []  # run and output folders both removed
    monkeypatch.undo()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    output = asyncio.run(smoke_app.run(smoke_input(**overrides)))  # cancel_requested is False again, event reset
    assert Path(output.video.path).is_file() and output.num_frames == 4


class CountingSegmenter:
    def __init__(self) -> None:
        self.calls = 0

    def segment(self, frames: np.ndarray, clicks: dict) -> np.ndarray:
        self.calls += 1
        return np.ones(frames.shape[:3], bool)


def test_person_masks_checks_the_cancel_before_every_sam2_chunk() -> None:
    from test_masks import standing_pose

    frames = np.zeros((6, 48, 64, 3), np.uint8)
    poses = [standing_pose() for _ in range(6)]
    segmenter = CountingSegmenter()
    with pytest.raises(errors.Cancelled, match="SAM2 chunk 2/3"):
        masks_module.person_masks(frames, poses, segmenter, chunk_size=2, should_cancel=lambda: segmenter.calls >= 1)
    assert segmenter.calls == 1
    masks = masks_module.person_masks(frames, poses, segmenter, chunk_size=2, should_cancel=lambda: False)
    assert masks.shape == (6, 48, 64) and segmenter.calls == 4


def test_a_cancel_while_muxing_kills_and_reaps_ffmpeg() -> None:
    """The mux runs as a child process polled for the cancel: it is killed, waited for, and Cancelled raised."""
    polls = []

    def should_cancel() -> bool:
        polls.append(1)
        return len(polls) >= 2

    command = [sys.executable, "-c", "import time; time.sleep(120)"]  # stands in for a long ffmpeg mux
    started = []
    popen = subprocess.Popen

    def recording_popen(*args: object, **kwargs: object) -> subprocess.Popen:
        started.append(popen(*args, **kwargs))
        return started[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess, "Popen", recording_popen)
        with pytest.raises(errors.Cancelled, match="while muxing"):
            video_io._run_cancellable(command, 600, should_cancel)
    assert len(started) == 1 and started[0].returncode is not None  # dead and reaped, not left running


def test_a_failed_mux_command_still_raises_called_process_error() -> None:
    with pytest.raises(subprocess.CalledProcessError) as info:
        video_io._run_cancellable([sys.executable, "-c", "import sys; sys.stderr.write('bad'); sys.exit(3)"], 60)
    assert info.value.returncode == 3 and b"bad" in info.value.stderr
