"""Clip arithmetic: official padding length, mirror padding, clip starts; the short-input deviations."""

from __future__ import annotations

import pytest
from wan_animate.wan.segments import clip_starts, latent_frames_to_decode, mirror_indices, valid_length


@pytest.mark.parametrize(
    "frames,clip_len,refert,expected",
    [
        (77, 77, 1, 77),  # exactly one clip
        (78, 77, 1, 153),  # one frame over: a second clip of 76 new frames
        (153, 77, 1, 153),
        (100, 77, 5, 149),  # (149 - 5) = 2 * 72
        (10, 77, 1, 77),  # shorter than a clip: padded to one clip
        (20, 9, 1, 25),  # (25 - 1) = 3 * 8
        (30, 13, 5, 37),  # (37 - 5) = 4 * 8
    ],
)
def test_valid_length(frames: int, clip_len: int, refert: int, expected: int) -> None:
    assert valid_length(frames, clip_len, refert) == expected
    assert (expected - refert) % (clip_len - refert) == 0


def test_short_inputs_still_make_one_clip() -> None:
    """Deliberate difference: the official loop makes no clip at all when frames <= refert_num."""
    assert valid_length(1, 77, 1) == 77
    assert valid_length(5, 13, 5) == 13
    assert clip_starts(valid_length(1, 77, 1), 77, 1) == [0]


def test_mirror_indices_reflect_without_repeating_the_ends() -> None:
    assert mirror_indices(5, 12) == [0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3]
    assert mirror_indices(2, 5) == [0, 1, 0, 1, 0]
    assert mirror_indices(3, 3) == [0, 1, 2]
    assert mirror_indices(1, 4) == [0, 0, 0, 0]  # the official padding would index past the end here


def test_clip_starts_step_by_clip_len_minus_refert() -> None:
    assert clip_starts(153, 77, 1) == [0, 76]
    assert clip_starts(149, 77, 5) == [0, 72]
    assert clip_starts(25, 9, 1) == [0, 8, 16]
    # Every clip fits inside the padded input and the last one ends exactly at its end.
    for frames, clip_len, refert in [(100, 77, 5), (20, 9, 1), (31, 13, 5), (200, 81, 1)]:
        target = valid_length(frames, clip_len, refert)
        starts = clip_starts(target, clip_len, refert)
        assert starts[-1] + clip_len == target
        new_frames = clip_len + (len(starts) - 1) * (clip_len - refert)
        assert new_frames == target >= frames


@pytest.mark.parametrize(
    "needed,expected",
    [(1, 1), (2, 2), (5, 2), (6, 3), (9, 3), (72, 19), (76, 20), (77, 20), (200, 20)],
)
def test_latent_frames_to_decode_cover_the_frames_needed(needed: int, expected: int) -> None:
    """Latent frame 0 decodes to 1 frame and each later one to 4: the fewest of 20 that reach `needed` frames."""
    got = latent_frames_to_decode(needed, 20)
    assert got == expected
    assert 1 + 4 * (got - 1) >= min(needed, 77)
