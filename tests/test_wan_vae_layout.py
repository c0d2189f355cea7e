"""The VAE as the app runs it (wan/vae_layout.py, wan/vae_modules.py): lean causal convs and RMS norms give diffusers'
results while moving less memory; channels_last_3d weights for float32 on CUDA only."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, WanRMS_norm
from tiny_conditioning import tiny_conditioning
from wan_animate.wan import build_tiny_models
from wan_animate.wan.conditioning import pixels_from_uint8, vae_decode, vae_encode
from wan_animate.wan.models import WanAnimateModels
from wan_animate.wan.vae_layout import conv3d_weights_to, set_vae_layout, vae_memory_format
from wan_animate.wan.vae_modules import InnerPaddedCausalConv3d, LeanRMSNorm, set_lean_modules

CPU = torch.device("cpu")


def small_vae(seed: int = 0) -> AutoencoderKLWan:
    """The Wan 2.1 VAE's architecture (two res blocks per level, three temporal downsamples) at 8 base channels,
    random weights (norm gammas too), diffusers' own modules."""
    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=8, num_res_blocks=2).eval().requires_grad_(False)
    for module in vae.modules():
        if isinstance(module, WanRMS_norm):
            module.gamma.normal_(1.0, 0.3)  # ones would hide a wrong gamma
    return vae


def as_models(vae: AutoencoderKLWan, device: torch.device = CPU) -> WanAnimateModels:
    return WanAnimateModels(None, vae, None, None, None, None, torch.float32, device)


def profiled_ops(fn) -> list:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return list(prof.events())


def padded_elements(fn) -> int:
    """Elements that aten::constant_pad_nd (F.pad's copy) read while fn() ran."""
    return sum(math.prod(e.input_shapes[0]) for e in profiled_ops(fn) if e.name == "aten::constant_pad_nd")


def module_types(vae: torch.nn.Module, base: type) -> set[type]:
    return {type(m) for m in vae.modules() if isinstance(m, base)}


@pytest.mark.parametrize("convs,norms", [(True, False), (False, True), (True, True)])
def test_lean_modules_give_diffusers_latents_and_frames(convs: bool, norms: bool) -> None:
    """Encode (17 frames: the first frame alone, then chunks of 4 with 1- and 2-frame caches) and decode (6 latent
    frames) equal diffusers' modules to float32 rounding."""
    vae = small_vae()
    models = as_models(vae)
    video = torch.rand(1, 3, 17, 32, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z = torch.randn(1, 16, 6, 4, 6, generator=torch.Generator().manual_seed(2))
    latents, frames = vae_encode(models, video), vae_decode(models, z)
    expected = convs * sum(isinstance(m, WanCausalConv3d) for m in vae.modules())
    expected += norms * sum(isinstance(m, WanRMS_norm) for m in vae.modules())
    assert set_lean_modules(vae, convs=convs, norms=norms) == expected > 20
    assert module_types(vae, WanCausalConv3d) == {InnerPaddedCausalConv3d if convs else WanCausalConv3d}
    assert module_types(vae, WanRMS_norm) == {LeanRMSNorm if norms else WanRMS_norm}
    torch.testing.assert_close(vae_encode(models, video), latents, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vae_decode(models, z), frames, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channel_first,images,bias", [(True, False, False), (True, True, False), (False, True, True)])
def test_lean_norm_equals_diffusers_norm(channel_first: bool, images: bool, bias: bool) -> None:
    """Every shape WanRMS_norm takes (videos, images, channels last; with a bias): float32 to ~1 ulp, float64 too,
    and in bf16 nearer the float32 result than diffusers' three roundings."""
    torch.manual_seed(0)
    stock = WanRMS_norm(16, channel_first=channel_first, images=images, bias=bias)
    with torch.no_grad():
        stock.gamma.normal_(1.0, 0.3)
        if bias:
            stock.bias.normal_(0.0, 0.1)
    lean = LeanRMSNorm(16, channel_first=channel_first, images=images, bias=bias)
    lean.load_state_dict(stock.state_dict())
    shape = {(True, False): (2, 16, 3, 5, 7), (True, True): (2, 16, 5, 7), (False, True): (2, 5, 7, 16)}
    x = torch.randn(*shape[(channel_first, images)]) * 3
    with torch.no_grad():
        expected = stock(x)
        torch.testing.assert_close(lean(x), expected, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(lean.double()(x.double()), stock.double()(x.double()))  # float64 stays float64
        stock_bf16, lean_bf16 = (m.to(torch.bfloat16)(x.bfloat16()).float() for m in (stock, lean))
    assert (lean_bf16 - expected).norm() <= (stock_bf16 - expected).norm()


def test_lean_norm_makes_two_passes_after_its_reduction() -> None:
    """diffusers' norm runs four full-size elementwise ops (divide, scale, gamma, zero bias); the lean one two."""
    x = torch.randn(1, 16, 2, 12, 12)
    norms = {cls: cls(16, images=False) for cls in (WanRMS_norm, LeanRMSNorm)}
    full = {"aten::div", "aten::mul", "aten::mul_", "aten::add", "aten::add_"}
    counts = {}
    for cls, norm in norms.items():
        ops = profiled_ops(lambda n=norm: n(x))
        counts[cls] = sum(e.name in full and list(e.input_shapes[0]) == list(x.shape) for e in ops)
    assert counts == {WanRMS_norm: 4, LeanRMSNorm: 2}


def test_lean_modules_keep_the_parameters_and_round_trip() -> None:
    vae = small_vae(seed=1)
    before = dict(vae.named_parameters())
    set_lean_modules(vae)
    after = dict(vae.named_parameters())
    assert list(after) == list(before)  # same names in the same order: checkpoints and feature caches line up
    assert all(after[name] is before[name] for name in before)  # the same Parameters, not copies
    assert set_lean_modules(vae) == 0  # already lean: nothing to do
    conv = vae.decoder.conv_in
    assert conv.padding == (0, 1, 1) and conv._padding == (0, 0, 0, 0, 2, 0)
    assert set_lean_modules(vae, lean=False) > 0
    assert module_types(vae, WanCausalConv3d) == {WanCausalConv3d}
    assert module_types(vae, WanRMS_norm) == {WanRMS_norm}
    assert vae.decoder.conv_in.padding == (0, 0, 0) and vae.decoder.conv_in._padding == (1, 1, 1, 1, 2, 0)
    assert all(dict(vae.named_parameters())[name] is before[name] for name in before)


def test_inner_padding_stops_copying_the_decoders_inputs() -> None:
    """diffusers pads (copies) every causal conv input; lean, only calls whose cache lacks front frames pad."""
    vae = small_vae(seed=2)
    models = as_models(vae)
    z = torch.randn(1, 16, 6, 4, 6, generator=torch.Generator().manual_seed(3))
    stock = padded_elements(lambda: vae_decode(models, z))
    set_lean_modules(vae, norms=False)
    inner = padded_elements(lambda: vae_decode(models, z))
    assert stock > 0
    assert inner < stock / 4, (inner, stock)


def test_the_app_runs_the_lean_modules() -> None:
    """place_models (every loader goes through it) lays the VAE out with the lean modules on every device."""
    models = build_tiny_models(seed=4)
    assert module_types(models.vae, WanCausalConv3d) == {InnerPaddedCausalConv3d}
    assert module_types(models.vae, WanRMS_norm) == {LeanRMSNorm}


def _conv_layouts(vae: torch.nn.Module) -> set[bool]:
    """For each Conv3d weight of `vae` whose layouts differ: True where it is stored channels_last_3d."""
    return {not p.is_contiguous() for p in vae.parameters() if p.dim() == 5 and p.shape[1] > 1 and p[0, 0].numel() > 1}


def test_vae_layout_is_channels_last_for_float32_on_cuda_only() -> None:
    assert vae_memory_format(torch.float32, "cuda") == torch.channels_last_3d
    assert vae_memory_format(torch.bfloat16, "cuda") == torch.contiguous_format  # bf16: not measured
    assert vae_memory_format(torch.float32, "cpu") == torch.contiguous_format
    assert _conv_layouts(build_tiny_models().vae) == {False}  # place_models on the CPU: contiguous


def test_channels_last_vae_gives_the_same_latents_and_frames() -> None:
    """The layout a CUDA worker gets, run on the CPU: the inputs follow the weights' layout, the outputs come back
    contiguous, and the float32 results equal the contiguous VAE's (to CPU rounding)."""
    models = build_tiny_models(seed=3)
    video = pixels_from_uint8(tiny_conditioning(9, seed=5).pose_frames, CPU)
    z = torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    latents, frames = vae_encode(models, video), vae_decode(models, z)
    set_vae_layout(models.vae, "cuda")  # weights on the CPU, laid out for the CUDA device they would run on
    assert _conv_layouts(models.vae) == {True}
    latents_cl, frames_cl = vae_encode(models, video), vae_decode(models, z)
    assert latents_cl.is_contiguous() and frames_cl.is_contiguous()
    torch.testing.assert_close(latents_cl, latents, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(frames_cl, frames, rtol=1e-5, atol=1e-5)
    models.vae.to(torch.bfloat16)
    set_vae_layout(models.vae, "cuda")  # after a dtype change: bf16 runs contiguous
    assert _conv_layouts(models.vae) == {False}


@pytest.mark.gpu
def test_cuda_vae_runs_channels_last_within_tf32_noise() -> None:
    """On the GPU the float32 VAE is laid out channels_last by place_models; its latents and frames stay within
    TF32 algorithm noise of the contiguous layout's (bench_vae measured 1e-3 rel. L2 at 720p)."""
    cuda = torch.device("cuda")
    models = build_tiny_models(seed=3, device=cuda)
    assert _conv_layouts(models.vae) == {True}
    video = pixels_from_uint8(tiny_conditioning(9, seed=5).pose_frames, cuda)
    z = torch.randn(1, 16, 3, 8, 8, device=cuda, generator=torch.Generator(cuda).manual_seed(0))
    latents_cl, frames_cl = vae_encode(models, video), vae_decode(models, z)
    conv3d_weights_to(models.vae, torch.contiguous_format)
    latents, frames = vae_encode(models, video), vae_decode(models, z)
    assert ((latents_cl - latents).norm() / latents.norm()).item() < 1e-2
    assert ((frames_cl - frames).norm() / frames.norm()).item() < 1e-2


@pytest.mark.gpu
def test_cuda_lean_modules_within_tf32_noise_of_diffusers() -> None:
    """On the GPU, in both layouts the app uses (float32 channels_last, bf16 contiguous), the lean modules stay within
    cuDNN algorithm noise of diffusers' own."""
    cuda = torch.device("cuda")
    vae = small_vae(seed=5).to(cuda)
    models = as_models(vae, cuda)
    video = torch.rand(1, 3, 17, 32, 48, device=cuda, generator=torch.Generator(cuda).manual_seed(1)) * 2 - 1
    z = torch.randn(1, 16, 6, 4, 6, device=cuda, generator=torch.Generator(cuda).manual_seed(2))
    for dtype, bound in ((torch.float32, 1e-2), (torch.bfloat16, 3e-2)):
        vae.to(dtype)
        set_lean_modules(vae, lean=False)
        conv3d_weights_to(vae, vae_memory_format(dtype, cuda))
        latents, frames = vae_encode(models, video), vae_decode(models, z)
        set_vae_layout(vae, cuda)
        assert module_types(vae, WanRMS_norm) == {LeanRMSNorm}
        latents_lean, frames_lean = vae_encode(models, video), vae_decode(models, z)
        assert ((latents_lean - latents).norm() / latents.norm()).item() < bound
        assert ((frames_lean - frames).norm() / frames.norm()).item() < bound
