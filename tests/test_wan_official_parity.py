"""Opt-in: diffusers' transformer and VAE (what wan/ runs) against the official Wan modules on the same weights.

Needs an official Wan2.2 checkout (WAN_OFFICIAL_SRC, default /tmp/ref/wan22) and `einops` (not an app requirement);
skipped otherwise. The official modules are imported from that checkout at test time (nothing is copied). Their
flash-attention calls are served by PyTorch SDPA so they run on CPU in float32.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

OFFICIAL = Path(os.environ.get("WAN_OFFICIAL_SRC", "/tmp/ref/wan22")) / "wan"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (OFFICIAL / "animate.py").is_file(), reason=f"no official Wan2.2 checkout at {OFFICIAL}"),
]


def _official(module: str) -> types.ModuleType:
    """Import wan.modules.* from the checkout without running its package __init__ files (they pull in the CLI)."""
    pytest.importorskip("einops")
    for name, folder in [("wan", ""), ("wan.modules", "modules"), ("wan.distributed", "distributed"),
                         ("wan.modules.animate", "modules/animate")]:  # fmt: skip
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(OFFICIAL / folder)]
            sys.modules[name] = package
    return importlib.import_module(module)


def _sdpa_bshd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """flash-attention's layout ([B, L, heads, dim]) on torch SDPA, for CPU."""
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def _randomise(model: torch.nn.Module, norm_marker: str) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            offset = 1.0 if param.ndim <= 4 and norm_marker in name and param.numel() == param.shape[0] else 0.0
            param.copy_(torch.randn_like(param) * 0.05 + offset)


def test_transformer_matches_the_official_wan_animate_model() -> None:
    from diffusers import WanAnimateTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    animate = _official("wan.modules.animate.model_animate")
    faces = _official("wan.modules.animate.face_blocks")
    animate.flash_attention = _sdpa_bshd
    sys.modules["wan.modules.model"].flash_attention = _sdpa_bshd
    faces.flash_attn_func = _sdpa_bshd
    torch.manual_seed(0)
    official = animate.WanAnimateModel(dim=256, ffn_dim=512, num_heads=2, num_layers=5, text_dim=64).eval()
    _randomise(official, "norm")
    ours = WanAnimateTransformer3DModel(
        num_attention_heads=2, attention_head_dim=128, text_dim=64, ffn_dim=512, num_layers=5, image_dim=1280,
        added_kv_proj_dim=256,
    ).eval()  # fmt: skip
    state = convert_wan_transformer_to_diffusers({k: v.clone() for k, v in official.state_dict().items()})
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert not missing and all(k.endswith(".kernel") for k in unexpected)

    gen = torch.Generator().manual_seed(1)
    noise, y = torch.randn(16, 3, 4, 4, generator=gen), torch.randn(20, 3, 4, 4, generator=gen)
    pose = torch.randn(1, 16, 2, 4, 4, generator=gen)
    face = torch.rand(1, 3, 5, 512, 512, generator=gen) * 2 - 1
    clip, text = torch.randn(1, 257, 1280, generator=gen), torch.randn(7, 64, generator=gen)
    padded_text = torch.cat([text, text.new_zeros(512 - 7, 64)])[None]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the official torch.cuda.amp.autocast(float32) regions warn on CPU
        for timestep in (999, 3):
            t = torch.tensor([timestep])
            expected = official(
                [noise],
                t=t,
                clip_fea=clip,
                context=[text],
                seq_len=12,
                y=[y],
                pose_latents=pose,
                face_pixel_values=face,
            )[0]
            got = ours(torch.cat([noise, y])[None], t, padded_text, clip, pose, face, return_dict=False)[0][0]
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_vae_matches_the_official_wan21_vae() -> None:
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
    from wan_animate.wan.conditioning import vae_decode, vae_encode
    from wan_animate.wan.models import WanAnimateModels
    from wan_animate.wan.vae_layout import set_vae_layout

    vae_module = _official("wan.modules.vae2_1")
    torch.manual_seed(0)
    official = vae_module.WanVAE_(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                  temperal_downsample=[False, True, True], dropout=0.0).eval()  # fmt: skip
    _randomise(official, "gamma")
    ours = AutoencoderKLWan().eval()
    ours.load_state_dict(convert_wan_vae_to_diffusers({k: v.clone() for k, v in official.state_dict().items()}))
    set_vae_layout(ours, "cpu")  # as the app runs it: causal convs padding inside the convolution
    mean, std = torch.tensor(ours.config.latents_mean), torch.tensor(ours.config.latents_std)
    scale = [mean, 1.0 / std]
    models = WanAnimateModels(None, ours, None, None, None, None, torch.float32, torch.device("cpu"))
    video = torch.rand(1, 3, 9, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        expected_latents = official.encode(video, scale)
        torch.testing.assert_close(vae_encode(models, video), expected_latents, rtol=1e-5, atol=1e-5)
        expected_video = official.decode(expected_latents, scale).clamp(-1, 1)
        torch.testing.assert_close(vae_decode(models, expected_latents), expected_video, rtol=1e-5, atol=1e-5)
