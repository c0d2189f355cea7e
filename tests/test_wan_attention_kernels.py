"""Attention kernels (wan/attention_kernels.py): the FP8 quantisation's exact rewrites on the CPU, the app's attention
choices against requirements.txt, and (CUDA) FlashAttention-3's bf16 and FP8 forwards against float32 SDPA."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
import torch
from wan_animate.wan import attention_kernels as ak

APP_ROOT = Path(__file__).resolve().parents[1]


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def qkv(tokens: int = 256, heads: int = 3, head_dim: int = 128, seed: int = 0, device: str = "cpu"):
    gen = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(1, tokens, heads, head_dim, generator=gen, device=device) for _ in range(3)]


def with_outlier_channels(x: torch.Tensor, seed: int, scale: float = 20.0, offset: float = 8.0) -> torch.Tensor:
    """A few channels per head much larger than the rest, and a constant offset on them (the shape of real Q/K)."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    channels = torch.randperm(x.shape[-1], generator=gen, device=x.device)[:4]
    x = x.clone()
    x[..., channels] = x[..., channels] * scale + offset
    return x


def dequantized_attention(query, key, value, hadamard) -> torch.Tensor:
    """What the FP8 kernel computes, emulated in float32 from quantize_qkv_fp8's outputs (P kept exact)."""
    q8, k8, v8, dq, dk, dv, v_scale = ak.quantize_qkv_fp8(query, key, value, hadamard)
    q = q8.float() * dq[:, None, :, None]
    k = k8.float() * dk[:, None, :, None]
    v = v8.float() * dv[:, None, :, None]
    return ak.sdpa_attention(q, k, v) * v_scale


def test_hadamard_matrix_is_orthogonal_and_exact_in_bf16():
    h = ak.hadamard_matrix(128)
    assert h.dtype == torch.bfloat16 and set(h.unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(h.double() @ h.double().T, 128 * torch.eye(128, dtype=torch.float64))
    with pytest.raises(ValueError, match="power of two"):
        ak.hadamard_matrix(96)


def test_smoothing_and_rotation_leave_attention_unchanged():
    """K minus its token mean and the Hadamard rotation of Q and K are exact for softmax: without the FP8 rounding
    (scales of 1, float32) the attention output is the reference's."""
    query, key, value = (with_outlier_channels(x, seed) for seed, x in enumerate(qkv()))
    ref = ak.sdpa_attention(query, key, value)
    smoothed = key - key.mean(dim=1, keepdim=True)
    h = ak.hadamard_matrix(128, dtype=torch.float32) / 128**0.5
    assert rel_l2(ak.sdpa_attention(query, smoothed, value), ref) < 1e-5
    assert rel_l2(ak.sdpa_attention(query @ h, smoothed @ h, value), ref) < 1e-5


def test_fp8_quantization_shapes_scales_and_range():
    query, key, value = qkv(heads=2)
    q8, k8, v8, dq, dk, dv, v_scale = ak.quantize_qkv_fp8(query, key, value, ak.hadamard_matrix(128))
    assert {t.dtype for t in (q8, k8, v8)} == {torch.float8_e4m3fn}
    assert dq.shape == dk.shape == dv.shape == (1, 2) and dq.dtype == torch.float32
    assert v_scale.shape == (1, 1, 2, 128)
    torch.testing.assert_close(dv, torch.ones_like(dv))
    for x8 in (q8, k8, v8):  # every head's (V: channel's) largest value lands on the format's largest, 448
        assert x8.float().abs().amax().item() == ak.FP8_E4M3_MAX
        assert torch.isfinite(x8.float()).all()
    torch.testing.assert_close(v8.float().abs().amax(dim=1), torch.full((1, 2, 128), ak.FP8_E4M3_MAX))


@pytest.mark.parametrize("outliers", [False, True])
def test_fp8_quantization_error_is_fp8_rounding(outliers):
    """Emulated in float32 (P exact): the app's scheme (K smoothed, per-head Q/K and per-channel V scales, no
    rotation) stays at FP8's rounding level of exact attention on N(0,1) inputs, and is no worse than one per-tensor
    scale with outlier channels. (A floating-point format's relative rounding does not depend on the scale, so finer
    scales gain little: measured on the H200, BENCHMARKS.md.)"""
    query, key, value = qkv(tokens=512, seed=3)
    if outliers:
        query, key, value = (with_outlier_channels(x, seed) for seed, x in enumerate((query, key, value)))
    ref = ak.sdpa_attention(query, key, value)
    ours = rel_l2(dequantized_attention(query, key, value, None), ref)

    def per_tensor(x):
        scale = ak.FP8_E4M3_MAX / x.abs().amax()
        return (x * scale).to(torch.float8_e4m3fn).float() / scale

    naive = rel_l2(ak.sdpa_attention(per_tensor(query), per_tensor(key), per_tensor(value)), ref)
    assert ours < 1.1 * naive
    if not outliers:
        assert ours < 6e-2


def test_every_attention_choice_of_the_app_imports_only_pinned_packages():
    """Each AppSetup `attention` choice runs kernels whose packages requirements.txt pins with == (issue 15)."""
    from local_runner import import_app_module

    inference = import_app_module("inference")
    choices = set(typing.get_args(inference.AppSetup.model_fields["attention"].annotation))
    kernels_of_choice = {"default": ("flash4_attention",), "cudnn": (), "fp8": ("fp8_attention",)}
    assert choices == set(kernels_of_choice)
    pinned = set(re.findall(r"^([A-Za-z0-9_.-]+)==", (APP_ROOT / "requirements.txt").read_text(), re.MULTILINE))
    for choice in choices:
        for kernel in kernels_of_choice[choice]:
            assert ak.KERNEL_PACKAGES[kernel] in pinned, (choice, kernel)


# --- CUDA only: the real kernels (run on the device machine; skipped in CI) -------------------------------------------


def _need_fa3() -> None:
    if not ak.fa3_available("cuda"):
        pytest.skip("fa3-fwd not installed, or not a Hopper GPU")


@pytest.mark.gpu
def test_cuda_fa3_bf16_attention_against_sdpa():
    _need_fa3()
    query, key, value = (x.bfloat16() for x in qkv(tokens=1024, heads=4, device="cuda"))
    ref = ak.sdpa_attention(query.float(), key.float(), value.float())
    out = ak.fa3_attention(query, key, value)
    assert out.shape == query.shape and out.dtype == torch.bfloat16
    assert rel_l2(out.float(), ref) < 2 * rel_l2(ak.sdpa_attention(query, key, value).float(), ref) + 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("outliers", [False, True])
@pytest.mark.parametrize("hadamard", [False, True])
def test_cuda_fa3_fp8_attention_against_sdpa(outliers, hadamard):
    _need_fa3()
    query, key, value = qkv(tokens=2048, heads=4, device="cuda", seed=7)
    if outliers:
        query, key, value = (with_outlier_channels(x, seed) for seed, x in enumerate((query, key, value)))
    query, key, value = (x.bfloat16() for x in (query, key, value))
    ref = ak.sdpa_attention(query.float(), key.float(), value.float())
    out = ak.fa3_fp8_attention(query, key, value, hadamard=hadamard)
    assert out.shape == query.shape and out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    deviation = rel_l2(out.float(), ref)
    emulated = rel_l2(dequantized_attention(query.float(), key.float(), value.float(),
                                            ak.hadamard_matrix(128, "cuda") if hadamard else None), ref)  # fmt: skip
    print(f"fa3 fp8 (outliers={outliers}, hadamard={hadamard}): rel L2 {deviation:.4f}, Q/K/V rounding alone {emulated:.4f}")
    # The kernel adds little beyond the rounding of its inputs (its P.V in FP8 too); N(0,1): FP8's rounding level.
    assert deviation < 1.1 * emulated + 1e-2
    if not outliers:
        assert deviation < 6e-2


@pytest.mark.gpu
def test_cuda_fa3_fp8_compiled_matches_eager():
    """The quantisation traced into a compiled function gives the eager result (up to bf16 / FP8 rounding ties)."""
    _need_fa3()
    query, key, value = (x.bfloat16() for x in qkv(tokens=1024, heads=4, device="cuda", seed=9))
    ak.fa3_fp8_op()
    eager = ak.fa3_fp8_attention(query, key, value)
    compiled = torch.compile(ak.fa3_fp8_attention, fullgraph=True)(query, key, value)
    torch._dynamo.reset()
    assert rel_l2(compiled.float(), eager.float()) < 2e-2
