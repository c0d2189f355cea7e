"""FLUX.1 Kontext pose standardisation for retargeting (official `use_flux`).

The official pipeline (process_pipepline.py) asks FLUX.1-Kontext-dev to redraw the reference image and the
driving video's second frame in a standard pose (T-pose or arms down, chosen from which limbs the video
shows and the images' aspect), so that bone lengths can be measured on two comparable, fully visible
bodies. The edited images are letterboxed back to their input sizes, poses are estimated on them, and
retargeting measures bone lengths on those poses (see retarget.py).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .pose_meta import PoseMeta
from .video_io import letterbox

logger = logging.getLogger("wan_animate.preprocess.flux_edit")

FLUX_KONTEXT_REPO = "black-forest-labs/FLUX.1-Kontext-dev"  # gated: licence acceptance + HF token
GUIDANCE_SCALE = 2.5  # official
NUM_STEPS = 28  # official
VISIBLE_SCORE = 0.75  # a limb counts as visible when one of its joints scores this much (official)
ARM_JOINTS = (3, 4, 6, 7)  # elbows and wrists
LEG_JOINTS = (9, 12, 10, 13)  # knees and ankles

# The official prompts, verbatim: they are the model's input.
_T_POSE = "Change the person to a standard T-pose (facing forward with arms extended)."
_ARMS_DOWN = (
    "Change the person to a standard pose with the face oriented forward and arms extending straight down by the sides."
)
_FULL_BODY = " The person is standing. Feet and Hands are visible in the image."
_HANDS = " Hands are visible in the image."
FACE_FORWARD = "Change the person to face forward."


def _limb_visible(pose: PoseMeta, joints: tuple[int, ...]) -> bool:
    """Official test on normalised coordinates: some joint has x, y and score all non-zero, and some joint
    lies no further right/down than the image edge with score >= 0.75 (not necessarily the same joint)."""
    body = pose.body.astype(np.float64)
    norm = np.stack([body[:, 0] / pose.width, body[:, 1] / pose.height, body[:, 2]], axis=1)
    any_set = any(bool((norm[j] != 0).all()) for j in joints)
    any_sure = any(norm[j, 0] <= 1 and norm[j, 1] <= 1 and norm[j, 2] >= VISIBLE_SCORE for j in joints)
    return any_set and any_sure


def _standard_pose_prompt(pose: PoseMeta, tail: str) -> str:
    """T-pose for landscape images, arms down otherwise (official)."""
    return (_T_POSE if pose.width > pose.height else _ARMS_DOWN) + tail


def editing_prompts(driving: list[PoseMeta], reference: PoseMeta) -> tuple[str, str]:
    """(driving prompt, reference prompt), the official get_editing_prompts rule.

    Legs visible in any driving frame -> standing full-body prompts; else arms visible -> prompts with
    hands; else "face forward". The driving prompt's aspect test uses the last frame examined (the scan
    stops once both arms and legs were seen), as official.
    """
    arms = legs = False
    last: PoseMeta | None = None
    for pose in driving:
        last = pose
        arms = arms or _limb_visible(pose, ARM_JOINTS)
        legs = legs or _limb_visible(pose, LEG_JOINTS)
        if arms and legs:
            break
    if last is None or not (arms or legs):
        return FACE_FORWARD, FACE_FORWARD
    tail = _FULL_BODY if legs else _HANDS
    return _standard_pose_prompt(last, tail), _standard_pose_prompt(reference, tail)


def _edit(pipe: Any, image: np.ndarray, prompt: str, steps: int, max_area: int, auto_resize: bool,
          seed: int | None) -> np.ndarray:  # fmt: skip
    """One Kontext edit of an (H, W, 3) uint8 image, letterboxed (bilinear) back to H x W as official."""
    import torch
    from PIL import Image

    height, width = image.shape[:2]
    generator = None if seed is None else torch.Generator("cpu").manual_seed(seed)
    edited = pipe(
        image=Image.fromarray(image),
        height=height,  # official: the input size (the pipeline turns it into ~max_area at this aspect)
        width=width,
        prompt=prompt,
        guidance_scale=GUIDANCE_SCALE,
        num_inference_steps=steps,
        max_area=max_area,
        _auto_resize=auto_resize,
        generator=generator,
    ).images[0]
    return letterbox(np.asarray(edited.convert("RGB")), height, width)


def standardize_poses(
    pipe: Any,
    driving_frame: np.ndarray,
    reference: np.ndarray,
    prompts: tuple[str, str],
    *,
    num_inference_steps: int = NUM_STEPS,
    max_area: int = 1024**2,
    auto_resize: bool = True,
    seed: int | None = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(edited driving frame, edited reference), each (H, W, 3) uint8 at its input's size.

    `pipe` is a diffusers FluxKontextPipeline; `prompts` = editing_prompts(...). Guidance 2.5 and 28 steps
    as official; `max_area`/`auto_resize` are the pipeline's own defaults (tests lower them). Deliberate:
    each edit is seeded (`seed`, None = unseeded as official) so a request is reproducible.
    """
    driving_prompt, reference_prompt = prompts
    # official order: the reference first, then the driving frame
    reference_edit = _edit(pipe, reference, reference_prompt, num_inference_steps, max_area, auto_resize, seed)
    driving_edit = _edit(pipe, driving_frame, driving_prompt, num_inference_steps, max_area, auto_resize, seed)
    return driving_edit, reference_edit


def flux_edit_poses(
    flux: Any,
    pose_estimator: Any,
    reference_image: np.ndarray,
    driving_frame: np.ndarray,
    driving_poses: list[PoseMeta],
    reference_pose: PoseMeta,
    log: logging.Logger = logger,
) -> tuple[PoseMeta | None, PoseMeta | None]:
    """(driving edit pose, reference edit pose) for retarget_poses: prompts, both FLUX edits, pose estimation.

    `pose_estimator(frames (N, H, W, 3)) -> list[PoseMeta]`. Deliberate: when no person is detected in an
    edited image (FLUX failed), returns (None, None) so retargeting measures the unedited poses, instead of
    measuring bones on a made-up skeleton as the official code would.
    """
    prompts = editing_prompts(driving_poses, reference_pose)
    log.info("flux: driving prompt %r, reference prompt %r", *prompts)
    driving_edit, reference_edit = standardize_poses(flux, driving_frame, reference_image, prompts)
    driving_pose = pose_estimator(driving_edit[None])[0]
    reference_edit_pose = pose_estimator(reference_edit[None])[0]
    if not driving_pose.has_person or not reference_edit_pose.has_person:
        log.warning("flux: no person found in an edited image; retargeting uses the unedited poses")
        return None, None
    return driving_pose, reference_edit_pose


def load_flux_kontext(repo_id: str = FLUX_KONTEXT_REPO, revision: str | None = None, device: Any = "cuda",
                      dtype: Any = None, cpu_offload: bool = True) -> Any:  # fmt: skip
    """FluxKontextPipeline in `dtype` (bf16 by default, as official) from a Hub id or a local folder.

    On CUDA with `cpu_offload` each sub-model visits the GPU only while it runs (the 14B video model owns
    the GPU memory; FLUX runs twice per request); otherwise the whole pipeline moves to `device` (official).
    """
    import torch
    from diffusers import FluxKontextPipeline

    dtype = torch.bfloat16 if dtype is None else dtype
    pipe = FluxKontextPipeline.from_pretrained(repo_id, revision=revision, torch_dtype=dtype)
    device = torch.device(device)
    if cpu_offload and device.type == "cuda":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
