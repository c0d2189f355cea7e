"""Driving video + reference image -> Conditioning, following the official process_pipepline.py.

Animation mode (official `replace_flag=False`): the OUTPUT SIZE comes from the reference image,
resized by area; poses and face crops come from the driving frames at their own resolution (frames above
max(output area, 1920x1080) are first shrunk to that area as they are decoded, and the poses mapped back); without
retargeting each skeleton is drawn on a canvas of the video's size and then letterboxed to the output
size; with retargeting the retargeted poses are drawn directly at the reference's size. The model's
reference is the ORIGINAL image letterboxed (bilinear) to that size, as official generate() reads
src_ref.png (the unresized input) back; the area-resized copy serves only pose estimation and retargeting.

Replacement mode (official `replace_flag=True`): the output size comes from the driving video; every
frame is resized by area first (letterboxed, as official), poses, face crops, skeletons and person
masks are computed on those frames, and the reference image is letterboxed to the frame size.
Retargeting is never applied in this mode (as official).

Deliberate differences from the official flow, each explained where it happens: frames are decoded
in chunks (animation mode never holds the whole video), every intermediate stays in memory (no lossy
H.264 round trips), frames without a usable face borrow the nearest face crop, and missing people or
faces are InputErrors that say how to fix the input.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import InputError, check_cancel
from ..limits import LIMITS
from .conditioning import Conditioning, PreprocessOptions
from .detection import fallback_box
from .face import FACE_SIZE, crop_face, face_box, fill_missing_faces, nearest_good
from .frame_threads import map_frames
from .pose import PoseEstimator, fill_invalid_bodies
from .pose_meta import PoseMeta
from .skeleton import render_pose
from .tracking import PersonChoice, parse_person, performer_boxes, scale_choice
from .video_decode import Transform, VideoInfo, frame_indices_by_time, iter_frames, probe_video, read_frames
from .video_io import (
    check_frame_shape,
    frame_indices_for_fps,
    letterbox,
    load_image,
    official_frame_count,
    resize_by_area,
    target_size,
    write_video,
)

logger = logging.getLogger("wan_animate.preprocess")
# Animation mode: driving frames above this many pixels (and above the output area) are reduced as they are decoded,
# so memory follows the working size, not the upload's (a 4K frame is 25 MB); poses are mapped back to the source size.
ANIMATION_WORK_AREA = 1920 * 1080

POSE_CHUNK = 32  # frames decoded and pose-estimated per step


@dataclass
class PreprocessModels:
    """The models preprocessing runs: loaded once per worker, reused for every request (offloaded workers: the pose
    models and SAM2 per request, see `models_for_request`)."""

    pose_estimator: PoseEstimator | None  # detector + pose model: frames -> PoseMeta per frame; None: per request
    segmenter: Any | None = None  # SAM2 video segmenter for replacement masks (used by masks.person_masks)
    flux: Any | None = None  # FLUX.1 Kontext pipeline for `use_flux` retargeting (used by flux_edit)


@dataclass
class _DrivingPass:
    """What one pass over the driving frames collects."""

    poses: list[PoseMeta]
    faces: np.ndarray  # (T, 512, 512, 3) uint8
    frames: np.ndarray | None  # (T, H, W, 3) uint8, replacement mode only (resized frames)
    edit_frame: np.ndarray | None  # the frame FLUX edits for retargeting (official: the second one)
    frame_hw: tuple[int, int]  # size of the frames the poses refer to
    present: np.ndarray | None = None  # (T,) bool: the performer is in the frame; None: not tracked (official)


class _Timer:
    """Logs how long each stage took."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.start = time.perf_counter()
        self.last = self.start

    def done(self, stage: str, detail: str = "") -> None:
        now = time.perf_counter()
        self.log.info("preprocess %s: %.2f s%s", stage, now - self.last, f" ({detail})" if detail else "")
        self.last = now

    def total(self) -> float:
        return time.perf_counter() - self.start


# ---------------------------------------------------------------------------------------------------
# checks


def _check_video(info: VideoInfo) -> None:
    """Limits checked before decoding anything."""
    if info.duration > LIMITS.max_duration_s:
        raise InputError(
            "video_too_long", "driving_video",
            f"lasts {info.duration:.1f} s; the limit is {LIMITS.max_duration_s:.0f} s. Trim the video.",
        )  # fmt: skip
    if info.width * info.height > LIMITS.max_input_pixels:
        raise InputError(
            "video_too_large", "driving_video",
            f"is {info.width}x{info.height}; the limit is {LIMITS.max_input_pixels / 1e6:.1f} MP per frame. "
            "Downscale it (e.g. to 1920x1080).",
        )  # fmt: skip
    check_frame_shape(info.width, info.height, "driving_video")


def _frame_indices(info: VideoInfo, fps: float) -> list[int]:
    """Source frames to decode for the requested fps (official rule), checked against the frame limit."""
    if info.variable_rate:  # frame i is not at i / fps: pick frames by their timestamps
        indices = frame_indices_by_time(info.frame_times, info.duration, info.fps if fps == -1 else fps)
    else:
        indices = frame_indices_for_fps(official_frame_count(info), info.fps, fps)
    # The official count can exceed what the decoder has (when the container under-reports): clip.
    indices = [min(i, info.frames - 1) for i in indices]
    if not indices:
        raise InputError(
            "video_too_short", "driving_video",
            f"gives no frames at {fps:g} fps ({info.duration:.2f} s long); use a longer video or a higher fps",
        )  # fmt: skip
    if len(indices) > LIMITS.max_output_frames:
        raise InputError(
            "too_many_frames", "fps",
            f"the video gives {len(indices)} frames at {fps:g} fps; the limit is {LIMITS.max_output_frames}. "
            "Use a shorter video or a lower fps.",
        )  # fmt: skip
    return indices


def _require_person(poses: list[PoseMeta]) -> None:
    if not any(p.has_person for p in poses):
        raise InputError(
            "no_person_in_video", "driving_video",
            "no person was detected in any frame. Use a video in which one person is clearly visible "
            "(body in frame, not too small or too dark).",
        )  # fmt: skip


def _reference_pose(models: PreprocessModels, reference: np.ndarray) -> PoseMeta:
    pose = models.pose_estimator(reference[None])[0]
    if not pose.has_person:
        raise InputError(
            "no_person_in_reference", "reference_image",
            "no person was detected in the reference image, so the pose cannot be retargeted to it. Use an "
            "image showing the character's body (ideally standing, facing the camera), or set retarget_flag=false.",
        )  # fmt: skip
    return pose


# ---------------------------------------------------------------------------------------------------
# the pass over the driving video


def _chunks(path: Path, indices: list[int], transform: Transform | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(start, (n, h, w, 3) frames) for each chunk, each frame reduced by `transform` as it is decoded."""
    start = 0
    for frames in iter_frames(path, indices, chunk=POSE_CHUNK, transform=transform):
        yield start, frames
        start += len(frames)


def working_size(width: int, height: int, area: int) -> tuple[int, int]:
    """(w, h) animation mode estimates poses and crops faces at: the source size when it is at most
    max(area, ANIMATION_WORK_AREA) pixels, else the source scaled to that area, aspect kept (not letterboxed)."""
    limit = max(area, ANIMATION_WORK_AREA)
    if width * height <= limit:
        return width, height
    scale = (limit / (width * height)) ** 0.5
    return max(int(width * scale), 1), max(int(height * scale), 1)


def _shrink_to(width: int, height: int) -> Transform:
    """Per-frame reduction to width x height (INTER_AREA, the filter the official resize uses to shrink)."""
    return lambda frame: cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)


def _to_source(metas: list[PoseMeta], work_hw: tuple[int, int], source_hw: tuple[int, int]) -> list[PoseMeta]:
    """Poses found in frames reduced to work_hw, in the pixels of the source_hw frames."""
    sx, sy = source_hw[1] / work_hw[1], source_hw[0] / work_hw[0]
    return [_scaled_pose(m, sx, sy, source_hw[1], source_hw[0]) for m in metas]


def _scaled_pose(meta: PoseMeta, sx: float, sy: float, width: int, height: int) -> PoseMeta:
    """A pose found in a reduced frame, in the pixel coordinates of the width x height source frame."""
    scaled = meta.copy()
    for points in (scaled.body, scaled.left_hand, scaled.right_hand, scaled.face):
        points[:, 0] *= sx
        points[:, 1] *= sy
    for box in (scaled.person_box, scaled.face_box):
        if box is not None:
            box[[0, 2]] *= sx
            box[[1, 3]] *= sy
    scaled.width, scaled.height = width, height
    return scaled


def _tracks_people(estimator: PoseEstimator) -> bool:
    """True for estimators that can detect everyone first and estimate a chosen box later (WholeBodyPoseEstimator);
    others pick a person per frame themselves."""
    return callable(getattr(estimator, "detect_people", None)) and callable(getattr(estimator, "estimate", None))


def _performer(path: Path, indices: list[int], estimator: Any, transform: Transform | None,
               source_hw: tuple[int, int], person: PersonChoice, fps: float, log: logging.Logger,
               should_cancel: Callable[[], bool] | None = None) -> tuple[np.ndarray, list[str]]:  # fmt: skip
    """Detection over the whole video, then one performer followed through it: (T, 5) boxes and frame statuses
    (tracking.performer_boxes), in the pixels of the frames as `transform` reduces them. A point/box `person` is in
    source pixels (`source_hw`)."""
    detections: list[np.ndarray] = []
    frames = np.zeros((0, *source_hw, 3), np.uint8)
    for start, frames in _chunks(path, indices, transform):
        check_cancel(should_cancel, f"during person detection (frame {start} of {len(indices)})")
        detections.extend(estimator.detect_people(frames))
    scale = (frames.shape[2] / source_hw[1], frames.shape[1] / source_hw[0])  # frame pixels per source pixel, x and y
    boxes, statuses = performer_boxes(detections, scale_choice(person, *scale), fps)
    boxes[boxes[:, 4] <= 0] = fallback_box(*frames.shape[1:3])  # nobody / absent: the official whole-frame box
    counts = {s: statuses.count(s) for s in ("detected", "interpolated", "absent", "nobody")}
    log.info(
        "preprocess: performer (person=%s) detected in %d frames, box interpolated in %d, absent in %d, "
        "nobody detected in %d",
        person.kind if person.kind != "index" else person.index,
        *counts.values(),
    )
    return boxes, statuses


def _fill_absent(poses: list[PoseMeta], present: np.ndarray) -> list[PoseMeta]:
    """Frames without the performer take the nearest frame's pose that has them, marked as not detected there."""
    if present.all() or not present.any():
        return poses
    source = nearest_good(present)
    for i in np.flatnonzero(~present):
        meta = poses[int(source[i])].copy()
        meta.person_box = np.array([0.0, 0.0, meta.width, meta.height, -1.0])
        poses[i] = meta
    return poses


def _driving_pass(path: Path, indices: list[int], models: PreprocessModels, resize_area: int | None,
                  keep_edit_frame: bool, log: logging.Logger, person: PersonChoice | None = None,
                  fps: float = 30.0, should_cancel: Callable[[], bool] | None = None,
                  work_hw: tuple[int, int] | None = None, source_hw: tuple[int, int] | None = None
                  ) -> _DrivingPass:  # fmt: skip
    """Decode, (replacement: resize and keep), estimate poses and crop faces, one chunk at a time (a cancel is
    checked before each chunk).

    Frames are reduced as they are decoded: replacement mode to the output size (official resize_by_area), animation
    mode to `work_hw` when it is smaller than `source_hw` (poses are then mapped back to the source's pixels, so the
    skeletons are drawn as for the full-size frames; face crops come from the reduced frames).

    With an estimator that tracks (`_tracks_people`), a first pass detects everyone in every frame and chooses
    the performer (`person`), and the poses are then estimated on that person's box in each frame.
    """
    total = len(indices)
    estimator = models.pose_estimator
    reduced = resize_area is None and work_hw is not None and source_hw is not None and work_hw != source_hw
    transform: Transform | None = None
    if resize_area is not None:
        transform = partial(resize_by_area, area=resize_area)
    elif reduced:
        transform = _shrink_to(work_hw[1], work_hw[0])
    performer = None
    if _tracks_people(estimator):
        info = probe_video(path) if source_hw is None else None
        hw = source_hw if info is None else (info.height, info.width)
        performer = _performer(path, indices, estimator, transform, hw, person or PersonChoice(), fps, log,
                               should_cancel)  # fmt: skip
    poses: list[PoseMeta] = []
    faces = np.zeros((total, FACE_SIZE, FACE_SIZE, 3), np.uint8)
    has_face = np.zeros(total, bool)
    kept: np.ndarray | None = None
    edit_frame: np.ndarray | None = None
    frame_hw = (0, 0)
    log.info("preprocess: poses and faces for %d frames started (chunks of %d)", total, POSE_CHUNK)
    began = time.perf_counter()
    for start, frames in _chunks(path, indices, transform):
        check_cancel(should_cancel, f"during pose estimation (frame {start} of {total})")
        if resize_area is not None:
            if kept is None:
                kept = np.empty((total, *frames.shape[1:]), np.uint8)
            kept[start : start + len(frames)] = frames
        frame_hw = frames.shape[1:3]
        if performer is None:
            metas = estimator(frames)
        else:
            metas = estimator.estimate(frames, performer[0][start : start + len(frames)])
        poses.extend(metas if not reduced else _to_source(metas, frame_hw, source_hw))
        for j, (frame, meta) in enumerate(zip(frames, metas, strict=True)):
            if performer is not None and performer[1][start + j] == "absent":
                continue  # the performer is not seen here: the nearest face crop is used
            box = face_box(meta, *frame_hw)
            if box is not None:
                faces[start + j] = crop_face(frame, box)
                has_face[start + j] = True
        edit_index = min(1, total - 1)  # official: FLUX edits the second frame
        if keep_edit_frame and start <= edit_index < start + len(frames):
            edit_frame = frames[edit_index - start].copy()
        done = start + len(frames)
        if done == total or (start // POSE_CHUNK) % 8 == 7:  # progress every 256 frames
            eta = (time.perf_counter() - began) / done * (total - done)
            log.info("preprocess: poses and faces for %d of %d frames (about %.0f s left)", done, total, eta)
    if reduced:
        frame_hw = source_hw  # the poses are in the source's pixels
        if keep_edit_frame:  # FLUX edits the frame at the size the poses refer to: decode that one frame again
            edit_frame = read_frames(path, [indices[min(1, total - 1)]])[0]
    present = None
    if performer is not None:
        present = np.array([s != "absent" for s in performer[1]])
        poses = _fill_absent(poses, present)
    poses = fill_invalid_bodies(poses)
    _require_person(poses)
    fill_missing_faces(faces, has_face, log)
    return _DrivingPass(poses, faces, kept, edit_frame, (int(frame_hw[0]), int(frame_hw[1])), present)


# ---------------------------------------------------------------------------------------------------
# skeletons


def _draw_letterboxed(poses: list[PoseMeta], canvas_hw: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """Official no-retarget animation: draw at the video's size, then letterbox (bilinear) to the output.

    Frames are drawn side by side (OpenCV releases the GIL; each frame is its own canvas)."""
    out = np.empty((len(poses), *out_hw, 3), np.uint8)

    def draw(i: int, meta: PoseMeta) -> None:
        out[i] = letterbox(render_pose(meta, *canvas_hw), *out_hw, interpolation=cv2.INTER_LINEAR)

    map_frames(draw, range(len(poses)), poses)
    return out


def _draw(poses: list[PoseMeta], out_hw: tuple[int, int], right_hand_first: bool = False) -> np.ndarray:
    """Each pose drawn on its own black canvas of the output size, frames side by side.

    `right_hand_first` for retargeted poses: overlapping hands are painted in the official retargeted order."""
    out = np.empty((len(poses), *out_hw, 3), np.uint8)

    def draw(i: int, meta: PoseMeta) -> None:
        out[i] = render_pose(meta, *out_hw, right_hand_first=right_hand_first)

    map_frames(draw, range(len(poses)), poses)
    return out


def _retargeted(drive: _DrivingPass, reference: np.ndarray, options: PreprocessOptions, models: PreprocessModels,
                timer: _Timer) -> list[PoseMeta]:  # fmt: skip
    """Official retargeting: driving poses mapped onto the reference's proportions (optionally FLUX-assisted)."""
    from .retarget import retarget_poses  # written separately; imported only when retargeting runs

    ref_pose = _reference_pose(models, reference)
    driving_edit = reference_edit = None
    if options.use_flux:
        if models.flux is None:
            raise InputError("flux_unavailable", "use_flux",
                             "this worker has no FLUX Kontext model loaded; set use_flux=false")  # fmt: skip
        from .flux_edit import flux_edit_poses

        driving_edit, reference_edit = flux_edit_poses(
            flux=models.flux,
            pose_estimator=models.pose_estimator,
            reference_image=reference,
            driving_frame=drive.edit_frame,
            driving_poses=drive.poses,
            reference_pose=ref_pose,
        )
        timer.done("flux_edit")
    poses = retarget_poses(drive.poses[0], ref_pose, drive.poses, driving_edit, reference_edit)
    timer.done("retarget")
    return poses


# ---------------------------------------------------------------------------------------------------
# modes


def _animation(driving: Path, reference_img: np.ndarray, info: VideoInfo, indices: list[int], fps: float,
               options: PreprocessOptions, models: PreprocessModels, log: logging.Logger, timer: _Timer,
               should_cancel: Callable[[], bool] | None = None) -> Conditioning:  # fmt: skip
    area = options.resolution_width * options.resolution_height
    reference = resize_by_area(reference_img, area)  # the output size is the reference's; poses run on this copy
    out_hw = (int(reference.shape[0]), int(reference.shape[1]))
    model_reference = letterbox(reference_img, *out_hw)  # official generate(): the raw input, bilinear, to out_hw
    retarget = options.retarget_flag
    if options.use_flux and not retarget:
        log.warning("use_flux only applies with retarget_flag=true (official); ignoring it")
    work_w, work_h = working_size(info.width, info.height, area)
    drive = _driving_pass(
        driving, indices, models, None, retarget and options.use_flux, log, parse_person(options.person), fps,
        should_cancel, work_hw=(work_h, work_w), source_hw=(info.height, info.width),
    )
    reduced = f" (poses found at {work_w}x{work_h})" if (work_w, work_h) != (info.width, info.height) else ""
    timer.done("poses+faces", f"{len(indices)} frames at {drive.frame_hw[1]}x{drive.frame_hw[0]}{reduced}")
    check_cancel(should_cancel, "after pose estimation")
    if retarget:
        pose_frames = _draw(_retargeted(drive, reference, options, models, timer), out_hw, right_hand_first=True)
    else:
        pose_frames = _draw_letterboxed(drive.poses, drive.frame_hw, out_hw)
    timer.done("skeletons", f"{out_hw[1]}x{out_hw[0]}")
    return Conditioning(pose_frames=pose_frames, face_frames=drive.faces, reference=model_reference, fps=float(fps))


def _replacement(driving: Path, reference_img: np.ndarray, info: VideoInfo, indices: list[int], fps: float,
                 options: PreprocessOptions, models: PreprocessModels, log: logging.Logger, timer: _Timer,
                 should_cancel: Callable[[], bool] | None = None) -> Conditioning:  # fmt: skip
    from .masks import person_masks, refine_masks, remove_person  # written separately

    if models.segmenter is None:
        raise InputError("replacement_unavailable", "mode",
                         "this worker has no segmentation model loaded; use mode=animation")  # fmt: skip
    if options.retarget_flag or options.use_flux:
        log.warning("retarget_flag/use_flux are not used in replacement mode (official); ignoring them")
    area = options.resolution_width * options.resolution_height
    width, height = target_size(info.width, info.height, area)  # the output size is the video's
    drive = _driving_pass(driving, indices, models, area, False, log, parse_person(options.person), fps,
                          should_cancel, source_hw=(info.height, info.width))
    assert drive.frames is not None and drive.frame_hw == (height, width)
    timer.done("poses+faces", f"{len(indices)} frames resized to {width}x{height}")
    reference = letterbox(reference_img, height, width)  # official padding_resize (bilinear)
    pose_frames = _draw(drive.poses, (height, width))
    timer.done("skeletons")
    check_cancel(should_cancel, "before the person masks")
    click_poses = drive.poses  # SAM2 is prompted at the performer's keypoints, never where they are absent
    if drive.present is not None:
        click_poses = [pose if here else PoseMeta.empty(pose.width, pose.height)
                       for pose, here in zip(drive.poses, drive.present, strict=True)]  # fmt: skip
    masks = person_masks(drive.frames, click_poses, models.segmenter, should_cancel=should_cancel)
    if options.mask_iterations > 0:  # official: dilation and grid only when iterations > 0
        masks = refine_masks(
            masks,
            iterations=options.mask_iterations,
            kernel_size=options.mask_kernel_size,
            w_subdivisions=options.mask_w_subdivisions,
            h_subdivisions=options.mask_h_subdivisions,
        )
    background = remove_person(drive.frames, masks)
    timer.done("masks")
    return Conditioning(
        pose_frames=pose_frames,
        face_frames=drive.faces,
        reference=reference,
        fps=float(fps),
        background_frames=background,
        mask_frames=masks.astype(np.uint8),
    )


def preprocess(driving_video: Path, reference_image: Path, options: PreprocessOptions, models: PreprocessModels,
               log: logging.Logger = logger, should_cancel: Callable[[], bool] | None = None
               ) -> Conditioning:  # fmt: skip
    """Driving video + character image -> the model's conditioning arrays (both modes, official flow).

    should_cancel() is asked between stages, per pose chunk and per SAM2 chunk; True raises errors.Cancelled."""
    timer = _Timer(log)
    driving_video, reference_image = Path(driving_video), Path(reference_image)
    parse_person(options.person)  # a bad `person` fails before anything is decoded
    info = probe_video(driving_video)
    _check_video(info)
    fps = info.fps if options.fps == -1 else float(options.fps)
    indices = _frame_indices(info, options.fps)
    reference_img = load_image(reference_image)
    check_frame_shape(reference_img.shape[1], reference_img.shape[0], "reference_image")
    timer.done("inputs", f"video {info.width}x{info.height} {info.frames} frames at {info.fps:g} fps -> "
                         f"{len(indices)} frames at {fps:g} fps; reference {reference_img.shape[1]}x"
                         f"{reference_img.shape[0]}")  # fmt: skip
    if options.mode == "animation":
        cond = _animation(driving_video, reference_img, info, indices, fps, options, models, log, timer, should_cancel)
    elif options.mode == "replacement":
        cond = _replacement(driving_video, reference_img, info, indices, fps, options, models, log, timer,
                            should_cancel)  # fmt: skip
    else:
        raise InputError("invalid_mode", "mode", f"unknown mode {options.mode!r}; use animation or replacement")
    log.info("preprocess done: %d frames %dx%d at %g fps in %.1f s", cond.num_frames, cond.width, cond.height,
             cond.fps, timer.total())  # fmt: skip
    return cond


# ---------------------------------------------------------------------------------------------------
# debug files and model loading


def save_debug_files(cond: Conditioning, out_dir: Path) -> dict[str, Path]:
    """Write what the model sees: src_pose.mp4, src_face.mp4, src_ref.png (+ src_bg.mp4, src_mask.mp4).

    Unlike the official src_ref.png (a copy of the input file), ours is the resized/letterboxed array.
    """
    from PIL import Image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "pose": write_video(out_dir / "src_pose.mp4", iter(cond.pose_frames), cond.fps),
        "face": write_video(out_dir / "src_face.mp4", iter(cond.face_frames), cond.fps),
    }
    Image.fromarray(cond.reference).save(out_dir / "src_ref.png")
    files["ref"] = out_dir / "src_ref.png"
    if cond.background_frames is not None:
        files["bg"] = write_video(out_dir / "src_bg.mp4", iter(cond.background_frames), cond.fps)
    if cond.mask_frames is not None:
        masks = (m * 255 for m in cond.mask_frames)  # (H, W) {0, 255}, written as grey video
        files["mask"] = write_video(out_dir / "src_mask.mp4", masks, cond.fps)
    return files


def _onnx_providers(device: Any) -> list:
    """CUDA provider on the worker's GPU when the device is CUDA (needs onnxruntime-gpu), else CPU."""
    if getattr(device, "type", str(device)).startswith("cuda"):
        index = getattr(device, "index", None) or 0
        return [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def load_preprocess_models(paths: Any, device: Any, per_request: bool = False) -> PreprocessModels:
    """The released preprocessing models: YOLOv10m + ViTPose-H ONNX, SAM2, optional FLUX Kontext.

    `paths` is weights.WeightPaths. ONNX runs on CUDA when onnxruntime has the CUDA provider. per_request: leave the
    pose models and SAM2 out (None) for `models_for_request` to load for each request (offloaded workers).
    """
    from .flux_edit import load_flux_kontext

    flux = None
    if paths.flux_kontext_dir is not None:  # runs twice per request, offloaded: the 14B model owns the GPU
        flux = load_flux_kontext(str(paths.flux_kontext_dir), device=device, cpu_offload=True)
    if per_request:
        return PreprocessModels(pose_estimator=None, segmenter=None, flux=flux)
    estimator, segmenter = _load_pose_and_segmenter(paths, device)
    return PreprocessModels(pose_estimator=estimator, segmenter=segmenter, flux=flux)


def _load_pose_and_segmenter(paths: Any, device: Any) -> tuple[PoseEstimator, Any]:
    """The preprocessing models that live on the GPU: the detector + pose ONNX sessions and SAM2."""
    from .detection import OnnxPersonDetector
    from .pose import OnnxWholeBodyPose, WholeBodyPoseEstimator
    from .sam2_video import load_segmenter

    providers = _onnx_providers(device)
    estimator = WholeBodyPoseEstimator(
        OnnxPersonDetector(paths.detector_onnx, providers), OnnxWholeBodyPose(paths.pose_onnx, providers)
    )
    return estimator, load_segmenter(paths.sam2_checkpoint, device)


@contextmanager
def models_for_request(models: PreprocessModels, paths: Any, device: Any) -> Iterator[PreprocessModels]:
    """`models` as loaded, or, when their pose models and SAM2 were left out (`per_request`), those loaded for this
    request and dropped after it. Offloaded workers (24-48 GB cards) work this way: onnxruntime holds ~3.5 GiB of GPU
    memory and SAM2 ~0.9 GiB, outside the transformer loop's 20.7 GiB at 720p; the price is loading them per request.
    """
    if models.pose_estimator is not None:
        yield models
        return
    estimator, segmenter = _load_pose_and_segmenter(paths, device)
    request_models = replace(models, pose_estimator=estimator, segmenter=segmenter)
    del estimator, segmenter  # request_models holds the only references
    try:
        yield request_models
    finally:
        # Emptied, not just let go: the caller's name for it outlives the block. These were the last references, so
        # onnxruntime frees its sessions' GPU memory here.
        request_models.pose_estimator = None
        request_models.segmenter = None
        gc.collect()
        if getattr(device, "type", str(device)).startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


def smoke_preprocess_models(device: Any) -> PreprocessModels:
    """SMOKE ONLY: the production detector + pose classes on tiny fixed-output ONNX graphs (preprocess/smoke_models.py)
    instead of YOLOv10m + ViTPose-H, and the smoke segmenter."""
    from .sam2_video import smoke_segmenter
    from .smoke_models import smoke_pose_estimator

    return PreprocessModels(pose_estimator=smoke_pose_estimator(_onnx_providers(device)), segmenter=smoke_segmenter(device))
