"""Reading the user's image, the official frame-size and frame-rate rules, writing MP4s.

Probing and decoding the driving video live in video_decode (PyAV), H.264 encoding in video_encode; this module's
audio muxing and the encoder both use the ffmpeg binary that imageio-ffmpeg bundles (no system ffmpeg is assumed).
Every user-fixable failure becomes an InputError naming the input (`driving_video` / `reference_image`).
"""

from __future__ import annotations

import logging
import math
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np

from ..errors import InputError, check_cancel
from ..limits import LIMITS
from .video_decode import VideoInfo
from .video_encode import encode_h264

logger = logging.getLogger(__name__)

IMAGE_FIELD = "reference_image"


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled with imageio-ffmpeg."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _has_audio_stream(path: Path) -> bool:
    """True when ffmpeg lists an audio stream in the file (ffmpeg -i prints stream info to stderr)."""
    try:
        result = subprocess.run(
            [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        logger.warning("could not probe audio of %s: %s", path, error)
        return False
    return re.search(r"Stream #\d+:\d+.*: Audio:", result.stderr) is not None


def official_frame_count(info: VideoInfo) -> int:
    """Frame count the official pipeline works with.

    Containers sometimes report a wrong count; like the official code, when it differs from
    duration*fps by more than 10 %, duration*fps (rounded) is used instead.
    """
    expected = int(info.duration * info.fps + 0.5)
    if abs(info.frames - expected) / info.frames > 0.1:
        logger.warning("video reports %d frames but lasts %.2f s at %.3f fps: using %d", info.frames,
                       info.duration, info.fps, expected)  # fmt: skip
        return max(expected, 1)
    return info.frames


def frame_indices_for_fps(num_frames: int, src_fps: float, target_fps: float) -> list[int]:
    """Source frame index for each output frame at `target_fps` (-1 keeps every source frame).

    Official rule: int(num_frames / src_fps * target_fps) output frames; output frame i takes source
    frame round(i / target_fps * src_fps) (numpy rounding, half to even), clipped to the last frame.
    For -1 we return every frame directly: the official int(n / fps * fps) can lose the last frame to
    float rounding.
    """
    if target_fps == -1:
        return list(range(num_frames))
    count = int(num_frames / src_fps * target_fps)
    times = np.arange(count) / target_fps
    indices = np.clip(np.round(times * src_fps).astype(np.int64), 0, num_frames - 1)
    return [int(i) for i in indices]


def target_size(width: int, height: int, area: int, divisor: int = 16) -> tuple[int, int]:
    """(w, h) the official `resize_by_area` really produces for a `width` x `height` input.

    The official `calculate_new_size` calls its inner `check_valid(w, h)` with three arguments, so it
    raises TypeError on the first candidate; `resize_by_area` catches every exception and uses its
    fallback, which is therefore the rule that always runs: h = sqrt(area / aspect), w = area / h,
    each floored to a multiple of `divisor`. We reproduce that fallback. An input so elongated that a side would floor
    to 0 (official: a crash) is an InputError.
    """
    aspect = width / height
    new_h = math.sqrt(area / aspect)
    new_w = area / new_h
    out_w, out_h = int((new_w // divisor) * divisor), int((new_h // divisor) * divisor)
    if out_w < divisor or out_h < divisor:
        raise InputError(
            "aspect_ratio_too_extreme", "resolution",
            f"a {width}x{height} input at a target area of {area} pixels gives a side under {divisor} pixels; crop the "
            "input to a less elongated shape or ask for a larger resolution",
        )  # fmt: skip
    return out_w, out_h


def letterbox(img: np.ndarray, height: int, width: int, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Aspect-preserving resize into height x width with black bars (the official `padding_resize`).

    The resized side is int()-truncated and the bar offset is int((size - new) / 2), as official.
    `img` is (H, W, C) uint8; returns (height, width, C) uint8.
    """
    src_h, src_w = img.shape[:2]
    channels = img.shape[2] if img.ndim == 3 else 1
    out = np.zeros((height, width, channels), np.uint8)
    if src_h / src_w > height / width:
        new_w = int(height / src_h * src_w)
        resized = cv2.resize(img, (new_w, height), interpolation=interpolation).reshape(height, new_w, channels)
        pad = int((width - new_w) / 2)
        out[:, pad : pad + new_w] = resized
    else:
        new_h = int(width / src_w * src_h)
        resized = cv2.resize(img, (width, new_h), interpolation=interpolation).reshape(new_h, width, channels)
        pad = int((height - new_h) / 2)
        out[pad : pad + new_h] = resized
    return out if img.ndim == 3 else out[..., 0]


def resize_by_area(img: np.ndarray, area: int, divisor: int = 16) -> np.ndarray:
    """The official `resize_by_area`: letterbox into `target_size`, INTER_AREA when shrinking else linear."""
    src_h, src_w = img.shape[:2]
    new_w, new_h = target_size(src_w, src_h, area, divisor)
    interpolation = cv2.INTER_AREA if new_w * new_h < src_w * src_h else cv2.INTER_LINEAR
    return letterbox(img, new_h, new_w, interpolation)


def _to_rgb_array(img) -> np.ndarray:
    """PIL image of any mode -> (H, W, 3) uint8 RGB; alpha composited over white.

    White, not black: reference images with transparency are usually character cut-outs, and in
    animation mode that background becomes the video's background. White keeps dark hair and clothes
    separable from the background for the pose model and matches the plain backgrounds such
    references usually have; black would merge them with the black letterbox bars.
    """
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        # 16-bit greyscale (PIL's convert("RGB") would clip it to white): scale the 16-bit range to 8 bits.
        scale = 257.0 if mode.startswith("I;16") or arr.max() > 255 else 1.0
        grey = np.clip(np.round(arr / scale), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img).astype(np.float64)
        top = 1.0 if arr.max() <= 1.0 else 255.0
        grey = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def load_image(path: Path, field: str = IMAGE_FIELD) -> np.ndarray:
    """(H, W, 3) uint8 RGB: EXIF orientation applied, alpha over white, any mode converted.

    Raises InputError for missing, empty, undecodable or oversized files.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError("file_not_found", field, f"no such file: {path}")
    if path.stat().st_size == 0:
        raise InputError("empty_file", field, "the file is empty (0 bytes); upload the image again")
    try:
        with Image.open(path) as img:
            if img.width * img.height > LIMITS.max_image_pixels:
                raise InputError(
                    "image_too_large", field,
                    f"is {img.width}x{img.height}; the limit is {LIMITS.max_image_pixels / 1e6:.0f} MP. Downscale it.",
                )  # fmt: skip
            img.load()
            img = ImageOps.exif_transpose(img)
            arr = _to_rgb_array(img)
    except InputError:
        raise
    except Image.DecompressionBombError as error:  # PIL refuses > 2x its own pixel cap before our check runs
        raise InputError(
            "image_too_large", field, f"{error}. The limit is {LIMITS.max_image_pixels / 1e6:.0f} MP. Downscale it."
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise InputError(
            "unreadable_image", field, f"could not decode the image ({type(error).__name__}); upload a PNG or JPEG"
        ) from error
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise InputError("image_too_small", field, f"is {arr.shape[1]}x{arr.shape[0]} pixels; upload a larger image")
    return np.ascontiguousarray(arr)


def check_frame_shape(width: int, height: int, field: str) -> None:
    """InputError unless each side is at least LIMITS.min_image_side and the aspect ratio at most
    LIMITS.max_image_aspect: the output size is taken by area from this shape, and a 2x3000 px image would give a
    side of 0 (a division by zero or a failed resize deep inside), a 64x3000 one a strip no pose model can read."""
    short, long = sorted((int(width), int(height)))
    if short < LIMITS.min_image_side:
        raise InputError(
            "image_too_small", field,
            f"is {width}x{height} pixels; each side must be at least {LIMITS.min_image_side} px. Upload a larger one",
        )  # fmt: skip
    if long > LIMITS.max_image_aspect * short:
        raise InputError(
            "aspect_ratio_too_extreme", field,
            f"is {width}x{height} pixels ({long / short:.1f}:1); the limit is {LIMITS.max_image_aspect:g}:1. Crop it",
        )  # fmt: skip


def _run_cancellable(cmd: list[str], timeout_s: float, should_cancel: Callable[[], bool] | None = None,
                     poll_s: float = 0.2) -> None:
    """subprocess.run(cmd, check=True, capture_output=True, timeout=timeout_s) that also stops on a cancel: the
    process is killed and reaped (never left behind) when should_cancel() turns True or anything interrupts."""
    deadline = time.monotonic() + timeout_s
    with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            while True:
                try:
                    stdout, stderr = proc.communicate(timeout=poll_s)
                    break
                except subprocess.TimeoutExpired:
                    check_cancel(should_cancel, "while muxing the audio")
                    if time.monotonic() > deadline:
                        raise subprocess.TimeoutExpired(cmd, timeout_s) from None
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd, stdout, stderr)


def _mux_audio(video_only: Path, audio_from: Path, duration: float, out_path: Path,
               should_cancel: Callable[[], bool] | None = None) -> None:  # fmt: skip
    """Copy the video stream and add `audio_from`'s first audio track (AAC), cut to `duration` seconds."""
    cmd = [
        ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-i", str(video_only),
        "-t", f"{duration:.6f}", "-i", str(audio_from),  # -t before -i: reads only that much of the audio input
        "-map", "0:v:0", "-map", "1:a:0",
        "-c:v", "copy", "-c:a", "aac", "-b:a", "192k", "-movflags", "+faststart",
        str(out_path),
    ]  # fmt: skip
    _run_cancellable(cmd, 600, should_cancel)


def write_video(
    path: Path,
    frames_iter: Iterable[np.ndarray],
    fps: float,
    audio_from: Path | None = None,
    audio_duration: float | None = None,
    work_dir: Path | None = None,
    crf: int = 18,
    should_cancel: Callable[[], bool] | None = None,
) -> Path:
    """Encode frames to an H.264 MP4 at `fps`, then add the audio of `audio_from` when it has any.

    `frames_iter` yields (H, W, 3) uint8 RGB frames or (n, H, W, 3) clips and is consumed as it comes
    (never held whole). Audio is cut to `audio_duration` (default: the video's length). If muxing fails
    the silent video is kept and a warning logged: a missing soundtrack should not lose the result.
    should_cancel() is asked before and while muxing (True raises errors.Cancelled, ffmpeg is stopped).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    want_audio = audio_from is not None and _has_audio_stream(Path(audio_from))
    if not want_audio:
        encode_h264(path, frames_iter, fps, crf)
        return path
    tmp_dir = Path(work_dir) if work_dir is not None else path.parent
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix="video-only-", suffix=".mp4", dir=tmp_dir)
    os.close(fd)
    video_only = Path(tmp_name)
    try:
        count = encode_h264(video_only, frames_iter, fps, crf)
        duration = audio_duration if audio_duration is not None else count / fps
        check_cancel(should_cancel, "before muxing the audio")
        logger.info("mux: adding the driving video's audio (%d frames, %.1f s)", count, duration)
        try:
            _mux_audio(video_only, Path(audio_from), duration, path, should_cancel)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
            stderr = getattr(error, "stderr", b"") or b""
            logger.warning("could not add the driving video's audio (%s %s); writing the video without sound",
                           error, stderr.decode(errors="replace")[-500:])  # fmt: skip
            os.replace(video_only, path)
    finally:
        if video_only.exists():
            video_only.unlink()
    return path
