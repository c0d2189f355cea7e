"""Reusing the face motion features within a clip (wan/motion_cache.py) on tiny random WanAnimateTransformer3DModels:
the outputs are bit-identical to recomputing them, the encoders run once per branch, misuse is refused, and the
segment loop uses it."""

from __future__ import annotations

import pytest
import torch
from test_wan_speed import tiny_inputs, tiny_model
from tiny_conditioning import tiny_conditioning
from wan_animate.wan import GenerationOptions, build_tiny_models, generate, motion_cache, speed


def count_calls(module: torch.nn.Module) -> list[int]:
    """A one-element call counter for `module` (a forward pre-hook)."""
    count = [0]
    module.register_forward_pre_hook(lambda *_args: count.__setitem__(0, count[0] + 1))
    return count


def test_reused_features_give_bit_identical_outputs_per_branch() -> None:
    model = tiny_model()
    gen = torch.Generator().manual_seed(3)
    inputs = tiny_inputs(model)
    steps = [
        {**inputs, "hidden_states": torch.randn(inputs["hidden_states"].shape, generator=gen), "timestep": t}
        for t in (torch.tensor([900]), torch.tensor([500]), torch.tensor([100]))
    ]
    black_face = inputs["face_pixel_values"] * 0 - 1  # the unconditional branch's face video
    refs = [(speed.run_forward(model, s), speed.run_forward(model, {**s, "face_pixel_values": black_face})) for s in steps]
    motion_calls, face_calls = count_calls(model.motion_encoder), count_calls(model.face_encoder)
    batches = -(-inputs["face_pixel_values"].shape[2] // model.config.motion_encoder_batch_size)

    cache = motion_cache.MotionFeatureCache()
    with motion_cache.installed(model, cache):
        for s, (ref_cond, ref_uncond) in zip(steps, refs, strict=True):
            cache.begin_forward("cond")
            assert torch.equal(speed.run_forward(model, s), ref_cond)
            cache.begin_forward("uncond")
            assert torch.equal(speed.run_forward(model, {**s, "face_pixel_values": black_face}), ref_uncond)
    # Each encoder ran in the first forward of each branch only.
    assert motion_calls == [2 * batches] and face_calls == [2]
    assert cache.computed == 2 * (batches + 1) and cache.reused == 4 * (batches + 1)
    assert type(model.motion_encoder).__name__ == "WanAnimateMotionEncoder"
    assert type(model.face_encoder).__name__ == "WanAnimateFaceEncoder"


def test_misuse_is_refused() -> None:
    model = tiny_model()
    inputs = tiny_inputs(model)
    cache = motion_cache.MotionFeatureCache()
    with motion_cache.installed(model, cache):
        with pytest.raises(RuntimeError, match="begin_forward"):
            speed.run_forward(model, inputs)
        cache.begin_forward("cond")
        speed.run_forward(model, inputs)
        shorter = {**inputs, "face_pixel_values": inputs["face_pixel_values"][:, :, :-8]}
        shorter["hidden_states"] = inputs["hidden_states"][:, :, :-2]
        shorter["pose_hidden_states"] = inputs["pose_hidden_states"][:, :, :-2]
        cache.begin_forward("cond")
        with pytest.raises(RuntimeError, match="changed shape"):
            speed.run_forward(model, shorter)


def test_segment_loop_reuses_the_features_and_keeps_its_output(monkeypatch) -> None:
    """The loop with the cache gives the same video as the loop that recomputes the features at every step."""
    models = build_tiny_models()
    cond = tiny_conditioning(17, face_size=16)  # two clips of 9 frames (1 frame of overlap)
    options = GenerationOptions(clip_len=9, refert_num=1, sampling_steps=4, guide_scale=2.0)
    face_calls = count_calls(models.transformer.face_encoder)
    cached = list(generate(models, cond, options))
    assert face_calls == [2 * 2]  # 2 clips x (cond + uncond), not 2 x 4 steps x 2

    class Recomputing(motion_cache.MotionFeatureCache):
        def begin_forward(self, branch: str) -> None:
            super().begin_forward(branch)
            self.motion.clear()
            self.motion_shapes.clear()
            self.features.clear()

    monkeypatch.setattr(motion_cache, "MotionFeatureCache", Recomputing)
    recomputed = list(generate(models, cond, options))
    assert face_calls == [4 + 2 * 4 * 2]
    assert len(cached) == len(recomputed) == 2
    assert all((a == b).all() for a, b in zip(cached, recomputed, strict=True))
