"""Self-attention kernels for the DiT blocks: [B, S, H, D] query/key/value in, [B, S, H, D] bf16 out.

Each kernel runs as one torch custom op (`register_attention_op`), so `torch.compile` treats it as an opaque call
inside a fullgraph block and fuses everything around it. Kernels:
- `flash4_attention`: FlashAttention-4's bf16 kernel (PyPI `flash-attn-4`, CuTe DSL, Hopper/Blackwell): the app's
  default on those GPUs (exact attention).
- `fa3_attention` / `fa3_fp8_attention`: FlashAttention-3's forward (PyPI `fa3-fwd`, a prebuilt Hopper wheel), bf16
  or FP8 e4m3. The FP8 path quantises Q, K and V in plain torch ops (traced and fused into RoPE by compile) with
  rewrites that keep softmax exact: K smoothed by its mean over tokens, one scale per head for Q and K, one per
  channel for V (undone on the output); a Hadamard rotation of Q and K is available but off (it made outlier
  inputs worse at 720p on the H200, BENCHMARKS.md).
The cuDNN FP8 kernel (PyPI `nvidia-cudnn-frontend`, benchmark comparison only) is in wan/cudnn_fp8.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger(__name__)

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

FP8_E4M3_MAX = 448.0
OP_NAMESPACE = "wan_animate"

# The PyPI package each SpeedOptions kernel imports (requirements.txt pins those the app's `attention` choices use).
KERNEL_PACKAGES = {
    "flash4_attention": "flash-attn-4",
    "fa3_attention": "fa3-fwd",
    "fp8_attention": "fa3-fwd",
    "cudnn_fp8_attention": "nvidia-cudnn-frontend",
}


def sdpa_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Plain SDPA on [B, S, H, D] tensors (the reference kernel)."""
    out_bhsd = torch.nn.functional.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    )
    return out_bhsd.transpose(1, 2)


def register_attention_op(name: str, impl: Callable[..., torch.Tensor], out_dtype: torch.dtype | None = None) -> Any:
    """`impl` (typed tensor arguments, the query first) as the CUDA custom op `wan_animate::<name>`, registered once
    per process; its fake output is shaped like the query, in `out_dtype` (default the query's). Register eagerly,
    before compile traces a block: dynamo refuses to trace torch.library's schema inference."""
    namespace = getattr(torch.ops, OP_NAMESPACE)
    if hasattr(namespace, name):
        return getattr(namespace, name)
    op = torch.library.custom_op(f"{OP_NAMESPACE}::{name}", mutates_args=(), device_types="cuda")(impl)

    @op.register_fake
    def _(query: torch.Tensor, *args: Any) -> torch.Tensor:
        return torch.empty_like(query, dtype=out_dtype or query.dtype)

    return getattr(namespace, name)


# --- FlashAttention-4 (bf16) ------------------------------------------------------------------------------------------

# FlashAttention-4's Hopper forward at the model's head dim 128: 192-query x 128-key tiles with P.V read from shared
# memory ran the 720p self-attention at 712-719 TFLOP/s on an H100 against 680 for the package's default 128 x 128 tiles
# (flash-attn-4 4.0.0b36; BENCHMARKS.md). Set through the package's internal forward, which its public
# `flash_attn_func` wraps without exposing tile sizes; requirements.txt pins the version this was measured on.
FLASH4_SM90_HEAD_DIM = 128
FLASH4_SM90_TILE = (192, 128)


def flash4_available(device: torch.device | str) -> bool:
    """True when FlashAttention-4 can run on `device`: a Hopper (9.x) or Blackwell (10.x) CUDA GPU and the
    `flash-attn-4` package importable (its CuTe DSL compiler comes with `nvidia-cutlass-dsl`, no CUDA toolkit)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    if torch.cuda.get_device_capability(device)[0] not in (9, 10):
        return False
    try:
        import flash_attn.cute  # noqa: F401
    except Exception:  # missing, or an install whose compiler libraries do not load
        return False
    return True


def default_uses_flash4(device: torch.device | str, context_parallel: str | None = None) -> bool:
    """Whether the default fast path on `device` runs the blocks' self-attention with FlashAttention-4 (1.2x cuDNN's
    kernel at 720p on an H100, BENCHMARKS.md): where it runs and passes `flash4_self_check`, and not under context
    parallelism, where attention must go through diffusers' dispatcher to be split across ranks. Otherwise cuDNN's
    kernel (same math)."""
    if context_parallel is not None or not flash4_available(device):
        return False
    problem = flash4_self_check(device)
    if problem is not None:
        logger.warning("FlashAttention-4 unusable here, cuDNN attention instead: %s", problem)
        return False
    return True


def flash4_self_check(device: torch.device | str) -> str | None:
    """Run FlashAttention-4 once at the model's head dim on `device` against SDPA; None when it works, else what went
    wrong. Its first call JIT-compiles the kernel at the model's head dim (the blocks then reuse it), so a worker
    whose driver or libraries cannot build it falls back at setup instead of failing its first request."""
    generator = torch.Generator(device=device).manual_seed(0)
    q, k, v = (
        torch.randn(1, 512, 2, FLASH4_SM90_HEAD_DIM, device=device, dtype=torch.bfloat16, generator=generator)
        for _ in range(3)
    )
    try:
        out = flash4_attention(q, k, v).float()
    except Exception as exc:  # a CuTe DSL compile or launch failure
        return f"{type(exc).__name__}: {exc}"
    ref = sdpa_attention(q.float(), k.float(), v.float())
    error = ((out - ref).norm() / ref.norm()).item()
    if not error < 2e-2:  # bf16 rounding is ~3e-3
        return f"relative error {error:.3g} against float32 SDPA"
    return None


def _flash4_impl(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The package compiles its kernel on first use and keeps it per dtype, head dim and tile configuration (not per
    sequence length)."""
    from flash_attn.cute import flash_attn_func
    from flash_attn.cute.interface import _flash_attn_fwd

    if torch.cuda.get_device_capability(query.device)[0] == 9 and query.shape[-1] == FLASH4_SM90_HEAD_DIM:
        return _flash_attn_fwd(query, key, value, tile_mn=FLASH4_SM90_TILE, mma_pv_is_rs=False)[0]
    out, _lse = flash_attn_func(query, key, value)
    return out


def flash4_op() -> Any:
    return register_attention_op("flash4_attention", _flash4_impl)


def flash4_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """FlashAttention-4 (bf16 in, bf16 out, float32 softmax) on [B, S, H, D] CUDA tensors, the kernel's own layout."""
    return flash4_op()(query.contiguous(), key.contiguous(), value.contiguous())


# --- FlashAttention-3 forward (bf16 and FP8 e4m3), PyPI fa3-fwd -------------------------------------------------------


def fa3_available(device: torch.device | str) -> bool:
    """True when fa3-fwd's kernels can run on `device`: a Hopper (9.x) CUDA GPU (FA3 is written for Hopper's wgmma
    and tensor-memory copies) and the package importable."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    if torch.cuda.get_device_capability(device)[0] != 9:
        return False
    try:
        import fa3_fwd_interface  # noqa: F401
    except Exception:  # missing, or a build that does not load against this torch
        return False
    return True


def _fa3_impl(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    from fa3_fwd_interface import flash_attn_func

    return flash_attn_func(query, key, value)


def _fa3_fp8_impl(
    query: torch.Tensor,  # [B, S, H, D] float8_e4m3fn
    key: torch.Tensor,
    value: torch.Tensor,
    q_descale: torch.Tensor,  # [B, H] float32: query = query_fp8 * q_descale
    k_descale: torch.Tensor,
    v_descale: torch.Tensor,
) -> torch.Tensor:
    from fa3_fwd_interface import flash_attn_func

    return flash_attn_func(query, key, value, q_descale=q_descale, k_descale=k_descale, v_descale=v_descale)


def fa3_op() -> Any:
    return register_attention_op("fa3_attention", _fa3_impl)


def fa3_fp8_op() -> Any:
    return register_attention_op("fa3_fp8_attention", _fa3_fp8_impl, out_dtype=torch.bfloat16)


def fa3_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """FlashAttention-3's bf16 forward on [B, S, H, D] CUDA tensors (exact attention, float32 softmax)."""
    return fa3_op()(query.contiguous(), key.contiguous(), value.contiguous())


def hadamard_matrix(size: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Sylvester Hadamard matrix [size, size] of +-1 (size a power of two; exact in bf16): H @ H.T = size * I.
    Rotating Q and K by H / sqrt(size) leaves Q.K^T unchanged and spreads an outlier channel over all channels."""
    if size < 1 or size & (size - 1):
        raise ValueError(f"Hadamard size must be a power of two, not {size}")
    matrix = torch.ones(1, 1, dtype=dtype, device=device)
    while matrix.shape[0] < size:
        matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)], 0)
    return matrix


def _rotate(x: torch.Tensor, hadamard: torch.Tensor) -> torch.Tensor:
    """x [B, S, H, D] times the orthonormal H / sqrt(D): a bf16 matmul (float32 accumulation, output rounded to bf16,
    2^-9 relative: far below FP8's 2^-4), back to float32."""
    return (x.to(hadamard.dtype) @ hadamard).float() * hadamard.shape[0] ** -0.5


def _per_head_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, S, H, D] float -> (e4m3 [B, S, H, D], descale [B, H] float32): one scale per batch and head, max -> 448."""
    amax = x.abs().amax(dim=(1, 3)).clamp_min(1e-12)  # [B, H]
    scale = FP8_E4M3_MAX / amax
    x_fp8 = (x * scale[:, None, :, None]).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    return x_fp8, (amax / FP8_E4M3_MAX).contiguous()


def quantize_qkv_fp8(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, hadamard: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """Q, K, V [B, S, H, D] -> (q8, k8, v8, q_descale, k_descale, v_descale, v_channel_scale) for FA3's FP8 forward.

    Exact rewrites first (softmax of each query row is unchanged): K minus its mean over tokens (adds one constant
    to each row of Q.K^T); Q and K rotated by `hadamard` [D, D] (+-1 entries, normalised here) when given. Then one scale per head for Q
    and K, and one per (head, channel) for V: V / s is quantised with v_descale 1 and the output times s
    (v_channel_scale [B, 1, H, D]) undoes it, since P.(V / s) = (P.V) / s channel by channel. Plain torch ops, so a
    compiled block fuses them with the RoPE before them.
    """
    query, key, value = query.float(), key.float(), value.float()
    key = key - key.mean(dim=1, keepdim=True)
    if hadamard is not None:
        query, key = _rotate(query, hadamard), _rotate(key, hadamard)
    q8, q_descale = _per_head_fp8(query)
    k8, k_descale = _per_head_fp8(key)
    v_scale = (value.abs().amax(dim=1, keepdim=True) / FP8_E4M3_MAX).clamp_min(1e-12)  # [B, 1, H, D]
    v8 = (value / v_scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    v_descale = torch.ones_like(q_descale)
    return q8, k8, v8, q_descale, k_descale, v_descale, v_scale


# Q/K rotation in the app's FP8 attention: off. Measured on the H200 at 720p (BENCHMARKS.md): the same error on N(0,1)
# inputs (5.5e-2 either way) and twice the error with outlier channels (0.30 against 0.16); in FP8, a floating-point
# format, spreading an outlier over all channels raises every channel's rounding instead of saving range.
FP8_ATTENTION_HADAMARD = False


def fa3_fp8_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, hadamard: bool = FP8_ATTENTION_HADAMARD
) -> torch.Tensor:
    """FlashAttention-3's FP8 forward on [B, S, H, D] bf16 CUDA tensors (Hopper), bf16 out: quantised by
    `quantize_qkv_fp8` (traceable), the FP8 kernel as one custom op, V's per-channel scale undone on the output."""
    rotation = hadamard_matrix(query.shape[-1], query.device) if hadamard else None
    q8, k8, v8, q_descale, k_descale, v_descale, v_scale = quantize_qkv_fp8(query, key, value, rotation)
    out = fa3_fp8_op()(q8, k8, v8, q_descale, k_descale, v_descale)
    return (out.float() * v_scale).to(query.dtype)
