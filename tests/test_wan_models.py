"""Model loading from the release's formats (written here by the tests), fp32 islands, the tiny twin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from release_checkpoints import original_config, write_original_checkpoint
from wan_animate.wan.models import (
    ANIMATE_14B_DIFFUSERS_CONFIG,
    ModelPaths,
    build_tiny_models,
    diffusers_config_from_original,
    load_models,
    load_transformer,
    tiny_transformer_config,
)
from wan_animate.wan.smoke import to_original_layout


@pytest.fixture(scope="module")
def release_like_transformer() -> torch.nn.Module:
    """A tiny transformer with the release's motion-encoder layout (512 input, 7 residual blocks)."""
    from diffusers import WanAnimateTransformer3DModel

    torch.manual_seed(0)
    model = WanAnimateTransformer3DModel(**tiny_transformer_config(motion_encoder_size=512))
    # Non-trivial values everywhere (some modules start at zero), so a wrong mapping cannot go unnoticed.
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param))
    return model.eval()


def _write_diffusers_config(model: torch.nn.Module, path: Path) -> Path:
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    path.write_text(json.dumps(config))
    return path


def test_original_layout_has_the_release_key_names(release_like_transformer: torch.nn.Module) -> None:
    keys = set(to_original_layout(release_like_transformer.state_dict()))
    for key in [
        "blocks.0.self_attn.q.weight",
        "blocks.0.cross_attn.k_img.weight",
        "blocks.0.cross_attn.norm_k_img.weight",
        "blocks.1.norm3.weight",
        "blocks.1.modulation",
        "blocks.0.ffn.2.bias",
        "head.modulation",
        "head.head.weight",
        "img_emb.proj.4.bias",
        "time_projection.1.weight",
        "motion_encoder.enc.net_app.convs.0.1.bias",
        "motion_encoder.enc.net_app.convs.7.skip.1.weight",
        "motion_encoder.enc.net_app.convs.8.weight",
        "motion_encoder.enc.fc.4.bias",
        "motion_encoder.dec.direction.weight",
        "face_adapter.fuser_blocks.0.linear1_kv.weight",
        "face_adapter.fuser_blocks.0.k_norm.weight",
        "face_encoder.conv1_local.conv.weight",
    ]:
        assert key in keys, key
    assert not any(k.startswith(("condition_embedder", "proj_out", "attn1")) for k in keys)


def test_original_checkpoint_loads_back_equal(release_like_transformer: torch.nn.Module, tmp_path: Path) -> None:
    folder = write_original_checkpoint(release_like_transformer, tmp_path / "Wan2.2-Animate-14B", num_shards=3)
    assert len(list(folder.glob("diffusion_pytorch_model-*.safetensors"))) == 3
    config_path = _write_diffusers_config(release_like_transformer, tmp_path / "diffusers_config.json")
    loaded = load_transformer(folder, dtype=torch.float32, config_path=config_path)
    expected = release_like_transformer.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_bf16_load_keeps_diffusers_fp32_modules(release_like_transformer: torch.nn.Module, tmp_path: Path) -> None:
    """from_single_file casts everything; the loader restores float32 where diffusers' from_pretrained keeps it."""
    from diffusers import WanAnimateTransformer3DModel

    folder = write_original_checkpoint(release_like_transformer.to(torch.bfloat16), tmp_path / "orig", num_shards=1)
    release_like_transformer.to(torch.float32)
    config_path = _write_diffusers_config(release_like_transformer, tmp_path / "config.json")
    ours = load_transformer(folder, dtype=torch.bfloat16, config_path=config_path)

    release_like_transformer.save_pretrained(tmp_path / "diffusers")
    reference = WanAnimateTransformer3DModel.from_pretrained(tmp_path / "diffusers", torch_dtype=torch.bfloat16)
    ours_dtypes = {k: v.dtype for k, v in ours.state_dict().items()}
    reference_dtypes = {k: v.dtype for k, v in reference.state_dict().items()}
    assert ours_dtypes == reference_dtypes
    assert ours_dtypes["blocks.0.scale_shift_table"] == torch.float32
    assert ours_dtypes["condition_embedder.time_embedder.linear_1.weight"] == torch.float32
    assert ours_dtypes["blocks.0.attn1.to_q.weight"] == torch.bfloat16
    for key, value in reference.state_dict().items():  # same values: fp32 islands hold bf16-exact numbers
        assert torch.equal(ours.state_dict()[key], value), key


def test_diffusers_folder_loads_through_from_pretrained(tmp_path: Path) -> None:
    from diffusers import WanAnimateTransformer3DModel

    torch.manual_seed(1)
    model = WanAnimateTransformer3DModel(**tiny_transformer_config())
    model.save_pretrained(tmp_path / "transformer")
    loaded = load_transformer(tmp_path / "transformer", dtype=torch.float32)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_missing_weights_are_an_error(release_like_transformer: torch.nn.Module, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = write_original_checkpoint(release_like_transformer, tmp_path / "orig", num_shards=1)
    shard = next(folder.glob("*.safetensors"))
    state = load_file(str(shard))
    del state["blocks.1.ffn.0.weight"]
    save_file(state, str(shard))
    config_path = _write_diffusers_config(release_like_transformer, tmp_path / "config.json")
    with pytest.raises(RuntimeError, match="lacks"):
        load_transformer(folder, dtype=torch.float32, config_path=config_path)


def test_14b_config_is_rebuilt_from_the_release_config() -> None:
    """The release's config.json (WanAnimateModel fields) maps back to the diffusers 14B config."""
    release_config = original_config(ANIMATE_14B_DIFFUSERS_CONFIG)
    assert release_config["dim"] == 5120 and release_config["num_heads"] == 40
    rebuilt = diffusers_config_from_original(release_config)
    assert rebuilt == ANIMATE_14B_DIFFUSERS_CONFIG


def test_load_models_from_local_files(tmp_path: Path) -> None:
    """The full loader on a Diffusers-like snapshot + an original-layout transformer + relighting LoRA, on CPU."""
    from release_checkpoints import write_relighting_checkpoint
    from wan_animate.wan.lora import RELIGHTING_ADAPTER

    tiny = build_tiny_models(seed=3, motion_encoder_size=512)  # the release layout (diffusers maps convs.8 only)
    root = tmp_path / "Wan2.2-Animate-14B-Diffusers"
    tiny.vae.save_pretrained(root / "vae")
    tiny.text_encoder.save_pretrained(root / "text_encoder")
    tiny.tokenizer.save_pretrained(root / "tokenizer")
    tiny.image_encoder.save_pretrained(root / "image_encoder")
    tiny.image_processor.save_pretrained(root / "image_processor")
    transformer_dir = write_original_checkpoint(tiny.transformer, tmp_path / "Wan2.2-Animate-14B")
    lora_path = write_relighting_checkpoint(tiny.transformer, transformer_dir / "relighting_lora.ckpt")
    paths = ModelPaths(
        transformer=transformer_dir,
        diffusers_dir=root,
        relighting_lora=lora_path,
        transformer_config=_write_diffusers_config(tiny.transformer, tmp_path / "config.json"),
    )
    models = load_models(paths, device="cpu", dtype=torch.float32)
    assert models.relighting_adapter == RELIGHTING_ADAPTER
    assert models.offload == "none" and models.device == torch.device("cpu")
    for name in ("vae", "text_encoder", "image_encoder"):
        for key, value in getattr(tiny, name).state_dict().items():
            assert torch.equal(getattr(models, name).state_dict()[key], value), (name, key)
    base = {k.replace(".base_layer", ""): v for k, v in models.transformer.state_dict().items() if "lora_" not in k}
    assert set(base) == set(tiny.transformer.state_dict())
    for key, value in tiny.transformer.state_dict().items():
        assert torch.equal(base[key], value), key
    ids = models.tokenizer(["dance monkey"]).input_ids
    assert ids == tiny.tokenizer(["dance monkey"]).input_ids
    assert next(models.vae.parameters()).dtype == torch.float32  # official
    bf16_vae = load_models(paths, device="cpu", dtype=torch.float32, vae_dtype=torch.bfloat16).vae  # the opt-in
    assert {p.dtype for p in bf16_vae.parameters()} == {torch.bfloat16}


def test_load_models_names_missing_subfolders(tmp_path: Path) -> None:
    (tmp_path / "vae").mkdir()
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        load_models(ModelPaths(transformer=tmp_path, diffusers_dir=tmp_path), device="cpu")


def test_tiny_models_use_the_real_classes() -> None:
    from diffusers import AutoencoderKLWan, WanAnimateTransformer3DModel
    from transformers import CLIPVisionModel, UMT5EncoderModel

    models = build_tiny_models()
    assert isinstance(models.transformer, WanAnimateTransformer3DModel)
    assert isinstance(models.vae, AutoencoderKLWan)
    assert isinstance(models.text_encoder, UMT5EncoderModel)
    assert isinstance(models.image_encoder, CLIPVisionModel)
    assert models.transformer.config.image_dim == models.image_encoder.config.hidden_size
    assert models.transformer.config.text_dim == models.text_encoder.config.d_model
    # Tokenizer built offline: T5-style pad 0 and an appended </s>.
    tokens = models.tokenizer(["dance monkey"], padding="max_length", max_length=6, return_tensors="pt")
    assert tokens.input_ids.tolist() == [[3, 4, 1, 0, 0, 0]]
    assert tokens.attention_mask.tolist() == [[1, 1, 1, 0, 0, 0]]
    # Same seed, same weights.
    again = build_tiny_models()
    for key, value in models.transformer.state_dict().items():
        assert torch.equal(again.transformer.state_dict()[key], value)
