"""Driving videos in every common codec, container, bit depth, rotation and frame timing decode to the right frames.

The test videos are built once per session from the real fixture with imageio-ffmpeg's ffmpeg: 12 frames at 160x90,
each with a white marker at a position that names the frame, so a decoded frame can be matched to its source.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import fixture_path
from wan_animate.errors import InputError
from wan_animate.preprocess import pipeline
from wan_animate.preprocess import video_decode as vdec
from wan_animate.preprocess import video_io as vio

W, H, N, FPS = 160, 90, 12, 12

# name -> (container suffix, ffmpeg output options)
CODECS: dict[str, tuple[str, list[str]]] = {
    "h264_mp4": (".mp4", ["-c:v", "libx264", "-pix_fmt", "yuv420p"]),
    "h264_10bit_mkv": (".mkv", ["-c:v", "libx264", "-pix_fmt", "yuv420p10le"]),
    "h264_mov": (".mov", ["-c:v", "libx264", "-pix_fmt", "yuv420p"]),
    "h264_avi": (".avi", ["-c:v", "libx264", "-pix_fmt", "yuv420p"]),
    "hevc_mp4": (".mp4", ["-c:v", "libx265", "-pix_fmt", "yuv420p", "-tag:v", "hvc1", "-x265-params", "log-level=error"]),
    "hevc_10bit_mkv": (".mkv", ["-c:v", "libx265", "-pix_fmt", "yuv420p10le", "-x265-params", "log-level=error"]),
    "vp9_webm": (".webm", ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "1M"]),
    "vp9_10bit_mp4": (".mp4", ["-c:v", "libvpx-vp9", "-pix_fmt", "yuv420p10le", "-deadline", "realtime", "-b:v", "1M"]),
    "av1_mp4": (".mp4", ["-c:v", "libaom-av1", "-cpu-used", "8", "-usage", "realtime", "-b:v", "1M"]),
    "av1_10bit_webm": (".webm", ["-c:v", "libaom-av1", "-cpu-used", "8", "-usage", "realtime", "-pix_fmt",
                                 "yuv420p10le", "-b:v", "1M"]),  # fmt: skip
    "prores_mov": (".mov", ["-c:v", "prores_ks", "-pix_fmt", "yuv422p10le"]),
    "mjpeg_avi": (".avi", ["-c:v", "mjpeg", "-q:v", "2", "-pix_fmt", "yuvj420p"]),
}


def _source_frames() -> np.ndarray:
    """(N, H, W, 3): frames of the real fixture, shrunk, each with a 14x14 white marker at x = 6 + 12 * i."""
    import cv2

    real = vdec.read_frames(fixture_path("driving_two_people_3s_small.mp4"), [7 * i for i in range(N)])
    frames = np.stack([cv2.resize(f, (W, H), interpolation=cv2.INTER_AREA) for f in real])
    for i, frame in enumerate(frames):
        frame[38:52, 6 + 12 * i : 20 + 12 * i] = 255
    return frames


def _encode(frames: np.ndarray, out: Path, options: list[str], rate: int = FPS) -> Path:
    """Pipe raw RGB frames (at `rate` per second) through the bundled ffmpeg into `out`."""
    cmd = [vio.ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{frames.shape[2]}x{frames.shape[1]}", "-r", str(rate), "-i", "-",
           *options, str(out)]  # fmt: skip
    subprocess.run(cmd, input=frames.tobytes(), check=True, capture_output=True, timeout=120)
    return out


def _ffmpeg_decode(path: Path, width: int, height: int, select: list[int] | None = None) -> np.ndarray:
    """(n, height, width, 3): every frame (or the `select`ed ones) as ffmpeg itself decodes it (auto-rotation on)."""
    picks = ["-vf", "select='" + "+".join(f"eq(n,{i})" for i in select) + "'"] if select else []
    cmd = [vio.ffmpeg_exe(), "-v", "error", "-i", str(path), *picks, "-fps_mode", "passthrough", "-f", "rawvideo",
           "-pix_fmt", "rgb24", "-"]  # fmt: skip
    raw = subprocess.run(cmd, check=True, capture_output=True, timeout=120).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


@pytest.fixture(scope="session")
def sources() -> np.ndarray:
    return _source_frames()


@pytest.fixture(scope="session")
def videos(sources: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("codecs")
    return {name: _encode(sources, folder / f"{name}{suffix}", opts) for name, (suffix, opts) in CODECS.items()}


def _identities(decoded: np.ndarray, sources: np.ndarray) -> tuple[list[int], list[float]]:
    """For each decoded frame: the source frame it is closest to, and the mean absolute difference to that one."""
    diffs = np.abs(decoded[:, None].astype(np.int16) - sources[None].astype(np.int16)).mean(axis=(2, 3, 4))
    return diffs.argmin(axis=1).tolist(), diffs.min(axis=1).tolist()


@pytest.mark.parametrize("name", list(CODECS))
def test_every_codec_decodes_the_right_frames(name, videos, sources):
    path = videos[name]
    info = vdec.probe_video(path)
    assert (info.frames, info.width, info.height) == (N, W, H)
    assert info.fps == pytest.approx(FPS) and info.duration == pytest.approx(N / FPS, abs=0.01)
    assert not info.variable_rate
    frames = vdec.read_frames(path, list(range(N)))
    assert frames.shape == (N, H, W, 3)
    which, error = _identities(frames, sources)
    assert which == list(range(N))
    assert max(error) < 12  # lossy, but the same picture
    # non-sequential picks, as the pipeline makes them for a lower fps, in chunks: the same pixels
    picked = pipeline._frame_indices(info, 5)
    assert picked == [0, 2, 5, 7, 10]
    chunks = list(vdec.iter_frames(path, picked, chunk=2))
    np.testing.assert_array_equal(np.concatenate(chunks), frames[picked])


def test_any_order_and_repeats(videos, sources):
    order = [5, 0, 11, 5, 5, 3]
    frames = vdec.read_frames(videos["hevc_mp4"], order)
    assert _identities(frames, sources)[0] == order


@pytest.mark.parametrize("degrees", [90, 180, 270])
@pytest.mark.parametrize("suffix", [".mp4", ".mov"])
def test_rotated_phone_videos_come_out_upright(degrees, suffix, videos, tmp_path):
    rotated = tmp_path / f"rot{degrees}{suffix}"
    cmd = [vio.ffmpeg_exe(), "-v", "error", "-y", "-display_rotation", str(degrees), "-i", str(videos["h264_mp4"]),
           "-c", "copy", str(rotated)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    info = vdec.probe_video(rotated)
    width, height = (H, W) if degrees in (90, 270) else (W, H)
    assert (info.width, info.height, info.rotation) == (width, height, degrees)
    ours = vdec.read_frames(rotated, list(range(N)))
    theirs = _ffmpeg_decode(rotated, width, height)  # ffmpeg's own auto-rotation
    assert ours.shape == theirs.shape == (N, height, width, 3)
    assert np.abs(ours.astype(int) - theirs).mean() < 1.0
    unrotated = vdec.read_frames(videos["h264_mp4"], [0])[0]
    assert not np.array_equal(ours[0], unrotated) if degrees == 180 else ours[0].shape != unrotated.shape


def test_variable_frame_rate_picks_frames_by_time(sources, tmp_path):
    # frames 0-5 one per 1/6 s, frames 6-11 one per 1/24 s: 1.0 s + 0.25 s
    options = ["-vf", "setpts='if(lt(N,6),N*4,24+(N-6))'", "-fps_mode", "vfr", "-c:v", "libx264", "-pix_fmt", "yuv420p"]
    vfr = _encode(sources, tmp_path / "vfr.mp4", options, rate=24)  # time base 1/24 s
    info = vdec.probe_video(vfr)
    assert info.frames == N and info.variable_rate
    assert info.frame_times[:7] == pytest.approx([0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0], abs=1e-3)
    # at 12 fps, the frame on screen at i / 12 s: frames 0-5 each twice, then the fast part every other frame
    picked = pipeline._frame_indices(info, 12)
    assert picked[:12] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert picked[12:] == [6, 8, 10][: len(picked) - 12]
    frames = vdec.read_frames(vfr, picked)
    assert _identities(frames, sources)[0] == picked
    # index arithmetic (constant rate) would have shown frame 6 at 0.5 s, half a second early
    assert vio.frame_indices_for_fps(info.frames, info.fps, 12)[6] != picked[6]


def test_real_vp9_fixture_decodes_at_sampled_frames():
    path = fixture_path("driving_two_people_walk.mp4")  # VP9 + AAC in MP4, 1768x994 (refused by decord)
    info = vdec.probe_video(path)
    assert (info.frames, info.width, info.height, info.has_audio) == (230, 1768, 994, True)
    picked = pipeline._frame_indices(info, 16)
    assert len(picked) == 122 and picked[:4] == [0, 2, 4, 6]
    chunks = vdec.iter_frames(path, picked, chunk=61)  # the pipeline's picks, decoded in one pass
    first = next(chunks)
    assert first.shape == (61, 994, 1768, 3)
    last = next(chunks)[-1]
    theirs = _ffmpeg_decode(path, 1768, 994, select=[0, picked[60], picked[60] + 2, picked[121]])
    assert np.abs(first[0].astype(int) - theirs[0]).mean() < 1.0
    assert np.abs(first[60].astype(int) - theirs[1]).mean() < 1.0
    assert np.abs(last.astype(int) - theirs[3]).mean() < 1.0
    assert np.abs(first[60].astype(int) - theirs[2]).mean() > 1.0  # a neighbouring frame is told apart


def test_truncated_video_decodes_what_is_there_or_says_why(videos, tmp_path):
    data = videos["h264_mp4"].read_bytes()
    for share in (0.5, 0.9):
        cut = tmp_path / f"cut{share}.mkv"
        source = Path(str(videos["h264_mp4"]).replace(".mp4", ".mkv"))
        if not source.exists():
            subprocess.run([vio.ffmpeg_exe(), "-v", "error", "-y", "-i", str(videos["h264_mp4"]), "-c", "copy",
                            str(source)], check=True, capture_output=True)  # fmt: skip
        data = source.read_bytes()
        cut.write_bytes(data[: int(len(data) * share)])
        noisy = bytearray(data)  # the same file with its second half overwritten by noise
        noisy[len(data) // 2 :] = np.random.default_rng(0).integers(0, 256, len(data) - len(data) // 2, np.uint8).tobytes()
        (tmp_path / f"noisy{share}.mkv").write_bytes(bytes(noisy))
        for broken in (cut, tmp_path / f"noisy{share}.mkv"):
            try:
                info = vdec.probe_video(broken)
                frames = vdec.read_frames(broken, list(range(info.frames)))
            except InputError as error:  # the only exception a broken file may raise
                assert error.field == "driving_video"
            else:
                assert 0 < len(frames) <= N and frames.shape[1:] == (H, W, 3)


def test_decoding_turns_off_pyav_log_callback(videos):
    """torchvision (imported by the app) installs PyAV's Python log callback, which deadlocked frame-threaded decoding
    when a codec was closed while a decoder thread logged (seen in tests/test_bad_inputs.py)."""
    import av

    av.logging.set_level(av.logging.ERROR)
    try:
        assert vdec.probe_video(videos["h264_mp4"]).frames == N
        assert av.logging.get_level() is None
    finally:
        av.logging.set_level(None)
