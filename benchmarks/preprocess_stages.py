"""Per-stage timing of the app's `preprocess()`: wraps the pipeline's own functions so each stage's seconds add up.

Used by bench_preprocess.py; nothing here changes what the pipeline computes (the wrapped functions run unchanged).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any


class StageClock:
    """Accumulates wall-clock seconds (and calls) per stage from wrapped functions."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def wrap(self, stage: str, fn: Callable, gpu: bool = False) -> Callable:
        """`fn` timed into `stage`; `gpu`: synchronise CUDA before reading the clock (work queued on the GPU counts)."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if gpu:
                    self._sync()
                self.seconds[stage] += time.perf_counter() - began
                self.calls[stage] += 1

        return timed

    def wrap_iterator(self, stage: str, fn: Callable[..., Iterator]) -> Callable[..., Iterator]:
        """A generator function whose time inside each `next()` goes to `stage` (the caller's work in between not)."""

        def timed(*args: Any, **kwargs: Any) -> Iterator:
            iterator = fn(*args, **kwargs)
            while True:
                began = time.perf_counter()
                try:
                    item = next(iterator)
                except StopIteration:
                    return
                finally:
                    self.seconds[stage] += time.perf_counter() - began
                    self.calls[stage] += 1
                yield item

        return timed


class TimedSession:
    """An onnxruntime session whose `run` is timed into a stage; everything else is the session's own."""

    def __init__(self, session: Any, clock: StageClock, stage: str) -> None:
        self._session = session
        self.run = clock.wrap(stage, session.run, gpu=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


@contextlib.contextmanager
def patched(patches: list[tuple[Any, str, Any]]) -> Iterator[None]:
    """Set each (object, attribute, value), restoring the originals afterwards."""
    originals = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patches]
    try:
        for obj, attr, value in patches:
            setattr(obj, attr, value)
        yield
    finally:
        for obj, attr, value in reversed(originals):
            setattr(obj, attr, value)


# Stage names. Top-level stages add up to (nearly) the total; "  ..." rows are parts of the row above them.
DECODE, PROBE, DETECTION, POSE, FACE, SKELETON, RESIZE = "decode", "probe", "detection", "pose", "face", "skeleton", "resize"
SAM2, REFINE, BACKGROUND = "SAM2 masks", "mask refine", "background"
TOP_STAGES = (PROBE, DECODE, RESIZE, DETECTION, POSE, FACE, SKELETON, SAM2, REFINE, BACKGROUND)
PARTS = {
    DETECTION: ("  detection: resize+normalise (CPU)", "  detection: onnxruntime run", "  detection: NMS+choice (CPU)"),
    POSE: ("  pose: crop+normalise (CPU)", "  pose: onnxruntime run", "  pose: heatmap decode (CPU)"),
    SAM2: ("  SAM2: frame resize to the model size (CPU)", "  SAM2: hole fill+upsample (CPU)"),
}


def instrumentation(models: Any, clock: StageClock) -> list[tuple[Any, str, Any]]:
    """The patches that route every preprocessing stage through `clock` (the app's functions, unchanged)."""
    from wan_animate.preprocess import detection, driving_pass, masks, pipeline, pose, sam2_video
    from wan_animate.preprocess.skeleton_video import SkeletonVideo

    estimator = models.pose_estimator
    det, pose_model = estimator.detector, estimator.pose
    det_parts, pose_parts, sam_parts = PARTS[DETECTION], PARTS[POSE], PARTS[SAM2]
    patches: list[tuple[Any, str, Any]] = [
        (driving_pass, "iter_frames", clock.wrap_iterator(DECODE, driving_pass.iter_frames)),
        (pipeline, "probe_video", clock.wrap(PROBE, pipeline.probe_video)),
        (driving_pass, "probe_video", clock.wrap(PROBE, driving_pass.probe_video)),
        (pipeline, "resize_by_area", clock.wrap(RESIZE, pipeline.resize_by_area)),  # the reference
        (driving_pass, "resize_by_area", clock.wrap(RESIZE, driving_pass.resize_by_area)),  # replacement frames
        (driving_pass, "face_box", clock.wrap(FACE, driving_pass.face_box)),
        (driving_pass, "crop_face", clock.wrap(FACE, driving_pass.crop_face)),
        (driving_pass, "fill_missing_faces", clock.wrap(FACE, driving_pass.fill_missing_faces)),
        (SkeletonVideo, "draw", clock.wrap(SKELETON, SkeletonVideo.draw)),  # run_preprocess draws every frame once
        (det, "detect_all", clock.wrap(DETECTION, det.detect_all, gpu=True)),  # every person box of a frame
        (estimator, "pose", clock.wrap(POSE, pose_model, gpu=True)),
        (det.runner, "session", TimedSession(det.runner.session, clock, det_parts[1])),
        (pose_model.runner, "session", TimedSession(pose_model.runner.session, clock, pose_parts[1])),
        (detection, "detector_inputs", clock.wrap(det_parts[0], detection.detector_inputs)),
        (detection, "decode_end2end", clock.wrap(det_parts[2], detection.decode_end2end)),
        (detection, "select_largest_person", clock.wrap(det_parts[2], detection.select_largest_person)),
        (pose, "pose_inputs", clock.wrap(pose_parts[0], pose.pose_inputs)),
        (pose, "decode_heatmaps", clock.wrap(pose_parts[2], pose.decode_heatmaps)),
        (masks, "person_masks", clock.wrap(SAM2, masks.person_masks, gpu=True)),
        (sam2_video, "fill_small_holes", clock.wrap(sam_parts[1], sam2_video.fill_small_holes)),
        (sam2_video, "upsample_logits", clock.wrap(sam_parts[1], sam2_video.upsample_logits)),
        (masks, "refine_masks", clock.wrap(REFINE, masks.refine_masks)),
        (masks, "remove_person", clock.wrap(BACKGROUND, masks.remove_person)),
    ]
    if models.segmenter is not None:
        patches.append((models.segmenter, "pixel_frames", clock.wrap(sam_parts[0], models.segmenter.pixel_frames)))
    return patches
