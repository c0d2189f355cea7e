"""What preprocessing hands to generation: the model's conditioning, as arrays or array-likes read per clip."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from .frame_store import FrameStore
    from .skeleton_video import SkeletonVideo

Mode = Literal["animation", "replacement"]


@dataclass(frozen=True)
class PreprocessOptions:
    """User options that shape the conditioning (names match the app's inputs)."""

    mode: Mode = "animation"
    # Target area is width*height; the aspect comes from the input (official rule), each side
    # floored to a multiple of 16.
    resolution_width: int = 1280
    resolution_height: int = 720
    fps: float = 30.0  # -1 keeps the source rate
    retarget_flag: bool = False
    use_flux: bool = False
    mask_iterations: int = 3
    mask_kernel_size: int = 7
    mask_w_subdivisions: int = 1
    mask_h_subdivisions: int = 1
    # Who performs in a multi-person video (preprocess/tracking.py: parse_person): "auto" (the most prominent
    # person over the clip), an index left to right ("0", "1"...), a point "x,y" or a box "x1,y1,x2,y2".
    person: str = "auto"


@dataclass
class Conditioning:
    """The model inputs for one driving video, all RGB, all frames at the same rate.

    T is the number of output frames (the driving video resampled to `fps`), H x W the output size
    (multiples of 16).
    """

    # (T, H, W, 3) uint8: skeleton drawings on black; preprocess() gives a SkeletonVideo, which draws the frames
    # when they are read (indexing, iteration, np.asarray) instead of holding them all (5 GB at 1800 frames of 720p)
    pose_frames: np.ndarray | SkeletonVideo
    face_frames: np.ndarray | FrameStore  # (T, 512, 512, 3) uint8: face crops of the driving person (preprocess():
    # on disk, read per clip)
    reference: np.ndarray  # (H, W, 3) uint8: the character image, letterboxed to H x W
    fps: float  # frame rate of all the arrays above (and of the output video)
    # Replacement only; preprocess() keeps them on disk (a FrameStore, read per clip: 6.6 GB at 1800 frames of 720p)
    background_frames: np.ndarray | FrameStore | None = None  # (T, H, W, 3) uint8: the person region zeroed
    mask_frames: np.ndarray | FrameStore | None = None  # (T, H, W) uint8 in {0, 1}: 1 = region to regenerate

    @property
    def num_frames(self) -> int:
        return int(self.pose_frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.pose_frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.pose_frames.shape[2])
