"""Relighting LoRA (replacement only, unmerged) and user LoRAs, through diffusers' Wan LoRA loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from release_checkpoints import (
    block_linears,
    lora_target_names,
    lora_tensors,
    write_relighting_checkpoint,
    write_user_lora,
)
from tiny_conditioning import tiny_conditioning
from wan_animate.wan import GenerationOptions, build_tiny_models, generate_clips
from wan_animate.wan.lora import (
    RELIGHTING_ADAPTER,
    load_lora,
    load_relighting_lora,
    original_peft_keys,
    request_adapters,
    set_active_adapters,
)

OPTIONS = dict(clip_len=9, refert_num=1, sampling_steps=2, seed=5, color_match=False)


def _video(models, mode: str, **extra) -> torch.Tensor:
    cond = tiny_conditioning(9, mode=mode, seed=2)
    return torch.cat(list(generate_clips(models, cond, GenerationOptions(mode=mode, **OPTIONS, **extra))))


def _lora_modules(transformer: torch.nn.Module, adapter: str) -> list[str]:
    return [name for name, module in transformer.named_modules() if adapter in getattr(module, "lora_A", {})]


@pytest.fixture(scope="module")
def relit(tmp_path_factory: pytest.TempPathFactory):
    """Tiny models with the relighting LoRA loaded from a checkpoint written like the release's."""
    models = build_tiny_models()
    path = write_relighting_checkpoint(models.transformer, tmp_path_factory.mktemp("lora") / "relighting_lora.ckpt")
    models.relighting_adapter = load_relighting_lora(models.transformer, path)
    return models, path


def test_relighting_lora_lands_on_every_block_linear_but_the_face_adapters(relit) -> None:
    models, path = relit
    adapted = _lora_modules(models.transformer, RELIGHTING_ADAPTER)
    assert len(adapted) == len(lora_target_names(models.transformer)) == 2 * 12  # 2 blocks x 12 linears
    assert all(name.startswith("blocks.") for name in adapted)
    assert not any("face" in name for name, m in models.transformer.named_modules() if hasattr(m, "lora_A"))
    state = torch.load(str(path), weights_only=True)["state_dict"]
    to_q = models.transformer.blocks[1].attn2.add_k_proj  # original blocks.1.cross_attn.k_img
    assert torch.equal(to_q.lora_A[RELIGHTING_ADAPTER].weight, state["blocks.1.cross_attn.k_img.lora_A.weight"])
    assert torch.equal(to_q.lora_B[RELIGHTING_ADAPTER].weight, state["blocks.1.cross_attn.k_img.lora_B.weight"])


def test_relighting_only_in_replacement_mode(relit) -> None:
    models, _ = relit
    plain = build_tiny_models()
    assert not torch.equal(_video(models, "replacement"), _video(plain, "replacement"))
    assert torch.equal(_video(models, "animation"), _video(plain, "animation"))
    assert not _lora_modules(plain.transformer, RELIGHTING_ADAPTER)


def test_relighting_is_unmerged_and_equals_the_merged_weights(relit) -> None:
    """At scale 1 the adapter acts as W + B A on each target linear (rank 4, alpha 4: PEFT scale 1); at 0, as W."""
    models, path = relit
    state = torch.load(str(path), weights_only=True)["state_dict"]
    merged = build_tiny_models()
    with torch.no_grad():
        linears = block_linears(merged.transformer)
        for (_, linear), original in zip(linears, lora_target_names(merged.transformer), strict=True):
            linear.weight += state[f"{original}.lora_B.weight"] @ state[f"{original}.lora_A.weight"]
    torch.testing.assert_close(_video(models, "replacement"), _video(merged, "replacement"), rtol=1e-5, atol=2e-5)
    # Base weights untouched (unmerged) and scale 0 gives the plain model.
    base = models.transformer.blocks[0].attn1.to_q.base_layer.weight
    assert torch.equal(base, build_tiny_models().transformer.blocks[0].attn1.to_q.weight)
    torch.manual_seed(0)
    inputs = (torch.randn(1, 36, 3, 8, 8), torch.tensor([500]), torch.randn(1, 512, 32), torch.randn(1, 5, 4))
    pose, face = torch.randn(1, 16, 2, 8, 8), torch.randn(1, 3, 5, 16, 16)

    def forward(transformer: torch.nn.Module) -> torch.Tensor:
        hidden, t, text, image = inputs
        return transformer(hidden, t, text, image, pose, face, return_dict=False)[0]

    with torch.no_grad():
        plain = forward(build_tiny_models().transformer)
        set_active_adapters(models.transformer, {RELIGHTING_ADAPTER: 0.0})
        try:
            assert torch.equal(forward(models.transformer), plain)
            set_active_adapters(models.transformer, {RELIGHTING_ADAPTER: 1.0})
            assert not torch.equal(forward(models.transformer), plain)
        finally:
            set_active_adapters(models.transformer, {})


def test_keys_without_the_prefix_would_be_skipped_by_diffusers() -> None:
    """Why the prefix is added: without `diffusion_model.` diffusers converts nothing and loads no layer."""
    models = build_tiny_models()
    raw = lora_tensors(models.transformer, rank=2, seed=0)
    models.transformer.load_lora_adapter(dict(raw), adapter_name="raw", prefix="transformer")
    assert not _lora_modules(models.transformer, "raw")
    # Our loader accepts every PEFT spelling and always lands the tensors.
    spelled = {f"base_model.model.{k.replace('.lora_A.', '.lora_A.default.')}": v for k, v in raw.items()}
    keys = original_peft_keys(spelled)
    assert all(k.startswith("diffusion_model.blocks.") and ".default." not in k for k in keys)
    load_lora(models.transformer, keys, "spelled")
    assert len(_lora_modules(models.transformer, "spelled")) == 24


def test_user_lora_scales_linearly_and_zero_is_a_no_op(tmp_path: Path) -> None:
    models = build_tiny_models()
    path = write_user_lora(models.transformer, tmp_path / "distill.safetensors", rank=2, alpha=1.0)
    plain = _video(models, "animation")
    assert torch.equal(_video(models, "animation", loras=[(path, 0.0)]), plain)
    assert not torch.equal(_video(models, "animation", loras=[(path, 1.0)]), plain)
    assert not getattr(models.transformer, "peft_config", {})  # removed after the request

    # Layer level: the adapted linear adds weight * (alpha / rank) * x A^T B^T.
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    down = tensors["diffusion_model.blocks.0.self_attn.q.lora_down.weight"]
    up = tensors["diffusion_model.blocks.0.self_attn.q.lora_up.weight"]
    x = torch.randn(3, down.shape[1], generator=torch.Generator().manual_seed(0))
    with request_adapters(models.transformer, None, False, [(path, 1.0)]) as active:
        layer = models.transformer.blocks[0].attn1.to_q
        base = layer.base_layer(x)
        for weight in (0.5, 1.0, -2.0):
            set_active_adapters(models.transformer, {name: weight for name in active})
            expected = base + weight * (1.0 / 2) * (x @ down.T @ up.T)
            torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_not_a_lora_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.weight": torch.zeros(2, 2)}, str(path))
    models = build_tiny_models()
    with pytest.raises(ValueError):
        load_lora(models.transformer, path, "bad")


def test_the_load_check_names_missing_and_different_tensors() -> None:
    """load_lora checks every tensor landed with its values (diffusers can skip keys with a mere warning)."""
    from wan_animate.wan.lora import _check_loaded

    models = build_tiny_models()
    raw = original_peft_keys(lora_tensors(models.transformer, rank=2, seed=0))
    state = load_lora(models.transformer, raw, "checked")
    _check_loaded(models.transformer, state, "checked")  # as loaded: passes
    key = next(iter(state))
    with pytest.raises(RuntimeError, match="0 tensors were not loaded .* 1 differ"):
        _check_loaded(models.transformer, {**state, key: state[key] + 1.0}, "checked")
    extra = {"transformer.blocks.0.attn1.to_q.lora_A.weight": state[key]}
    with pytest.raises(RuntimeError, match="1 tensors were not loaded"):
        _check_loaded(models.transformer, extra, "other_adapter")
