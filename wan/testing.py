"""Helpers for tests and the smoke preset: checkpoints written in the release's own formats, tiny inputs.

Nothing here runs in a real generation. It lives in the package (not in tests/) so the tests of every wan
module and the app's smoke path can share it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..preprocess.conditioning import Conditioning

# diffusers name fragment -> original Wan name fragment, for keys inside `blocks.N.`; the inverse of the renames
# in diffusers' `convert_wan_transformer_to_diffusers` (loaders/single_file_utils.py).
_BLOCK_RENAMES: tuple[tuple[str, str], ...] = (
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
    activation biases reshaped to the original (1, C, 1, 1). Used to write test checkpoints like the release's.
    """
    num_res_blocks = len({k.split(".")[2] for k in state_dict if k.startswith("motion_encoder.res_blocks.")})
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("blocks."):
            new = key
            for diffusers_name, original_name in _BLOCK_RENAMES:
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


def original_config(transformer_config: dict) -> dict:
    """The original release's config.json fields (WanAnimateModel) for a diffusers transformer config."""
    dim = transformer_config["num_attention_heads"] * transformer_config["attention_head_dim"]
    return {
        "_class_name": "WanAnimateModel",
        "patch_size": list(transformer_config["patch_size"]),
        "text_len": 512,
        "in_dim": transformer_config["in_channels"],
        "dim": dim,
        "ffn_dim": transformer_config["ffn_dim"],
        "freq_dim": transformer_config["freq_dim"],
        "text_dim": transformer_config["text_dim"],
        "out_dim": transformer_config["out_channels"],
        "num_heads": transformer_config["num_attention_heads"],
        "num_layers": transformer_config["num_layers"],
        "window_size": [-1, -1],
        "qk_norm": True,
        "cross_attn_norm": transformer_config["cross_attn_norm"],
        "eps": transformer_config["eps"],
        "motion_encoder_dim": transformer_config["motion_encoder_dim"],
    }


def write_original_checkpoint(transformer: torch.nn.Module, folder: Path, num_shards: int = 2) -> Path:
    """Write `transformer` like the release: config.json + sharded safetensors in the original layout + index."""
    import json

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in to_original_layout(transformer.state_dict()).items()}
    # The release also stores the motion encoder's blur kernels (buffers diffusers rebuilds and does not load).
    for name, buffer in transformer.named_buffers():
        match = re.fullmatch(r"motion_encoder\.res_blocks\.(\d+)\.(conv2|conv_skip)\.blur_kernel", name)
        if match is not None:
            part = "conv2" if match.group(2) == "conv2" else "skip"
            key = f"motion_encoder.enc.net_app.convs.{int(match.group(1)) + 1}.{part}.0.kernel"
            state[key] = buffer.detach().cpu().contiguous()
    keys = sorted(state)
    shards = [keys[i::num_shards] for i in range(num_shards)]
    weight_map = {}
    for i, shard_keys in enumerate(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
        save_file({k: state[k] for k in shard_keys}, str(folder / name))
        weight_map.update(dict.fromkeys(shard_keys, name))
    index = {
        "metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
        "weight_map": weight_map,
    }
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (folder / "config.json").write_text(json.dumps(original_config(dict(transformer.config)), indent=2))
    return folder


def tiny_conditioning(
    num_frames: int,
    height: int = 64,
    width: int = 64,
    mode: str = "animation",
    seed: int = 0,
    face_size: int = 512,
) -> Conditioning:
    """Random but smooth test inputs of the real contract's shapes (faces at 512 unless told)."""
    rng = np.random.default_rng(seed)

    def smooth_video(t: int, h: int, w: int) -> np.ndarray:
        base = rng.integers(0, 256, size=(1, h // 8 + 1, w // 8 + 1, 3)).astype(np.float32)
        drift = rng.normal(0, 8, size=(t, 1, 1, 3)).cumsum(axis=0).astype(np.float32)
        frames = np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)[:, :h, :w] + drift
        return np.clip(frames, 0, 255).astype(np.uint8)

    pose = smooth_video(num_frames, height, width)
    face = smooth_video(num_frames, face_size, face_size)
    reference = smooth_video(1, height, width)[0]
    background = mask = None
    if mode == "replacement":
        background = smooth_video(num_frames, height, width)
        mask = np.zeros((num_frames, height, width), dtype=np.uint8)
        mask[:, height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 1
        background[mask.astype(bool)] = 0
    return Conditioning(
        pose_frames=pose,
        face_frames=face,
        reference=reference,
        fps=30.0,
        background_frames=background,
        mask_frames=mask,
    )


def lora_target_names(transformer: torch.nn.Module) -> list[str]:
    """Original names of the linears the relighting LoRA adapts: every nn.Linear in blocks.* except face modules.

    The official get_loraconfig picks modules whose name contains "blocks" and not "face"/"modulation"; in the
    original model those are blocks.N.self_attn.{q,k,v,o}, cross_attn.{q,k,v,o,k_img,v_img} and ffn.{0,2}.
    """
    names = []
    for name, _ in block_linears(transformer):
        original = "." + name + "."
        for diffusers_name, original_name in _BLOCK_RENAMES:
            original = original.replace(diffusers_name, original_name)
        names.append(original.strip("."))
    return names


def block_linears(transformer: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    """(diffusers name, base nn.Linear) of every linear in blocks.*, also once PEFT has wrapped them."""
    out = []
    for name, module in transformer.named_modules():
        if not name.startswith("blocks."):
            continue
        parts = name.split(".")
        if "base_layer" in parts or any(p.startswith("lora_") for p in parts):
            continue
        base = getattr(module, "base_layer", module)
        if isinstance(base, torch.nn.Linear):
            out.append((name, base))
    return out


def lora_tensors(
    transformer: torch.nn.Module, rank: int, seed: int, down: str = "lora_A", up: str = "lora_B", scale: float = 0.1
) -> dict[str, torch.Tensor]:
    """Random LoRA tensors for every target linear, keyed by original names (`blocks.0.self_attn.q.lora_A.weight`)."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for (_, linear), original in zip(block_linears(transformer), lora_target_names(transformer), strict=True):
        out[f"{original}.{down}.weight"] = torch.randn(rank, linear.in_features, generator=generator) * scale
        out[f"{original}.{up}.weight"] = torch.randn(linear.out_features, rank, generator=generator) * scale
    return out


def write_relighting_checkpoint(transformer: torch.nn.Module, path: Path, rank: int = 4, seed: int = 0) -> Path:
    """A relighting_lora.ckpt like the release's: torch.save({"state_dict": PEFT keys without prefix})."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": lora_tensors(transformer, rank, seed)}, str(path))
    return path


def write_user_lora(transformer: torch.nn.Module, path: Path, rank: int = 2, alpha: float = 1.0, seed: int = 1) -> Path:
    """A user LoRA in the community original layout: diffusion_model.* lora_down/lora_up + alpha, safetensors."""
    from safetensors.torch import save_file

    tensors = lora_tensors(transformer, rank, seed, down="lora_down", up="lora_up")
    state = {f"diffusion_model.{k}": v.contiguous() for k, v in tensors.items()}
    for key in list(state):
        if key.endswith(".lora_down.weight"):
            state[key.replace(".lora_down.weight", ".alpha")] = torch.tensor(float(alpha))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


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


def write_lightx2v_lora(transformer: torch.nn.Module, path: Path, **kwargs: object) -> Path:
    """A .safetensors file like wan2.1_i2v_lora_rank64_lightx2v_4step.safetensors for `transformer` (random values)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(lightx2v_lora_tensors(transformer, **kwargs), str(path))  # type: ignore[arg-type]
    return path
