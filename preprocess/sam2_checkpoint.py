"""SAM2 weights: the original checkpoint's Hiera configs and its key names converted to transformers' Sam2VideoModel.

The official code builds `sam2_hiera_l.yaml` (SAM 2.0, not 2.1) and loads `sam2/sam2_hiera_large.pt` (UserGuider.md;
requirements_animate.txt pins facebookresearch/sam2@0e78a11); the release ships that file as
`process_checkpoint/sam2/sam2_hiera_large.pt` in Wan-AI/Wan2.2-Animate-14B.
- transformers' own converter (convert_sam2_video_to_hf.py in the transformers repository, not shipped in the
  wheel, so not importable) supports "sam2_hiera_large": SAM 2.0 = Sam2VideoConfig with
  `enable_temporal_pos_encoding_for_object_pointers=False` and `enable_occlusion_spatial_embedding=False` (the only
  two differences between sam2_hiera_l.yaml and sam2.1_hiera_l.yaml), hiera-large backbone (embed 144, stages
  2/6/36/4, global blocks 23/33/43, windows 8/4/16/8, background 7x7).
- The release's .pt is converted in memory by `convert_original_sam2` (our key mapping, written from the
  converter's renaming rules, checked against the 900 keys and shapes of the real sam2_hiera_large state dict:
  tests/data/).
`tiny_sam2_config` is the small SAM 2.0-style config of the smoke preset and the CPU tests.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# SAM2 backbones (from the sam2 package's yaml configs): embed dim, blocks per stage, global-attention
# blocks, window sizes per stage, background size of the windowed position embedding.
_HIERA: dict[str, dict[str, Any]] = {
    "hiera_tiny": dict(dim=96, heads=1, stages=[1, 2, 7, 2], glob=[5, 7, 9], windows=[8, 4, 14, 7], bkg=[7, 7]),
    "hiera_small": dict(dim=96, heads=1, stages=[1, 2, 11, 2], glob=[7, 10, 13], windows=[8, 4, 14, 7], bkg=[7, 7]),
    "hiera_base_plus": dict(
        dim=112, heads=2, stages=[2, 3, 16, 3], glob=[12, 16, 20], windows=[8, 4, 14, 7], bkg=[14, 14]
    ),
    "hiera_large": dict(dim=144, heads=2, stages=[2, 6, 36, 4], glob=[23, 33, 43], windows=[8, 4, 16, 8], bkg=[7, 7]),
}


def sam2_config(variant: str = "hiera_large", sam2_1: bool = False) -> Any:
    """Sam2VideoConfig of an original SAM2 checkpoint (SAM 2.0 unless `sam2_1`)."""
    from transformers import Sam2HieraDetConfig, Sam2VideoConfig, Sam2VisionConfig

    spec = _HIERA[variant]
    dims = [spec["dim"] * 2**i for i in range(4)]
    backbone = Sam2HieraDetConfig(
        hidden_size=spec["dim"],
        embed_dim_per_stage=dims,
        num_attention_heads_per_stage=[spec["heads"] * 2**i for i in range(4)],
        blocks_per_stage=spec["stages"],
        global_attention_blocks=spec["glob"],
        window_size_per_stage=spec["windows"],
        window_positional_embedding_background_size=spec["bkg"],
    )
    return Sam2VideoConfig(
        vision_config=Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=dims[::-1]),
        enable_temporal_pos_encoding_for_object_pointers=sam2_1,
        enable_occlusion_spatial_embedding=sam2_1,
    )


def detect_sam2_variant(state_dict: dict[str, Any]) -> tuple[str, bool]:
    """(variant, is_sam2_1) of an original SAM2 state dict, from its backbone width and block count."""
    dim = int(state_dict["image_encoder.trunk.patch_embed.proj.weight"].shape[0])
    blocks = 1 + max(int(k.split(".")[3]) for k in state_dict if k.startswith("image_encoder.trunk.blocks."))
    sam2_1 = "no_obj_embed_spatial" in state_dict
    for name, spec in _HIERA.items():
        if spec["dim"] == dim and sum(spec["stages"]) == blocks:
            return name, sam2_1
    raise ValueError(f"not a known SAM2 checkpoint (backbone width {dim}, {blocks} blocks)")


# Original -> transformers names. Whole-key renames first, then substring renames applied in order.
_EXACT_RENAMES = {
    "maskmem_tpos_enc": "memory_temporal_positional_encoding",
    "no_mem_embed": "no_memory_embedding",
    "no_mem_pos_enc": "no_memory_positional_encoding",
    "no_obj_ptr": "no_object_pointer",
    "no_obj_embed_spatial": "occlusion_spatial_embedding_parameter",  # SAM 2.1 only
}
_PREFIX_RENAMES = (
    ("image_encoder.trunk.", "vision_encoder.backbone."),
    ("image_encoder.neck.", "vision_encoder.neck."),
    ("sam_mask_decoder.", "mask_decoder."),
    ("sam_prompt_encoder.", "prompt_encoder."),
    ("obj_ptr_proj.", "object_pointer_proj."),
    ("obj_ptr_tpos_proj.", "temporal_positional_encoding_projection_layer."),  # SAM 2.1 only
    ("memory_encoder.fuser.", "memory_encoder.memory_fuser."),
)
_PART_RENAMES = (
    (".patch_embed.proj.", ".patch_embed.projection."),
    (".output_upscaling.0.", ".upscale_conv1."),
    (".output_upscaling.1.", ".upscale_layer_norm."),
    (".output_upscaling.3.", ".upscale_conv2."),
    (".mask_downscaling.0.", ".mask_embed.conv1."),
    (".mask_downscaling.1.", ".mask_embed.layer_norm1."),
    (".mask_downscaling.3.", ".mask_embed.conv2."),
    (".mask_downscaling.4.", ".mask_embed.layer_norm2."),
    (".mask_downscaling.6.", ".mask_embed.conv3."),
    (".pe_layer.positional_encoding_gaussian_matrix", ".shared_embedding.positional_embedding"),
    (".dwconv.", ".depthwise_conv."),
    (".pwconv1.", ".pointwise_conv1."),
    (".pwconv2.", ".pointwise_conv2."),
    (".gamma", ".scale"),
    ("memory_encoder.out_proj.", "memory_encoder.projection."),
    ("memory_encoder.pix_feat_proj.", "memory_encoder.feature_projection."),
    (".out_proj.", ".o_proj."),
    (".norm_final_attn.", ".layer_norm_final_attn."),
)
# MLPs: the original nn.ModuleList `layers.i` becomes proj_in / layers.j / proj_out.
_THREE_LAYER_MLPS = ("iou_prediction_head", "output_hypernetworks_mlps", "pred_obj_score_head", "object_pointer_proj")


def _rename_mlp(key: str) -> str:
    parts = key.split(".")
    if "layers" not in parts:
        return key
    at = len(parts) - 1 - parts[::-1].index("layers")  # the last "layers" holds the MLP's linear index
    if at + 1 >= len(parts) or not parts[at + 1].isdigit() or parts[at - 1] == "mask_downsampler":
        return key
    index = int(parts[at + 1])
    owner = ".".join(parts[:at])
    if any(re.search(rf"(^|\.){name}(\.\d+)?$", owner) for name in _THREE_LAYER_MLPS):
        names = {0: ["proj_in"], 1: ["layers", "0"], 2: ["proj_out"]}[index]
    elif owner.endswith(".mlp"):  # two-layer MLPs: Hiera blocks and the mask decoder's transformer
        names = {0: ["proj_in"], 1: ["proj_out"]}[index]
    else:
        return key  # e.g. memory_attention.layers.N / transformer.layers.N are module lists, not MLPs
    return ".".join(parts[:at] + names + parts[at + 2 :])


def _rename_norms(key: str) -> str:
    """normK -> layer_normK, and a bare `.norm.` -> `.layer_norm.` (memory attention, fuser, Hiera blocks)."""
    key = re.sub(r"\.norm(\d)\.", r".layer_norm\1.", key)
    return re.sub(r"\.norm\.", ".layer_norm.", key)


def _rename_mask_downsampler(key: str) -> str:
    """memory_encoder.mask_downsampler.encoder.{3i, 3i+1, 12} -> layers.i.conv / layers.i.layer_norm / final_conv."""
    marker = "memory_encoder.mask_downsampler.encoder."
    if not key.startswith(marker):
        return key
    index, rest = key[len(marker) :].split(".", 1)
    number = int(index)
    if number == 12:
        part = "final_conv"
    elif number % 3 == 0:
        part = f"layers.{number // 3}.conv"
    elif number % 3 == 1:
        part = f"layers.{number // 3}.layer_norm"
    else:
        raise ValueError(f"unexpected mask downsampler key {key}")
    return f"memory_encoder.mask_downsampler.{part}.{rest}"


def original_to_hf_key(key: str) -> str:
    """One original SAM2 parameter name -> its name in transformers' Sam2VideoModel."""
    if key in _EXACT_RENAMES:
        return _EXACT_RENAMES[key]
    for old, new in _PREFIX_RENAMES:
        if key.startswith(old):
            key = new + key[len(old) :]
            break
    key = _rename_mask_downsampler(key)
    for old, new in _PART_RENAMES:
        key = key.replace(old, new)
    key = re.sub(r"^(vision_encoder\.neck\.convs\.\d+)\.conv\.", r"\1.", key)  # FPN convs lose a level
    key = _rename_norms(key)
    return _rename_mlp(key)


def convert_original_sam2(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Original SAM2 `model` state dict -> transformers Sam2VideoModel state dict (same tensors)."""
    import torch

    out: dict[str, Any] = {}
    point_embeddings: dict[int, Any] = {}
    for key, value in state_dict.items():
        prefix = "sam_prompt_encoder.point_embeddings."
        if key.startswith(prefix):  # four (1, C) embeddings -> one (4, C) table
            point_embeddings[int(key[len(prefix) :].split(".")[0])] = value
            continue
        out[original_to_hf_key(key)] = value
    if point_embeddings:
        out["prompt_encoder.point_embed.weight"] = torch.cat([point_embeddings[i] for i in sorted(point_embeddings)])
    # transformers keeps a second copy of the random Fourier matrix for the image-wide position encoding
    shared = "prompt_encoder.shared_embedding.positional_embedding"
    if shared in out:
        out["shared_image_embedding.positional_embedding"] = out[shared]
    return out


def model_from_original(checkpoint: Path) -> Any:
    """Sam2VideoModel with the weights of an original SAM2 .pt checkpoint (strict: every key must match)."""
    import torch
    from transformers import Sam2VideoModel

    raw = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    state = raw.get("model", raw)
    variant, sam2_1 = detect_sam2_variant(state)
    model = Sam2VideoModel(sam2_config(variant, sam2_1))
    converted = convert_original_sam2(state)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(converted)), sorted(set(converted) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{checkpoint} does not match SAM2 {variant}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.load_state_dict(converted, strict=True)
    return model


def tiny_sam2_config(image_size: int = 128) -> Any:
    """A small SAM 2.0-style Sam2VideoConfig (about 1.3M parameters) for CPU tests and the smoke preset.

    Constraints of transformers' implementation: the memory channels are fixed at 64 and the hidden size
    must be a larger multiple of them (object pointers are split into 64-wide tokens), and a global-
    attention block must not be the first block of a stage.
    """
    from transformers import (
        Sam2HieraDetConfig,
        Sam2VideoConfig,
        Sam2VideoMaskDecoderConfig,
        Sam2VideoPromptEncoderConfig,
        Sam2VisionConfig,
    )

    hidden, size = 128, image_size
    backbone = Sam2HieraDetConfig(
        hidden_size=16,
        embed_dim_per_stage=[16, 32, 64, 128],
        num_attention_heads_per_stage=[1, 1, 2, 2],
        blocks_per_stage=[1, 1, 2, 1],
        global_attention_blocks=[3],
        window_size_per_stage=[4, 4, 4, 4],
        window_positional_embedding_background_size=[2, 2],
        image_size=[size, size],
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[128, 64, 32, 16],
        fpn_hidden_size=hidden,
        backbone_feature_sizes=[[size // 4, size // 4], [size // 8, size // 8], [size // 16, size // 16]],
    )
    return Sam2VideoConfig(
        vision_config=vision,
        image_size=size,
        prompt_encoder_config=Sam2VideoPromptEncoderConfig(hidden_size=hidden, image_size=size, mask_input_channels=4),
        mask_decoder_config=Sam2VideoMaskDecoderConfig(
            hidden_size=hidden, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=hidden
        ),
        memory_attention_hidden_size=hidden,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[size // 16, size // 16],
        memory_encoder_hidden_size=hidden,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=hidden,
        memory_fuser_embed_dim=hidden,
        memory_fuser_intermediate_dim=64,
        enable_temporal_pos_encoding_for_object_pointers=False,
        enable_occlusion_spatial_embedding=False,
    )
