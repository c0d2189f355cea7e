"""FLUX Kontext step: the official prompt rule exactly, and a tiny random FluxKontextPipeline end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from wan_animate.preprocess import flux_edit as F
from wan_animate.preprocess.pose_meta import PoseMeta

T_POSE = "Change the person to a standard T-pose (facing forward with arms extended)."
ARMS_DOWN = (
    "Change the person to a standard pose with the face oriented forward and arms extending straight down by the sides."
)
FULL = " The person is standing. Feet and Hands are visible in the image."
HANDS = " Hands are visible in the image."
FACE = "Change the person to face forward."


def pose(width: int, height: int, joints: dict[int, tuple[float, float, float]]) -> PoseMeta:
    meta = PoseMeta.empty(width, height)
    for index, value in joints.items():
        meta.body[index] = value
    return meta


LANDSCAPE_WITH_LEGS = pose(640, 360, {9: (300, 250, 0.8)})  # right knee, sure
LANDSCAPE_ARMS_ONLY = pose(640, 360, {4: (100, 100, 0.9)})  # right wrist
PORTRAIT_REFERENCE = pose(360, 640, {})
SQUARE_REFERENCE = pose(512, 512, {})


def test_legs_visible_gives_full_body_prompts_by_aspect():
    driving, reference = F.editing_prompts([LANDSCAPE_ARMS_ONLY, LANDSCAPE_WITH_LEGS], PORTRAIT_REFERENCE)
    assert driving == T_POSE + FULL  # landscape driving -> T-pose
    assert reference == ARMS_DOWN + FULL  # portrait reference -> arms down
    # A square image is not wider than tall: arms down (official `width > height`).
    assert F.editing_prompts([LANDSCAPE_WITH_LEGS], SQUARE_REFERENCE)[1] == ARMS_DOWN + FULL


def test_arms_only_gives_hands_prompts():
    assert F.editing_prompts([LANDSCAPE_ARMS_ONLY], pose(800, 600, {})) == (T_POSE + HANDS, T_POSE + HANDS)


def test_nothing_visible_gives_face_forward():
    unsure = pose(640, 360, {4: (100, 100, 0.74), 9: (300, 250, 0.5)})  # below 0.75
    assert F.editing_prompts([unsure], PORTRAIT_REFERENCE) == (FACE, FACE)
    assert F.editing_prompts([], PORTRAIT_REFERENCE) == (FACE, FACE)


def test_visibility_follows_the_official_tests():
    # A sure joint beyond the right edge (x / width > 1) does not count.
    assert F.editing_prompts([pose(640, 360, {10: (700, 200, 0.9)})], PORTRAIT_REFERENCE) == (FACE, FACE)
    # A sure joint with x exactly 0 needs another joint of the limb with x, y and score all non-zero.
    at_edge = pose(640, 360, {13: (0, 200, 0.9)})
    assert F.editing_prompts([at_edge], PORTRAIT_REFERENCE) == (FACE, FACE)
    at_edge.body[12] = (10, 200, 0.1)  # unsure, but "set": the official test then passes
    assert F.editing_prompts([at_edge], PORTRAIT_REFERENCE)[0] == T_POSE + FULL


def test_driving_aspect_comes_from_the_last_frame_examined():
    portrait_both = pose(360, 640, {4: (10, 10, 0.9), 9: (10, 10, 0.9)})
    # The scan stops at the first frame showing arms and legs: that frame's aspect decides.
    assert F.editing_prompts([portrait_both, LANDSCAPE_WITH_LEGS], SQUARE_REFERENCE)[0] == ARMS_DOWN + FULL
    # Without both, every frame is examined and the last one decides.
    assert F.editing_prompts([pose(360, 640, {9: (10, 10, 0.9)}), pose(640, 360, {})], SQUARE_REFERENCE)[0] == (
        T_POSE + FULL
    )


# ---------------------------------------------------------------------------------------------------
# a tiny FluxKontextPipeline, built offline


def _clip_tokenizer():
    """A byte-level BPE CLIP tokenizer with single-byte tokens only (no merges), built in memory."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    specials = ["<|startoftext|>", "<|endoftext|>"]
    symbols = sorted(ByteLevel.alphabet())  # the 256 byte-level symbols
    vocab = {token: i for i, token in enumerate(specials + symbols + [s + "</w>" for s in symbols])}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _t5_tokenizer():
    """A Unigram T5 tokenizer over single characters, built in memory."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ().,-"]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def tiny_flux_kontext():
    """Random-weight FluxKontextPipeline of the real classes (sizes as diffusers' own fast tests)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    )  # fmt: skip
    clip = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=600, projection_dim=32, hidden_act="gelu",
    ))  # fmt: skip
    t5 = T5EncoderModel(T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4))
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1, latent_channels=1,
        norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    )  # fmt: skip
    pipe = FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=clip, tokenizer=_clip_tokenizer(),
        text_encoder_2=t5, tokenizer_2=_t5_tokenizer(), transformer=transformer,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


class Recorder:
    """Forwards calls to a pipeline and keeps their keyword arguments."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.calls: list[dict] = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self.pipe(**kwargs)


@pytest.fixture(scope="module")
def tiny_pipe():
    return tiny_flux_kontext()


def test_standardize_poses_runs_the_pipeline_and_letterboxes_back(tiny_pipe):
    rng = np.random.default_rng(0)
    driving = rng.integers(0, 255, (48, 80, 3), np.uint8)  # landscape
    reference = rng.integers(0, 255, (64, 64, 3), np.uint8)
    recorder = Recorder(tiny_pipe)
    prompts = ("driving prompt", "reference prompt")
    driving_edit, reference_edit = F.standardize_poses(
        recorder, driving, reference, prompts, num_inference_steps=2, max_area=64 * 64, auto_resize=False
    )
    assert driving_edit.shape == (48, 80, 3) and reference_edit.shape == (64, 64, 3)
    assert driving_edit.dtype == np.uint8
    # Official call: reference first, input size as height/width, guidance 2.5.
    assert [c["prompt"] for c in recorder.calls] == ["reference prompt", "driving prompt"]
    assert [(c["height"], c["width"]) for c in recorder.calls] == [(64, 64), (48, 80)]
    assert all(c["guidance_scale"] == 2.5 and c["num_inference_steps"] == 2 for c in recorder.calls)
    # The 48x80 request comes back as 50x82 (area 64*64 at this aspect, multiples of 2), letterboxed into
    # 48x80: width int(48 / 50 * 82) = 78, one black column on each side.
    assert (driving_edit[:, 0] == 0).all() and (driving_edit[:, 79] == 0).all()
    assert driving_edit[:, 1:79].any()
    # Seeded: the same request gives the same images (to +-1 grey level: CPU kernels are not bit-exact
    # from run to run), another seed gives different ones.
    kwargs = dict(num_inference_steps=2, max_area=64 * 64, auto_resize=False)
    again = F.standardize_poses(tiny_pipe, driving, reference, prompts, **kwargs)
    assert np.abs(again[0].astype(int) - driving_edit).max() <= 1
    assert np.abs(again[1].astype(int) - reference_edit).max() <= 1
    other = F.standardize_poses(tiny_pipe, driving, reference, prompts, seed=1, **kwargs)
    assert np.abs(other[1].astype(int) - reference_edit).max() > 10


def test_flux_edit_poses_falls_back_when_the_edit_loses_the_person(monkeypatch, tiny_pipe):
    image = np.zeros((64, 64, 3), np.uint8)
    seen: list[tuple[int, ...]] = []

    def nobody(frames):
        seen.append(frames.shape)
        meta = PoseMeta.empty(64, 64)
        meta.person_box = np.array([0, 0, 64, 64, -1], np.float32)  # detector found nobody
        return [meta]

    def fake_standardize(pipe, driving_frame, reference, prompts, **kwargs):
        return driving_frame, reference

    monkeypatch.setattr(F, "standardize_poses", fake_standardize)
    result = F.flux_edit_poses(tiny_pipe, nobody, image, image, [LANDSCAPE_WITH_LEGS], PORTRAIT_REFERENCE)
    assert result == (None, None)
    assert seen == [(1, 64, 64, 3), (1, 64, 64, 3)]

    def somebody(frames):
        return [PoseMeta.empty(64, 64)]  # person_box None: a person is assumed

    driving_pose, reference_pose = F.flux_edit_poses(tiny_pipe, somebody, image, image, [], PORTRAIT_REFERENCE)
    assert isinstance(driving_pose, PoseMeta) and isinstance(reference_pose, PoseMeta)
