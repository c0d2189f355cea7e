"""Reading the driving video with PyAV (FFmpeg 8's libraries, bundled in the `av` wheel): probing and decoding.

Any codec and container that FFmpeg reads works (H.264, HEVC, VP9, AV1 through dav1d, ProRes, MJPEG, ... in MP4,
MOV, MKV, WebM, AVI), 8- or 10-bit. Frames come out upright (the stream's display matrix applied, as ffmpeg's own
auto-rotation does), in presentation order, each identified by its timestamp: a variable-frame-rate video or a
decoder that drops a frame keeps every frame's identity. Frames are decoded one at a time and can be reduced
(`transform`) before they are collected, so memory follows the working size, not the source's.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..limits import LIMITS

logger = logging.getLogger(__name__)

VIDEO_FIELD = "driving_video"
READ_CHUNK = 32  # frames collected per yielded chunk
VFR_TOLERANCE = 0.25  # a frame this many frame intervals away from i / fps makes the video variable-rate
BAD_PACKET_SHARE = 0.02  # undecodable packets tolerated (skipped) before the video counts as unreadable

Transform = Callable[[np.ndarray], np.ndarray]  # (H, W, 3) uint8 -> (h, w, 3) uint8, applied as frames decode


@dataclass(frozen=True)
class VideoInfo:
    """What the pipeline needs to know about a video before decoding it."""

    frames: int  # frame count: video packets in the container
    fps: float  # average frame rate (the stream's)
    width: int  # as displayed (after rotation)
    height: int
    duration: float  # seconds: end time of the last frame
    has_audio: bool
    rotation: int = 0  # degrees counter-clockwise the stored frames are turned to display upright
    frame_times: tuple[float, ...] = ()  # presentation time of each frame, seconds from the first; () unknown

    @property
    def variable_rate(self) -> bool:
        """True when frame i is not shown at about i / fps (a phone's variable-frame-rate recording)."""
        if len(self.frame_times) < 2:
            return False
        drift = np.abs(np.asarray(self.frame_times) - np.arange(len(self.frame_times)) / self.fps)
        return bool(drift.max() * self.fps > VFR_TOLERANCE)


def frame_indices_by_time(frame_times: Sequence[float], duration: float, target_fps: float) -> list[int]:
    """Source frame for each output frame at `target_fps` by timestamps (variable-frame-rate videos).

    int(duration * target_fps) output frames (the official count for a constant rate); output frame i takes the
    frame whose presentation time is nearest to i / target_fps (the earlier one on ties), not frame round(i * fps).
    """
    times = np.asarray(frame_times, np.float64)
    wanted = np.arange(int(duration * target_fps + 1e-9)) / target_fps
    after = np.clip(np.searchsorted(times, wanted), 0, len(times) - 1)
    before = np.clip(after - 1, 0, len(times) - 1)
    earlier = np.abs(wanted - times[before]) <= np.abs(times[after] - wanted) + 1e-9  # ties: the earlier
    return [int(i) for i in np.where(earlier, before, after)]


def _unreadable(field: str, error: BaseException | str) -> InputError:
    what = error if isinstance(error, str) else type(error).__name__
    return InputError("unreadable_video", field,
                      f"could not decode the video ({what}); re-encode it as an H.264 MP4")  # fmt: skip


def _open(path: Path, field: str):
    """(container, video stream) with frame threading on, or InputError for a missing, empty or non-video file."""
    import av

    path = Path(path)
    if not path.is_file():
        raise InputError("file_not_found", field, f"no such file: {path}")
    if path.stat().st_size == 0:
        raise InputError("empty_file", field, "the file is empty (0 bytes); upload the file again")
    if av.logging.get_level() is not None:
        # PyAV's Python log callback (torchvision installs it on import) deadlocks frame-threaded decoding: a decoder
        # thread that logs waits for the GIL, which the main thread holds while it closes the codec and waits for that
        # thread. Decoding errors reach us as exceptions, so FFmpeg's log is not needed.
        av.logging.set_level(None)
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as error:
        raise _unreadable(field, error) from error
    if not container.streams.video:
        container.close()
        raise InputError("unreadable_video", field, "the file has no video stream; upload a video")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame + slice threads; sequential decoding only, so frame threads are safe
    return container, stream


def _packet_pts(container, stream) -> list[int | None]:
    """Presentation timestamps of the video packets in stream order (demuxed only, nothing decoded)."""
    import av

    pts: list[int | None] = []
    try:
        for packet in container.demux(stream):
            if packet.size:  # the empty packet at the end only flushes the decoder
                pts.append(packet.pts if packet.pts is not None else packet.dts)
    except av.FFmpegError as error:  # a truncated file: keep what could be read
        logger.warning("video ends early after %d packets (%s)", len(pts), error)
    return pts


def _sorted_pts(raw: list[int | None], container) -> np.ndarray | None:
    """Packet timestamps in presentation order, or None when the container has no real ones (frames are counted).

    AVI stores decode times only (libavformat makes up pts = dts + 1 when there are B-frames), raw streams none.
    """
    if not raw or any(p is None for p in raw) or "avi" in container.format.name.split(","):
        return None
    return np.sort(np.asarray(raw, np.int64))


def _upright(frame) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a decoded frame, turned by its display matrix (ffmpeg's auto-rotation)."""
    rgb = frame.to_ndarray(format="rgb24")
    turns = int(round(getattr(frame, "rotation", 0) / 90)) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def _still_image_format(format_name: str) -> bool:
    """True for FFmpeg's image readers (`image2`, `png_pipe`, `jpeg_pipe`, `webp_pipe`, ...) and GIF: with a single
    frame, the file is a picture (a JPEG reads as a 0.04 s video at 25 fps)."""
    return any(name in ("image2", "gif") or name.endswith("_pipe") for name in format_name.split(","))


def _picture_kind(codec: str) -> str:
    """A picture codec's everyday name: mjpeg -> JPEG, png -> PNG."""
    return "JPEG" if codec in ("mjpeg", "jpegls") else codec.upper()


def probe_video(path: Path, field: str = VIDEO_FIELD) -> VideoInfo:
    """Frame count, rate, upright size, duration, timestamps and audio; InputError for unreadable or empty videos."""
    import av

    container, stream = _open(Path(path), field)
    try:
        has_audio = bool(container.streams.audio)
        time_base = float(stream.time_base)
        raw = _packet_pts(container, stream)
        frames = len(raw)
        if frames == 0:
            raise InputError("empty_video", field, "the video has no frames; upload a video with at least one frame")
        if frames == 1 and _still_image_format(container.format.name):
            raise InputError(
                "video_too_short", field,
                f"is a still image ({_picture_kind(stream.codec_context.name)}), not a video; give the motion as a "
                "video file (MP4, MOV, WebM or an animated GIF)",
            )  # fmt: skip
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else float("nan")
        if not math.isfinite(fps) or fps <= 0:
            raise InputError("unreadable_video", field, "the video reports no frame rate; re-encode it (e.g. to MP4)")
        container.close()
        container, stream = _open(Path(path), field)  # reopened rather than seeked: some containers cannot seek
        first = _first_frame(container, stream, field)
        rotation = int(round(getattr(first, "rotation", 0))) % 360
        width, height = first.width, first.height
        if rotation in (90, 270):
            width, height = height, width
    except InputError:
        raise
    except (av.FFmpegError, OSError, ValueError) as error:
        raise _unreadable(field, error) from error
    finally:
        container.close()
    pts = _sorted_pts(raw, container)
    if pts is None:
        times: tuple[float, ...] = ()
        duration = frames / fps
    else:
        seconds = (pts - pts[0]) * time_base
        times = tuple(float(t) for t in seconds)
        duration = times[-1] + 1 / fps  # the last frame is shown for one average frame interval
    return VideoInfo(frames, fps, int(width), int(height), float(duration), has_audio, rotation, times)


def _first_frame(container, stream, field: str):
    """The first frame the decoder gives (InputError when none decodes: an unsupported or broken stream)."""
    for frame in _decoded(container, stream, field, max_bad=3):
        return frame
    raise _unreadable(field, "no frame could be decoded")


def _decoded(container, stream, field: str, max_bad: int) -> Iterator:
    """Decoded frames in presentation order; up to `max_bad` undecodable packets are skipped with a warning."""
    import av

    bad = 0
    packets = 0
    demuxer = container.demux(stream)
    while True:
        try:
            packet = next(demuxer)
        except StopIteration:
            return
        except av.FFmpegError as error:  # truncated or corrupt container: end of what can be read
            logger.warning("video ends early after %d packets (%s)", packets, error)
            packet = None
        try:
            frames = packet.decode() if packet is not None else stream.codec_context.decode(None)
        except av.FFmpegError as error:
            bad += 1
            if bad > max_bad:
                raise InputError(
                    "unreadable_video", field,
                    f"decoding failed near frame {packets} ({type(error).__name__}); the file may be truncated or "
                    "its codec unsupported. Re-encode it as an H.264 MP4",
                ) from error  # fmt: skip
            logger.warning("skipping an undecodable video packet near frame %d (%s)", packets, error)
            frames = []
        yield from frames
        if packet is None:
            return
        packets += 1 if packet.size else 0


def _decode_sorted(path: Path, wanted: Sequence[int], transform: Transform | None, field: str
                   ) -> Iterator[np.ndarray]:  # fmt: skip
    """Frames at the non-decreasing source indices `wanted`, one (h, w, 3) array each, in one sequential pass.

    Frame i is the frame with the i-th presentation timestamp. When the decoder never produces it (a dropped or
    broken frame), the frame shown at that moment is used: the one before it, or the first after it.
    """
    container, stream = _open(path, field)
    raw = _packet_pts(container, stream)
    pts = _sorted_pts(raw, container)
    container.close()
    max_bad = max(3, int(len(raw) * BAD_PACKET_SHARE))
    container, stream = _open(path, field)  # reopened rather than seeked: some containers cannot seek
    try:
        frames = _decoded(container, stream, field, max_bad)
        count = 0  # frames decoded so far: the key when the container gives no timestamps
        def key(frame) -> int:
            """The frame's timestamp (its place in the sorted packet timestamps); its count when there are none."""
            nonlocal count
            count += 1
            if pts is None:
                return count - 1
            return int(frame.pts) if frame.pts is not None else int(pts[min(count - 1, len(pts) - 1)])

        prev = cur = None  # (key, frame)
        first = next(frames, None)
        cur = (key(first), first) if first is not None else None
        cached: tuple[int, np.ndarray] | None = None  # the last frame converted, reused for repeated indices
        for index in wanted:
            target = int(pts[min(index, len(pts) - 1)]) if pts is not None else index
            while cur is not None and cur[0] < target:
                prev = cur
                nxt = next(frames, None)
                cur = (key(nxt), nxt) if nxt is not None else None
            chosen = cur if cur is not None and (cur[0] == target or prev is None) else prev
            if chosen is None:
                raise _unreadable(field, "no frame could be decoded")
            if cached is None or cached[0] != chosen[0]:
                image = _upright(chosen[1])
                cached = (chosen[0], transform(image) if transform is not None else image)
            yield cached[1]
    finally:
        container.close()


def _collect(frames: Iterator[np.ndarray], count: int) -> np.ndarray:
    """The next `count` frames written into one new (count, h, w, 3) array (no list of frames, then a copy)."""
    first = next(frames)
    out = np.empty((count, *first.shape), np.uint8)
    out[0] = first
    for k in range(1, count):
        out[k] = next(frames)
    return out


def iter_frames(path: Path, indices: Sequence[int], chunk: int = READ_CHUNK, field: str = VIDEO_FIELD,
                timeout_s: float = LIMITS.decode_timeout_s, transform: Transform | None = None
                ) -> Iterator[np.ndarray]:  # fmt: skip
    """Decode the given frames in order, `chunk` at a time: yields (n, h, w, 3) uint8 RGB arrays.

    `transform` (e.g. a resize to the working size) is applied to each frame as it is decoded, so only one source-size
    frame is alive at a time. Non-decreasing indices (the pipeline's) take one sequential pass; other orders one pass
    per chunk. Decoding (not the caller's work between chunks) may take at most `timeout_s` seconds in all: a file that
    decodes pathologically slowly ends in an InputError instead of holding the worker.
    """
    indices = [int(i) for i in indices]
    if any(i < 0 for i in indices):
        raise ValueError(f"frame indices must be >= 0, got {min(indices)}")
    monotonic = all(a <= b for a, b in zip(indices, indices[1:], strict=False))
    groups = [indices] if monotonic else [indices[s : s + chunk] for s in range(0, len(indices), chunk)]
    decode_s = 0.0
    for group in groups:
        order = sorted(range(len(group)), key=group.__getitem__)
        decoder = _decode_sorted(Path(path), [group[k] for k in order], transform, field)
        try:
            if monotonic:
                pending = None
            else:  # decode the chunk's frames in index order, then hand them back in the order asked
                began = time.perf_counter()
                by_pos = dict(zip(order, decoder, strict=True))
                decode_s += time.perf_counter() - began
                pending = iter([by_pos[k] for k in range(len(group))])
            for start in range(0, len(group), chunk):
                if decode_s > timeout_s:
                    raise InputError(
                        "decode_timeout", field,
                        f"decoding took over {timeout_s:.0f} s (stopped at frame {group[start]}); re-encode the "
                        "video as H.264 at a lower resolution or make it shorter",
                    )  # fmt: skip
                began = time.perf_counter()
                batch = _collect(pending if pending is not None else decoder, min(chunk, len(group) - start))
                decode_s += time.perf_counter() - began
                yield batch
        finally:
            decoder.close()


def read_frames(path: Path, indices: Sequence[int], field: str = VIDEO_FIELD,
                transform: Transform | None = None) -> np.ndarray:  # fmt: skip
    """The given frames as one (T, h, w, 3) uint8 RGB array, decoded chunk by chunk into it."""
    out: np.ndarray | None = None
    pos = 0
    for frames in iter_frames(path, indices, field=field, transform=transform):
        if out is None:
            out = np.empty((len(indices), *frames.shape[1:]), np.uint8)
        out[pos : pos + len(frames)] = frames
        pos += len(frames)
    if out is None:
        raise InputError("empty_video", field, "no frames to read; use a longer video or a higher fps")
    return out
