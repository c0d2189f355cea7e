"""H.264 encoding of the output: frames stream into imageio-ffmpeg's bundled ffmpeg, fed from a thread.

Why a thread: the frames usually come from the generation loop, and feeding ffmpeg blocks while x264 encodes (2.45 s
for one 77-frame 720p clip on 2 cores, 2026-12-07). Fed from the caller's thread, the GPU would sit idle that long
after every clip; fed from a thread, the next clip is generated meanwhile. At most `queue_items` items wait between
the two (one clip each from the loop), so memory stays bounded, and the caller stops soon after the writer fails.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

_DONE = object()  # the end of the frames, sent to the writer thread
_POLL_S = 0.1  # how often a blocked put looks whether the writer thread has ended


def even_frame(frame: np.ndarray) -> np.ndarray:
    """Pad an odd height/width by repeating the last row/column (yuv420p needs even sizes)."""
    pad_h = frame.shape[0] % 2
    pad_w = frame.shape[1] % 2
    if pad_h or pad_w:
        frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frame


def iter_single_frames(frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Flatten (H, W, 3) frames, (n, H, W, 3) clips, (H, W) grey frames or (n, H, W) grey clips into
    (H, W, 3) frames (a 3-D array whose last axis is 3 or 4 is one colour frame)."""
    for item in frames:
        arr = np.asarray(item)
        if arr.ndim == 4:
            yield from arr
        elif arr.ndim == 3 and arr.shape[2] in (3, 4):
            yield arr
        elif arr.ndim == 3:  # a clip of masks / grey frames
            yield from (np.repeat(a[..., None], 3, axis=2) for a in arr)
        elif arr.ndim == 2:  # a mask or grey frame
            yield np.repeat(arr[..., None], 3, axis=2)
        else:
            raise ValueError(f"expected (H, W, 3) frames or (n, H, W, 3) clips, got shape {arr.shape}")


def _queued(items: queue.Queue, result: dict[str, Any]) -> Iterator[Any]:
    """The items put on `items` until _DONE, or none more once the caller has failed (result["abort"])."""
    while (item := items.get()) is not _DONE and not result.get("abort"):
        yield item


def _feed_ffmpeg(path: Path, items: queue.Queue, fps: float, crf: int, result: dict[str, Any]) -> None:
    """The writer thread: every frame of the queued items into ffmpeg; result["count"], or result["error"]."""
    import imageio_ffmpeg

    writer = None
    count = 0
    size: tuple[int, int] | None = None
    try:
        for frame in iter_single_frames(_queued(items, result)):
            frame = even_frame(np.ascontiguousarray(frame, dtype=np.uint8))
            if frame.ndim == 3 and frame.shape[2] == 4:
                frame = np.ascontiguousarray(frame[..., :3])
            if writer is None:
                size = (frame.shape[1], frame.shape[0])
                writer = imageio_ffmpeg.write_frames(
                    str(path), size, fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
                    quality=None, macro_block_size=1, ffmpeg_log_level="error",
                    output_params=["-crf", str(crf), "-preset", "medium", "-movflags", "+faststart"],
                )  # fmt: skip
                writer.send(None)
            elif (frame.shape[1], frame.shape[0]) != size:
                raise ValueError(f"frame {count} is {frame.shape[1]}x{frame.shape[0]}, earlier frames {size}")
            writer.send(frame)
            count += 1
        if writer is not None:
            writer.close()  # waits for ffmpeg to finish the file
            writer = None
        result["count"] = count
    except BaseException as error:  # handed to the caller's thread, which raises it
        result["error"] = error
    finally:
        if writer is not None:
            writer.close()


def _put(items: queue.Queue, item: Any, writer: threading.Thread) -> bool:
    """Put `item` for the writer thread, waiting while the queue is full; False when the writer has ended."""
    while writer.is_alive():
        try:
            items.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def encode_h264(path: Path, frames: Iterable[np.ndarray], fps: float, crf: int, queue_items: int = 1) -> int:
    """Stream RGB frames (or clips) into an H.264 yuv420p MP4 at `fps`; returns the frames written.

    `frames` is consumed on the caller's thread while a thread feeds ffmpeg; an error on either side stops both
    and is raised here. A frame size that changes mid-stream raises ValueError.
    """
    items: queue.Queue = queue.Queue(maxsize=queue_items)
    result: dict[str, Any] = {}
    writer = threading.Thread(target=_feed_ffmpeg, args=(Path(path), items, fps, crf, result), name="wan-h264")
    writer.start()
    try:
        for item in frames:
            if "error" in result or not _put(items, item, writer):
                break
    except BaseException:
        result["abort"] = True  # the caller failed: the writer drops what is queued and closes ffmpeg
        raise
    finally:
        _put(items, _DONE, writer)  # also on the caller's own error: ffmpeg is closed before it propagates
        writer.join()
    if "error" in result:
        raise result["error"]
    if result["count"] == 0:
        raise ValueError("write_video got no frames")
    return result["count"]
