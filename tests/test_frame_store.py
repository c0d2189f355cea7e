"""FrameStore (preprocess/frame_store.py) reads and writes like the numpy array it stands for, keeps its frames in an
unnamed file in the folder it is given, and holds none of them in memory."""

from __future__ import annotations

import gc
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from wan_animate.preprocess.frame_store import FrameStore


def filled(tmp_path, shape=(7, 6, 5, 3), seed=0):
    frames = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    store = FrameStore(shape[0], shape[1:], tmp_path)
    store[:] = frames
    return frames, store


def test_reads_like_the_array(tmp_path):
    frames, store = filled(tmp_path)
    assert store.shape == frames.shape and store.ndim == 4 and store.dtype == np.uint8 and len(store) == 7
    for key in [0, -1, slice(None), slice(2, 5), slice(None, None, -2), slice(6, 2, -1), [3, 1, 1, 6], [4, 5, 6],
                np.array([-1, 0]), [], (slice(1, 3), slice(None, None, 2)), (2, 1), (slice(None), 0, 0)]:
        expected, got = frames[key], store[key]
        assert got.dtype == np.uint8 and np.array_equal(got, expected), key
    assert np.array_equal(np.asarray(store), frames)
    assert np.array_equal(np.stack(list(store)), frames)
    with pytest.raises(IndexError):
        store[7]
    with pytest.raises(IndexError):
        store[[0, 9]]
    with pytest.raises(TypeError):
        store[np.zeros(2)]


def test_starts_zero_and_writes_frames_and_ranges(tmp_path):
    store = FrameStore(5, (4, 4), tmp_path)
    assert store.disk_bytes == 80 and not np.asarray(store).any()
    expected = np.zeros((5, 4, 4), np.uint8)
    store[1] = np.full((4, 4), 7)
    expected[1] = 7
    store[3:5] = np.ones((2, 4, 4), bool)  # masks arrive as bool: stored as 0 / 1
    expected[3:5] = 1
    store[-5] = np.arange(16).reshape(4, 4)
    expected[0] = np.arange(16).reshape(4, 4)
    assert np.array_equal(np.asarray(store), expected)
    with pytest.raises(ValueError):
        store[0:2] = np.zeros((3, 4, 4))
    with pytest.raises(ValueError):
        store.write(4, np.zeros((2, 4, 4)))
    with pytest.raises(ValueError):
        store[0] = np.zeros((4, 5))
    with pytest.raises(TypeError):
        store[::2] = np.zeros((3, 4, 4))


def test_cropped_view_reads_the_rectangle_and_is_read_only(tmp_path):
    frames, store = filled(tmp_path)
    view = store.cropped(1, 2, 4, 3)
    assert view.shape == (7, 4, 3, 3)
    assert np.array_equal(view[[0, 5]], frames[[0, 5], 1:5, 2:5])
    again = view.cropped(1, 1, 2, 2)  # crops compose
    assert np.array_equal(np.asarray(again), frames[:, 2:4, 3:5])
    with pytest.raises(ValueError):
        view[0] = np.zeros((4, 3, 3))
    with pytest.raises(ValueError):
        store.cropped(3, 0, 4, 5)
    assert np.array_equal(store[2], frames[2])  # the original keeps its full frames


def test_span_view_reads_and_writes_its_range_of_the_same_file(tmp_path):
    frames, store = filled(tmp_path)
    span = store.span(2, 6)
    assert span.shape == (4, 6, 5, 3) and len(span) == 4 and span.disk_bytes == 4 * 90
    assert np.array_equal(np.asarray(span), frames[2:6]) and np.array_equal(span[[-1, 0]], frames[[5, 2]])
    assert np.array_equal(np.stack(list(span)), frames[2:6])
    assert np.array_equal(np.asarray(span.span(1, 99)), frames[3:6])  # bounds as a slice's, spans compose
    assert np.array_equal(np.asarray(span.cropped(1, 1, 2, 2)), frames[2:6, 1:3, 1:3])
    with pytest.raises(IndexError):
        span[4]  # the view's frame 4 is the store's 6: out of the view
    span[0] = np.zeros((6, 5, 3))
    frames[2] = 0
    assert np.array_equal(np.asarray(store), frames)  # written through to the store's frame 2


def test_threads_write_and_read_their_own_frames(tmp_path):
    frames = np.random.default_rng(1).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    store = FrameStore(64, (32, 32, 3), tmp_path)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.__setitem__(i, frames[i]), range(64)))
        read = list(pool.map(lambda i: store[i], range(64)))
    assert np.array_equal(np.stack(read), frames)


def test_file_is_unnamed_in_the_folder_and_freed_with_the_store(tmp_path):
    store = FrameStore(10, (100, 100, 3), tmp_path)
    store[:] = np.full((10, 100, 100, 3), 200, np.uint8)
    assert os.listdir(tmp_path) == []  # nothing to clean up: the file has no name
    fd = store._file.fileno()
    assert os.fstat(fd).st_size == 300_000
    view = store.cropped(0, 0, 50, 50)
    del store
    gc.collect()
    assert view[0].mean() == 200  # a view keeps the file open
    del view
    gc.collect()
    with pytest.raises(OSError):
        os.fstat(fd)  # closed, so the space is freed
