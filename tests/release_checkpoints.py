"""Tiny checkpoints written in the release's own file formats, for tests and benchmarks: the transformer as
sharded original-layout safetensors + index + config.json, the relighting .ckpt, a community-layout user LoRA,
and the LightX2V distillation LoRA file."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from wan_animate.wan.smoke import BLOCK_RENAMES, lightx2v_lora_tensors, to_original_layout


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


def lora_target_names(transformer: torch.nn.Module) -> list[str]:
    """Original names of the linears the relighting LoRA adapts: every nn.Linear in blocks.* except face modules.

    The official get_loraconfig picks modules whose name contains "blocks" and not "face"/"modulation"; in the
    original model those are blocks.N.self_attn.{q,k,v,o}, cross_attn.{q,k,v,o,k_img,v_img} and ffn.{0,2}.
    """
    names = []
    for name, _ in block_linears(transformer):
        original = "." + name + "."
        for diffusers_name, original_name in BLOCK_RENAMES:
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


def write_lightx2v_lora(transformer: torch.nn.Module, path: Path, **kwargs: object) -> Path:
    """A .safetensors file like wan2.1_i2v_lora_rank64_lightx2v_4step.safetensors for `transformer` (random values)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(lightx2v_lora_tensors(transformer, **kwargs), str(path))  # type: ignore[arg-type]
    return path
