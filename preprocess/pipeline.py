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

Deliberate differences from the official flow, each explained where it happens: frames are decoded in chunks and,
of what grows with the video's length, only the poses (a few KB a frame) stay in memory (the face crops and
replacement mode's frames, masks and background are kept on disk, frame_store.py); no intermediate goes through a
lossy H.264 round trip (the skeletons are kept as poses, drawn when read); frames without a usable face borrow the
nearest face crop; and missing people or faces are InputErrors that say how to fix the input.

Modules: driving_pass.py (the pass over the driving video), model_loading.py (the models it runs),
skeleton_video.py (the skeleton frames, drawn from the poses when generation reads them), then here the checks and
the two modes; debug_videos.py writes what the model saw.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import InputError, check_cancel
from ..limits import LIMITS
from .conditioning import Conditioning, PreprocessOptions
from .driving_pass import DrivingPass, driving_pass, working_size
from .face import FACE_SIZE
from .frame_store import FrameStore
from .model_loading import PreprocessModels
from .person_choice import parse_person
from .pose_meta import PoseMeta
from .skeleton_video import SkeletonVideo
from .video_decode import VideoInfo, frame_indices_by_time, probe_video
from .video_io import (
    check_frame_shape,
    frame_indices_for_fps,
    letterbox,
    load_image,
    official_frame_count,
    resize_by_area,
    target_size,
)

logger = logging.getLogger("wan_animate.preprocess")


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
# retargeting (the skeletons themselves are drawn when read: skeleton_video.py)


def _retargeted(drive: DrivingPass, reference: np.ndarray, options: PreprocessOptions, models: PreprocessModels,
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


def require_disk(work_dir: Path | None, frames: int, frame_bytes: int) -> None:
    """InputError before any decoding when `work_dir` (None: the system's temporary folder) has less free space than
    `frames` x `frame_bytes` (what the FrameStores will hold) plus a 5% margin: a full disk would fail mid-run."""
    folder = Path(work_dir) if work_dir is not None else Path(tempfile.gettempdir())
    needed, free = int(frames * frame_bytes * 1.05), shutil.disk_usage(folder).free
    if needed > free:
        raise InputError(
            "not_enough_disk", "driving_video",
            f"{frames} output frames need {needed / 1e9:.1f} GB of temporary disk and this worker has "
            f"{free / 1e9:.1f} GB free; use a shorter video, a lower fps or a lower resolution",
        )  # fmt: skip


def _animation(driving: Path, reference_img: np.ndarray, info: VideoInfo, indices: list[int], fps: float,
               options: PreprocessOptions, models: PreprocessModels, log: logging.Logger, timer: _Timer,
               should_cancel: Callable[[], bool] | None = None, work_dir: Path | None = None
               ) -> Conditioning:  # fmt: skip
    area = options.resolution_width * options.resolution_height
    reference = resize_by_area(reference_img, area)  # the output size is the reference's; poses run on this copy
    out_hw = (int(reference.shape[0]), int(reference.shape[1]))
    model_reference = letterbox(reference_img, *out_hw)  # official generate(): the raw input, bilinear, to out_hw
    retarget = options.retarget_flag
    if options.use_flux and not retarget:
        log.warning("use_flux only applies with retarget_flag=true (official); ignoring it")
    work_w, work_h = working_size(info.width, info.height, area)
    require_disk(work_dir, len(indices), FACE_SIZE * FACE_SIZE * 3)  # the face crops
    drive = driving_pass(
        driving, indices, models, None, retarget and options.use_flux, log, parse_person(options.person), fps,
        should_cancel, work_hw=(work_h, work_w), source_hw=(info.height, info.width), work_dir=work_dir,
    )
    reduced = f" (poses found at {work_w}x{work_h})" if (work_w, work_h) != (info.width, info.height) else ""
    timer.done("poses+faces", f"{len(indices)} frames at {drive.frame_hw[1]}x{drive.frame_hw[0]}{reduced}")
    check_cancel(should_cancel, "after pose estimation")
    if retarget:
        pose_frames = SkeletonVideo(_retargeted(drive, reference, options, models, timer), out_hw,
                                    right_hand_first=True)  # fmt: skip
    else:
        pose_frames = SkeletonVideo(drive.poses, out_hw, canvas_hw=drive.frame_hw)  # drawn at the video's size
    return Conditioning(pose_frames=pose_frames, face_frames=drive.faces, reference=model_reference, fps=float(fps))


def _replacement(driving: Path, reference_img: np.ndarray, info: VideoInfo, indices: list[int], fps: float,
                 options: PreprocessOptions, models: PreprocessModels, log: logging.Logger, timer: _Timer,
                 should_cancel: Callable[[], bool] | None = None, work_dir: Path | None = None
                 ) -> Conditioning:  # fmt: skip
    """The resized frames, the masks and the background live on disk (FrameStores in `work_dir`): at 1800 frames of
    720p they are 5.0 + 1.6 GB, and generation reads them one clip at a time."""
    from .masks import person_masks, refine_masks, remove_person  # written separately

    if models.segmenter is None:
        raise InputError("replacement_unavailable", "mode",
                         "this worker has no segmentation model loaded; use mode=animation")  # fmt: skip
    if options.retarget_flag or options.use_flux:
        log.warning("retarget_flag/use_flux are not used in replacement mode (official); ignoring them")
    area = options.resolution_width * options.resolution_height
    width, height = target_size(info.width, info.height, area)  # the output size is the video's
    require_disk(work_dir, len(indices), FACE_SIZE * FACE_SIZE * 3 + height * width * 4)  # faces, frames, masks
    drive = driving_pass(driving, indices, models, area, False, log, parse_person(options.person), fps,
                          should_cancel, source_hw=(info.height, info.width), work_dir=work_dir)
    assert drive.frames is not None and drive.frame_hw == (height, width)
    timer.done("poses+faces", f"{len(indices)} frames resized to {width}x{height}")
    reference = letterbox(reference_img, height, width)  # official padding_resize (bilinear)
    pose_frames = SkeletonVideo(drive.poses, (height, width))
    check_cancel(should_cancel, "before the person masks")
    click_poses = drive.poses  # SAM2 is prompted at the performer's keypoints, never where they are absent
    if drive.present is not None:
        click_poses = [pose if here else PoseMeta.empty(pose.width, pose.height)
                       for pose, here in zip(drive.poses, drive.present, strict=True)]  # fmt: skip
    masks = person_masks(drive.frames, click_poses, models.segmenter, should_cancel=should_cancel,
                         out=FrameStore(len(indices), (height, width), work_dir))
    if options.mask_iterations > 0:  # official: dilation and grid only when iterations > 0
        masks = refine_masks(
            masks,
            iterations=options.mask_iterations,
            kernel_size=options.mask_kernel_size,
            w_subdivisions=options.mask_w_subdivisions,
            h_subdivisions=options.mask_h_subdivisions,
        )  # in place, frame by frame
    background = remove_person(drive.frames, masks)  # the kept frames become the background in place
    timer.done("masks")
    return Conditioning(
        pose_frames=pose_frames,
        face_frames=drive.faces,
        reference=reference,
        fps=float(fps),
        background_frames=background,
        mask_frames=masks,
    )


def preprocess(driving_video: Path, reference_image: Path, options: PreprocessOptions, models: PreprocessModels,
               log: logging.Logger = logger, should_cancel: Callable[[], bool] | None = None,
               work_dir: Path | None = None) -> Conditioning:  # fmt: skip
    """Driving video + character image -> the model's conditioning arrays (both modes, official flow).

    should_cancel() is asked between stages, per pose chunk and per SAM2 chunk; True raises errors.Cancelled.
    The face crops, and replacement mode's frames, masks and background, are kept in unnamed files in `work_dir` (the
    run's folder; the system's temporary folder when None), freed with the returned Conditioning."""
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
        cond = _animation(driving_video, reference_img, info, indices, fps, options, models, log, timer, should_cancel,
                          work_dir)  # fmt: skip
    elif options.mode == "replacement":
        cond = _replacement(driving_video, reference_img, info, indices, fps, options, models, log, timer,
                            should_cancel, work_dir)  # fmt: skip
    else:
        raise InputError("invalid_mode", "mode", f"unknown mode {options.mode!r}; use animation or replacement")
    log.info("preprocess done: %d frames %dx%d at %g fps in %.1f s", cond.num_frames, cond.width, cond.height,
             cond.fps, timer.total())  # fmt: skip
    return cond

