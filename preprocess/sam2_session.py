"""SAM2's video inference session holding the clip's frames as model-size uint8, normalised when the model reads one.

transformers' `Sam2VideoInferenceSession` stores every frame of a clip as normalised float32 (3 x 1024 x 1024 =
12 MiB; 4.7 GiB for the official 400-frame chunk). The normalised value of a pixel depends only on its channel and
its uint8 value, so this session keeps the bicubic-resized uint8 planes (3 MiB a frame) and a (3, 256) table of the
official float32 values, and gathers a frame's values from the table when the model asks for it: the same numbers,
a quarter of the memory.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession


class Uint8FrameSession(Sam2VideoInferenceSession):
    """A Sam2VideoInferenceSession whose frames are (3, S, S) uint8 planes plus a (3, 256) value table."""

    def __init__(self, table: np.ndarray, **session_kwargs) -> None:
        super().__init__(**session_kwargs)
        if table.shape != (3, 256) or table.dtype != np.float32:
            raise ValueError(f"the value table must be (3, 256) float32, not {table.shape} {table.dtype}")
        self.table = torch.from_numpy(table).to(self.inference_device)  # (3, 256): channel, uint8 value -> input
        self.channels = torch.arange(3, device=self.inference_device)[:, None, None]  # (3, 1, 1)

    def add_new_frame(self, pixel_values: np.ndarray, frame_idx: int | None = None) -> int:
        """Store (3, S, S) uint8 planes as they are (on the CPU)."""
        if pixel_values.dtype != np.uint8 or pixel_values.ndim != 3 or pixel_values.shape[0] != 3:
            raise ValueError(f"frames must be (3, S, S) uint8 planes, not {pixel_values.shape} {pixel_values.dtype}")
        if frame_idx is None:
            frame_idx = len(self.processed_frames) if self.processed_frames is not None else 0
        if self.processed_frames is None:
            self.processed_frames = {}
        self.processed_frames[frame_idx] = torch.from_numpy(np.ascontiguousarray(pixel_values))
        return frame_idx

    def get_frame(self, frame_idx: int) -> torch.Tensor:
        """(3, S, S) normalised input on the inference device: the table's values at the frame's uint8 planes."""
        planes = self.processed_frames[frame_idx].to(self.inference_device, non_blocking=True).long()
        return self.table[self.channels, planes].to(self.dtype)
