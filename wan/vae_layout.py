"""How the app lays out the Wan VAE for the device it runs on: the Conv3d weights' memory format, and the lean causal
convs and RMS norms of wan/vae_modules.py. Both keep diffusers' AutoencoderKLWan's math and change only how memory is
used (and so the order of some roundings), so they apply by default (issue 16's rule for defaults).
"""

from __future__ import annotations

import torch


def vae_memory_format(dtype: torch.dtype, device: torch.device | str) -> torch.memory_format:
    """The layout the VAE runs in on `device`: channels_last_3d (cuDNN's NDHWC convolutions) for float32 on CUDA,
    where the 720p encode and decode ran ~10% faster at 1e-3 rel. L2 from the contiguous layout, a different TF32
    algorithm (BENCHMARKS.md, "The VAE alone"); contiguous elsewhere (bf16 and the CPU were not measured)."""
    cuda = torch.device(device).type == "cuda"
    return torch.channels_last_3d if cuda and dtype == torch.float32 else torch.contiguous_format


def conv3d_weights_to(vae: torch.nn.Module, memory_format: torch.memory_format) -> None:
    """Store every Conv3d weight of `vae` in `memory_format` (nn.Module.to(memory_format=) refuses the 4-D ones)."""
    for param in vae.parameters():
        if param.dim() == 5:
            param.data = param.data.contiguous(memory_format=memory_format)


def set_vae_layout(vae: torch.nn.Module, device: torch.device | str) -> None:
    """Run `vae` as the app does on the device it runs on (wherever it sits now: an offloaded VAE keeps the layout
    when it moves): the lean causal convs and norms, Conv3d weights in `vae_memory_format`. Call again after changing
    its dtype."""
    from .vae_modules import set_lean_modules  # imports diffusers' VAE module: only once a VAE exists

    set_lean_modules(vae)
    conv3d_weights_to(vae, vae_memory_format(next(vae.parameters()).dtype, device))


def input_memory_format(vae: torch.nn.Module) -> torch.memory_format:
    """The layout of the VAE's weights (set_vae_layout), which its inputs should match."""
    weight = vae.encoder.conv_in.weight  # (C_out, 3, 3, 3, 3)
    channels_last = not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last_3d)
    return torch.channels_last_3d if channels_last else torch.contiguous_format
