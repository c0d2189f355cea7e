"""The skeleton video the model reads, drawn when it is read: poses kept, frames drawn on demand.

An eager (T, H, W, 3) uint8 array of skeleton drawings is 5 GB for 1800 frames at 1280x720, and generation reads it
one clip window at a time. `SkeletonVideo` keeps the poses and how to draw them, and draws the frames asked for
(side by side on preprocess/frame_threads.py's threads), byte for byte what the eager drawing gave.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np

from .frame_threads import map_frames
from .pose_meta import PoseMeta
from .skeleton import render_pose
from .video_io import letterbox

ITER_CHUNK = 32  # frames drawn at a time while iterating: iteration never holds the whole video


class SkeletonVideo:
    """A read-only (T, H, W, 3) uint8 skeleton video, drawn from `poses` when indexed, iterated or converted.

    Drawing: at `out_hw` directly (`canvas_hw` None), or on a `canvas_hw` canvas then letterboxed (bilinear) to
    `out_hw` (official no-retarget animation). `right_hand_first` paints overlapping hands in the official
    retargeted order. `crop` (top, left, height, width) cuts every drawn frame (context-parallel centre crop).
    """

    def __init__(self, poses: Sequence[PoseMeta], out_hw: tuple[int, int], canvas_hw: tuple[int, int] | None = None,
                 right_hand_first: bool = False, crop: tuple[int, int, int, int] | None = None) -> None:  # fmt: skip
        self.poses = list(poses)
        self.out_hw = (int(out_hw[0]), int(out_hw[1]))
        self.canvas_hw = None if canvas_hw is None else (int(canvas_hw[0]), int(canvas_hw[1]))
        self.right_hand_first = right_hand_first
        if crop is not None:
            top, left, height, width = crop
            if top < 0 or left < 0 or height < 1 or width < 1 or top + height > out_hw[0] or left + width > out_hw[1]:
                raise ValueError(f"crop {crop} does not fit in {out_hw[1]}x{out_hw[0]} frames")
        self.crop = crop

    # -- array-like description -------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int, int, int]:
        height, width = self.out_hw if self.crop is None else self.crop[2:]
        return (len(self.poses), height, width, 3)

    @property
    def ndim(self) -> int:
        return 4

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    def __len__(self) -> int:
        return len(self.poses)

    def __repr__(self) -> str:
        return f"SkeletonVideo(shape={self.shape}, canvas_hw={self.canvas_hw}, crop={self.crop})"

    # -- drawing ----------------------------------------------------------------------------------

    def draw_frame(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8: frame `index` drawn (then cropped)."""
        meta = self.poses[index]
        if self.canvas_hw is None:
            frame = render_pose(meta, *self.out_hw, right_hand_first=self.right_hand_first)
        else:
            canvas = render_pose(meta, *self.canvas_hw, right_hand_first=self.right_hand_first)
            frame = letterbox(canvas, *self.out_hw, interpolation=cv2.INTER_LINEAR)
        if self.crop is not None:
            top, left, height, width = self.crop
            frame = frame[top : top + height, left : left + width]
        return frame

    def draw(self, indices: Sequence[int]) -> np.ndarray:
        """(len(indices), H, W, 3) uint8: those frames drawn side by side (each frame its own canvas)."""
        out = np.empty((len(indices), *self.shape[1:]), np.uint8)

        def fill(slot: int, index: int) -> None:
            out[slot] = self.draw_frame(index)

        map_frames(fill, range(len(indices)), [int(i) for i in indices])
        return out

    def cropped(self, top: int, left: int, height: int, width: int) -> SkeletonVideo:
        """The same video with every frame cut to rows top.. and columns left.. (nothing is drawn now)."""
        if self.crop is not None:
            top, left = top + self.crop[0], left + self.crop[1]
            if height > self.crop[2] or width > self.crop[3]:
                raise ValueError(f"cannot crop {self.crop[3]}x{self.crop[2]} frames to a larger {width}x{height}")
        return SkeletonVideo(self.poses, self.out_hw, self.canvas_hw, self.right_hand_first, (top, left, height, width))

    # -- numpy protocol ---------------------------------------------------------------------------

    def __getitem__(self, key: Any) -> np.ndarray:
        """Frames by int, slice, or list/array of indices; a tuple indexes the drawn frames further."""
        if isinstance(key, tuple):
            if not key:
                return self.draw(range(len(self)))
            frames, rest = self[key[0]], key[1:]
            return frames[rest] if frames.ndim == 3 else frames[(slice(None), *rest)]
        if isinstance(key, (int, np.integer)):
            return np.ascontiguousarray(self.draw_frame(range(len(self))[int(key)]))  # range(): negatives, bounds
        if isinstance(key, slice):
            return self.draw(range(len(self))[key])
        indices = np.asarray(key)
        if indices.size == 0:
            indices = indices.astype(np.intp)  # [] is float64 to numpy
        if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
            raise TypeError(f"SkeletonVideo frames are indexed by int, slice or 1-D integer indices, not {key!r}")
        return self.draw(np.arange(len(self))[indices])  # negative indices and bounds as numpy's

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """Every frame drawn (the whole (T, H, W, 3) array: only where all frames are needed at once)."""
        if copy is False:
            raise ValueError("a SkeletonVideo has no stored frames to view: it draws them (copy=False impossible)")
        frames = self.draw(range(len(self)))
        return frames if dtype is None else frames.astype(dtype, copy=False)

    def __iter__(self) -> Iterator[np.ndarray]:
        """Frame by frame, drawn ITER_CHUNK at a time."""
        for start in range(0, len(self), ITER_CHUNK):
            yield from self.draw(range(start, min(start + ITER_CHUNK, len(self))))
