"""Tiny conditioning inputs of the real contract's shapes for the wan/ tests (no preprocessing run)."""

from __future__ import annotations

import numpy as np
from wan_animate.preprocess.conditioning import Conditioning


def tiny_conditioning(
    num_frames: int,
    height: int = 64,
    width: int = 64,
    mode: str = "animation",
    seed: int = 0,
    face_size: int = 512,
) -> Conditioning:
    """Random but smooth test inputs of the real contract's shapes (faces at 512 unless told)."""
    rng = np.random.default_rng(seed)

    def smooth_video(t: int, h: int, w: int) -> np.ndarray:
        base = rng.integers(0, 256, size=(1, h // 8 + 1, w // 8 + 1, 3)).astype(np.float32)
        drift = rng.normal(0, 8, size=(t, 1, 1, 3)).cumsum(axis=0).astype(np.float32)
        frames = np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)[:, :h, :w] + drift
        return np.clip(frames, 0, 255).astype(np.uint8)

    pose = smooth_video(num_frames, height, width)
    face = smooth_video(num_frames, face_size, face_size)
    reference = smooth_video(1, height, width)[0]
    background = mask = None
    if mode == "replacement":
        background = smooth_video(num_frames, height, width)
        mask = np.zeros((num_frames, height, width), dtype=np.uint8)
        mask[:, height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 1
        background[mask.astype(bool)] = 0
    return Conditioning(
        pose_frames=pose,
        face_frames=face,
        reference=reference,
        fps=30.0,
        background_frames=background,
        mask_frames=mask,
    )
