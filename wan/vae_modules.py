"""Two of diffusers' Wan VAE modules rebuilt to move less memory for the same math (at 720p half of the decode's GPU
time was elementwise work and copies, BENCHMARKS.md "The VAE alone").

- `InnerPaddedCausalConv3d`: diffusers' causal conv copies every input with `F.pad` (one pixel around H and W, and
  the front frames its causal cache does not supply) before convolving. Here the convolution pads H and W itself,
  with the same zeros, and only missing front frames are padded by hand; after a clip's first two chunks the cache
  supplies them all, so those calls copy nothing.
- `LeanRMSNorm`: diffusers' RMS norm makes four full-size passes after the norm's reduction (the divide, the float
  scale, gamma, a zero bias; in bf16 also casts to float32 and back). Here it is the divide and one multiply by
  gamma * scale, in float32, then one cast back in bf16.

`set_lean_modules` swaps them into a VAE (and back, for benches and tests), keeping the same Parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, WanRMS_norm

NORM_EPS = 1e-12  # F.normalize's default, which diffusers' WanRMS_norm uses


class InnerPaddedCausalConv3d(WanCausalConv3d):
    """diffusers' WanCausalConv3d with its H/W zero padding done by the convolution instead of a copy (same math).

    `_padding` keeps diffusers' F.pad order (W, W, H, H, front frames, 0) with zero W/H entries; `padding` is the
    convolution's own (0, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int],
                 stride: int | tuple[int, int, int] = 1, padding: int | tuple[int, int, int] = 0) -> None:  # fmt: skip
        super().__init__(in_channels, out_channels, kernel_size, stride, padding)
        pad_w, _, pad_h, _, front, _ = self._padding
        self._padding = (0, 0, 0, 0, front, 0)
        self.padding = (0, pad_h, pad_w)

    def forward(self, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, T, H, W); cache_x: the previous call's last frames (B, C, <= 2, H, W), or None."""
        front = self._padding[4]
        if cache_x is not None and front > 0:
            x = torch.cat([cache_x.to(x.device), x], dim=2)
            front -= cache_x.shape[2]
        if front != 0:  # negative crops, as diffusers' F.pad does
            x = F.pad(x, (0, 0, 0, 0, front, 0))
        return self._conv_forward(x, self.weight, self.bias)


class LeanRMSNorm(WanRMS_norm):
    """diffusers' WanRMS_norm, x / max(||x||, eps) * scale * gamma + bias, in two full-size passes after the reduction
    (three in bf16 / fp16: the cast back).

    Float32 inputs differ from diffusers' by the order of one rounding (~1 ulp); bf16 / fp16 inputs are rounded once
    instead of three times, so they land closer to the float32 result.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, ...) when channel_first, else (..., C)."""
        dim = 1 if self.channel_first else -1
        acc = torch.promote_types(x.dtype, torch.float32)  # float32, or float64 for float64 inputs
        norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=acc).clamp_min(NORM_EPS)
        out = torch.div(x, norm)  # in `acc` (the norm's dtype): the normalised activation
        out.mul_(self.gamma.to(acc) * self.scale)
        out = out.to(x.dtype)
        if isinstance(self.bias, torch.Tensor):
            out = out + self.bias
        return out


def _conv_padding(conv: WanCausalConv3d) -> tuple[int, int, int]:
    """The (T, H, W) padding `conv` was built with (diffusers keeps it only in `_padding`)."""
    pad_w, _, pad_h, _, front, _ = conv._padding
    if isinstance(conv, InnerPaddedCausalConv3d):
        pad_h, pad_w = conv.padding[1], conv.padding[2]
    return (front // 2, pad_h, pad_w)


def _rebuilt_conv(conv: WanCausalConv3d, cls: type[WanCausalConv3d]) -> WanCausalConv3d:
    """A `cls` convolution of the same shape holding `conv`'s own weight and bias Parameters (no copy)."""
    with torch.device("meta"):  # no memory or random init for weights about to be replaced
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, _conv_padding(conv))
    new.weight, new.bias = conv.weight, conv.bias
    return new.train(conv.training)


def _rebuilt_norm(norm: WanRMS_norm, cls: type[WanRMS_norm]) -> WanRMS_norm:
    """A `cls` norm of the same shape holding `norm`'s own gamma (and bias) Parameters."""
    images = norm.gamma.dim() == 3  # (C, 1, 1) for images, (C, 1, 1, 1) for videos, (C,) when channels last
    with torch.device("meta"):
        new = cls(norm.gamma.shape[0], norm.channel_first, images, bias=isinstance(norm.bias, torch.Tensor))
    new.gamma, new.bias = norm.gamma, norm.bias
    return new.train(norm.training)


def set_lean_modules(vae: torch.nn.Module, lean: bool = True, convs: bool = True, norms: bool = True) -> int:
    """Make the causal convs (`convs`) and RMS norms (`norms`) of `vae` the lean ones (`lean`), or diffusers' own
    (`lean=False`); returns how many modules were replaced. Module order, parameter names and state-dict keys stay."""
    kinds = []
    if convs:
        kinds.append((WanCausalConv3d, InnerPaddedCausalConv3d if lean else WanCausalConv3d, _rebuilt_conv))
    if norms:
        kinds.append((WanRMS_norm, LeanRMSNorm if lean else WanRMS_norm, _rebuilt_norm))
    replaced = 0
    for parent in list(vae.modules()):
        for name, child in list(parent.named_children()):
            for base, cls, rebuild in kinds:
                if isinstance(child, base) and type(child) is not cls:
                    setattr(parent, name, rebuild(child, cls))
                    replaced += 1
    return replaced
