"""2D whole-body pose: the released ViTPose-H ONNX (top-down, DARK decoding); smoke runs use a tiny graph.

Real path (as the official `Pose2d`): the detector's person box -> centre/scale with 1.25 margin ->
a 256x192 crop -> ImageNet normalisation -> ViTPose-H heatmaps (133 x 64 x 48) -> argmax + DARK
sub-pixel refinement -> image pixels -> PoseMeta (20 body points, 21 per hand, 68 face landmarks).

Model file: the official script passes `process_checkpoint/pose2d/vitpose_h_wholebody.onnx`; on the
Hub that name is a FOLDER holding `end2end.onnx` plus external weight files, and the official
loader opens `<folder>/end2end.onnx` when given a folder. `resolve_pose_onnx` does the same (and
also accepts the .onnx file itself).

Channel order (deliberate): the official `Pose2d.load_images` converts the (already RGB) frames
with COLOR_BGR2RGB, i.e. swaps them to BGR, and ViTPose's preprocessing then normalises that BGR crop
with the RGB ImageNet mean/std, although ViTPose was trained on RGB. We default to the official BGR
input (`channel_order="bgr"`): the skeleton drawing keeps only points scoring >= 0.5, so which
points get drawn depends on the confidence distribution of the released pipeline, the one its
authors validated with this model, and we cannot measure the RGB variant without the weights.
`channel_order="rgb"` gives the input ViTPose was trained on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol

import cv2
import numpy as np

from .detection import BatchedSession, PersonDetector, Providers, open_onnx_session
from .frame_threads import map_frames
from .pose_meta import PoseMeta

logger = logging.getLogger(__name__)

POSE_INPUT_HW = (256, 192)  # (rows, cols) of the ViTPose input
BOX_RESCALE = 1.25  # margin around the detector box (official)
DARK_KERNEL = 11  # Gaussian modulation kernel of the DARK decoding (official default, sigma 2)
MIN_BOX_SIDE = 10  # boxes narrower or shorter than this (or score <= 0) fall back to the whole image
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])

# COCO-WholeBody (133 points): 0-16 body, 17-22 feet, 23-90 face, 91-111 left hand, 112-132 right hand.
# Body-20 point i is the mean of points BODY_A[i] and BODY_B[i] (scores included), as official:
# the neck is the shoulders' midpoint, the toes the midpoints of big and small toe.
BODY_A = (0, 6, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3, 17, 20)
BODY_B = (0, 5, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3, 18, 21)
FACE_SLICE = slice(23, 91)
LEFT_HAND_SLICE = slice(91, 112)
RIGHT_HAND_SLICE = slice(112, 133)


class PoseEstimator(Protocol):
    def __call__(self, frames: np.ndarray) -> list[PoseMeta]:
        """(N, H, W, 3) uint8 RGB -> one PoseMeta per frame (pixel coordinates of that frame)."""
        ...


# ---------------------------------------------------------------------------------------------------
# Top-down crop (official bbox_from_detector / crop)


def box_to_center_scale(box: np.ndarray, input_hw: tuple[int, int] = POSE_INPUT_HW, rescale: float = BOX_RESCALE
                        ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Detector box x1, y1, x2, y2 -> centre (2,) and scale (2,) [w, h] in units of 200 px, with margin.

    The box is grown to the input's aspect (rows/cols) around its centre, then by `rescale`.
    """
    aspect = input_hw[0] / float(input_hw[1])
    center = np.array([(box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0])
    size = max((box[2] - box[0]) * aspect, box[3] - box[1])
    scale = np.array([size / aspect, size]) / 200.0 * rescale
    return center, scale


def crop_window(center: np.ndarray, scale_h: float, input_hw: tuple[int, int] = POSE_INPUT_HW
                ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Integer upper-left and bottom-right (exclusive) image corners of the crop, as the official `crop`.

    Official arithmetic kept: a crop->image affine inverted with np.linalg.inv, 1-based points, and
    Python/numpy rounding (half to even), so the window matches the official one pixel for pixel.
    """
    rows, cols = input_hw
    h = 200 * scale_h
    w = h / (rows / float(cols))
    t = np.array([
        [float(cols) / w, 0.0, cols * (-float(center[0]) / w + 0.5)],
        [0.0, float(rows) / h, rows * (-float(center[1]) / h + 0.5)],
        [0.0, 0.0, 1.0],
    ])  # fmt: skip
    inv = np.linalg.inv(t)

    def to_image(pt: tuple[int, int]) -> np.ndarray:
        p = inv @ np.array([pt[0] - 1, pt[1] - 1, 1.0])
        return np.array([round(p[0]), round(p[1])], dtype=np.int64) + 1

    ul = to_image((1, 1)) - 1
    br = to_image((cols + 1, rows + 1)) - 1
    return ul, br


def crop_person(img: np.ndarray, center: np.ndarray, scale: np.ndarray, input_hw: tuple[int, int] = POSE_INPUT_HW
                ) -> np.ndarray:  # fmt: skip
    """(H, W, 3) image -> (rows, cols, 3) float32 crop: the window (zero outside the image) resized bilinearly."""
    ul, br = crop_window(center, float(max(scale)), input_hw)
    img_h, img_w = img.shape[:2]
    window = np.zeros((br[1] - ul[1], br[0] - ul[0], img.shape[2]), np.float32)
    x0, x1 = max(0, ul[0]), min(img_w, br[0])
    y0, y1 = max(0, ul[1]), min(img_h, br[1])
    if x1 > x0 and y1 > y0 and window.size:
        window[y0 - ul[1] : y1 - ul[1], x0 - ul[0] : x1 - ul[0]] = img[y0:y1, x0:x1]
    if window.size == 0:
        return np.zeros((input_hw[0], input_hw[1], img.shape[2]), np.float32)
    return cv2.resize(window, (input_hw[1], input_hw[0]))


def pose_input(img: np.ndarray, box: np.ndarray | None, channel_order: Literal["bgr", "rgb"] = "bgr",
               input_hw: tuple[int, int] = POSE_INPUT_HW) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """RGB frame + detector box -> ((3, rows, cols) float32 input, centre (2,), scale (2,) in 200 px units).

    A missing box, a score <= 0 (nobody detected) or a side under 10 px uses the whole image (official).
    """
    if box is None or box[-1] <= 0 or (box[2] - box[0]) < MIN_BOX_SIDE or (box[3] - box[1]) < MIN_BOX_SIDE:
        box = np.array([0.0, 0.0, img.shape[1], img.shape[0]])
    center, scale = box_to_center_scale(box, input_hw)
    crop = crop_person(img, center, scale, input_hw)
    if channel_order == "bgr":
        crop = crop[..., ::-1]  # the official pipeline's (unintended) BGR input, see the module docstring
    normed = (crop / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(normed.transpose(2, 0, 1).astype(np.float32)), center, scale


def pose_inputs(frames: np.ndarray, boxes: np.ndarray, channel_order: Literal["bgr", "rgb"] = "bgr"
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """`pose_input` for every frame and its box, frames prepared side by side: (N, 3, rows, cols) float32 inputs,
    (N, 2) centres, (N, 2) scales."""
    prepared = map_frames(lambda frame, box: pose_input(frame, box, channel_order), frames, boxes)
    return (np.stack([p[0] for p in prepared]), np.stack([p[1] for p in prepared]),
            np.stack([p[2] for p in prepared]))  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Heatmap decoding (official keypoints_from_heatmaps with unbiased=True, use_udp=False)


CV_MAX_CHANNELS = 128  # OpenCV 5's CV_CN_MAX (512 in OpenCV 4)


def argmax_heatmaps(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, K, H, W) -> integer peak coords (N, K, 2) float32 [x, y] (-1 where max <= 0) and maxima (N, K)."""
    n, k, _, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1)
    idx = np.argmax(flat, axis=2)
    maxvals = np.take_along_axis(flat, idx[..., None], axis=2)[..., 0]
    coords = np.stack([idx % w, idx // w], axis=-1).astype(np.float32)
    coords[maxvals <= 0] = -1
    return coords, maxvals


def modulate_heatmaps(heatmaps: np.ndarray, kernel: int = DARK_KERNEL) -> np.ndarray:
    """DARK's Gaussian modulation: blur each map (zero-padded by kernel//2), rescale to its original max.

    The rescale factor is original max / blurred max, as official, whatever their signs: a map with a
    positive peak whose blurred map is all negative comes out flipped (and DARK still refines on it). Only
    a blurred max of exactly 0 keeps factor 1 (the official code divides by zero there and gets NaN).
    The K maps of a frame go to cv2 as channels, at most CV_MAX_CHANNELS at a time (OpenCV 5 reads an array
    with more channels than that as a 3-D matrix and refuses it; OpenCV 4 allows 512).
    """
    border = (kernel - 1) // 2
    n, k, h, w = heatmaps.shape
    out = np.empty_like(heatmaps, dtype=np.float32)
    chunks = [slice(start, min(start + CV_MAX_CHANNELS, k)) for start in range(0, k, CV_MAX_CHANNELS)]
    # one zero-bordered buffer per chunk: contiguous for cv2, and its border never changes
    padded = [np.zeros((h + 2 * border, w + 2 * border, c.stop - c.start), np.float32) for c in chunks]
    for i in range(n):
        maps = heatmaps[i].transpose(1, 2, 0).astype(np.float32)  # (H, W, K)
        blurred = np.empty((h, w, k), np.float32)
        for chunk, buffer in zip(chunks, padded, strict=True):
            buffer[border:-border, border:-border] = maps[..., chunk]
            smooth = cv2.GaussianBlur(buffer, (kernel, kernel), 0).reshape(buffer.shape)  # cv2 drops a 1-channel axis
            blurred[..., chunk] = smooth[border:-border, border:-border]
        new_max = blurred.max(axis=(0, 1))
        ratio = np.where(new_max != 0, maps.max(axis=(0, 1)) / np.where(new_max != 0, new_max, 1.0), 1.0)
        out[i] = (blurred * ratio).transpose(2, 0, 1)
    return out


def safe_log(values: np.ndarray) -> np.ndarray:
    """The log DARK takes of the modulated heatmaps (values floored at 1e-10 first), in their own dtype."""
    return np.log(np.maximum(values, 1e-10))


def dark_refine(log_heatmaps: np.ndarray, coords: np.ndarray,
                transform: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:  # fmt: skip
    """Newton step on log-heatmaps at the integer peaks (DARK's Taylor expansion), official stencils.

    log_heatmaps (N, K, H, W), coords (N, K, 2) integer-valued -> refined coords (N, K, 2) float32.
    Derivatives use central differences of step 1 (first) and 2 (second); peaks within 2 px of the
    border, and singular Hessians, keep their integer position (official).
    `transform` (elementwise) is applied to the sampled values first: `decode_heatmaps` passes the modulated maps
    and `safe_log`, so the log is taken at the 13 stencil points per keypoint instead of over whole maps (the
    same numbers, a fraction of the work).
    """
    n, k, h, w = log_heatmaps.shape
    px = coords[..., 0].astype(np.int64)  # int() truncation as official; -1 stays -1
    py = coords[..., 1].astype(np.int64)
    valid = (px > 1) & (px < w - 2) & (py > 1) & (py < h - 2)
    x = np.where(valid, px, 2)
    y = np.where(valid, py, 2)
    maps = log_heatmaps.reshape(n * k, h, w)
    flat = np.arange(n * k)
    xf, yf = x.reshape(-1), y.reshape(-1)

    def at(dy: int, dx: int) -> np.ndarray:
        values = maps[flat, yf + dy, xf + dx].reshape(n, k)
        return (values if transform is None else transform(values)).astype(np.float64)

    center = at(0, 0)
    dx = 0.5 * (at(0, 1) - at(0, -1))
    dy = 0.5 * (at(1, 0) - at(-1, 0))
    dxx = 0.25 * (at(0, 2) - 2 * center + at(0, -2))
    dxy = 0.25 * (at(1, 1) - at(-1, 1) - at(1, -1) + at(-1, -1))
    dyy = 0.25 * (at(2, 0) - 2 * center + at(-2, 0))
    det = dxx * dyy - dxy**2
    valid &= det != 0
    safe_det = np.where(valid, det, 1.0)
    off_x = -(dyy * dx - dxy * dy) / safe_det  # -(H^-1 g), H^-1 = [[dyy, -dxy], [-dxy, dxx]] / det
    off_y = -(-dxy * dx + dxx * dy) / safe_det
    out = coords.astype(np.float32).copy()
    out[..., 0] += np.where(valid, off_x, 0.0).astype(np.float32)
    out[..., 1] += np.where(valid, off_y, 0.0).astype(np.float32)
    return out


def heatmap_to_image(coords: np.ndarray, centers: np.ndarray, scales: np.ndarray, heatmap_wh: tuple[int, int]
                     ) -> np.ndarray:  # fmt: skip
    """Heatmap coords (N, K, 2) -> image pixels, given crop centres (N, 2) and scales (N, 2) in 200 px units."""
    size_px = scales * 200.0  # (N, 2) crop width, height in image pixels
    factor = size_px / np.array(heatmap_wh, dtype=np.float64)
    out = coords * factor[:, None, :] + (centers - size_px * 0.5)[:, None, :]
    return out.astype(np.float32)


def decode_heatmaps(heatmaps: np.ndarray, centers: np.ndarray, scales: np.ndarray, kernel: int = DARK_KERNEL
                    ) -> np.ndarray:  # fmt: skip
    """(N, K, H, W) heatmaps -> (N, K, 3) float32 image x, y and score (the heatmap maximum)."""
    coords, maxvals = argmax_heatmaps(heatmaps)
    coords = dark_refine(modulate_heatmaps(heatmaps, kernel), coords, transform=safe_log)
    h, w = heatmaps.shape[2:]
    xy = heatmap_to_image(coords, centers, scales, (w, h))
    return np.concatenate([xy, maxvals[..., None].astype(np.float32)], axis=2)


# ---------------------------------------------------------------------------------------------------
# 133 COCO-WholeBody points -> PoseMeta


def wholebody_to_pose_meta(kps: np.ndarray, width: int, height: int, person_box: np.ndarray | None = None
                           ) -> PoseMeta:  # fmt: skip
    """(133, 3) pixel keypoints -> PoseMeta: body-20 (OpenPose-18 + toes), hands 21 each, face 68."""
    kps = np.asarray(kps, dtype=np.float32)
    body = (kps[list(BODY_A)] + kps[list(BODY_B)]) / 2
    return PoseMeta(
        width=int(width),
        height=int(height),
        body=body.astype(np.float32),
        left_hand=kps[LEFT_HAND_SLICE].copy(),
        right_hand=kps[RIGHT_HAND_SLICE].copy(),
        face=kps[FACE_SLICE].copy(),
        person_box=None if person_box is None else np.asarray(person_box, dtype=np.float64).copy(),
    )


def fill_invalid_bodies(metas: list[PoseMeta]) -> list[PoseMeta]:
    """Official rule: a frame whose every body point has a negative coordinate reuses the previous body.

    (The official code would fail on such a first frame; we leave a first frame as it is.)
    """
    for i in range(1, len(metas)):
        if metas[i].body[:, :2].min(axis=1).max() < 0:
            metas[i].body = metas[i - 1].body.copy()
    return metas


# ---------------------------------------------------------------------------------------------------
# Backends


def resolve_pose_onnx(path: Path) -> Path:
    """The .onnx file to open: the file itself, or (official layout) `<folder>/end2end.onnx`."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        for candidate in (path / "end2end.onnx", path / "vitpose_h_wholebody.onnx"):
            if candidate.is_file() or candidate.is_dir():
                return resolve_pose_onnx(candidate)
        onnx_files = sorted(path.glob("*.onnx"))
        if len(onnx_files) == 1:
            return resolve_pose_onnx(onnx_files[0])
    raise FileNotFoundError(f"no ViTPose ONNX at {path} (expected a .onnx file or a folder with end2end.onnx)")


class OnnxWholeBodyPose:
    """The released ViTPose-H whole-body ONNX: frames + person boxes -> (N, 133, 3) pixel keypoints."""

    def __init__(self, path: Path, providers: Providers | None = None,
                 channel_order: Literal["bgr", "rgb"] = "bgr", max_batch: int = 16) -> None:  # fmt: skip
        self.runner = BatchedSession(open_onnx_session(resolve_pose_onnx(path), providers), max_batch)
        self.channel_order = channel_order
        shape = self.runner.session.get_inputs()[0].shape
        if all(isinstance(d, int) for d in shape[2:]) and tuple(shape[2:]) != POSE_INPUT_HW:
            logger.warning("pose model input is %s, the official crop is %s", shape[2:], POSE_INPUT_HW)
        self.runner.warm_up((3, *POSE_INPUT_HW))

    def heatmaps(self, inputs: np.ndarray) -> np.ndarray:
        """(N, 3, 256, 192) float32 -> (N, 133, 64, 48) heatmaps, `self.runner.batch` at a time."""
        return self.runner.run(inputs).astype(np.float32, copy=False)

    def __call__(self, frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB + (N, 5) boxes -> (N, 133, 3) float32 x, y in pixels, score."""
        inputs, centers, scales = pose_inputs(frames, boxes, self.channel_order)
        return decode_heatmaps(self.heatmaps(inputs), centers, scales)


class WholeBodyPoseEstimator:
    """Detector + ViTPose whole-body: the official pose path.

    Called on frames it takes the largest person per frame (official; used for single images such as the
    reference). For a driving video the pipeline calls `detect_people` on every frame first, chooses one performer
    over the whole video (preprocess/tracking.py), then `estimate` with that person's box per frame.
    """

    def __init__(self, detector: PersonDetector, pose: OnnxWholeBodyPose) -> None:
        self.detector = detector
        self.pose = pose

    def detect_people(self, frames: np.ndarray) -> list[np.ndarray]:
        """(N, H, W, 3) uint8 RGB -> per frame (M, 5) x1, y1, x2, y2, score of every detected person."""
        return self.detector.detect_all(frames)

    def estimate(self, frames: np.ndarray, boxes: np.ndarray) -> list[PoseMeta]:
        """(N, H, W, 3) uint8 RGB + (N, 5) person boxes (score <= 0: whole image) -> one PoseMeta per frame."""
        height, width = frames.shape[1:3]
        kps = self.pose(frames, boxes)
        return [wholebody_to_pose_meta(k, width, height, person_box=b) for k, b in zip(kps, boxes, strict=True)]

    def __call__(self, frames: np.ndarray) -> list[PoseMeta]:
        return self.estimate(frames, self.detector(frames))

