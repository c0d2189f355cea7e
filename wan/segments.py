"""How a video of any length is cut into clips of `clip_len` frames that overlap by `refert_num` frames.

Official rules (WanAnimate.get_valid_len / inputs_padding / the generate() loop): the inputs are extended by mirror
reflection to a length L with (L - refert_num) divisible by (clip_len - refert_num); clip k starts at
k * (clip_len - refert_num); the output is cut back to the input's length.
"""

from __future__ import annotations


def valid_length(num_frames: int, clip_len: int, refert_num: int) -> int:
    """Padded input length: the official get_valid_len, except that very short inputs still make one clip.

    Deliberate difference: for num_frames <= refert_num the official loop generates nothing (its first clip would
    start at or past the end); here such inputs are padded to one full clip.
    """
    if num_frames <= refert_num:
        return clip_len
    step = clip_len - refert_num
    remainder = (num_frames - refert_num) % step
    return num_frames if remainder == 0 else num_frames + step - remainder


def mirror_indices(num_frames: int, target_len: int) -> list[int]:
    """Source frame index for each of `target_len` frames: 0, 1, ..., n-1, n-2, ..., 0, 1, ... (official padding).

    Deliberate difference: a single-frame input repeats frame 0 (the official loop indexes past the end).
    """
    if num_frames <= 1:
        return [0] * target_len
    indices: list[int] = []
    index, step = 0, 1
    while len(indices) < target_len:
        indices.append(index)
        index += step
        if index == 0 or index == num_frames - 1:
            step = -step
    return indices


def clip_starts(target_len: int, clip_len: int, refert_num: int) -> list[int]:
    """First (padded) frame of each clip: official `while start + refert_num < target_len`."""
    step = clip_len - refert_num
    starts = []
    start = 0
    while start + refert_num < target_len:
        starts.append(start)
        start += step
    return starts


def latent_frames_to_decode(frames_needed: int, latent_frames: int, stride: int = 4) -> int:
    """How many of a clip's `latent_frames` to decode for its first `frames_needed` frames.

    The Wan VAE decoder is causal (latent frame 0 makes frame 0, each later one the next `stride` frames, from the
    latents before it only), so decoding a prefix gives those frames exactly; the last clip's frames past the video's
    end need not be decoded at all.
    """
    return min(latent_frames, 1 + max(0, -(-(frames_needed - 1) // stride)))
