"""What the smoke preset builds in the release's own layouts: the original Wan-Animate key names of a diffusers
transformer, and a random LightX2V distillation LoRA in the layout of the real file.

The smoke preset loads that random LoRA through the real loader (worker.load_runtime); tests and benchmarks use the same
helpers. Nothing here runs in a real generation.
"""

from __future__ import annotations

import re

import torch

# diffusers name fragment -> original Wan name fragment, for keys inside `blocks.N.`; the inverse of the renames
# in diffusers' `convert_wan_transformer_to_diffusers` (loaders/single_file_utils.py).
BLOCK_RENAMES: tuple[tuple[str, str], ...] = (
    (".scale_shift_table", ".modulation"),
    (".attn1.to_out.0.", ".self_attn.o."),
    (".attn1.to_q.", ".self_attn.q."),
    (".attn1.to_k.", ".self_attn.k."),
    (".attn1.to_v.", ".self_attn.v."),
    (".attn1.norm_q.", ".self_attn.norm_q."),
    (".attn1.norm_k.", ".self_attn.norm_k."),
    (".attn2.to_out.0.", ".cross_attn.o."),
    (".attn2.to_q.", ".cross_attn.q."),
    (".attn2.to_k.", ".cross_attn.k."),
    (".attn2.to_v.", ".cross_attn.v."),
    (".attn2.add_k_proj.", ".cross_attn.k_img."),
    (".attn2.add_v_proj.", ".cross_attn.v_img."),
    (".attn2.norm_q.", ".cross_attn.norm_q."),
    (".attn2.norm_k.", ".cross_attn.norm_k."),
    (".attn2.norm_added_k.", ".cross_attn.norm_k_img."),
    (".norm2.", ".norm3."),  # diffusers' norm2 is the original cross-attention norm3
    (".ffn.net.0.proj.", ".ffn.0."),
    (".ffn.net.2.", ".ffn.2."),
)

_TOP_RENAMES: dict[str, str] = {
    "scale_shift_table": "head.modulation",
    "proj_out.weight": "head.head.weight",
    "proj_out.bias": "head.head.bias",
    "condition_embedder.time_embedder.linear_1.": "time_embedding.0.",
    "condition_embedder.time_embedder.linear_2.": "time_embedding.2.",
    "condition_embedder.time_proj.": "time_projection.1.",
    "condition_embedder.text_embedder.linear_1.": "text_embedding.0.",
    "condition_embedder.text_embedder.linear_2.": "text_embedding.2.",
    "condition_embedder.image_embedder.norm1.": "img_emb.proj.0.",
    "condition_embedder.image_embedder.ff.net.0.proj.": "img_emb.proj.1.",
    "condition_embedder.image_embedder.ff.net.2.": "img_emb.proj.3.",
    "condition_embedder.image_embedder.norm2.": "img_emb.proj.4.",
    "motion_encoder.motion_synthesis_weight": "motion_encoder.dec.direction.weight",
    "motion_encoder.motion_network.": "motion_encoder.enc.fc.",
    "face_encoder.conv1_local.": "face_encoder.conv1_local.conv.",
    "face_encoder.conv2.": "face_encoder.conv2.conv.",
    "face_encoder.conv3.": "face_encoder.conv3.conv.",
}


def _motion_encoder_key(key: str, num_res_blocks: int) -> str | None:
    """Original name of a diffusers motion-encoder conv key (None when not one of them)."""
    if key == "motion_encoder.conv_in.weight":
        return "motion_encoder.enc.net_app.convs.0.0.weight"
    if key == "motion_encoder.conv_in.act_fn.bias":
        return "motion_encoder.enc.net_app.convs.0.1.bias"
    if key == "motion_encoder.conv_out.weight":
        return f"motion_encoder.enc.net_app.convs.{num_res_blocks + 1}.weight"
    match = re.fullmatch(r"motion_encoder\.res_blocks\.(\d+)\.(.+)", key)
    if match is None:
        return None
    conv = int(match.group(1)) + 1
    rest = {
        "conv1.weight": "conv1.0.weight",
        "conv1.act_fn.bias": "conv1.1.bias",
        "conv2.weight": "conv2.1.weight",
        "conv2.act_fn.bias": "conv2.2.bias",
        "conv_skip.weight": "skip.1.weight",
    }[match.group(2)]
    return f"motion_encoder.enc.net_app.convs.{conv}.{rest}"


def to_original_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers WanAnimateTransformer3DModel state dict in the original Wan-Animate key layout.

    The inverse of diffusers' converter: renames, face-adapter to_k/to_v fused back into linear1_kv, motion-encoder
    activation biases reshaped to the original (1, C, 1, 1). Used for the smoke preset's random distillation LoRA and to write test checkpoints like the release's.
    """
    num_res_blocks = len({k.split(".")[2] for k in state_dict if k.startswith("motion_encoder.res_blocks.")})
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("blocks."):
            new = key
            for diffusers_name, original_name in BLOCK_RENAMES:
                new = new.replace(diffusers_name, original_name)
            out[new] = value
            continue
        match = re.fullmatch(r"face_adapter\.(\d+)\.(.+)", key)
        if match is not None:
            index, rest = match.groups()
            prefix = f"face_adapter.fuser_blocks.{index}."
            if rest.startswith("to_k."):
                kind = rest[len("to_k.") :]
                value_part = state_dict[f"face_adapter.{index}.to_v.{kind}"]
                out[prefix + "linear1_kv." + kind] = torch.cat([value, value_part], dim=0)
            elif rest.startswith("to_v."):
                continue  # fused with to_k above
            else:
                rest = rest.replace("to_q.", "linear1_q.").replace("to_out.", "linear2.")
                rest = rest.replace("norm_q.", "q_norm.").replace("norm_k.", "k_norm.")
                out[prefix + rest] = value
            continue
        motion_key = _motion_encoder_key(key, num_res_blocks)
        if motion_key is not None:
            out[motion_key] = value[None, :, None, None] if motion_key.endswith(".bias") else value
            continue
        new = key
        for diffusers_prefix, original_prefix in _TOP_RENAMES.items():
            if key.startswith(diffusers_prefix):
                new = original_prefix + key[len(diffusers_prefix) :]
                break
        out[new] = value
    return out


# Parts of the Wan-Animate model that Wan 2.1 I2V 14B lacks (so a LoRA trained on that model has no keys for them).
ANIMATE_ONLY_PREFIXES = ("pose_patch_embedding.", "motion_encoder.", "face_encoder.", "face_adapter.")
# The one 2-D weight of the 14B model under LightX2V's 1M-parameter threshold (64 x 5120): stored as a whole difference.
LIGHTX2V_WHOLE_2D = ("head.head.weight",)


def lightx2v_lora_shapes(
    transformer: torch.nn.Module, rank: int = 64, modulation: bool = False
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the LoRA LightX2V's extractor (tools/extract/lora_extractor.py) writes for the Wan 2.1 I2V part
    of `transformer`, in the layout of wan2.1_i2v_lora_rank64_lightx2v_4step.safetensors.

    Decided per key as for the 14B model whatever `transformer`'s size: a 2-D weight becomes `lora_down` (rank, in) +
    `lora_up` (out, rank), except the output head; every other weight / bias becomes a whole `.diff` / `.diff_b`.
    `modulation`: also `.diff_m` for the modulation tables (in older LightX2V files, not in this one). Works on a meta
    model: only names and shapes are read.
    """
    meta = {
        key.replace(".base_layer.", "."): torch.empty(value.shape, device="meta")
        for key, value in transformer.state_dict().items()
        if ".lora_" not in key
    }
    shapes: dict[str, tuple[int, ...]] = {}
    for name, value in to_original_layout(meta).items():
        if name.startswith(ANIMATE_ONLY_PREFIXES):
            continue
        key = "diffusion_model." + name
        if name.endswith(".weight") and value.ndim == 2 and name not in LIGHTX2V_WHOLE_2D:
            base = key.removesuffix(".weight")
            shapes[f"{base}.lora_down.weight"] = (rank, value.shape[1])
            shapes[f"{base}.lora_up.weight"] = (value.shape[0], rank)
        elif name.endswith(".weight"):
            shapes[key.removesuffix(".weight") + ".diff"] = tuple(value.shape)
        elif name.endswith(".bias"):
            shapes[key.removesuffix(".bias") + ".diff_b"] = tuple(value.shape)
        elif name.endswith("modulation"):
            if modulation:
                shapes[key.removesuffix("modulation") + "diff_m"] = tuple(value.shape)
        else:
            raise ValueError(f"no LightX2V key for {name}")
    return shapes


def lightx2v_lora_tensors(
    transformer: torch.nn.Module,
    rank: int = 4,
    seed: int = 0,
    scale: float = 0.05,
    modulation: bool = False,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Random tensors in the layout of lightx2v_lora_shapes (bf16 like the release), keys sorted."""
    generator = torch.Generator(device=device).manual_seed(seed)
    shapes = lightx2v_lora_shapes(transformer, rank, modulation)
    return {
        key: (torch.randn(shapes[key], generator=generator, device=device) * scale).to(dtype) for key in sorted(shapes)
    }
