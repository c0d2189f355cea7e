"""A request's fields -> the option objects of the two stages (preprocess.PreprocessOptions, wan.GenerationOptions).

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


def preprocess_options(inp: AppInput) -> Any:
    from .preprocess import PreprocessOptions

    width, height = inp.target_resolution()  # the `resolution` preset, or the custom width/height
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

    sampling = inp.sampling_settings()  # with distill: the LoRA's settings where the request set none
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
