"""Encode side: prompts, CLIP (official squash vs diffusers' crop), I2V masks and per-clip guide latents."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_conditioning import tiny_conditioning
from wan_animate.wan import build_tiny_models
from wan_animate.wan.conditioning import (
    clean_prompt,
    clip_condition,
    clip_embedding,
    encode_prompt,
    i2v_mask,
    pixels_from_uint8,
    reference_condition,
    vae_encode,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def models():
    return build_tiny_models()


@pytest.fixture(scope="module")
def pipeline(models):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanAnimatePipeline

    return WanAnimatePipeline(
        tokenizer=models.tokenizer,
        text_encoder=models.text_encoder,
        vae=models.vae,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        image_processor=models.image_processor,
        image_encoder=models.image_encoder,
        transformer=models.transformer,
    )


def test_clean_prompt_like_the_official_tokenizer() -> None:
    assert clean_prompt("  dance \n\t monkey &amp;amp; ") == "dance monkey &"
    assert clean_prompt("视频中的人在做动作") == "视频中的人在做动作"


def test_prompt_states_are_trimmed_to_the_tokens_and_zero_padded(models) -> None:
    out = encode_prompt(models, "dance  monkey", CPU)
    assert out.shape == (1, 512, 32)
    tokens = models.tokenizer(["dance monkey"], padding="max_length", max_length=512, return_tensors="pt")
    raw = models.text_encoder(tokens.input_ids, tokens.attention_mask).last_hidden_state
    assert torch.equal(out[:, :3], raw[:, :3])  # dance, monkey, </s>
    assert torch.count_nonzero(out[:, 3:]) == 0
    assert torch.count_nonzero(raw[:, 3:]) > 0  # the encoder's pad positions are not zero: trimming matters


def test_prompt_states_equal_the_pipelines(models, pipeline) -> None:
    ours = encode_prompt(models, "the person moves", CPU)
    theirs = pipeline._get_t5_prompt_embeds("the person moves", max_sequence_length=512, device=CPU)
    assert torch.equal(ours, theirs)


def test_clip_embedding_equals_the_pipelines_at_the_encoders_own_size(models, pipeline) -> None:
    """A 32x32 reference (the tiny encoder's size) needs no resize: same normalisation, same penultimate layer."""
    reference = tiny_conditioning(1, height=32, width=32, seed=4).reference
    ours = clip_embedding(models, reference, CPU)
    theirs = pipeline.encode_image(Image.fromarray(reference), CPU)
    assert ours.shape == (1, 17, 4)  # CLS + 4x4 patches
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_clip_sees_the_whole_letterboxed_reference_unlike_the_pipelines_crop(models, pipeline) -> None:
    """Deliberate difference: official squashes the reference to a square; diffusers centre-crops (drops the sides)."""
    reference = tiny_conditioning(1, height=32, width=64, seed=5).reference
    changed = reference.copy()
    changed[:, :8] = 255 - changed[:, :8]  # only the left eighth: outside diffusers' 32x32 centre crop
    theirs_a = pipeline.encode_image(Image.fromarray(reference), CPU)
    theirs_b = pipeline.encode_image(Image.fromarray(changed), CPU)
    torch.testing.assert_close(theirs_a, theirs_b, rtol=0, atol=1e-6)
    ours_a = clip_embedding(models, reference, CPU)
    ours_b = clip_embedding(models, changed, CPU)
    assert (ours_a - ours_b).abs().max() > 1e-3


def test_pixels_from_uint8() -> None:
    levels = np.arange(256, dtype=np.uint8)
    frames = np.stack([levels.reshape(16, 16)] * 3, axis=-1)[None]  # (1, 16, 16, 3)
    pixels = pixels_from_uint8(frames, CPU)
    assert pixels.shape == (1, 3, 1, 16, 16)
    official = (levels / 127.5 - 1).astype(np.float32)  # float64 numpy, as the official code, then float32
    assert np.array_equal(pixels[0, 1, 0].flatten().numpy(), official)


def test_i2v_mask_layout() -> None:
    """Pixel frame 0 fills all 4 channels of latent frame 0; pixel frame k >= 1 -> latent (k - 1) // 4 + 1."""
    assert torch.count_nonzero(i2v_mask(3, 2, 2, 0)) == 0
    one = i2v_mask(3, 2, 2, 1)
    assert one.shape == (1, 4, 3, 2, 2)
    assert torch.all(one[:, :, 0] == 1) and torch.count_nonzero(one[:, :, 1:]) == 0
    five = i2v_mask(3, 2, 2, 5)  # pixel frames 0..4: latent frames 0 and 1
    assert torch.all(five[:, :, :2] == 1) and torch.count_nonzero(five[:, :, 2:]) == 0
    pixel = torch.zeros(1, 9, 2, 2)
    pixel[0, 6] = 1  # pixel frame 6 -> latent frame 2, channel 1
    spread = i2v_mask(3, 2, 2, 0, pixel)
    assert torch.nonzero(spread[0, :, :, 0, 0]).tolist() == [[1, 2]]


def test_reference_condition(models) -> None:
    reference = tiny_conditioning(1, seed=6).reference
    y = reference_condition(models, reference, CPU)
    assert y.shape == (1, 20, 1, 8, 8)
    assert torch.all(y[:, :4] == 1)
    torch.testing.assert_close(y[:, 4:], vae_encode(models, pixels_from_uint8(reference[None], CPU)))


def test_vae_latents_are_normalised_means(models) -> None:
    video = pixels_from_uint8(tiny_conditioning(5, seed=7).pose_frames, CPU)
    mean = torch.tensor(models.vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(models.vae.config.latents_std).view(1, 16, 1, 1, 1)
    mu = models.vae.encode(video).latent_dist.mode()
    torch.testing.assert_close(vae_encode(models, video), (mu - mean) / std)


def test_animation_guide_is_grey_then_carried_frames(models) -> None:
    """First clip: all mid-grey (0), mask 0. Later clips: carried frames then grey, mask 1 on the carried frames."""
    first = clip_condition(models, 9, 64, 64, CPU)
    assert first.shape == (1, 20, 3, 8, 8)
    assert torch.count_nonzero(first[:, :4]) == 0
    torch.testing.assert_close(first[:, 4:], vae_encode(models, torch.zeros(1, 3, 9, 64, 64)))

    carried = pixels_from_uint8(tiny_conditioning(5, seed=8).pose_frames, CPU)[0].transpose(0, 1)  # (5, 3, H, W)
    later = clip_condition(models, 9, 64, 64, CPU, carried=carried)
    guide = torch.zeros(1, 3, 9, 64, 64)
    guide[:, :, :5] = carried.transpose(0, 1)
    torch.testing.assert_close(later[:, 4:], vae_encode(models, guide))
    assert torch.all(later[:, :4, :2] == 1) and torch.count_nonzero(later[:, :4, 2:]) == 0


def test_first_clip_guide_is_encoded_once_per_shape_and_bit_identical() -> None:
    """The mid-grey first-clip guide is the same input every request: the VAE encodes it once per shape, and the
    cached condition equals a fresh encode bit for bit. Carried frames and replacement guides are never cached."""
    models = build_tiny_models()
    calls = []
    encode = models.vae.encode

    def counting_encode(video):
        calls.append(tuple(video.shape))
        return encode(video)

    models.vae.encode = counting_encode
    first = clip_condition(models, 9, 64, 64, CPU)
    again = clip_condition(models, 9, 64, 64, CPU)
    assert len(calls) == 1 and torch.equal(first, again)
    fresh = torch.cat([torch.zeros(1, 4, 3, 8, 8), vae_encode(build_tiny_models(), torch.zeros(1, 3, 9, 64, 64))], 1)
    assert torch.equal(again, fresh)
    clip_condition(models, 5, 64, 64, CPU)  # another clip length: its own entry
    clip_condition(models, 9, 64, 64, CPU, carried=torch.zeros(1, 3, 64, 64))
    cond = tiny_conditioning(9, mode="replacement", seed=9)
    clip_condition(models, 9, 64, 64, CPU, background=cond.background_frames, mask=cond.mask_frames)
    clip_condition(models, 9, 64, 64, CPU, background=cond.background_frames, mask=cond.mask_frames)
    assert len(calls) == 5 and len(models.blank_guide_cache) == 2


def test_worker_setup_fills_the_prompt_and_blank_guide_caches_and_runs_clip() -> None:
    from wan_animate.wan.generate import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT, warm_up_encoders

    models = build_tiny_models()
    clip_calls = []
    models.image_encoder.register_forward_hook(lambda module, args, out: clip_calls.append(out))
    warm_up_encoders(models, 64, 64, clip_len=9)
    assert len(clip_calls) == 1  # CLIP's kernels loaded at setup, not in the first request
    assert set(models.prompt_cache) == {DEFAULT_PROMPT, DEFAULT_NEGATIVE_PROMPT}
    torch.testing.assert_close(models.prompt_cache[DEFAULT_PROMPT], encode_prompt(models, DEFAULT_PROMPT, CPU),
                               rtol=0, atol=0)  # fmt: skip
    assert list(models.blank_guide_cache) == [(9, 64, 64, "cpu", torch.float32)]


def test_replacement_guide_is_background_and_inverted_mask(models) -> None:
    cond = tiny_conditioning(9, mode="replacement", seed=9)
    first = clip_condition(models, 9, 64, 64, CPU, background=cond.background_frames, mask=cond.mask_frames)
    torch.testing.assert_close(first[:, 4:], vae_encode(models, pixels_from_uint8(cond.background_frames, CPU)))
    # Mask channels: 1 where the scene is kept (outside the person box 16..48), 0 inside it, on every latent frame.
    mask = first[0, :4]
    assert torch.all(mask[:, :, 2:6, 2:6] == 0)
    assert torch.all(mask[:, :, :2] == 1) and torch.all(mask[:, :, 6:] == 1)

    carried = torch.zeros(1, 3, 64, 64)
    later = clip_condition(
        models, 9, 64, 64, CPU, carried=carried, background=cond.background_frames, mask=cond.mask_frames
    )
    assert torch.all(later[0, :4, 0] == 1)  # pixel frame 0 carried: the whole first latent frame is kept
    assert torch.all(later[0, :4, 1:, 2:6, 2:6] == 0)
    guide = pixels_from_uint8(cond.background_frames, CPU)
    guide[:, :, :1] = 0
    torch.testing.assert_close(later[:, 4:], vae_encode(models, guide))
