"""The segment loop against diffusers' WanAnimatePipeline (the oracle) on tiny components, and its own contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_conditioning import tiny_conditioning
from wan_animate.wan import Cancelled, GenerationOptions, build_tiny_models, generate, generate_clips
from wan_animate.wan.conditioning import clip_embedding, encode_prompt
from wan_animate.wan.generate import DEFAULT_NEGATIVE_PROMPT, DEFAULT_PROMPT, to_uint8
from wan_animate.wan.schedulers import make_scheduler

STEPS = 3


@pytest.fixture(scope="module")
def models():
    return build_tiny_models()


def _pipeline_video(models, cond, options: GenerationOptions, scheduler=None) -> torch.Tensor:
    """diffusers' WanAnimatePipeline on the same components and inputs; (T, 3, H, W) in [-1, 1]."""
    from diffusers import WanAnimatePipeline

    pipe = WanAnimatePipeline(
        tokenizer=models.tokenizer,
        text_encoder=models.text_encoder,
        vae=models.vae,
        scheduler=scheduler or make_scheduler(options.sample_solver, options.shift),
        image_processor=models.image_processor,
        image_encoder=models.image_encoder,
        transformer=models.transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    cpu = torch.device("cpu")
    prompt, n_prompt = options.resolved_prompts()
    # Same prompt embeddings and the same (official, squashed) CLIP embedding: differences tested on their own.
    image_embeds = clip_embedding(models, cond.reference, cpu)
    pipe.encode_image = lambda image, device=None: image_embeds
    extra = {}
    if options.mode == "replacement":
        extra = dict(
            background_video=[Image.fromarray(f) for f in cond.background_frames],
            mask_video=[Image.fromarray(f * 255) for f in cond.mask_frames],
        )
    out = pipe(
        image=Image.fromarray(cond.reference),
        pose_video=[Image.fromarray(f) for f in cond.pose_frames],
        face_video=[Image.fromarray(f) for f in cond.face_frames],
        prompt_embeds=encode_prompt(models, prompt, cpu),
        negative_prompt_embeds=encode_prompt(models, n_prompt, cpu) if options.guide_scale > 1 else None,
        height=cond.height,
        width=cond.width,
        segment_frame_length=options.clip_len,
        num_inference_steps=options.sampling_steps,
        mode="animate" if options.mode == "animation" else "replace",
        prev_segment_conditioning_frames=options.refert_num,
        guidance_scale=options.guide_scale,
        generator=torch.Generator().manual_seed(options.seed),
        output_type="pt",
        max_sequence_length=512,
        **extra,
    ).frames[0]
    return out * 2 - 1


def _levels_both_scalings_agree_on(cond):
    """Remap every 8-bit level into 0..63 and 192..255, where the pipeline's x / 255 * 2 - 1 and the official
    (x - 127.5) / 127.5 give the same float32 (they differ by an ulp elsewhere, and three clips with guidance can
    amplify an ulp in a random tiny model). The test below checks this agreement itself."""
    import dataclasses

    def remap(frames):
        return (
            None if frames is None else np.where(frames < 128, frames // 2, 192 + (frames - 128) // 2).astype(np.uint8)
        )

    return dataclasses.replace(
        cond,
        pose_frames=remap(cond.pose_frames),
        face_frames=remap(cond.face_frames),
        reference=remap(cond.reference),
        background_frames=remap(cond.background_frames),
    )


def models_video_processor():
    """The pixel preprocessing WanAnimatePipeline applies to pose/face/background videos."""
    from diffusers.video_processor import VideoProcessor

    return VideoProcessor(vae_scale_factor=8)


def _our_video(models, cond, options: GenerationOptions) -> torch.Tensor:
    return torch.cat(list(generate_clips(models, cond, options)))


@pytest.mark.parametrize(
    "mode,clip_len,refert,frames,guide,solver",
    [
        ("animation", 9, 1, 20, 1.0, "dpm++"),  # 3 clips, 1 carried frame
        ("animation", 13, 5, 22, 2.0, "dpm++"),  # 3 clips, 5 carried frames, guidance (blank face + negative)
        ("replacement", 9, 1, 20, 1.0, "unipc"),
        ("replacement", 13, 5, 22, 2.0, "dpm++"),
    ],
)
def test_frames_equal_the_diffusers_pipeline(models, mode, clip_len, refert, frames, guide, solver) -> None:
    """Same scheduler, prompt embeddings, CLIP embedding and seed: the streamed loop gives the pipeline's frames.

    Colour matching is off (the pipeline has none). Faces are given at the tiny motion encoder's size (16) so that
    neither side resizes them. Pixel levels are restricted to those both pixel scalings map to the same float32.
    """
    from wan_animate.wan.conditioning import pixels_from_uint8

    cond = _levels_both_scalings_agree_on(tiny_conditioning(frames, mode=mode, face_size=16, seed=frames))
    pipeline_pixels = models_video_processor().preprocess_video([Image.fromarray(f) for f in cond.pose_frames])
    assert torch.equal(pipeline_pixels, pixels_from_uint8(cond.pose_frames, torch.device("cpu")))
    options = GenerationOptions(
        mode=mode, clip_len=clip_len, refert_num=refert, sampling_steps=STEPS, guide_scale=guide, seed=7,
        sample_solver=solver, prompt="dance monkey", n_prompt="ugly static", color_match=False,
    )  # fmt: skip
    ours = _our_video(models, cond, options)
    assert ours.shape == (frames, 3, cond.height, cond.width)
    theirs = _pipeline_video(models, cond, options)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_official_schedule_differs_from_the_pipelines_default(models) -> None:
    """Deliberate difference: official dpm++ on its own sigma grid; the pipeline's default is UniPC on diffusers'."""
    from diffusers import UniPCMultistepScheduler

    cond = tiny_conditioning(9, face_size=16)
    options = GenerationOptions(clip_len=9, sampling_steps=STEPS, seed=1, color_match=False)
    stock = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    pipeline_default = _pipeline_video(models, cond, options, scheduler=stock)
    assert (ours := _our_video(models, cond, options)).shape == pipeline_default.shape
    assert (ours - pipeline_default).abs().max() > 1e-3


def test_stream_counts_and_carried_frames(models) -> None:
    """Exactly T frames in order; each later clip regenerates its carried frames (dropped) and adds new ones.

    clip_len 9 with refert_num 5 leaves 4 new frames per clip, fewer than the 5 carried: the official code and the
    pipeline then take the carried frames from the already-trimmed clip and crash; this loop carries the last 5 of
    the full decoded clip (the same frames whenever clip_len - refert_num >= refert_num).
    """
    cond = tiny_conditioning(23, face_size=16)
    for refert in (1, 5):
        options = GenerationOptions(clip_len=9, refert_num=refert, sampling_steps=2, seed=3)
        clips = list(generate(models, cond, options))
        step = 9 - refert
        padded = 23 + (-(23 - refert)) % step
        expected = [9] + [step] * ((padded - 9) // step)
        expected[-1] -= padded - 23
        assert [c.shape[0] for c in clips] == expected
        assert sum(c.shape[0] for c in clips) == 23
        assert all(c.dtype == np.uint8 and c.shape[1:] == (64, 64, 3) for c in clips)


def test_carried_frames_guide_the_next_clip(models, monkeypatch) -> None:
    """The second clip's guide video starts with the first clip's last decoded frames (mask 1 on them)."""
    import sys

    generate_module = sys.modules["wan_animate.wan.generate"]  # the package exports a function of the same name
    seen = []
    original = generate_module.clip_condition

    def spy(*args, **kwargs):
        seen.append(None if kwargs["carried"] is None else kwargs["carried"].clone())
        return original(*args, **kwargs)

    monkeypatch.setattr(generate_module, "clip_condition", spy)
    cond = tiny_conditioning(15, face_size=16)
    clips = list(
        generate_clips(models, cond, GenerationOptions(clip_len=9, refert_num=5, sampling_steps=2, color_match=False))
    )
    assert seen[0] is None and len(seen) == 3
    first_clip = clips[0]
    torch.testing.assert_close(seen[1], first_clip[-5:])  # raw decoded frames of clip 1, frames 4..8


def test_guidance_doubles_the_forwards_and_blanks_the_face(models, monkeypatch) -> None:
    calls = []
    original = models.transformer.forward

    def spy(*args, **kwargs):
        calls.append((kwargs["encoder_hidden_states"].clone(), kwargs["face_pixel_values"].clone()))
        return original(*args, **kwargs)

    monkeypatch.setattr(models.transformer, "forward", spy)
    cond = tiny_conditioning(9, face_size=16)
    list(generate(models, cond, GenerationOptions(clip_len=9, sampling_steps=2, guide_scale=1.0)))
    assert len(calls) == 2
    calls.clear()
    list(generate(models, cond, GenerationOptions(clip_len=9, sampling_steps=2, guide_scale=3.0)))
    assert len(calls) == 4
    (text_c, face_c), (text_u, face_u) = calls[0], calls[1]
    assert torch.all(face_u == -1) and not torch.all(face_c == -1)
    cpu = torch.device("cpu")
    torch.testing.assert_close(text_c, encode_prompt(models, DEFAULT_PROMPT, cpu))
    torch.testing.assert_close(text_u, encode_prompt(models, DEFAULT_NEGATIVE_PROMPT, cpu))


def test_same_seed_same_video_other_seed_other_video(models) -> None:
    cond = tiny_conditioning(9, face_size=16)
    a = _our_video(models, cond, GenerationOptions(clip_len=9, sampling_steps=2, seed=11))
    b = _our_video(models, cond, GenerationOptions(clip_len=9, sampling_steps=2, seed=11))
    c = _our_video(models, cond, GenerationOptions(clip_len=9, sampling_steps=2, seed=12))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_progress_and_cancel(models) -> None:
    cond = tiny_conditioning(20, face_size=16)
    steps = []
    list(generate(models, cond, GenerationOptions(clip_len=9, sampling_steps=2), on_step=lambda *a: steps.append(a)))
    assert steps == [(s, 3, i, 2) for s in range(3) for i in range(2)]

    done = []  # should_cancel is also asked between clips and per decoded frame: cancel after the third step
    clips = generate(
        models, cond, GenerationOptions(clip_len=9, sampling_steps=2), on_step=lambda *a: done.append(a),
        should_cancel=lambda: len(done) >= 3,
    )  # fmt: skip
    assert next(clips).shape[0] == 9  # steps 0, 1 of clip 1
    with pytest.raises(Cancelled):
        next(clips)  # clip 2 stops before its second step


def test_cancel_stops_inside_the_vae_decode(models) -> None:
    """A cancel during the decode stops at the next latent frame, not after the whole clip (a 720p decode takes
    seconds per frame); the decoder's hooks are removed afterwards, so the next request decodes normally."""
    cond = tiny_conditioning(5, face_size=16)
    decoded = []  # decoder calls: one per latent frame (clip_len 5 -> 2 latent frames)
    handle = models.vae.decoder.register_forward_hook(lambda *args: decoded.append(1))
    try:
        with pytest.raises(Cancelled, match="VAE decode of clip 1/1"):
            list(generate(models, cond, GenerationOptions(clip_len=5, sampling_steps=1), should_cancel=lambda: bool(decoded)))
        assert len(decoded) == 1
        decoded.clear()
        clips = list(generate(models, cond, GenerationOptions(clip_len=5, sampling_steps=1), should_cancel=lambda: False))
    finally:
        handle.remove()
    assert sum(c.shape[0] for c in clips) == 5 and len(decoded) == 2


def test_faces_at_512_are_resized_for_the_tiny_model_only(models) -> None:
    """The real model reads 512x512 crops as they are; the tiny one (16x16 motion encoder) gets them resized."""
    cond = tiny_conditioning(9)
    assert cond.face_frames.shape[1:] == (512, 512, 3)
    clips = list(generate(models, cond, GenerationOptions(clip_len=9, sampling_steps=1)))
    assert clips[0].shape == (9, 64, 64, 3)


def test_uint8_conversion_truncates_like_the_official_writer() -> None:
    frames = torch.tensor([-1.0, -0.5, 0.0, 0.999, 1.0, 2.0]).view(6, 1, 1, 1).expand(6, 3, 1, 1)
    got = to_uint8(frames)[:, 0, 0, 0].tolist()
    assert got == [0, 63, 127, 254, 255, 255]  # floor((x + 1) / 2 * 255)


def test_inputs_are_checked(models) -> None:
    cond = tiny_conditioning(9, face_size=16)
    with pytest.raises(ValueError, match="4n"):
        next(generate(models, cond, GenerationOptions(clip_len=10)))
    with pytest.raises(ValueError, match="refert_num"):
        next(generate(models, cond, GenerationOptions(clip_len=9, refert_num=3)))
    with pytest.raises(ValueError, match="replacement"):
        next(generate(models, cond, GenerationOptions(mode="replacement", clip_len=9)))


def test_single_frame_input_makes_one_frame(models) -> None:
    """Deliberate difference: the official loop produces nothing for inputs of at most refert_num frames."""
    cond = tiny_conditioning(1, face_size=16)
    clips = list(generate(models, cond, GenerationOptions(clip_len=9, sampling_steps=1)))
    assert [c.shape[0] for c in clips] == [1]


def test_the_last_clip_decodes_only_the_frames_it_emits(models, monkeypatch) -> None:
    """20 frames in clips of 9 (refert 1): the last clip emits 3 new frames, so it decodes 2 of its 3 latent frames
    (the decoder is causal); the frames are the same as with the whole clip decoded."""
    import sys

    generate_module = sys.modules["wan_animate.wan.generate"]
    cond = tiny_conditioning(20, face_size=16)
    options = GenerationOptions(clip_len=9, refert_num=1, sampling_steps=2, seed=5)
    decoded = []  # decoder calls: one per latent frame
    handle = models.vae.decoder.register_forward_hook(lambda *args: decoded.append(1))
    try:
        trimmed = torch.cat(list(generate_clips(models, cond, options)))
        calls_trimmed = len(decoded)
        decoded.clear()
        monkeypatch.setattr(generate_module, "latent_frames_to_decode", lambda needed, latent_frames: latent_frames)
        whole = torch.cat(list(generate_clips(models, cond, options)))
    finally:
        handle.remove()
    assert (calls_trimmed, len(decoded)) == (3 + 3 + 2, 3 + 3 + 3)
    assert trimmed.shape == whole.shape == (20, 3, cond.height, cond.width)
    torch.testing.assert_close(trimmed, whole, rtol=0, atol=0)
