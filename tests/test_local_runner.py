"""JSON in -> MP4 out through the local runner with the smoke preset (tiny random weights, real code paths)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from local_runner import APP_ROOT, main

EXAMPLE = APP_ROOT / "examples" / "smoke"


def ffprobe_streams(path: Path) -> str:
    """ffmpeg's own description of the file's streams (imageio-ffmpeg ships the binary)."""
    import imageio_ffmpeg

    result = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    return result.stderr


def count_frames(path: Path) -> int:
    import imageio_ffmpeg

    frames, _seconds = imageio_ffmpeg.count_frames_and_secs(str(path))
    return frames


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    out = tmp_path_factory.mktemp("smoke")
    code = main(["run", str(EXAMPLE / "input.json"), "--setup", str(EXAMPLE / "setup.json"), "--output-dir", str(out)])
    return code, out


def test_smoke_example_writes_an_mp4_with_the_expected_frames_size_fps_and_audio(smoke_run: tuple[int, Path]) -> None:
    code, out = smoke_run
    assert code == 0
    result = json.loads((out / "output.json").read_text())
    video = Path(result["video"]["path"])
    assert video.is_file() and video.parent == out
    # 2.0 s of 15 fps source resampled to 8 fps: int(30 / 15 * 8) = 16 frames.
    assert result["num_frames"] == 16 and count_frames(video) == 16
    # Animation mode sizes from the reference image (512x600) at area 512*512, sides floored to 16:
    # h = sqrt(262144 * 600 / 512) = 554.3 -> 544, w = 262144 / 554.3 = 472.96 -> 464.
    assert (result["width"], result["height"]) == (464, 544)
    streams = ffprobe_streams(video)
    assert re.search(r"Video: h264.*464x544", streams), streams
    assert re.search(r"\b8 fps\b", streams), streams
    assert "Audio:" in streams  # the driving clip has an AAC track: carried over
    assert result["seed"] == 42
    assert result["output_meta"]["outputs"][0]["seconds"] == pytest.approx(2.0)
    assert set(result["timings"]) >= {"preprocess", "generate_and_encode", "total"}


def test_bad_json_input_exits_2_with_the_field_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    request = json.loads((EXAMPLE / "input.json").read_text())
    request["clip_len"] = 10
    request["driving_video"] = {"path": str(EXAMPLE / "driving.mp4")}
    request["reference_image"] = {"path": str(EXAMPLE / "reference.jpg")}
    path = tmp_path / "input.json"
    path.write_text(json.dumps(request))
    assert main(["run", str(path), "--setup", str(EXAMPLE / "setup.json"), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "clip_len" in err and "4n+1" in err and "Traceback" not in err


def test_missing_file_exits_2_naming_the_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "input.json"
    path.write_text(json.dumps({"driving_video": {"path": "nope.mp4"}, "reference_image": {"path": "nope.png"}}))
    assert main(["run", str(path), "--setup", str(EXAMPLE / "setup.json"), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "[file_not_found] driving_video" in err


def test_replacement_mode_runs_end_to_end_with_debug_videos(tmp_path: Path) -> None:
    request = json.loads((EXAMPLE / "input.json").read_text())
    request.update(
        driving_video={"path": str(EXAMPLE / "driving.mp4")},
        reference_image={"path": str(EXAMPLE / "reference.jpg")},
        mode="replacement", fps=4, clip_len=5, sampling_steps=1, return_debug_videos=True,
        mask_iterations=2, mask_kernel_size=5, mask_w_subdivisions=2, mask_h_subdivisions=3,
    )  # fmt: skip
    path = tmp_path / "input.json"
    path.write_text(json.dumps(request))
    out = tmp_path / "out"
    assert main(["run", str(path), "--setup", str(EXAMPLE / "setup.json"), "--output-dir", str(out)]) == 0
    result = json.loads((out / "output.json").read_text())
    # Replacement sizes from the driving video (448x252) at area 512*512: h = sqrt(262144 * 252 / 448) = 384.0,
    # w = 262144 / 384 = 682.7 -> 672 (floored to 16).
    assert (result["width"], result["height"], result["num_frames"]) == (672, 384, 8)
    assert count_frames(Path(result["video"]["path"])) == 8
    for key in ("pose_video", "face_video", "mask_video"):
        assert Path(result[key]["path"]).is_file(), key
    assert count_frames(Path(result["mask_video"]["path"])) == 8


@pytest.mark.slow
def test_torchrun_two_processes_write_the_same_video_once(tmp_path: Path) -> None:
    """`torchrun --nproc-per-node 2 -m local_runner run ...` on CPU (gloo, ulysses): rank 0 alone prints and
    writes output.json, rank 1 stays quiet, and the video is the one-process smoke run's, frame for frame."""
    import os
    import sys

    import numpy as np
    from wan_animate.preprocess.video_decode import iter_frames, probe_video

    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "local_runner",
        "run", str(EXAMPLE / "input.json"), "--setup", str(EXAMPLE / "setup.json"), "--output-dir", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=APP_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    printed = json.loads(result.stdout[result.stdout.index("{") :])  # one JSON document: rank 0's
    assert printed == json.loads((out / "output.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["output.json", "video.mp4"]
    assert "[rank 1]" not in result.stderr
    assert "rank 0 of 2 on cpu: context parallel 'ulysses'" in result.stderr

    def frames(path: Path) -> np.ndarray:
        return np.concatenate(list(iter_frames(path, list(range(probe_video(path).frames)))))

    # The one-process run under the same thread count: CPU kernels sum in a thread-count-dependent order, and the
    # random smoke weights turn those last-bit differences into visible ones.
    single_out = tmp_path / "single"
    one = subprocess.run([sys.executable, "-m", "local_runner", "run", str(EXAMPLE / "input.json"), "--setup",
                          str(EXAMPLE / "setup.json"), "--output-dir", str(single_out)],
                         cwd=APP_ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr[-5000:]
    single = json.loads((single_out / "output.json").read_text())
    assert {k: printed[k] for k in ("num_frames", "width", "height", "seed")} == {
        k: single[k] for k in ("num_frames", "width", "height", "seed")
    }
    np.testing.assert_array_equal(frames(out / "video.mp4"), frames(Path(single["video"]["path"])))


def test_distill_request_runs_end_to_end_with_the_loras_settings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`distill: true` alone: the smoke worker's distillation LoRA (random, in the release's layout) and 4 steps."""
    request = json.loads((EXAMPLE / "input.json").read_text())
    del request["sampling_steps"]  # the example sets 2: left out, distill brings its own 4
    request.update(
        driving_video={"path": str(EXAMPLE / "driving.mp4")}, reference_image={"path": str(EXAMPLE / "reference.jpg")},
        mode="replacement", fps=4, clip_len=5, distill=True,
    )  # fmt: skip
    path = tmp_path / "input.json"
    path.write_text(json.dumps(request))
    out = tmp_path / "out"
    with caplog.at_level("INFO", logger="wan_animate"):
        assert main(["run", str(path), "--setup", str(EXAMPLE / "setup.json"), "--output-dir", str(out)]) == 0
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("generate: clip")]
    assert len(steps) == 2 * 4 and all("/4 (" in line for line in steps)  # 2 clips of 5 frames (1 carried), 4 steps
    result = json.loads((out / "output.json").read_text())
    assert result["num_frames"] == 8 and count_frames(Path(result["video"]["path"])) == 8
    extra = result["output_meta"]["outputs"][0]["extra"]
    assert (extra["distill"], extra["sampling_steps"], extra["guide_scale"]) == (True, 4, 1.0)


def test_readme_example_with_a_url_in_path_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README's request shape, `{"path": "https://..."}` for the video and a path relative to the JSON for the image,
    through the runner with the driving video on a local HTTP server (fast settings added for the CPU)."""
    import shutil

    from http_server import Route, serve

    monkeypatch.setenv("FILE_CACHE_DIR", str(tmp_path / "cache"))
    shutil.copyfile(EXAMPLE / "reference.jpg", tmp_path / "character.png")
    route = Route((EXAMPLE / "driving.mp4").read_bytes())
    with serve({"/dance.mp4": route}) as url:
        request = {"driving_video": {"path": url("/dance.mp4")}, "reference_image": {"path": "character.png"},
                   "mode": "animation", "sampling_steps": 1, "fps": 4, "clip_len": 5,
                   "resolution_width": 512, "resolution_height": 512}  # fmt: skip
        (tmp_path / "input.json").write_text(json.dumps(request))
        monkeypatch.chdir(APP_ROOT)  # not the request's folder: character.png resolves against the JSON's
        out = tmp_path / "out"
        assert main(["run", str(tmp_path / "input.json"), "--setup", str(EXAMPLE / "setup.json"), "--output-dir",
                     str(out)]) == 0  # fmt: skip
    result = json.loads((out / "output.json").read_text())
    assert result["num_frames"] == 8 and count_frames(Path(result["video"]["path"])) == 8
    assert route.requests == 1
