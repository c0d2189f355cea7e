"""Which request shapes run on compiled transformer graphs: the setup's warm-up graphs and the per-request decision.

A graph is one forward signature (frame size, clip length, active setup adapters); the worker's compile budget
(wan.speed.CompileBudget) caps how many it compiles, after which new shapes run eagerly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .app_logging import APP_LOGGER

if TYPE_CHECKING:
    from .inference import AppInput
    from .worker import Runtime

logger = logging.getLogger(APP_LOGGER)


def warmup_size(dist: Any) -> tuple[int, int]:
    """The compile warm-up's frame size: the default request (720p landscape, 77 frames), as the ranks split it."""
    if dist is None or not dist.is_parallel:
        return 720, 1280
    from .wan.parallel import parallel_frame_size

    return parallel_frame_size(720, 1280, 77, dist.world_size)


def warm_up_adapter_sets(
    wan_models: Any, inputs: dict[str, Any], budget: Any = None
) -> list[tuple[bool, bool, float]]:
    """One forward per set of active adapters a request without user LoRAs can ask for: animation / replacement
    (relighting), each with and without the distillation LoRA when loaded. Each set is one more graph of the compiled
    blocks (relighting: measured ~8 s at 480p), paid here instead of by a first request, and recorded in `budget`
    (a wan.speed.CompileBudget) as compiled; the distillation LoRA's parameter differences are values only and
    compile nothing. Returns (relighting, distillation, seconds) per set."""
    from .wan.conditioning import VAE_STRIDE_HW
    from .wan.lora import request_adapters
    from .wan.speed import warmup

    latent_h, latent_w = inputs["hidden_states"].shape[-2:]  # [B, C, T, h, w]
    height, width = latent_h * VAE_STRIDE_HW, latent_w * VAE_STRIDE_HW
    clip_len = inputs["face_pixel_values"].shape[2]  # [B, 3, clip_len, S, S]
    timings = []
    for distill in (None, wan_models.distill) if wan_models.distill is not None else (None,):
        for relight in (False, True):
            if relight and wan_models.relighting_adapter is None:
                continue
            if budget is not None:
                adapters = request_adapter_names(wan_models, relight, distill is not None)
                budget.admit(forward_signature(height, width, clip_len, adapters))
            last = f"; about {timings[-1][2]:.0f} s, as the last graph" if timings else ""
            logger.info("compile warm-up (relighting %s, distillation %s): started (%dx%d, %d frames%s)",
                        "on" if relight else "off", "on" if distill else "off", width, height, clip_len,
                        last)  # fmt: skip
            with request_adapters(wan_models.transformer, wan_models.relighting_adapter, relight, [], distill):
                seconds = warmup(wan_models.transformer, inputs)
            timings.append((relight, distill is not None, seconds))
            logger.info("compile warm-up (relighting %s, distillation %s): %.1f s",
                        "on" if relight else "off", "on" if distill else "off", seconds)  # fmt: skip
    return timings


def forward_signature(height: int, width: int, clip_len: int, adapters: tuple[str, ...]) -> tuple:
    """What decides the compiled blocks' graph for a request: frame size, clip length and the active setup adapters
    (their names; each has a fixed rank and scale)."""
    return (height, width, clip_len, tuple(sorted(adapters)))


def request_adapter_names(wan_models: Any, relighting: bool, distill: bool) -> tuple[str, ...]:
    """The setup adapters a request switches on (relighting in replacement mode, the distillation LoRA's adapter)."""
    names = []
    if relighting and wan_models.relighting_adapter is not None:
        names.append(wan_models.relighting_adapter)
    if distill and wan_models.distill is not None:
        names.append(wan_models.distill.adapter_name or "distill-differences")
    return tuple(names)


def runs_compiled(runtime: Runtime, inp: AppInput, height: int, width: int, loras: list[tuple[Path, float]]) -> bool:
    """Whether this request may use the compiled blocks, or must run them eagerly (they come back after it).

    Eager: user LoRAs (every rank set and scale would compile a new graph that no later request is likely to reuse);
    a new signature once the worker's compile budget is spent (see wan.speed.CompileBudget). The request's
    offload_model is no reason: it is ignored (see ignore_request_offload).
    """
    if runtime.speed is None or not runtime.speed.compile_blocks or runtime.compile_budget is None:
        return True
    if loras:
        logger.info("user LoRAs: the transformer blocks run uncompiled for this request")
        return False
    adapters = request_adapter_names(runtime.wan_models, inp.mode == "replacement", inp.distill)
    if runtime.compile_budget.admit(forward_signature(height, width, inp.clip_len, adapters)):
        return True
    logger.info(
        "compile budget spent (%d shapes compiled): %dx%d, clip_len %d runs uncompiled",
        len(runtime.compile_budget.compiled), width, height, inp.clip_len,
    )  # fmt: skip
    return False


@contextmanager
def blocks_for_request(runtime: Runtime, compiled: bool) -> Iterator[None]:
    """The compiled blocks as they are, or suspended for the request (compiled again after it)."""
    if compiled:
        yield
        return
    from .wan.speed import eager_blocks

    with eager_blocks(runtime.wan_models.transformer):
        yield
