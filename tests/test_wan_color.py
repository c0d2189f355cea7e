"""Colour matching of each new clip to the frames it continues from."""

from __future__ import annotations

import numpy as np
import torch
from tiny_conditioning import tiny_conditioning
from wan_animate.wan import GenerationOptions, build_tiny_models, generate, generate_clips
from wan_animate.wan.color import channel_stats, match_colors


def _scene(frames: int, seed: int = 0) -> torch.Tensor:
    """A textured (T, 3, H, W) clip in [-0.6, 0.6] (room for drift without clipping)."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 16, 16, generator=gen) * 1.2 - 0.6
    motion = torch.linspace(0, 0.05, frames).view(frames, 1, 1, 1)
    return (base + motion).clamp(-1, 1)


def test_synthetic_drift_is_corrected() -> None:
    clip = _scene(9)
    shown = clip[:2]  # what the previous clip already showed of the 2 overlap frames
    gain = torch.tensor([1.2, 0.9, 1.0]).view(1, 3, 1, 1)
    offset = torch.tensor([0.08, -0.05, 0.03]).view(1, 3, 1, 1)
    drifted = clip * gain + offset  # the new clip, tinted and contrast-shifted as a whole
    fixed = match_colors(drifted, overlap=drifted[:2], reference=shown)
    torch.testing.assert_close(fixed, clip, rtol=0, atol=1e-5)


def test_no_drift_changes_nothing() -> None:
    clip = _scene(9, seed=1)
    fixed = match_colors(clip, overlap=clip[:1], reference=clip[:1].clone())
    torch.testing.assert_close(fixed, clip, rtol=0, atol=1e-6)


def test_flat_overlap_only_shifts() -> None:
    """An all-black overlap has no contrast to measure: the clip is shifted, never rescaled."""
    clip = _scene(5, seed=2)
    clip[0] = -1.0
    reference = torch.full((1, 3, 16, 16), -0.9)
    fixed = match_colors(clip, overlap=clip[:1], reference=reference)
    torch.testing.assert_close(fixed[1:], (clip[1:] + 0.1).clamp(-1, 1), rtol=0, atol=1e-6)


def test_channel_stats() -> None:
    frames = torch.zeros(2, 3, 2, 2)
    frames[:, 0] = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    mean, std = channel_stats(frames)
    assert mean.flatten().tolist() == [0.5, 0.0, 0.0]
    assert std.flatten().tolist() == [0.5, 0.0, 0.0]


def test_loop_colour_match_changes_only_later_clips_output() -> None:
    """Clip 1 is untouched; later clips are matched to what was shown; the model's inputs are the same either way."""
    models = build_tiny_models()
    cond = tiny_conditioning(15, face_size=16, seed=4)  # 2 clips
    base = dict(clip_len=9, refert_num=1, sampling_steps=2, seed=9)
    raw = list(generate_clips(models, cond, GenerationOptions(color_match=False, **base)))
    matched = list(generate_clips(models, cond, GenerationOptions(color_match=True, **base)))
    assert torch.equal(raw[0], matched[0])
    assert [c.shape for c in raw] == [c.shape for c in matched]
    assert not torch.equal(raw[1], matched[1])
    # Colour matching maps each later clip by a per-channel affine map of its raw frames (guided identically).
    for r, m in zip(raw[1:], matched[1:], strict=True):
        for channel in range(3):
            x, y = r[:, channel].flatten(), m[:, channel].flatten()
            inside = (y > -0.999) & (y < 0.999)
            slope, intercept = np.polyfit(x[inside].numpy(), y[inside].numpy(), 1)
            torch.testing.assert_close(y[inside], x[inside] * float(slope) + float(intercept), rtol=0, atol=1e-4)
    uint8 = list(generate(models, cond, GenerationOptions(color_match=True, **base)))
    assert sum(c.shape[0] for c in uint8) == 15
