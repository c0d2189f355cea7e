"""A request's fields -> what they mean: the output size, the sampling settings and CRF they select, and the option
objects of the two stages (preprocess.PreprocessOptions, wan.GenerationOptions).

Also what the request may carry but the worker decides: user LoRA files checked before any GPU work, and the
seed app's `offload_model`, which is ignored.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .app_logging import APP_LOGGER
from .errors import InputError

if TYPE_CHECKING:
    from .inference import AppInput
    from .worker import Runtime

logger = logging.getLogger(APP_LOGGER)

# `resolution` presets: (width, height) whose product is the target area. 480p is the area of 854x480 (16:9 480p), not
# Wan's 832x480: with 832*480 a 16:9 input floors to 832x464, with 854*480 it gives 848x480, and an 832:480 input still
# gives exactly 832x480. 580p reads as its name (1024x576, 16:9 at the multiple of 16 nearest 580 lines).
RESOLUTION_PRESETS: dict[str, tuple[int, int]] = {"480p": (854, 480), "580p": (1024, 576), "720p": (1280, 720)}
RESOLUTION_DEFAULT = (1280, 720)  # resolution_width/resolution_height defaults: "take the preset"
# Custom width/height bounds. The model itself needs only 16-pixel multiples (VAE stride 8 x patch 2, after the
# floor); 256 (16 tokens a side) lets 832x480 and smaller previews through while keeping a person drawable.
MIN_RESOLUTION_SIDE, MAX_RESOLUTION_SIDE = 256, 1920
# x264 CRF per `video_quality` (lower = better, larger; +6 is about half the bitrate). 18 is what the app always wrote
# ("visually lossless" in ffmpeg's H.264 guide), 23 x264's default, 28 the guide's upper end of the sane range, 12
# for keeping grain and fine detail for later edits (lossless 0 would leave the yuv420p High profile players expect).
VIDEO_QUALITY_CRF: dict[str, int] = {"low": 28, "medium": 23, "high": 18, "maximum": 12}
SAMPLING_FIELDS = ("sampling_steps", "shift", "sample_solver", "guide_scale")


def sampling_settings(inp: AppInput) -> dict[str, Any]:
    """sampling_steps, shift, sample_solver and guide_scale for this request: with `distill`, the LoRA's
    recommended values for each one the request left at its default (other values win).

    "At its default", not "not sent": forms and API clients often send every field with its default, and
    20 dpm++ steps would silently waste the distillation. The one thing this cannot express, distill with
    exactly a default value (e.g. 20 steps), is not a setting anyone needs.
    """
    values = {name: getattr(inp, name) for name in SAMPLING_FIELDS}
    if inp.distill:
        from .wan.distill import RECOMMENDED_SAMPLING

        fields = type(inp).model_fields
        values.update({k: v for k, v in RECOMMENDED_SAMPLING.items() if values[k] == fields[k].default})
    return values


def target_resolution(inp: AppInput) -> tuple[int, int]:
    """(width, height) whose product is the target area: the custom resolution_width/resolution_height when
    either differs from its default (1280x720), else the `resolution` preset.

    Same rule as sampling_settings: forms and API clients send every field with its default, so "at its
    default" means "from the preset"; a request without `resolution` (the 720p default, = 1280x720) gets the
    frame size it got before presets existed, whatever width/height it sets.
    """
    custom = (inp.resolution_width, inp.resolution_height)
    return custom if custom != RESOLUTION_DEFAULT else RESOLUTION_PRESETS[inp.resolution]


def video_crf(inp: AppInput) -> int:
    """The x264 CRF the output is encoded with (from `video_quality`)."""
    return VIDEO_QUALITY_CRF[inp.video_quality]


def preprocess_options(inp: AppInput) -> Any:
    from .preprocess import PreprocessOptions

    width, height = target_resolution(inp)  # the `resolution` preset, or the custom width/height
    return PreprocessOptions(
        mode=inp.mode,
        resolution_width=width,
        resolution_height=height,
        fps=inp.fps,
        retarget_flag=inp.retarget_flag,
        use_flux=inp.use_flux,
        mask_iterations=inp.mask_iterations,
        mask_kernel_size=inp.mask_kernel_size,
        mask_w_subdivisions=inp.mask_w_subdivisions,
        mask_h_subdivisions=inp.mask_h_subdivisions,
        person=inp.person,
    )


def generation_options(inp: AppInput, seed: int, loras: list[tuple[Path, float]]) -> Any:
    from .wan import GenerationOptions

    sampling = sampling_settings(inp)  # with distill: the LoRA's settings where the request set none
    if inp.distill and sampling["guide_scale"] > 1.0:
        logger.warning("distill with guide_scale %g: the LoRA is CFG-distilled (its authors: guidance off)",
                       sampling["guide_scale"])  # fmt: skip
    return GenerationOptions(
        mode=inp.mode,
        clip_len=inp.clip_len,
        refert_num=inp.refert_num,
        shift=sampling["shift"],
        sample_solver=sampling["sample_solver"],
        sampling_steps=sampling["sampling_steps"],
        guide_scale=sampling["guide_scale"],
        seed=seed,
        prompt=inp.input_prompt,
        n_prompt=inp.n_prompt,
        color_match=inp.color_match,
        offload="none",  # the worker's placement (its setup) decides; the request's offload_model is ignored
        loras=loras,
        distill=inp.distill,
        step_cache=inp.step_cache,
    )


def user_loras(inp: AppInput) -> list[tuple[Path, float]]:
    """User LoRA files, accepted only as safetensors (user files are never unpickled) whose header shows Wan LoRA
    tensors: checked here, before preprocessing, from the header alone, so a wrong file costs no GPU time."""
    from .input_files import check_local_file
    from .wan.lora import lora_file_problem

    loras = []
    for i, lora in enumerate(inp.loras):
        field = f"loras[{i}].file"
        path = check_local_file(lora.file, field)
        problem = lora_file_problem(path)
        if problem is not None:
            code, reason = problem
            raise InputError(code, field, reason)
        loras.append((path, lora.weight))
    return loras


def ignore_request_offload(runtime: Runtime, inp: AppInput) -> bool:
    """Log what a request's `offload_model: true` does: nothing. Returns True when it was set (and ignored).

    Where the model lives is the worker's setup (AppSetup.offload_model). Honoured per request, it would make a
    resident worker move the transformer and encoders (~46 GB) to the CPU and back and stream the 40 blocks uncompiled,
    many times slower, for no gain; clients copying the seed app's requests send it. An offloaded worker is
    offloaded already; a torchrun worker's GPUs each hold the whole model.
    """
    if not inp.offload_model:
        return False
    if getattr(runtime.wan_models, "offload", "none") == "model":
        logger.info("offload_model: this worker is offloaded already (its setup); nothing changes for this request")
    else:
        logger.warning(
            "offload_model=true in the request is ignored: this worker keeps the whole model on the GPU, and "
            "streaming its blocks from the CPU would only make this request slower. Offloading is a worker setting "
            "(AppSetup.offload_model, the 24-48 GB configuration)."
        )
    return True
