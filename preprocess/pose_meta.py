"""One person's 2D whole-body pose in one image, in the layout the official drawing and retargeting use."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

# Body layout (20 points): OpenPose-18 order, then the two toe points the official code builds
# from the COCO-WholeBody foot keypoints.
BODY_NAMES: tuple[str, ...] = (
    "nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear",
    "l_toe", "r_toe",
)  # fmt: skip
NUM_BODY = 20
NUM_HAND = 21
NUM_FACE = 68


@dataclass
class PoseMeta:
    """Keypoints of one person in an image of `width` x `height` pixels.

    Every array is (N, 3) float32: x, y in pixels of that image, and a confidence score, about [0, 1]
    (0 where the point is missing; ViTPose scores are raw heatmap maxima, unclipped as official, so
    they can slightly exceed 1).
    """

    width: int
    height: int
    body: np.ndarray  # (20, 3), BODY_NAMES order
    left_hand: np.ndarray  # (21, 3), COCO-WholeBody hand order
    right_hand: np.ndarray  # (21, 3)
    face: np.ndarray  # (68, 3), the 68 COCO-WholeBody face landmarks
    # (5,) float: x1, y1, x2, y2, score of the detector box the pose was estimated in; score -1 means the
    # detector found nobody and (as official) the whole image was used. None when unknown.
    person_box: np.ndarray | None = None
    # (5,) float: x1, y1, x2, y2, score of a tight face box to use INSTEAD of the face landmarks for the
    # face crop. Only the smoke pose backend (no face landmarks) sets it; None otherwise.
    face_box: np.ndarray | None = None

    @property
    def has_person(self) -> bool:
        """False when the detector found nobody in the image (official fallback box)."""
        return self.person_box is None or float(self.person_box[4]) > 0

    def copy(self) -> PoseMeta:
        return replace(
            self,
            body=self.body.copy(),
            left_hand=self.left_hand.copy(),
            right_hand=self.right_hand.copy(),
            face=self.face.copy(),
            person_box=None if self.person_box is None else self.person_box.copy(),
            face_box=None if self.face_box is None else self.face_box.copy(),
        )

    @staticmethod
    def empty(width: int, height: int) -> PoseMeta:
        """A pose with every point missing (score 0), e.g. for a frame where nobody was found."""
        return PoseMeta(
            width=width,
            height=height,
            body=np.zeros((NUM_BODY, 3), np.float32),
            left_hand=np.zeros((NUM_HAND, 3), np.float32),
            right_hand=np.zeros((NUM_HAND, 3), np.float32),
            face=np.zeros((NUM_FACE, 3), np.float32),
        )
