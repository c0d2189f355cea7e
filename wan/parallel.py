"""Sequence (context) parallel generation across the GPUs of one host, through diffusers' context parallelism.

Started with torchrun, one process per GPU. Every process ("rank") holds the whole model, runs the same
preprocessing, encoders, sampler and VAE on the same inputs, and inside each transformer forward the token
sequence is split across the ranks:

- the patch embedding (+ pose embedding) runs on every rank for the whole clip, then the tokens entering block 0
  are split into equal contiguous shards along the sequence, and so are the RoPE tables (diffusers' split hooks);
- self-attention exchanges what it needs through diffusers' attention dispatcher: "ulysses" swaps the sequence
  split for a head split with all-to-alls around the attention kernel (the heads must divide by the rank count);
  "ring" all-gathers K/V and attends chunk by chunk, merging with the log-sum-exp (needs a kernel that returns it:
  cuDNN or flash, not plain SDPA; no CPU kernel does);
- text and CLIP cross-attention keep the local queries and the full (small) K/V: no communication;
- the 8 face adapters attend per latent frame, and a shard generally ends inside a frame (720p, 77 frames: 21
  frames of 3600 tokens, 37,800 tokens per rank on 2 GPUs = 10.5 frames), so they get `ShardedFaceAttnProcessor`,
  which maps each local token to its frame's motion tokens from the shard's offset: no communication either;
- the output projection's result is all-gathered, so every rank holds the whole prediction and steps the sampler.

diffusers 0.42.1 has no plan for WanAnimateTransformer3DModel (`animate_cp_plan` is ours) and splits only
sequences that the rank count divides (`EquipartitionSharder` asserts it; its "anything" variants gather sizes
with a host sync inside every attention, which fullgraph compile refuses), so a clip whose token count the rank
count does not divide is centre-cropped by a few 16-pixel rows or columns first (`parallel_frame_size`).
The VAE is not split (diffusers has no parallel plan for AutoencoderKLWan): every rank decodes each clip, because
every rank needs the clip's last frames to condition the next clip. The torchrun job itself (ranks, devices, the
process group) is wan/distributed.py.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from ..preprocess.conditioning import Conditioning

ContextParallelMode = Literal["ulysses", "ring"]
CONTEXT_PARALLEL_MODES: tuple[str, ...] = ("ulysses", "ring")

# Pixels per token side: VAE stride 8 x patch size 2.
PIXELS_PER_TOKEN = 16
# Attention backends of diffusers' dispatcher that return the log-sum-exp, which ring attention merges with.
RING_BACKENDS = ("_native_cudnn", "_native_flash", "flash", "flash_hub", "_flash_3_hub")


# --- the plan ----------------------------------------------------------------------------------------------------------


def animate_cp_plan() -> dict[str, Any]:
    """diffusers' context-parallel plan for WanAnimateTransformer3DModel (module name -> what to split/gather).

    - `rope`: its two outputs (cos, sin), [1, S, 1, D], split along S like the tokens;
    - `blocks.0`: the input tokens [B, S, C] split along S (after patch + pose embedding, before block 0);
    - `proj_out`: its output [B, S_local, C_out] all-gathered along S, so unpatchify sees the whole clip.
    Text/image context is not split (cross-attention keeps the full K/V; 257 + 512 tokens divide by nothing useful)
    and neither is the motion context of the face adapters (`ShardedFaceAttnProcessor` reads its frames).
    """
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    return {
        "rope": {
            0: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True),
            1: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True),
        },
        "blocks.0": {"hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)},
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


# --- the face adapters under a sequence split ------------------------------------------------------------------------


def frames_of_shard(shard_start: int, shard_len: int, tokens_per_frame: int) -> tuple[int, int, int, int]:
    """The latent frames a shard of tokens [shard_start, shard_start + shard_len) touches, and the padding that
    makes it whole frames: (first_frame, num_frames, pad_front, pad_back)."""
    first = shard_start // tokens_per_frame
    last = (shard_start + shard_len - 1) // tokens_per_frame
    pad_front = shard_start - first * tokens_per_frame
    pad_back = (last + 1) * tokens_per_frame - (shard_start + shard_len)
    return first, last - first + 1, pad_front, pad_back


class ShardedFaceAttnProcessor:
    """Face-adapter cross-attention (`WanAnimateFaceBlockCrossAttention`) on one shard of the token sequence.

    Each token attends to the motion tokens of its own latent frame. diffusers' processor finds the frame by
    reshaping the whole sequence [B, S, ...] into [B, T, S / T, ...], which needs all S tokens. Here the shard
    [shard_index * S_local, (shard_index + 1) * S_local) is padded with zero queries to whole frames, reshaped to
    [B * n, S / T, ...] for the n frames it touches, attended against those frames' motion tokens, and sliced
    back. The padding is at most two partial frames and is discarded; with one shard this is the plain per-frame
    attention. The math otherwise follows diffusers' `WanAnimateFaceBlockAttnProcessor` (pre-norms, q/k/v, RMS
    norms over the head dim, attention, output projection).
    """

    _attention_backend = None  # set by ModelMixin.set_attention_backend like diffusers' processors
    _parallel_config = None  # kept None: the face attention itself needs no communication

    def __init__(self, shard_index: int = 0, num_shards: int = 1) -> None:
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"shard_index {shard_index} out of range for {num_shards} shards")
        self.shard_index = shard_index
        self.num_shards = num_shards

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,  # [B, S_local, C]: this rank's tokens
        encoder_hidden_states: torch.Tensor,  # [B, T, N, C]: N motion tokens for each of the T latent frames
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        if attention_mask is not None:
            raise ValueError("ShardedFaceAttnProcessor takes no attention mask (the model passes none)")
        if getattr(attn, "fused_projections", False):
            raise ValueError("ShardedFaceAttnProcessor needs unfused q/k/v projections")
        batch, frames, motion_tokens, _ = encoder_hidden_states.shape
        shard_len = hidden_states.shape[1]
        total = shard_len * self.num_shards
        if total % frames:
            raise ValueError(f"{total} tokens do not split into {frames} latent frames")
        tokens_per_frame = total // frames
        first, num_frames, pad_front, pad_back = frames_of_shard(
            self.shard_index * shard_len, shard_len, tokens_per_frame
        )

        hidden_states = attn.pre_norm_q(hidden_states)
        motion = attn.pre_norm_kv(encoder_hidden_states)[:, first : first + num_frames]  # [B, n, N, C]
        query_bshd = attn.norm_q(attn.to_q(hidden_states).unflatten(2, (attn.heads, -1)))  # [B, S_local, H, D]
        motion_flat = motion.flatten(1, 2)  # [B, n * N, C]
        key = attn.norm_k(attn.to_k(motion_flat).unflatten(2, (attn.heads, -1)))  # [B, n * N, H, D]
        value = attn.to_v(motion_flat).unflatten(2, (attn.heads, -1))

        query_frames = F.pad(query_bshd, (0, 0, 0, 0, pad_front, pad_back))  # [B, n * S/T, H, D]
        query_frames = query_frames.unflatten(1, (num_frames, tokens_per_frame)).flatten(0, 1)  # [B * n, S/T, H, D]
        key = key.unflatten(1, (num_frames, motion_tokens)).flatten(0, 1)  # [B * n, N, H, D]
        value = value.unflatten(1, (num_frames, motion_tokens)).flatten(0, 1)
        out = dispatch_attention_fn(query_frames, key, value, backend=self._attention_backend, parallel_config=None)
        out = out.flatten(2, 3).type_as(query_bshd)  # [B * n, S/T, H * D]
        out = out.unflatten(0, (batch, num_frames)).flatten(1, 2)[:, pad_front : pad_front + shard_len]
        return attn.to_out(out)  # [B, S_local, C]


def use_sharded_face_adapters(transformer: torch.nn.Module, shard_index: int, num_shards: int) -> int:
    """Give every face adapter a `ShardedFaceAttnProcessor` for this shard (keeping its attention backend);
    returns how many."""
    adapters = transformer.get_submodule("face_adapter")
    for adapter in adapters:
        processor = ShardedFaceAttnProcessor(shard_index, num_shards)
        processor._attention_backend = getattr(adapter.processor, "_attention_backend", None)
        adapter.set_processor(processor)
    return len(adapters)


# --- switching it on -------------------------------------------------------------------------------------------------


def context_parallel_config(mode: ContextParallelMode, world_size: int, num_heads: int) -> Any:
    """diffusers' ContextParallelConfig putting all `world_size` ranks on `mode` (ulysses or ring)."""
    from diffusers import ContextParallelConfig

    if mode not in CONTEXT_PARALLEL_MODES:
        raise ValueError(f"context parallel mode must be one of {CONTEXT_PARALLEL_MODES}, not {mode!r}")
    if world_size < 2:
        raise ValueError("context parallelism needs at least 2 processes")
    if mode == "ulysses":
        if num_heads % world_size:
            raise ValueError(
                f"ulysses splits the {num_heads} attention heads across ranks; {world_size} does not divide them. "
                f"Use mode 'ring' or a GPU count that divides {num_heads}."
            )
        return ContextParallelConfig(ulysses_degree=world_size)
    return ContextParallelConfig(ring_degree=world_size)


def _self_attention_backend(transformer: torch.nn.Module) -> str:
    """The dispatcher backend the DiT self-attention runs on (diffusers' active default when none was set)."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    backend = getattr(transformer.blocks[0].attn1.processor, "_attention_backend", None)
    if backend is None:
        backend, _ = _AttentionBackendRegistry.get_active_backend()
    return str(getattr(backend, "value", backend))


def check_context_parallel_support(transformer: torch.nn.Module, mode: ContextParallelMode) -> None:
    """Refuse the combinations context parallelism cannot run, with the reason.

    The project's own self-attention kernels (FlashAttention-4, FlashAttention-3, cuDNN FP8: `use_self_attention_fn`) bypass
    diffusers' dispatcher, so nothing would exchange tokens across ranks; group offload streams blocks through hooks
    that the split hooks would have to interleave with (not supported); ring needs a kernel returning the LSE.
    """
    from diffusers.models.transformers.transformer_wan_animate import WanAttnProcessor

    for index, block in enumerate(transformer.blocks):
        if type(block.attn1.processor) is not WanAttnProcessor:
            raise ValueError(
                f"block {index} self-attention uses {type(block.attn1.processor).__name__}; context parallelism "
                "needs diffusers' WanAttnProcessor (the project's own kernels: attention 'fp8' and the one-GPU "
                "FlashAttention-4, do not split across GPUs)"
            )
    if getattr(transformer, "_parallel_config", None) is not None:
        raise ValueError("context parallelism is already enabled on this transformer")
    from .offload import transformer_is_offloaded

    if transformer_is_offloaded(transformer):
        raise ValueError("context parallelism does not combine with group offload (offload_model)")
    backend = _self_attention_backend(transformer)
    if mode == "ring" and backend not in RING_BACKENDS:
        raise ValueError(
            f"ring attention needs a kernel that returns the log-sum-exp ({RING_BACKENDS}); the model uses "
            f"{backend!r} (plain SDPA, and every CPU kernel, does not). Use mode 'ulysses'."
        )


def _apply_parallel_config(transformer: torch.nn.Module, config: Any, device: torch.device) -> Any:
    """What `ModelMixin.enable_parallelism` does for context parallelism, for hosts without an accelerator.

    diffusers 0.42.1 derives the device as `rank % torch.accelerator.device_count()`, a division by zero on a
    CPU-only host, so for CPU runs (tests, the smoke preset under torchrun on gloo) the same steps are taken here
    with the device given: build the (ring, ulysses) mesh, record the config on the model and on every attention
    processor that takes one, register the split/gather hooks of the plan.
    """
    import torch.distributed as dist
    from diffusers.hooks.context_parallel import apply_context_parallel
    from diffusers.models._modeling_parallel import ParallelConfig
    from diffusers.models.attention import AttentionModuleMixin

    mesh = dist.device_mesh.init_device_mesh(
        device.type, mesh_shape=config.mesh_shape, mesh_dim_names=config.mesh_dim_names
    )
    parallel = ParallelConfig(context_parallel_config=config)
    parallel.setup(dist.get_rank(), dist.get_world_size(), device, mesh=mesh)
    transformer._parallel_config = parallel
    for module in transformer.modules():
        if isinstance(module, AttentionModuleMixin) and hasattr(module.processor, "_parallel_config"):
            module.processor._parallel_config = parallel
    apply_context_parallel(transformer, config, animate_cp_plan())
    return parallel


def enable_context_parallel(transformer: torch.nn.Module, mode: ContextParallelMode = "ulysses") -> Any:
    """Split every forward of `transformer` across the ranks of the (already initialised) process group.

    Call on every rank, after the weights, LoRAs and attention backend are in place and before `compile_blocks`
    (the hooks and the face processors are then traced into the compiled blocks). Returns diffusers' ParallelConfig.
    Inputs must stay identical on all ranks; the output is the whole prediction on every rank.
    """
    import torch.distributed as dist

    if not dist.is_initialized():
        raise RuntimeError("context parallelism needs torch.distributed initialised (start with torchrun)")
    check_context_parallel_support(transformer, mode)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    config = context_parallel_config(mode, world_size, transformer.config.num_attention_heads)
    device = next(transformer.parameters()).device
    if device.type == "cpu":
        parallel = _apply_parallel_config(transformer, config, device)
    else:
        transformer.enable_parallelism(config=config, cp_plan=animate_cp_plan())
        parallel = transformer._parallel_config
    # The mesh is (ring, ulysses) over all ranks in order, so the flattened shard index is the global rank.
    use_sharded_face_adapters(transformer, rank, world_size)
    return parallel


def disable_context_parallel(transformer: torch.nn.Module) -> None:
    """Undo `enable_context_parallel`: remove the split/gather hooks, clear the config from the model and its
    processors, give the face adapters diffusers' processor back (keeping their backend). Compiled blocks must be
    compiled again afterwards (for benchmarks that time several modes on one model)."""
    from diffusers.hooks.context_parallel import remove_context_parallel
    from diffusers.models.attention import AttentionModuleMixin
    from diffusers.models.transformers.transformer_wan_animate import WanAnimateFaceBlockAttnProcessor

    remove_context_parallel(transformer, animate_cp_plan())
    transformer._parallel_config = None
    for module in transformer.modules():
        if isinstance(module, AttentionModuleMixin) and hasattr(module.processor, "_parallel_config"):
            module.processor._parallel_config = None
    for adapter in transformer.get_submodule("face_adapter"):
        processor = WanAnimateFaceBlockAttnProcessor()
        processor._attention_backend = getattr(adapter.processor, "_attention_backend", None)
        adapter.set_processor(processor)


# --- clip sizes the ranks can split --------------------------------------------------------------------------------


def clip_tokens(num_frames: int, height: int, width: int) -> int:
    """Tokens of one clip: (1 reference + (num_frames - 1) / 4 + 1) latent frames x (H / 16) x (W / 16)."""
    latent_frames = (num_frames - 1) // 4 + 2
    return latent_frames * (height // PIXELS_PER_TOKEN) * (width // PIXELS_PER_TOKEN)


def parallel_frame_size(height: int, width: int, clip_len: int, world_size: int) -> tuple[int, int]:
    """The largest (height, width) <= the given one, in steps of 16 pixels, whose clip of `clip_len` frames has a
    token count `world_size` divides (diffusers splits only equal shards). Unchanged when it already divides, as
    for 1280x720 and 832x480 on 2, 4 or 8 GPUs; otherwise at most world_size - 1 rows or columns of 16 pixels
    go, the choice losing the least area (then the least change of shape)."""
    rows, cols = height // PIXELS_PER_TOKEN, width // PIXELS_PER_TOKEN
    latent_frames = (clip_len - 1) // 4 + 2
    best: tuple[int, int, int, int] | None = None  # (area lost, aspect change, rows, cols)
    for drop_rows in range(min(world_size, rows)):
        for drop_cols in range(min(world_size, cols)):
            r, c = rows - drop_rows, cols - drop_cols
            if (latent_frames * r * c) % world_size:
                continue
            candidate = (rows * cols - r * c, abs(drop_rows - drop_cols), r, c)
            if best is None or candidate < best:
                best = candidate
    if best is None:
        raise ValueError(f"no frame size near {width}x{height} splits across {world_size} ranks")
    return best[2] * PIXELS_PER_TOKEN, best[3] * PIXELS_PER_TOKEN


def center_crop_conditioning(cond: Conditioning, height: int, width: int) -> Conditioning:
    """`cond` with its pose, reference, background and mask frames centre-cropped to height x width (face crops
    are kept: they are 512x512 whatever the frame size)."""
    if (height, width) == (cond.height, cond.width):
        return cond
    if height > cond.height or width > cond.width:
        raise ValueError(f"cannot crop {cond.width}x{cond.height} to a larger {width}x{height}")
    top, left = (cond.height - height) // 2, (cond.width - width) // 2

    def crop(frames: Any, row_axis: int) -> Any:  # rows at `row_axis`, columns right after
        if frames is None:
            return None
        if hasattr(frames, "cropped"):  # a SkeletonVideo or FrameStore: cut when read, nothing read now
            return frames.cropped(top, left, height, width)
        index = [slice(None)] * frames.ndim
        index[row_axis] = slice(top, top + height)
        index[row_axis + 1] = slice(left, left + width)
        return frames[tuple(index)].copy()

    return dataclasses.replace(
        cond,
        pose_frames=crop(cond.pose_frames, 1),  # [T, H, W, 3]
        reference=crop(cond.reference, 0),  # [H, W, 3]
        background_frames=crop(cond.background_frames, 1),  # [T, H, W, 3]
        mask_frames=crop(cond.mask_frames, 1),  # [T, H, W]
    )
