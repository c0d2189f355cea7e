"""Where the components live between and during steps: 'none' (all on the device) or 'model' (offloaded).

'model': text encoder, CLIP and VAE stay on the CPU and visit the device only for their own work; the transformer
streams its blocks through diffusers' group offloading (block level, one block per group, a CUDA stream prefetching
the next block). The official code (offload_model=True) moves only the text encoder; this goes further so the
14B model fits 24-48 GB cards.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

import torch

from .vae_layout import set_vae_layout

if TYPE_CHECKING:
    from .models import WanAnimateModels

logger = logging.getLogger(__name__)

Offload = Literal["none", "model"]
CPU = torch.device("cpu")
# 'auto' offloads when the GPU holds less than this (transformer 35 GB + UMT5 11 GB + activations at 720p).
AUTO_OFFLOAD_BELOW_BYTES = 70 * 1024**3

# diffusers hook names (diffusers/hooks/group_offloading.py) removed together when group offloading is undone.
_GROUP_OFFLOAD_HOOKS = ("group_offloading", "layer_execution_tracker", "lazy_prefetch_group_offloading")


def resolve_offload(value: str | bool | None, device: torch.device) -> Offload:
    """'none' | 'model' from the user's value (bools, None and 'auto' accepted)."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "model"
    value = str(value).lower()
    if value == "auto":
        if device.type != "cuda":
            return "none"
        total = torch.cuda.get_device_properties(device).total_memory
        return "model" if total < AUTO_OFFLOAD_BELOW_BYTES else "none"
    if value in ("none", "model"):
        return value  # type: ignore[return-value]
    raise ValueError(f"offload must be 'none', 'model' or 'auto', not {value!r}")


def transformer_is_offloaded(transformer: torch.nn.Module) -> bool:
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    return _is_group_offload_enabled(transformer)


def enable_transformer_offload(transformer: torch.nn.Module, device: torch.device) -> None:
    """Group-offload the transformer: weights on the CPU, each block copied to `device` just before it runs."""
    if transformer_is_offloaded(transformer):
        return
    transformer.to(CPU)
    use_stream = device.type == "cuda"
    transformer.enable_group_offload(
        onload_device=device,
        offload_device=CPU,
        offload_type="block_level",
        num_blocks_per_group=1,
        use_stream=use_stream,
        non_blocking=use_stream,
    )


def disable_transformer_offload(transformer: torch.nn.Module) -> None:
    """Remove diffusers' group-offloading hooks; the weights stay where the hooks left them (the CPU)."""
    if not transformer_is_offloaded(transformer):
        return
    from diffusers.hooks import HookRegistry

    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    for name in _GROUP_OFFLOAD_HOOKS:
        registry.remove_hook(name, recurse=True)


def refresh_transformer_offload(transformer: torch.nn.Module) -> None:
    """Re-apply group offloading after adapters were added or removed (the hooks hold references to tensors)."""
    from diffusers.hooks.group_offloading import _maybe_remove_and_reapply_group_offloading

    _maybe_remove_and_reapply_group_offloading(transformer)


def place_models(models: WanAnimateModels, offload: Offload) -> None:
    """Put every component where `offload` keeps it between uses, and record the choice in `models.offload`."""
    if offload == "model":
        for module in (models.text_encoder, models.image_encoder, models.vae):
            module.to(CPU)
        enable_transformer_offload(models.transformer, models.device)
    elif offload == "none":
        disable_transformer_offload(models.transformer)
        for module in (models.transformer, models.text_encoder, models.image_encoder, models.vae):
            module.to(models.device)
    else:
        raise ValueError(f"unknown offload {offload!r}")
    set_vae_layout(models.vae, models.device)
    models.offload = offload


@contextmanager
def offload_session(models: WanAnimateModels, requested: Offload) -> Iterator[Offload]:
    """Run under the stricter of the loaded placement and the request's; put everything back afterwards.

    A worker loaded with 'model' (small GPU) never goes to 'none' for one request: that would not fit.
    """
    loaded = models.offload
    effective: Offload = "model" if "model" in (loaded, requested) else "none"
    if effective != loaded:
        place_models(models, effective)
    try:
        yield effective
    finally:
        if models.offload != loaded:
            place_models(models, loaded)


@contextmanager
def on_device(module: torch.nn.Module, device: torch.device, offload: Offload) -> Iterator[torch.nn.Module]:
    """With 'model' offload, bring a small component to `device` for the block and send it back to the CPU."""
    if offload != "model":
        yield module
        return
    module.to(device)
    try:
        yield module
    finally:
        module.to(CPU)
