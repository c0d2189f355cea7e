"""Frames kept on disk while a request runs: replacement mode's resized frames, person masks and background.

At 1800 frames of 1280x720 the resized frames (then the background) are 5.0 GB and the masks 1.6 GB, and generation
reads them one clip window at a time. `FrameStore` keeps them in an unnamed temporary file (in the run's work folder):
written and read a few frames at a time with positioned reads and writes, so the process holds only the frames it is
working on; the file vanishes when the store is garbage-collected or the process ends, whatever way it ends.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

ITER_CHUNK = 32  # frames read at a time while iterating


class FrameStore:
    """A (T, *frame_shape) uint8 array in an unnamed temporary file; reads and writes like an array, a frame range
    or a list of frames at a time. Zero-filled when created.

    Indexing returns in-memory copies (int, slice, 1-D integer indices; a tuple indexes the read frames further);
    assigning to an int or a slice writes those frames. Frames can be read and written from several threads at once
    (positioned I/O). `span` gives a view of a range of frames and `cropped` a read-only view whose frames are cut to a
    rectangle, both of the same file, reading nothing when made.
    """

    def __init__(self, count: int, frame_shape: Sequence[int], directory: Path | str | None = None) -> None:
        if count < 0 or not frame_shape or any(int(s) < 1 for s in frame_shape):
            raise ValueError(f"cannot store {count} frames of shape {tuple(frame_shape)}")
        self._file: IO[bytes] = tempfile.TemporaryFile(dir=directory)  # unlinked at once (O_TMPFILE on Linux)
        self._count = int(count)
        self._frame_shape = tuple(int(s) for s in frame_shape)
        self._frame_bytes = int(np.prod(self._frame_shape))
        self._crop: tuple[int, int, int, int] | None = None  # (top, left, height, width) on read
        self._first = 0  # the file's frame that is this store's frame 0 (a span view)
        os.ftruncate(self._file.fileno(), self._count * self._frame_bytes)  # sparse: zeros until written

    # -- array-like description -------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, ...]:
        if self._crop is None:
            return (self._count, *self._frame_shape)
        return (self._count, self._crop[2], self._crop[3], *self._frame_shape[2:])

    @property
    def ndim(self) -> int:
        return 1 + len(self._frame_shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    @property
    def disk_bytes(self) -> int:
        """Bytes this store's frames take in the file (uncropped)."""
        return self._count * self._frame_bytes

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"FrameStore(shape={self.shape}, first={self._first}, crop={self._crop})"

    # -- positioned I/O ---------------------------------------------------------------------------

    def _read_run(self, first: int, out: np.ndarray) -> None:
        """Frames first.. into `out`, (n, *frame_shape) uint8 C-contiguous, from one span of the file."""
        view = memoryview(out.reshape(-1))
        offset, done = (self._first + first) * self._frame_bytes, 0
        while done < len(view):
            got = os.preadv(self._file.fileno(), [view[done:]], offset + done)
            if got == 0:
                raise OSError(f"frame store file ended at byte {offset + done}")
            done += got

    def _write_run(self, first: int, frames: np.ndarray) -> None:
        view = memoryview(np.ascontiguousarray(frames, np.uint8).reshape(-1))
        offset, done = (self._first + first) * self._frame_bytes, 0
        while done < len(view):
            done += os.pwrite(self._file.fileno(), view[done:], offset + done)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """(len(indices), *shape[1:]) uint8: those frames (consecutive ones read in one span), cropped if a view."""
        full = np.empty((len(indices), *self._frame_shape), np.uint8)
        slot = 0
        while slot < len(indices):
            end = slot + 1
            while end < len(indices) and indices[end] == indices[end - 1] + 1:
                end += 1
            self._read_run(int(indices[slot]), full[slot:end])
            slot = end
        if self._crop is None:
            return full
        top, left, height, width = self._crop
        return np.ascontiguousarray(full[:, top : top + height, left : left + width])

    def write(self, start: int, frames: np.ndarray) -> None:
        """Frames start .. start + len(frames) set to `frames`, (n, *frame_shape), cast to uint8."""
        if self._crop is not None:
            raise ValueError("a cropped FrameStore is read-only")
        frames = np.asarray(frames)
        if frames.shape[1:] != self._frame_shape or start < 0 or start + len(frames) > self._count:
            raise ValueError(f"cannot write {frames.shape} at frame {start} of {self.shape}")
        self._write_run(start, frames.astype(np.uint8, copy=False))

    def span(self, start: int, stop: int) -> FrameStore:
        """A view of frames start .. stop (a step-1 slice of this store; nothing is read now), writable if this is."""
        start, stop, _ = slice(start, stop).indices(self._count)
        view = copy.copy(self)  # the same open file: it closes when the last view goes
        view._first, view._count = self._first + start, max(stop - start, 0)
        return view

    def cropped(self, top: int, left: int, height: int, width: int) -> FrameStore:
        """A read-only view of the same frames cut to rows top.. and columns left.. (nothing is read now)."""
        base_top, base_left = (0, 0) if self._crop is None else self._crop[:2]
        limit_h, limit_w = self.shape[1:3]
        if top < 0 or left < 0 or height < 1 or width < 1 or top + height > limit_h or left + width > limit_w:
            raise ValueError(f"crop ({top}, {left}, {height}, {width}) does not fit in {limit_w}x{limit_h} frames")
        view = copy.copy(self)  # the same open file: it closes when the last view goes
        view._crop = (base_top + top, base_left + left, height, width)
        return view

    # -- numpy protocol ---------------------------------------------------------------------------

    def _indices(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return np.array([range(self._count)[int(key)]])  # range(): negative indices and bounds
        if isinstance(key, slice):
            return np.arange(self._count)[key]
        indices = np.asarray(key)
        if indices.size == 0:
            indices = indices.astype(np.intp)  # [] is float64 to numpy
        if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
            raise TypeError(f"FrameStore frames are indexed by int, slice or 1-D integer indices, not {key!r}")
        return np.arange(self._count)[indices]  # negative indices and bounds as numpy's

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            if not key:
                return self.read(range(self._count))
            frames, rest = self[key[0]], key[1:]
            return frames[rest] if isinstance(key[0], (int, np.integer)) else frames[(slice(None), *rest)]
        frames = self.read(self._indices(key).tolist())
        return frames[0] if isinstance(key, (int, np.integer)) else frames

    def __setitem__(self, key: int | slice, frames: np.ndarray) -> None:
        """Write one frame (int key) or a step-1 range of frames (slice key)."""
        if isinstance(key, (int, np.integer)):
            self.write(range(self._count)[int(key)], np.asarray(frames)[None])
            return
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError(f"FrameStore frames are written by int or step-1 slice, not {key!r}")
        start, stop, _ = key.indices(self._count)
        frames = np.asarray(frames)
        if len(frames) != max(stop - start, 0):
            raise ValueError(f"{len(frames)} frames for the {max(stop - start, 0)} of {key!r}")
        self.write(start, frames)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """Every frame read (the whole array: only where all frames are needed at once)."""
        if copy is False:
            raise ValueError("a FrameStore's frames are on disk: they cannot be viewed without a copy")
        frames = self.read(range(self._count))
        return frames if dtype is None else frames.astype(dtype, copy=False)

    def __iter__(self) -> Iterator[np.ndarray]:
        """Frame by frame, read ITER_CHUNK at a time."""
        for start in range(0, self._count, ITER_CHUNK):
            yield from self.read(range(start, min(start + ITER_CHUNK, self._count)))


Frames = np.ndarray | FrameStore  # (T, H, W[, 3]) uint8, in memory or on disk
