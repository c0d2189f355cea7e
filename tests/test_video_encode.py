"""preprocess/video_encode: the caller keeps producing frames while ffmpeg is fed from a thread; errors on either
side stop both and reach the caller; ffmpeg is always closed."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from wan_animate.preprocess import video_encode


class FakeFfmpeg:
    """Stands in for imageio_ffmpeg.write_frames: records frames, can block its first frame until `release`."""

    def __init__(self, block_first_frame: bool = False) -> None:
        self.frames: list[np.ndarray] = []
        self.closed = False
        self.block_first_frame = block_first_frame
        self.release = threading.Event()
        self.released_in_time: bool | None = None

    def write_frames(self, path: str, size: tuple[int, int], **_: object) -> Iterator[None]:
        try:
            while True:
                frame = yield
                if frame is None:
                    continue
                if self.block_first_frame and not self.frames:
                    self.released_in_time = self.release.wait(timeout=10)
                self.frames.append(frame)
        finally:
            self.closed = True


def clips(n: int, height: int = 16, width: int = 24) -> list[np.ndarray]:
    return [np.full((2, height, width, 3), i, np.uint8) for i in range(n)]


def test_the_caller_produces_the_next_clip_while_ffmpeg_is_fed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    fake = FakeFfmpeg(block_first_frame=True)
    monkeypatch.setattr(imageio_ffmpeg, "write_frames", fake.write_frames)

    def loop() -> Iterator[np.ndarray]:
        for i, clip in enumerate(clips(3)):
            if i == 2:  # clip 1's frame 0 is still being fed; on the caller's thread this point is never reached
                fake.release.set()
            yield clip

    count = video_encode.encode_h264(tmp_path / "v.mp4", loop(), fps=8, crf=18)
    assert fake.released_in_time is True
    assert count == 6 and len(fake.frames) == 6 and fake.closed
    assert [int(f[0, 0, 0]) for f in fake.frames] == [0, 0, 1, 1, 2, 2]  # in order


def test_a_writer_error_stops_the_caller_and_is_raised(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    fake = FakeFfmpeg()
    monkeypatch.setattr(imageio_ffmpeg, "write_frames", fake.write_frames)
    produced: list[int] = []

    def loop() -> Iterator[np.ndarray]:
        yield clips(1)[0]
        yield clips(1, height=32)[0]  # a different frame size
        for i in range(100):
            produced.append(i)
            yield clips(1)[0]

    with pytest.raises(ValueError, match="frame 2 is 24x32"):
        video_encode.encode_h264(tmp_path / "v.mp4", loop(), fps=8, crf=18)
    assert fake.closed
    assert len(produced) < 100  # the caller stopped soon after, not at the end of the frames
    assert not any(t.name == "wan-h264" for t in threading.enumerate())


def test_a_caller_error_closes_ffmpeg_and_propagates(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    fake = FakeFfmpeg()
    monkeypatch.setattr(imageio_ffmpeg, "write_frames", fake.write_frames)

    def loop() -> Iterator[np.ndarray]:
        yield clips(1)[0]
        for _ in range(1000):  # until ffmpeg has the first frame (at most 10 s)
            if fake.frames:
                break
            time.sleep(0.01)
        raise RuntimeError("out of memory in clip 2")

    with pytest.raises(RuntimeError, match="clip 2"):
        video_encode.encode_h264(tmp_path / "v.mp4", loop(), fps=8, crf=18)
    assert fake.closed
    assert not any(t.name == "wan-h264" for t in threading.enumerate())


def test_real_ffmpeg_writes_every_frame(tmp_path: Path):
    from wan_animate.preprocess.video_decode import probe_video

    frames = [np.full((2, 48, 64, 3), 40 * i, np.uint8) for i in range(4)]
    count = video_encode.encode_h264(tmp_path / "v.mp4", iter(frames), fps=8, crf=18)
    info = probe_video(tmp_path / "v.mp4")
    assert count == 8 and info.frames == 8 and (info.width, info.height) == (64, 48)


def test_no_frames_is_an_error(tmp_path: Path):
    with pytest.raises(ValueError, match="no frames"):
        video_encode.encode_h264(tmp_path / "v.mp4", iter([]), fps=8, crf=18)


def test_the_encode_bench_reports_encode_alone_serial_and_threaded(tmp_path: Path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_video_encode

    argv = ["--clips", "2", "--clip-frames", "4", "--size", "64x48", "--gpu-s", "0.05", "--out", str(tmp_path)]
    assert bench_video_encode.main(argv) == 0
    result = json.loads((tmp_path / "video_encode.json").read_text())
    assert result["encode_alone_s"] > 0 and result["gpu_stand_in_alone_s"] >= 0.1
    assert result["serial_s (encode + stand-in)"] == round(result["encode_alone_s"] + result["gpu_stand_in_alone_s"], 2)
