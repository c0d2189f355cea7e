"""Speed options for the Wan-Animate transformer forward: attention backend, regional compile, FP8, 8-bit attention.

`apply_speed_options` changes a `WanAnimateTransformer3DModel` in place (and returns it). The default options are a
fast path that changes no math beyond bf16 rounding: cuDNN attention through diffusers' attention dispatcher and
`torch.compile` of the repeated blocks; the app adds FlashAttention-4 for the blocks' self-attention where
`default_uses_flash4` says it runs (Hopper/Blackwell, one process). FP8 linears (torchao), cuDNN FP8 attention and
SageAttention 1 are opt-in because they change the numbers. Measured on an H100 (BENCHMARKS.md,
`benchmarks/bench_forward.py`): one 720p forward 12.9 s diffusers default, 11.5 s with cuDNN, 10.1 s with
FlashAttention-4, 8.6 s with FP8 linears + FP8 attention.

Step caching is a per-request option of the sampler loop, in wan/step_cache.py. diffusers' own FirstBlockCache /
MagCache are not used: diffusers does not register this model's block class, and once registered the cache gives
wrong outputs on this model, because the 8 face adapters run between blocks outside the cached `blocks` list, so a
skipped step adds their outputs a second time on top of a cached residual that already contains them
(tests/test_wan_speed.py shows it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from diffusers import WanAnimateTransformer3DModel

# Attention backend of the default fast path, by measurement on an H100 with torch 2.11 (BENCHMARKS.md): cuDNN's
# fused attention runs the model's self-attention at ~575 TFLOP/s, PyTorch's FlashAttention-2 at ~350,
# SageAttention 1 at ~450. "_native_cudnn" forces cuDNN whatever kernel a torch build would pick. torch 2.11's own
# SDPA choice ("native", attention_backend=None) is the same cuDNN kernel (bit-identical output) and was 4% faster
# eager at 480p, because diffusers' "_native_cudnn" copies q/k/v to contiguous memory; not yet timed compiled.
DEFAULT_ATTENTION_BACKEND = "_native_cudnn"

# SpeedOptions fields that replace the DiT blocks' self-attention kernel (wan/speed.py's own processor); at most one.
SELF_ATTENTION_KERNELS = ("sage_attention", "flash4_attention", "fp8_attention")

# Modules compiled one by one ("regional compilation"): the 40 DiT blocks and the 8 face adapters. Each class is
# compiled once and the compiled code is reused by every instance of that class.
COMPILED_BLOCK_CLASSES = ("WanTransformerBlock", "WanAnimateFaceBlockCrossAttention")

# Text context length that diffusers' Wan attention processor assumes when it splits image and text tokens.
TEXT_CONTEXT_LEN = 512
# CLIP ViT-H/14 image tokens at 224x224 (256 patches + class token).
IMAGE_CONTEXT_LEN = 257


@dataclass(frozen=True)
class SpeedOptions:
    """Which speed-ups to apply to the transformer. The defaults change no math beyond bf16 rounding.

    attention_backend: diffusers attention-dispatcher backend for every attention in the model (None keeps
        diffusers' default, plain SDPA). Only applied when the model is on CUDA: the cuDNN/flash kernels have no
        CPU implementation.
    compile_blocks: `torch.compile` the repeated blocks (regional compilation); pay the cost once with `warmup`.
    compile_backend / compile_mode: passed to `torch.compile` ("inductor" for speed; tests use "aot_eager").
    fp8_linears: opt-in; torchao float8 dynamic activation + float8 weight, per-row scales, on every Linear of the
        40 DiT blocks (needs a CUDA GPU of compute capability >= 8.9 and torchao).
    sage_attention: opt-in; SageAttention 1 (int8 Q.K^T, fp16 P.V; a Triton kernel from PyPI `sageattention`
        1.0.6) for the self-attention of the 40 DiT blocks. Cross-attention and face adapters keep
        `attention_backend`. Runs on Hopper but is SLOWER than cuDNN bf16 there (measured); kept for other GPUs.
    flash4_attention: FlashAttention-4's bf16 kernel (PyPI `flash-attn-4`, CuTe DSL, compiled on first use) for the
        self-attention of the 40 DiT blocks, on Hopper and Blackwell GPUs. Exact attention like cuDNN's, so it
        changes no math beyond bf16 rounding. Exclusive with sage_attention and fp8_attention.
    fp8_attention: opt-in; cuDNN's fused FP8 attention (e4m3 Q, K, V, probabilities and output, per-tensor scales)
        through PyPI `nvidia-cudnn-frontend`, for the self-attention of the 40 DiT blocks; 1.3x the bf16 kernel on an
        H100, relative error ~6% per attention call. Exclusive with sage_attention.
    context_parallel: None (one process), or "ulysses" / "ring" to split every forward's token sequence across the
        ranks of the torchrun job (wan/parallel.py). Applied after the attention backend and before compilation;
        exclusive with sage_attention, flash4_attention and fp8_attention (their kernels bypass diffusers'
        dispatcher).
    """

    attention_backend: str | None = DEFAULT_ATTENTION_BACKEND
    compile_blocks: bool = True
    compile_backend: str = "inductor"
    compile_mode: str | None = None
    fp8_linears: bool = False
    sage_attention: bool = False
    flash4_attention: bool = False
    fp8_attention: bool = False
    context_parallel: str | None = None


def apply_speed_options(
    transformer: WanAnimateTransformer3DModel, options: SpeedOptions
) -> WanAnimateTransformer3DModel:
    """Apply `options` to `transformer` in place and return it.

    Call once, after weights and any fused LoRA are loaded and the model is on its final device, then `warmup` with
    inputs of the shapes the run will use. Order matters: FP8 swaps weights before compile traces them; context
    parallelism checks the attention backend and installs its hooks before compile traces them.
    """
    kernels = [name for name in SELF_ATTENTION_KERNELS if getattr(options, name)]
    if len(kernels) > 1:
        raise ValueError(f"choose one self-attention kernel, got {kernels}")
    if options.context_parallel is not None and kernels:
        raise ValueError(f"context_parallel splits attention through diffusers' dispatcher; {kernels[0]} bypasses "
                         "it and cannot be combined with it")
    on_cuda = next(transformer.parameters()).device.type == "cuda"
    if (options.fp8_linears or kernels) and not on_cuda:
        raise RuntimeError(f"fp8_linears and {SELF_ATTENTION_KERNELS} need the transformer on a CUDA GPU")

    if options.fp8_linears:
        quantize_block_linears_fp8(transformer)
    if options.attention_backend is not None and on_cuda:
        transformer.set_attention_backend(options.attention_backend)
    # The kernels' custom ops are registered here, eagerly: registering one inside a compiled trace fails (dynamo
    # refuses to trace torch.library's schema inference).
    if options.sage_attention:
        _sage_op()
        use_self_attention_fn(transformer, sage_attention)
    if options.flash4_attention:
        _flash4_op()
        use_self_attention_fn(transformer, flash4_attention)
    if options.fp8_attention:
        _cudnn_fp8_op()
        use_self_attention_fn(transformer, cudnn_fp8_attention)
    if options.context_parallel is not None:
        from .parallel import enable_context_parallel

        enable_context_parallel(transformer, options.context_parallel)
    if options.compile_blocks:
        compile_blocks(transformer, backend=options.compile_backend, mode=options.compile_mode)
    return transformer


def compile_blocks(transformer: torch.nn.Module, backend: str = "inductor", mode: str | None = None) -> int:
    """`torch.compile` every DiT block and face adapter in place (fullgraph, static shapes); returns how many.

    Static shapes: each new resolution compiles once more instead of falling back to slower dynamic-shape kernels.
    Like diffusers' `compile_repeated_blocks`, plus the face adapters.
    """
    count = 0
    for module in transformer.modules():
        if type(module).__name__ in COMPILED_BLOCK_CLASSES:
            module.compile(fullgraph=True, dynamic=False, backend=backend, mode=mode)
            count += 1
    if count == 0:
        raise ValueError(f"no {COMPILED_BLOCK_CLASSES} found in {type(transformer).__name__}")
    return count


@contextmanager
def eager_blocks(transformer: torch.nn.Module) -> Iterator[int]:
    """Run the compiled blocks eagerly inside the block, compiled again after it; yields how many were compiled.

    Needed where diffusers' group offloading streams the blocks: its onload hook is `torch.compiler.disable`d, which
    a fullgraph-compiled block refuses ("Skip inlining torch.compiler.disable()d function", seen on the H100).
    """
    stashed = []
    for module in transformer.modules():
        compiled = getattr(module, "_compiled_call_impl", None)
        if compiled is not None:
            stashed.append((module, compiled))
            module._compiled_call_impl = None
    try:
        yield len(stashed)
    finally:
        for module, compiled in stashed:
            module._compiled_call_impl = compiled


@dataclass
class CompileBudget:
    """Which forward signatures the compiled blocks hold graphs for; past `max_signatures`, requests run eagerly.

    Compiled with static shapes, each new signature (frame size, clip length, active setup adapters) adds one graph to
    every compiled function, and dynamo keeps at most `torch._dynamo.config.recompile_limit` (8) graphs per function:
    past that, a `fullgraph=True` block raises `FailOnRecompileLimitHit` and the request fails. A long-lived worker
    meets many frame sizes (the output's aspect follows the input's), so it compiles the first few signatures (~18 s
    each at 720p) and runs later new ones eagerly (~10% slower per forward at 720p, ~20% at 480p; BENCHMARKS.md).
    """

    max_signatures: int
    compiled: set[Hashable] = field(default_factory=set)

    @classmethod
    def below_recompile_limit(cls) -> CompileBudget:
        """One signature fewer than dynamo's limit: a spare graph for a guard we did not foresee."""
        return cls(max_signatures=max(1, int(torch._dynamo.config.recompile_limit) - 1))

    def admit(self, signature: Hashable) -> bool:
        """True when `signature` may run compiled: compiled before, or there is room for one more graph."""
        if signature in self.compiled:
            return True
        if len(self.compiled) >= self.max_signatures:
            return False
        self.compiled.add(signature)
        return True


def is_block_linear(module: torch.nn.Module, fqn: str) -> bool:
    """FP8 filter: a `torch.nn.Linear` inside the DiT blocks (`blocks.<i>.…`); embeddings, face adapters and the
    output projection stay bf16 (small, and closest to the inputs/outputs)."""
    return isinstance(module, torch.nn.Linear) and fqn.startswith("blocks.")


def quantize_block_linears_fp8(transformer: torch.nn.Module) -> None:
    """Swap the DiT blocks' Linear weights for torchao float8 (e4m3) with per-row scales; activations are quantized
    per row on the fly. Leaves inductor's global settings alone (`set_inductor_config=False`)."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
    quantize_(transformer, config, filter_fn=is_block_linear)


def quantize_offloaded_blocks_fp8(transformer: torch.nn.Module, device: torch.device) -> None:
    """FP8 block linears for a transformer whose weights stay on the CPU (group offload): each block visits `device`
    to be quantized (torchao's float8 path needs the GPU) and goes back, so the bf16 model never has to fit on the
    card. Same layers and format as quantize_block_linears_fp8."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    from .offload import disable_transformer_offload, enable_transformer_offload

    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
    disable_transformer_offload(transformer)
    for block in transformer.blocks:
        block.to(device)
        quantize_(block, config, filter_fn=lambda module, fqn: isinstance(module, torch.nn.Linear))
        block.to("cpu")
    enable_transformer_offload(transformer, device)


# --- self-attention with a replaceable attention kernel -------------------------------------------------------------

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sdpa_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Plain SDPA on [B, S, H, D] tensors (reference kernel for `WanSelfAttentionProcessor`)."""
    out_bhsd = torch.nn.functional.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    )
    return out_bhsd.transpose(1, 2)


def _sage_op() -> Any:
    """The SageAttention custom op, registered with torch on first use so torch.compile treats the Triton kernel as
    one opaque call (fullgraph works). torch's op registry, not this module, remembers the registration."""
    namespace = torch.ops.wan_animate
    if hasattr(namespace, "sage_attention"):
        return namespace.sage_attention

    @torch.library.custom_op("wan_animate::sage_attention", mutates_args=(), device_types="cuda")
    def _sage_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        from sageattention import sageattn

        # Smoothing K (subtracting its mean over the sequence) leaves softmax unchanged and makes int8 K accurate;
        # done out of place here because sageattn's own smooth_k modifies its input.
        key = key - key.mean(dim=1, keepdim=True)
        return sageattn(query, key, value, tensor_layout="NHD", is_causal=False, smooth_k=False)

    @_sage_attention.register_fake
    def _(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(query)

    return namespace.sage_attention


def sage_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """SageAttention 1 on [B, S, H, D] bf16 CUDA tensors: int8 per-block Q and K, fp16 P.V, output in q's dtype."""
    return _sage_op()(query.contiguous(), key.contiguous(), value.contiguous())


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


# FlashAttention-4's Hopper forward at the model's head dim 128: 192-query x 128-key tiles with P.V read from shared
# memory ran the 720p self-attention at 712-719 TFLOP/s on an H100 against 680 for the package's default 128 x 128 tiles
# (flash-attn-4 4.0.0b36; BENCHMARKS.md). Set through the package's internal forward, which its public
# `flash_attn_func` wraps without exposing tile sizes; requirements.txt pins the version this was measured on.
FLASH4_SM90_HEAD_DIM = 128
FLASH4_SM90_TILE = (192, 128)


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


def _flash4_op() -> Any:
    """The FlashAttention-4 custom op, registered with torch on first use so torch.compile treats the CuTe kernel as
    one opaque call (dynamo cannot trace the DSL's JIT). The package compiles its kernel on first use and keeps it per
    dtype, head dim and tile configuration (not per sequence length)."""
    namespace = torch.ops.wan_animate
    if hasattr(namespace, "flash4_attention"):
        return namespace.flash4_attention

    @torch.library.custom_op("wan_animate::flash4_attention", mutates_args=(), device_types="cuda")
    def _flash4_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        from flash_attn.cute import flash_attn_func
        from flash_attn.cute.interface import _flash_attn_fwd

        if torch.cuda.get_device_capability(query.device)[0] == 9 and query.shape[-1] == FLASH4_SM90_HEAD_DIM:
            return _flash_attn_fwd(query, key, value, tile_mn=FLASH4_SM90_TILE, mma_pv_is_rs=False)[0]
        out, _lse = flash_attn_func(query, key, value)
        return out

    @_flash4_attention.register_fake
    def _(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(query)

    return namespace.flash4_attention


def flash4_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """FlashAttention-4 (bf16 in, bf16 out, float32 softmax) on [B, S, H, D] CUDA tensors, the kernel's own layout."""
    return _flash4_op()(query.contiguous(), key.contiguous(), value.contiguous())


FP8_E4M3_MAX = 448.0


def quantize_fp8_per_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x -> (x * s as float8 e4m3, 1/s as a [1, 1, 1, 1] float32 tensor) with s = 448 / max|x|, all on the device
    (no host sync)."""
    amax = x.abs().amax().float().clamp_min(1e-12)
    scale = FP8_E4M3_MAX / amax
    x_fp8 = (x.float() * scale).to(torch.float8_e4m3fn)
    return x_fp8, (1.0 / scale).reshape(1, 1, 1, 1)


def _build_fp8_sdpa_plan(
    cudnn: Any, handle: Any, batch: int, seq_q: int, seq_kv: int, heads: int, head_dim: int, fp8_out: bool
):
    """A built cuDNN graph: FP8 Q, K, V in [B, S, H, D] memory order -> O in the same order, bf16 (or FP8 where
    cuDNN offers only that), softmax probabilities quantized with the fixed scale 448 (they lie in [0, 1] before
    normalisation)."""
    fp8, f32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
    graph = cudnn.pygraph(handle=handle, io_data_type=fp8, intermediate_data_type=f32, compute_data_type=f32)
    q_stride = [seq_q * heads * head_dim, head_dim, heads * head_dim, 1]  # [B, H, S, D] dims over BSHD memory
    kv_stride = [seq_kv * heads * head_dim, head_dim, heads * head_dim, 1]
    q = graph.tensor(name="q", dim=[batch, heads, seq_q, head_dim], stride=q_stride, data_type=fp8)
    k = graph.tensor(name="k", dim=[batch, heads, seq_kv, head_dim], stride=kv_stride, data_type=fp8)
    v = graph.tensor(name="v", dim=[batch, heads, seq_kv, head_dim], stride=kv_stride, data_type=fp8)
    scalars = {
        name: graph.tensor(name=name, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=f32)
        for name in ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o")
    }
    o, _, amax_s, amax_o = graph.sdpa_fp8(
        q, k, v, *scalars.values(), generate_stats=False, attn_scale=head_dim**-0.5, name="sdpa_fp8"
    )
    o.set_output(True).set_dim([batch, heads, seq_q, head_dim]).set_stride(q_stride)
    o.set_data_type(fp8 if fp8_out else cudnn.data_type.BFLOAT16)
    for amax in (amax_s, amax_o):
        amax.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(f32)
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    tensors = {"q": q, "k": k, "v": v, "o": o, "amax_s": amax_s, "amax_o": amax_o, **scalars}
    return graph, tensors, graph.get_workspace_size()


def _cudnn_fp8_op() -> Any:
    """The cuDNN FP8 attention custom op, registered with torch on first use (opaque to torch.compile). Built cuDNN
    plans are kept per shape in the op's closure, like torch keeps its own cuDNN plans."""
    namespace = torch.ops.wan_animate
    if hasattr(namespace, "cudnn_fp8_attention"):
        return namespace.cudnn_fp8_attention
    plans: dict[tuple, Any] = {}

    @torch.library.custom_op("wan_animate::cudnn_fp8_attention", mutates_args=(), device_types="cuda")
    def _cudnn_fp8_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        import cudnn

        batch, seq_q, heads, head_dim = query.shape
        seq_kv = key.shape[1]
        device = query.device
        handle_key = ("handle", device.index)
        if handle_key not in plans:
            with torch.cuda.device(device):
                plans[handle_key] = cudnn.create_handle()
        handle = plans[handle_key]
        cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream(device).cuda_stream)
        shape_key = (device.index, batch, seq_q, seq_kv, heads, head_dim)
        if shape_key not in plans:
            try:
                plans[shape_key] = (*_build_fp8_sdpa_plan(cudnn, handle, *shape_key[1:], fp8_out=False), False)
            except Exception as bf16_error:  # no bf16-output FP8 kernel in this cuDNN: FP8 output, scaled back below
                try:
                    plans[shape_key] = (*_build_fp8_sdpa_plan(cudnn, handle, *shape_key[1:], fp8_out=True), True)
                except Exception as fp8_error:
                    raise RuntimeError(
                        f"cuDNN FP8 attention unavailable; bf16 output: {bf16_error!r}; fp8 output: {fp8_error!r}"
                    ) from fp8_error
        graph, tensors, workspace_size, fp8_out = plans[shape_key]

        q8, descale_q = quantize_fp8_per_tensor(query)
        k8, descale_k = quantize_fp8_per_tensor(key)
        v8, descale_v = quantize_fp8_per_tensor(value)
        one = torch.ones(1, 1, 1, 1, device=device, dtype=torch.float32)
        out_dtype = torch.float8_e4m3fn if fp8_out else torch.bfloat16
        out = torch.empty(batch, seq_q, heads, head_dim, device=device, dtype=out_dtype)
        # |O| <= max|V| (rows of softmax sum to 1); 10% headroom for the rounding of the FP8 probabilities.
        scale_o = 0.9 / descale_v if fp8_out else one
        buffers = {
            "q": q8.contiguous(),
            "k": k8.contiguous(),
            "v": v8.contiguous(),
            "o": out,
            "amax_s": torch.empty_like(one),
            "amax_o": torch.empty_like(one),
            "descale_q": descale_q,
            "descale_k": descale_k,
            "descale_v": descale_v,
            "descale_s": one / FP8_E4M3_MAX,
            "scale_s": one * FP8_E4M3_MAX,
            "scale_o": scale_o,
        }
        workspace = torch.empty(max(workspace_size, 1), device=device, dtype=torch.uint8)
        graph.execute({tensors[name]: buf for name, buf in buffers.items()}, workspace, handle=handle)
        if fp8_out:
            return (out.float() / scale_o).to(torch.bfloat16)
        return out

    @_cudnn_fp8_attention.register_fake
    def _(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(query, dtype=torch.bfloat16)

    return namespace.cudnn_fp8_attention


def cudnn_fp8_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """cuDNN fused attention with FP8 (e4m3) Q, K, V and per-tensor scales on [B, S, H, D] CUDA tensors; bf16 out.

    On Hopper cuDNN (9.19) writes the output in FP8 too (bf16 output is Blackwell-only), scaled back here."""
    return _cudnn_fp8_op()(query.contiguous(), key.contiguous(), value.contiguous())


def apply_rotary(x_bshd: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan RoPE on interleaved channel pairs (x[2i], x[2i+1]); freqs are [1, S, 1, D] float with each angle repeated
    twice. Computed in float32 and rounded back to x's dtype, as diffusers does."""
    x_even, x_odd = x_bshd.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 0::2]
    out_even = x_even * cos - x_odd * sin
    out_odd = x_even * sin + x_odd * cos
    return torch.stack((out_even, out_odd), dim=-1).flatten(-2).to(x_bshd.dtype)


class WanSelfAttentionProcessor:
    """Self-attention of a Wan DiT block (q/k/v projections, RMS norm across heads, RoPE, attention, output
    projection) with the attention kernel passed in. Same math as diffusers' WanAttnProcessor for self-attention;
    written out here so that the kernel can be one diffusers' dispatcher does not offer (SageAttention 1)."""

    def __init__(self, attention_fn: AttentionFn) -> None:
        self.attention_fn = attention_fn

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("WanSelfAttentionProcessor handles self-attention without a mask only")
        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))  # [B, S, H*D] -> [B, S, H, D]
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = apply_rotary(query, *rotary_emb)
            key = apply_rotary(key, *rotary_emb)
        out_bshd = self.attention_fn(query, key, value)
        out = out_bshd.flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


def use_self_attention_fn(transformer: torch.nn.Module, attention_fn: AttentionFn) -> int:
    """Give the self-attention (`attn1`) of every DiT block a `WanSelfAttentionProcessor` with `attention_fn`;
    returns how many blocks were changed."""
    blocks = transformer.get_submodule("blocks")
    for block in blocks:
        block.attn1.set_processor(WanSelfAttentionProcessor(attention_fn))
    return len(blocks)


# --- inputs and warm-up -----------------------------------------------------------------------------------------------


def make_example_inputs(
    config: Any,
    height: int,
    width: int,
    num_frames: int = 77,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random transformer inputs shaped like one clip of `num_frames` video frames at `height` x `width` pixels.

    Latents: 1 reference frame + (num_frames - 1) / 4 + 1 video frames at 1/8 of the pixel size (Wan VAE strides
    4, 8, 8); text context 512 tokens, CLIP image context 257 tokens, face crops at the motion encoder's size.
    """
    if (num_frames - 1) % 4 != 0 or height % 16 != 0 or width % 16 != 0:
        raise ValueError(f"need num_frames = 4k+1 and sides divisible by 16, got {num_frames}, {height}x{width}")
    latent_frames = (num_frames - 1) // 4 + 1
    latent_h, latent_w = height // 8, width // 8
    face_size = config.motion_encoder_size
    latent_channels = config.latent_channels or (config.in_channels - 4) // 2
    image_dim = config.image_dim or config.text_dim
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    return {
        "hidden_states": randn(batch_size, config.in_channels, latent_frames + 1, latent_h, latent_w),
        "timestep": torch.full((batch_size,), 500, dtype=torch.long, device=device),
        "encoder_hidden_states": randn(batch_size, TEXT_CONTEXT_LEN, config.text_dim),
        "encoder_hidden_states_image": randn(batch_size, IMAGE_CONTEXT_LEN, image_dim),
        "pose_hidden_states": randn(batch_size, latent_channels, latent_frames, latent_h, latent_w),
        "face_pixel_values": randn(batch_size, 3, num_frames, face_size, face_size).clamp_(-1.0, 1.0),
    }


def run_forward(transformer: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """One transformer forward without autograd; returns the predicted latents [B, C, T, H, W]."""
    with torch.inference_mode():
        return transformer(**inputs, return_dict=False)[0]


def warmup(transformer: torch.nn.Module, example_inputs: dict[str, torch.Tensor]) -> float:
    """Run one forward so compilation and kernel selection happen now, not in the first denoising step.

    Use inputs of exactly the shapes of the coming run (compile specialises on them). Returns wall seconds.
    """
    start = time.perf_counter()
    run_forward(transformer, example_inputs)
    if next(transformer.parameters()).device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start
