"""Speed options for the Wan-Animate transformer forward: attention backend, regional compile, FP8, 8-bit attention.

`apply_speed_options` changes a `WanAnimateTransformer3DModel` in place (and returns it). The default options are a
fast path that changes no math beyond bf16 rounding: cuDNN attention through diffusers' attention dispatcher and
`torch.compile` of the repeated blocks; the app adds FlashAttention-4 for the blocks' self-attention where
`attention_kernels.default_uses_flash4` says it runs (Hopper/Blackwell, one process). FP8 linears (torchao) and FP8
attention (FlashAttention-3's FP8 forward) are opt-in because they change the numbers. The attention kernels
themselves live in wan/attention_kernels.py; this module picks them, and holds FP8 linears, compile and the compile
budget. Measured numbers: BENCHMARKS.md (`benchmarks/bench_forward.py`).

Step caching is a per-request option of the sampler loop, in wan/step_cache.py. diffusers' own FirstBlockCache /
MagCache are not used: diffusers does not register this model's block class, and once registered the cache gives
wrong outputs on this model, because the 8 face adapters run between blocks outside the cached `blocks` list, so a
skipped step adds their outputs a second time on top of a cached residual that already contains them
(tests/test_wan_speed.py shows it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from . import attention_kernels
from .attention_kernels import AttentionFn

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from diffusers import WanAnimateTransformer3DModel

# Attention backend of the default fast path, by measurement on an H100 with torch 2.11 (BENCHMARKS.md): cuDNN's
# fused attention runs the model's self-attention at ~575 TFLOP/s, PyTorch's FlashAttention-2 at ~350.
# "_native_cudnn" forces cuDNN whatever kernel a torch build would pick. torch 2.11's own
# SDPA choice ("native", attention_backend=None) is the same cuDNN kernel (bit-identical output) and was 4% faster
# eager at 480p, because diffusers' "_native_cudnn" copies q/k/v to contiguous memory; not yet timed compiled.
DEFAULT_ATTENTION_BACKEND = "_native_cudnn"

# SpeedOptions fields that replace the DiT blocks' self-attention kernel (wan/speed.py's own processor); at most one.
SELF_ATTENTION_KERNELS = ("flash4_attention", "fa3_attention", "fp8_attention", "cudnn_fp8_attention")

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
    compile_dynamic: compile the blocks for any frame size at once (dynamic shapes) instead of once per size; for
        benchmarks: it would spare a request whose frame size no warm-up compiled (a portrait reference in animation
        mode) its compile, at an unmeasured cost per step.
    fp8_linears: opt-in; torchao float8 dynamic activation + float8 weight, per-row scales, on every Linear of the
        40 DiT blocks (needs a CUDA GPU of compute capability >= 8.9 and torchao).
    fp8_granularity: "row" (the default: one scale per weight row and per activation token) or "tensor" (one scale
        per tensor: cuBLAS's FP8 GEMM instead of the rowwise CUTLASS one; coarser, for benchmarks).
    flash4_attention: FlashAttention-4's bf16 kernel (PyPI `flash-attn-4`, CuTe DSL, compiled on first use) for the
        self-attention of the 40 DiT blocks, on Hopper and Blackwell GPUs. Exact attention like cuDNN's, so it
        changes no math beyond bf16 rounding.
    fa3_attention: FlashAttention-3's bf16 forward (PyPI `fa3-fwd`, Hopper only) for the blocks' self-attention:
        exact attention, the comparison against FlashAttention-4 (BENCHMARKS.md).
    fp8_attention: opt-in; FlashAttention-3's FP8 e4m3 forward (PyPI `fa3-fwd`, Hopper only) for the blocks'
        self-attention, Q/K/V quantised with exact-for-softmax scalings (wan/attention_kernels.py) inside the
        compiled block. Changes the numbers (5.5e-2 relative per attention call on N(0,1) inputs, 720p).
    cudnn_fp8_attention: cuDNN's fused FP8 attention (per-tensor scales, PyPI `nvidia-cudnn-frontend`, not in
        requirements.txt): the earlier FP8 kernel, for benchmarks. The self-attention kernels are exclusive.
    context_parallel: None (one process), or "ulysses" / "ring" to split every forward's token sequence across the
        ranks of the torchrun job (wan/parallel.py). Applied after the attention backend and before compilation;
        exclusive with the SELF_ATTENTION_KERNELS options (their kernels bypass diffusers' dispatcher).
    """

    attention_backend: str | None = DEFAULT_ATTENTION_BACKEND
    compile_blocks: bool = True
    compile_backend: str = "inductor"
    compile_mode: str | None = None
    compile_dynamic: bool = False
    fp8_linears: bool = False
    fp8_granularity: str = "row"
    flash4_attention: bool = False
    fa3_attention: bool = False
    fp8_attention: bool = False
    cudnn_fp8_attention: bool = False
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
        quantize_block_linears_fp8(transformer, options.fp8_granularity)
    if options.attention_backend is not None and on_cuda:
        set_model_attention_backend(transformer, options.attention_backend)
    # The kernels' custom ops are registered here, eagerly: registering one inside a compiled trace fails (dynamo
    # refuses to trace torch.library's schema inference).
    if options.flash4_attention:
        attention_kernels.flash4_op()
        use_self_attention_fn(transformer, attention_kernels.flash4_attention)
    if options.fa3_attention:
        attention_kernels.fa3_op()
        use_self_attention_fn(transformer, attention_kernels.fa3_attention)
    if options.fp8_attention:
        attention_kernels.fa3_fp8_op()
        use_self_attention_fn(transformer, attention_kernels.fa3_fp8_attention)
    if options.cudnn_fp8_attention:
        from .cudnn_fp8 import cudnn_fp8_attention, cudnn_fp8_op

        cudnn_fp8_op()
        use_self_attention_fn(transformer, cudnn_fp8_attention)
    if options.context_parallel is not None:
        from .parallel import enable_context_parallel

        enable_context_parallel(transformer, options.context_parallel)
    if options.compile_blocks:
        compile_blocks(transformer, backend=options.compile_backend, mode=options.compile_mode,
                       dynamic=options.compile_dynamic)  # fmt: skip
    return transformer


def set_model_attention_backend(transformer: torch.nn.Module, backend: str) -> None:
    """Give every attention processor of this model `backend`, leaving diffusers' process-wide default as it was.

    diffusers' `set_attention_backend` also makes the backend the active one for every model in the process, so a
    CPU model built later would dispatch to a CUDA-only kernel; the processors' own setting is what this model uses.
    """
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    previous, _ = _AttentionBackendRegistry.get_active_backend()
    transformer.set_attention_backend(backend)
    _AttentionBackendRegistry.set_active_backend(previous)


def compile_blocks(transformer: torch.nn.Module, backend: str = "inductor", mode: str | None = None,
                   dynamic: bool = False) -> int:  # fmt: skip
    """`torch.compile` every DiT block and face adapter in place (fullgraph); returns how many.

    Static shapes by default: each new resolution compiles once more instead of falling back to dynamic-shape kernels
    (`dynamic=True`: one graph for every size). Like diffusers' `compile_repeated_blocks`, plus the face adapters.
    """
    count = 0
    for module in transformer.modules():
        if type(module).__name__ in COMPILED_BLOCK_CLASSES:
            module.compile(fullgraph=True, dynamic=dynamic, backend=backend, mode=mode)
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


def quantize_block_linears_fp8(transformer: torch.nn.Module, granularity: str = "row") -> None:
    """Swap the DiT blocks' Linear weights for torchao float8 (e4m3) with per-row scales (`granularity` "tensor":
    one scale per tensor); activations are quantized the same way on the fly. Leaves inductor's global settings
    alone (`set_inductor_config=False`)."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_

    scales = {"row": PerRow, "tensor": PerTensor}
    if granularity not in scales:
        raise ValueError(f"fp8 granularity must be one of {sorted(scales)}, got {granularity!r}")
    config = Float8DynamicActivationFloat8WeightConfig(granularity=scales[granularity](), set_inductor_config=False)
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
    written out here so that the kernel can be one diffusers' dispatcher does not offer (wan/attention_kernels.py)."""

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
