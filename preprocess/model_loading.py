"""The preprocessing models a worker runs: loaded once (or per request on offloaded workers), and the smoke preset's
stand-ins."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from .pose import PoseEstimator


@dataclass
class PreprocessModels:
    """The models preprocessing runs: loaded once per worker, reused for every request (offloaded workers: the pose
    models and SAM2 per request, see `models_for_request`)."""

    pose_estimator: PoseEstimator | None  # detector + pose model: frames -> PoseMeta per frame; None: per request
    segmenter: Any | None = None  # SAM2 video segmenter for replacement masks (used by masks.person_masks)
    flux: Any | None = None  # FLUX.1 Kontext pipeline for `use_flux` retargeting (used by flux_edit)



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
