"""Offload placement: code paths on CPU (no GPU here), same frames either way, placement restored after a request."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from release_checkpoints import write_user_lora
from tiny_conditioning import tiny_conditioning
from wan_animate.wan import GenerationOptions, build_tiny_models, generate_clips
from wan_animate.wan.offload import offload_session, place_models, resolve_offload, transformer_is_offloaded

OPTIONS = dict(clip_len=9, refert_num=1, sampling_steps=2, seed=4, color_match=False)


def _devices(models) -> set[str]:
    modules = (models.transformer, models.text_encoder, models.image_encoder, models.vae)
    return {p.device.type for m in modules for p in m.parameters()}


def test_resolve_offload() -> None:
    cpu = torch.device("cpu")
    assert resolve_offload(False, cpu) == resolve_offload(None, cpu) == resolve_offload("none", cpu) == "none"
    assert resolve_offload(True, cpu) == resolve_offload("model", cpu) == "model"
    assert resolve_offload("auto", cpu) == "none"
    with pytest.raises(ValueError):
        resolve_offload("sequential", cpu)


def test_model_offload_gives_the_same_frames_and_restores_the_placement() -> None:
    models = build_tiny_models()
    cond = tiny_conditioning(9, face_size=16)
    plain = torch.cat(list(generate_clips(models, cond, GenerationOptions(**OPTIONS))))

    seen = []
    clips = generate_clips(models, cond, GenerationOptions(offload="model", **OPTIONS))
    first = next(clips)
    seen.append((models.offload, transformer_is_offloaded(models.transformer)))
    offloaded = torch.cat([first, *clips])
    assert seen == [("model", True)]  # during the request: text encoder, CLIP, VAE idle on CPU, blocks streamed
    torch.testing.assert_close(offloaded, plain, rtol=0, atol=1e-6)
    assert models.offload == "none" and not transformer_is_offloaded(models.transformer)
    assert _devices(models) == {"cpu"}


def test_worker_loaded_with_offload_stays_offloaded() -> None:
    models = build_tiny_models()
    place_models(models, "model")
    assert transformer_is_offloaded(models.transformer)
    with offload_session(models, "none") as effective:
        assert effective == "model"
    assert models.offload == "model" and transformer_is_offloaded(models.transformer)
    cond = tiny_conditioning(9, face_size=16)
    list(generate_clips(models, cond, GenerationOptions(**OPTIONS)))
    assert transformer_is_offloaded(models.transformer)
    place_models(models, "none")
    assert not transformer_is_offloaded(models.transformer)


def test_user_lora_under_group_offload(tmp_path: Path) -> None:
    """Adapters added to a group-offloaded transformer are re-registered with the hooks and removed afterwards."""
    models = build_tiny_models()
    lora = write_user_lora(models.transformer, tmp_path / "lora.safetensors")
    cond = tiny_conditioning(9, face_size=16)
    expected = torch.cat(list(generate_clips(models, cond, GenerationOptions(loras=[(lora, 1.0)], **OPTIONS))))
    place_models(models, "model")
    got = torch.cat(list(generate_clips(models, cond, GenerationOptions(loras=[(lora, 1.0)], **OPTIONS))))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert transformer_is_offloaded(models.transformer)
    assert not any("lora_" in name for name, _ in models.transformer.named_parameters())


@pytest.mark.gpu
def test_cuda_bf16_offload_matches_resident_run() -> None:
    """On a GPU: group offloading with a prefetch stream gives the resident run's frames, and the placement returns."""
    device = torch.device("cuda")
    models = build_tiny_models(device=device, dtype=torch.bfloat16)
    assert models.image_encoder.dtype == torch.float16  # official CLIP precision on the GPU
    cond = tiny_conditioning(15, face_size=16)
    resident = torch.cat(list(generate_clips(models, cond, GenerationOptions(**OPTIONS))))
    offloaded = torch.cat(list(generate_clips(models, cond, GenerationOptions(offload="model", **OPTIONS))))
    torch.testing.assert_close(offloaded, resident, rtol=0, atol=1e-2)
    assert models.offload == "none" and _devices(models) == {"cuda"}
    assert resident.shape == (15, 3, 64, 64) and torch.isfinite(resident).all()
