"""Property tests (hypothesis) for the frame-count arithmetic: fps resampling and clip segmentation."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from local_runner import import_app_module

video_io = import_app_module("preprocess.video_io")
segments = import_app_module("wan.segments")


@settings(max_examples=300, deadline=None)
@given(
    num_frames=st.integers(1, 5000),
    src_fps=st.floats(1.0, 240.0, allow_nan=False),
    target_fps=st.one_of(st.just(-1.0), st.floats(1.0, 60.0, allow_nan=False)),
)
def test_fps_resampling_indices(num_frames: int, src_fps: float, target_fps: float) -> None:
    indices = video_io.frame_indices_for_fps(num_frames, src_fps, target_fps)
    if target_fps == -1:
        assert indices == list(range(num_frames))
        return
    assert len(indices) == int(num_frames / src_fps * target_fps)  # the official count
    assert all(0 <= i < num_frames for i in indices)
    assert indices == sorted(indices)  # time never runs backwards
    if indices:
        assert indices[0] == 0
    if target_fps <= src_fps and len(indices) > 1:  # downsampling never repeats a frame
        assert len(set(indices)) == len(indices)


@settings(max_examples=300, deadline=None)
@given(
    num_frames=st.integers(1, 2000),
    clip_len=st.sampled_from([5, 9, 13, 21, 49, 77, 81, 121]),
    refert_num=st.sampled_from([1, 5]),
)
def test_segments_cover_every_frame_exactly_once(num_frames: int, clip_len: int, refert_num: int) -> None:
    if refert_num >= clip_len:
        return
    target = segments.valid_length(num_frames, clip_len, refert_num)
    starts = segments.clip_starts(target, clip_len, refert_num)
    indices = segments.mirror_indices(num_frames, target)
    assert target >= num_frames and len(indices) == target
    assert indices[:num_frames] == list(range(num_frames))  # padding only ever follows the real frames
    assert all(0 <= i < num_frames for i in indices)
    assert all(start + clip_len <= target for start in starts)  # every clip is a full clip
    # New frames per clip: all of the first, then clip_len - refert_num each; trimmed to the input length.
    produced = clip_len + (len(starts) - 1) * (clip_len - refert_num)
    assert produced == target >= num_frames
    assert produced - num_frames < clip_len  # never a whole wasted clip
