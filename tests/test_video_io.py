"""video_io: probing/reading the real fixtures, the official size and fps rules, image loading, MP4 writing."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest
from conftest import fixture_path
from PIL import Image
from wan_animate.errors import InputError
from wan_animate.preprocess import video_decode as vdec
from wan_animate.preprocess import video_io as vio


def _ffmpeg_info(path) -> str:
    return subprocess.run([vio.ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr


def _duration(path) -> float:
    h, m, s = re.search(r"Duration: (\d+):(\d+):([\d.]+)", _ffmpeg_info(path)).groups()
    return int(h) * 3600 + int(m) * 60 + float(s)


# --- probing and reading ---------------------------------------------------------------------------


def test_probe_small_fixture():
    info = vdec.probe_video(fixture_path("driving_two_people_3s_small.mp4"))
    assert (info.frames, info.width, info.height) == (90, 884, 498)
    assert info.fps == pytest.approx(30.0)
    assert info.duration == pytest.approx(3.0, abs=0.05)
    assert info.has_audio is False


def test_probe_detects_audio():
    info = vdec.probe_video(fixture_path("driving_face_closeup.mp4"))
    assert info.has_audio is True
    assert (info.frames, info.width, info.height) == (72, 640, 360)


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".gif"])
def test_a_still_image_as_driving_video_is_a_clear_error(tmp_path, suffix):
    """A picture uploaded as the driving video is named as one (FFmpeg reads a JPEG as a 0.04 s, 25 fps video)."""
    path = tmp_path / f"still{suffix}"
    Image.open(fixture_path("reference_grace_hopper.jpg")).convert("RGB").save(path)
    with pytest.raises(InputError) as caught:
        vdec.probe_video(path)
    assert (caught.value.code, caught.value.field) == ("video_too_short", "driving_video")
    kind = {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".gif": "GIF"}[suffix]
    assert f"still image ({kind})" in str(caught.value)


def test_a_one_frame_mp4_is_still_a_video(tmp_path):
    """Only pictures are refused: a one-frame MP4 probes as a video (the pipeline pads it to a clip)."""
    single = tmp_path / "one.mp4"
    subprocess.run([vio.ffmpeg_exe(), "-loglevel", "error", "-i", str(fixture_path("driving_two_people_3s_small.mp4")),
                    "-frames:v", "1", "-an", str(single)], check=True)  # fmt: skip
    assert vdec.probe_video(single).frames == 1


def test_read_frames_returns_requested_rgb_frames():
    path = fixture_path("driving_two_people_3s_small.mp4")
    frames = vdec.read_frames(path, [0, 45, 89])
    assert frames.shape == (3, 498, 884, 3) and frames.dtype == np.uint8
    # chunked reading gives the same pixels as one read of the same frames
    chunks = list(vdec.iter_frames(path, [0, 45, 89], chunk=2))
    assert [len(c) for c in chunks] == [2, 1]
    np.testing.assert_array_equal(np.concatenate(chunks), frames)
    assert frames[1].std() > 10  # real picture content, not a blank frame


def test_official_frame_count_rule():
    # 100 frames reported, but 2.0 s at 30 fps means 60: more than 10 % off -> 60 is used
    assert vio.official_frame_count(vdec.VideoInfo(100, 30.0, 64, 64, 2.0, False)) == 60
    # 62 vs 60: within 10 % -> the reported count stands
    assert vio.official_frame_count(vdec.VideoInfo(62, 30.0, 64, 64, 2.0, False)) == 62


# --- official rules --------------------------------------------------------------------------------


def test_frame_indices_downsample():
    # 90 frames at 30 fps -> 10 fps: int(90 / 30 * 10) = 30 frames, every third source frame
    assert vio.frame_indices_for_fps(90, 30.0, 10) == list(range(0, 90, 3))
    # -> 8 fps: 24 frames at source positions i * 3.75, rounded half to even: 0, 3.75, 7.5, 11.25, 15, 18.75, 22.5
    idx = vio.frame_indices_for_fps(90, 30.0, 8)
    assert len(idx) == 24
    assert idx[:7] == [0, 4, 8, 11, 15, 19, 22]


def test_frame_indices_upsample_and_keep():
    # 30 -> 60 fps: 180 frames, source i / 2 rounded half to even, clipped to 89
    idx = vio.frame_indices_for_fps(90, 30.0, 60)
    assert len(idx) == 180
    assert idx[:8] == [0, 0, 1, 2, 2, 2, 3, 4]
    assert idx[-1] == 89  # 179 / 2 = 89.5 -> 90 (half to even) -> clipped to 89
    assert vio.frame_indices_for_fps(7, 29.97, -1) == list(range(7))


def test_target_size_effective_official_rule():
    # 884x498 at 1280*720: aspect 1.7751; h = sqrt(921600 / 1.7751) = 720.5 -> 720; w = 921600 / 720.5 = 1279.1 -> 1264
    assert vio.target_size(884, 498, 1280 * 720) == (1264, 720)
    # square: sqrt(921600) = 960 on both sides
    assert vio.target_size(512, 512, 1280 * 720) == (960, 960)
    # 1920x1080 at 832*480: h = sqrt(399360 / 1.7778) = 473.96 -> 464; w = 842.6 -> 832
    assert vio.target_size(1920, 1080, 832 * 480) == (832, 464)
    # portrait 498x884: sides swap
    assert vio.target_size(498, 884, 1280 * 720) == (720, 1264)


def test_target_size_refuses_a_side_that_floors_to_nothing():
    assert vio.target_size(3840, 16, 256 * 256) == (3952, 16)  # 240:1 still gives 16-pixel rows
    for width, height in ((3840, 14), (14, 3840), (5120, 10)):  # a 0-pixel side (the official code crashes)
        with pytest.raises(InputError) as info:
            vio.target_size(width, height, 256 * 256)
        assert (info.value.code, info.value.field) == ("aspect_ratio_too_extreme", "resolution")


def test_letterbox_bars_and_truncation():
    white = np.full((50, 100, 3), 255, np.uint8)  # wide image into a square
    out = vio.letterbox(white, 100, 100)
    assert out.shape == (100, 100, 3)
    assert (out[25:75] == 255).all() and (out[:25] == 0).all() and (out[75:] == 0).all()
    tall = np.full((100, 100, 3), 255, np.uint8)  # square into a wide frame: bars left/right
    out = vio.letterbox(tall, 50, 200)
    assert (out[:, 75:125] == 255).all() and (out[:, :75] == 0).all() and (out[:, 125:] == 0).all()
    # 3x7 into 10x10: new height int(10 / 7 * 3) = 4, top bar int((10 - 4) / 2) = 3
    out = vio.letterbox(np.full((3, 7, 3), 200, np.uint8), 10, 10)
    rows = np.flatnonzero(out[:, 5, 0])
    assert rows.tolist() == [3, 4, 5, 6]


def test_resize_by_area_output_size():
    frame = np.full((498, 884, 3), 90, np.uint8)
    out = vio.resize_by_area(frame, 1280 * 720)
    assert out.shape == (720, 1264, 3)
    # 884x498 into 1264x720: width-limited, height int(1264 / 884 * 498) = 712, bars of int(8 / 2) = 4
    assert (out[:4] == 0).all() and (out[4:716] == 90).all() and (out[716:] == 0).all()


# --- images ----------------------------------------------------------------------------------------


def test_load_image_fixture():
    img = vio.load_image(fixture_path("reference_astronaut.png"))
    assert img.shape == (512, 512, 3) and img.dtype == np.uint8


def test_load_image_alpha_over_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red
    rgba[:2, :, 3] = 255  # top half opaque, bottom half fully transparent
    Image.fromarray(rgba).save(tmp_path / "a.png")
    img = vio.load_image(tmp_path / "a.png")
    assert img[0, 0].tolist() == [255, 0, 0]
    assert img[3, 3].tolist() == [255, 255, 255]


def test_load_image_exif_orientation(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :10] = (255, 0, 0)  # left half red
    arr[:, 10:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(arr).save(tmp_path / "o.jpg", exif=exif, quality=95)
    img = vio.load_image(tmp_path / "o.jpg")
    assert img.shape == (20, 10, 3)  # rotated
    assert img[2, 5, 0] > 200 and img[2, 5, 2] < 60  # the left (red) side is now on top
    assert img[17, 5, 2] > 200 and img[17, 5, 0] < 60


def test_load_image_modes(tmp_path):
    Image.fromarray(np.full((3, 3), 77, np.uint8)).save(tmp_path / "g.png")
    assert vio.load_image(tmp_path / "g.png")[0, 0].tolist() == [77, 77, 77]
    sixteen = np.array([[65535, 32896], [0, 257]], np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "s.png")  # 16-bit greyscale PNG
    img = vio.load_image(tmp_path / "s.png")
    assert img[..., 0].tolist() == [[255, 128], [0, 1]]  # value / 257
    Image.new("CMYK", (3, 3), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    r, g, b = vio.load_image(tmp_path / "c.jpg")[1, 1].tolist()
    assert r > 240 and g < 15 and b < 15


@pytest.mark.parametrize("content, code", [(b"", "empty_file"), (b"not an image at all" * 10, "unreadable_image")])
def test_load_image_errors(tmp_path, content, code):
    (tmp_path / "bad.png").write_bytes(content)
    with pytest.raises(InputError) as err:
        vio.load_image(tmp_path / "bad.png")
    assert (err.value.code, err.value.field) == (code, "reference_image")


def test_video_errors(tmp_path):
    (tmp_path / "junk.mp4").write_bytes(b"\x00garbage" * 500)
    with pytest.raises(InputError) as err:
        vdec.probe_video(tmp_path / "junk.mp4")
    assert (err.value.code, err.value.field) == ("unreadable_video", "driving_video")
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(fixture_path("driving_two_people_3s_small.mp4").read_bytes()[:3000])
    with pytest.raises(InputError) as err:
        vdec.probe_video(truncated)
    assert err.value.field == "driving_video"
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(InputError) as err:
        vdec.probe_video(tmp_path / "empty.mp4")
    assert err.value.code == "empty_file"


# --- writing ---------------------------------------------------------------------------------------


def _gradient_frames(n: int, h: int, w: int) -> list[np.ndarray]:
    return [np.full((h, w, 3), (20 * i, 100, 200 - 10 * i), np.uint8) for i in range(n)]


def test_write_video_roundtrip(tmp_path):
    frames = _gradient_frames(10, 48, 64)
    # clips (n, H, W, 3) and single frames are both accepted
    out = vio.write_video(tmp_path / "v.mp4", iter([np.stack(frames[:4]), *frames[4:]]), fps=8)
    info = vdec.probe_video(out)
    assert (info.frames, info.width, info.height, info.has_audio) == (10, 64, 48, False)
    assert info.fps == pytest.approx(8.0)
    back = vdec.read_frames(out, list(range(10)))
    assert np.abs(back.astype(int) - np.stack(frames).astype(int)).mean() < 4  # lossy but close
    assert "h264" in _ffmpeg_info(out) and "yuv420p" in _ffmpeg_info(out)


def test_write_video_grey_frames_and_clips(tmp_path):
    masks = np.zeros((3, 32, 64), np.uint8)  # (decord misreads some widths under 80 px)
    masks[:, 8:24, 16:32] = 255
    out = vio.write_video(tmp_path / "m.mp4", iter([masks[:2], masks[2]]), fps=5)  # a grey clip, then a frame
    back = vdec.read_frames(out, [0, 1, 2])
    assert back.shape == (3, 32, 64, 3)
    assert back[:, 12:20, 20:28].min() > 200 and back[:, :4, :8].max() < 40


def test_write_video_odd_size_is_padded_even(tmp_path):
    out = vio.write_video(tmp_path / "odd.mp4", _gradient_frames(3, 17, 33), fps=5)
    info = vdec.probe_video(out)
    assert (info.width, info.height) == (34, 18)


def test_write_video_muxes_trimmed_audio(tmp_path):
    source = fixture_path("driving_face_closeup.mp4")  # 2.4 s with audio
    out = vio.write_video(tmp_path / "a.mp4", _gradient_frames(10, 48, 64), fps=8, audio_from=source,
                          audio_duration=10 / 8, work_dir=tmp_path / "work")  # fmt: skip
    info = vdec.probe_video(out)
    assert info.has_audio and info.frames == 10
    assert _duration(out) == pytest.approx(1.25, abs=0.1)  # audio cut to the video, not the source's 2.4 s
    assert list((tmp_path / "work").iterdir()) == []  # the video-only temporary file is gone


def test_write_video_without_source_audio_stays_silent(tmp_path):
    out = vio.write_video(tmp_path / "s.mp4", _gradient_frames(4, 32, 32), fps=4,
                          audio_from=fixture_path("driving_two_people_3s_small.mp4"))  # fmt: skip
    assert vdec.probe_video(out).has_audio is False


def test_decoding_stops_with_a_clear_error_past_its_time_budget():
    path = fixture_path("driving_two_people_3s_small.mp4")
    chunks = vdec.iter_frames(path, list(range(40)), chunk=20, timeout_s=0.0)
    assert next(chunks).shape[0] == 20  # the first chunk is decoded, then the budget is spent
    with pytest.raises(InputError) as info:
        next(chunks)
    assert (info.value.code, info.value.field) == ("decode_timeout", "driving_video")
    assert sum(c.shape[0] for c in vdec.iter_frames(path, list(range(40)), chunk=20)) == 40  # default budget: all
