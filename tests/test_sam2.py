"""SAM2: the original checkpoint's keys converted onto transformers (against the real key layout), loading the
release file and transformers folders, the segmenter's pixels and hole filling, its TF32 matmuls on CUDA."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from wan_animate.preprocess import sam2_checkpoint as C
from wan_animate.preprocess import sam2_video as V

DATA = Path(__file__).parent / "data"


def test_fill_small_holes_on_low_res_logits():
    logits = np.full((8, 8), 2.0, np.float32)
    logits[2:4, 2:4] = -1.0  # a 4-pixel hole: filled with 0.1
    logits[:, 6:] = -3.0  # a 16-pixel background strip: kept
    out = V.fill_small_holes(logits, 8)
    expected = logits.copy()
    expected[2:4, 2:4] = 0.1
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(V.fill_small_holes(logits, 0), logits)


# ---------------------------------------------------------------------------------------------------
# SAM2 weights


def test_original_large_checkpoint_keys_map_exactly_onto_transformers():
    original = json.loads((DATA / "sam2_hiera_large_keys.json").read_text())["keys"]
    state = {key: torch.empty(shape, device="meta") for key, shape in original.items()}
    assert C.detect_sam2_variant(state) == ("hiera_large", False)
    converted = C.convert_original_sam2(state)
    from transformers import Sam2VideoModel

    with torch.device("meta"):
        model = Sam2VideoModel(C.sam2_config("hiera_large"))
    expected = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert {key: list(value.shape) for key, value in converted.items()} == expected
    assert len(original) == 900 and len(expected) == 898  # 4 point embeddings -> 1 table, +1 shared copy


def test_original_checkpoint_file_loads_into_the_segmenter(tmp_path):
    original = json.loads((DATA / "sam2_hiera_tiny_keys.json").read_text())["keys"]
    generator = torch.Generator().manual_seed(0)
    state = {key: torch.randn(shape, generator=generator) for key, shape in original.items()}
    folder = tmp_path / "process_checkpoint" / "sam2"
    folder.mkdir(parents=True)
    torch.save({"model": state}, folder / "sam2_hiera_large.pt")  # the release layout (a tiny model inside)
    segmenter = V.load_sam2_video(tmp_path, "cpu")
    loaded = segmenter.model.state_dict()
    torch.testing.assert_close(loaded["vision_encoder.backbone.blocks.3.mlp.proj_in.weight"],
                               state["image_encoder.trunk.blocks.3.mlp.layers.0.weight"])  # fmt: skip
    torch.testing.assert_close(loaded["prompt_encoder.point_embed.weight"],
                               torch.cat([state[f"sam_prompt_encoder.point_embeddings.{i}.weight"] for i in range(4)]))  # fmt: skip
    torch.testing.assert_close(loaded["memory_encoder.mask_downsampler.final_conv.weight"],
                               state["memory_encoder.mask_downsampler.encoder.12.weight"])  # fmt: skip
    assert segmenter.model.config.enable_occlusion_spatial_embedding is False  # SAM 2.0


def test_transformers_format_folder_loads_with_from_pretrained(tmp_path):
    tiny = V.tiny_sam2_video()
    tiny.model.save_pretrained(tmp_path)
    loaded = V.load_sam2_video(tmp_path, "cpu")
    torch.testing.assert_close(loaded.model.state_dict()["no_memory_embedding"],
                               tiny.model.state_dict()["no_memory_embedding"])  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# the segmenter's input


def test_sam2_pixels_equal_the_official_normalisation():
    from PIL import Image

    segmenter = V.tiny_sam2_video()
    frame = np.random.default_rng(0).integers(0, 256, (72, 130, 3), dtype=np.uint8)
    size = segmenter.image_size
    resized = np.asarray(Image.fromarray(frame).convert("RGB").resize((size, size)), np.float32) / 255.0
    official = ((resized - V.IMAGENET_MEAN) / V.IMAGENET_STD).transpose(2, 0, 1)  # bicubic, then in float32
    got = segmenter._pixels(frame)
    assert got.dtype == torch.float32 and got.is_contiguous()
    np.testing.assert_array_equal(got.numpy(), official)


def test_uint8_frame_session_gives_the_logits_of_transformers_float_frames(monkeypatch):
    """The session keeping uint8 planes (sam2_session.py) against transformers' own session fed the float32 inputs:
    the same logits on every frame of real video, propagation included, from a quarter of the frame memory."""
    import decord
    from conftest import fixture_path
    from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession
    from wan_animate.preprocess import sam2_session

    reader = decord.VideoReader(str(fixture_path("driving_two_people_3s_small.mp4")), width=160, height=96)
    frames = reader.get_batch([0, 10, 20, 30, 40]).asnumpy()
    clicks = {1: np.array([[48, 22], [48, 30], [46, 52]]), 3: np.array([[50, 25]])}  # propagates both ways
    segmenter = V.tiny_sam2_video(seed=0)
    sessions = []

    class Recorded(sam2_session.Uint8FrameSession):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            sessions.append(self)

    monkeypatch.setattr(sam2_session, "Uint8FrameSession", Recorded)
    ours = segmenter.low_res_logits(frames, clicks)
    stored = sessions[0].processed_frames
    assert len(stored) == 5 and all(f.dtype == torch.uint8 and f.shape == (3, 128, 128) for f in stored.values())
    for index, frame in enumerate(frames):  # the model reads frames only through get_frame: the official inputs
        assert torch.equal(sessions[0].get_frame(index), segmenter._pixels(frame))

    class FloatFrames(Sam2VideoInferenceSession):  # transformers' storage: the normalised float32 frames
        def __init__(self, table, **kwargs):
            super().__init__(**kwargs)
            self.table = table

        def add_new_frame(self, planes, frame_idx=None):
            return super().add_new_frame(torch.from_numpy(self.table[np.arange(3)[:, None, None], planes]), frame_idx)

    monkeypatch.setattr(sam2_session, "Uint8FrameSession", FloatFrames)
    reference = segmenter.low_res_logits(frames, clicks)
    assert sorted(ours) == sorted(reference) == [0, 1, 2, 3, 4]
    for index in ours:
        np.testing.assert_array_equal(ours[index], reference[index])
    assert np.ptp(reference[1]) > 0  # on a clicked frame the random model's logits follow the image


def test_tf32_matmuls_switch_on_cuda_only_and_restore():
    """SAM2's float32 matmuls run in TF32 on CUDA (sam2_video's docstring); the process-wide switch is restored after
    the block, on an error too, and never touched for the CPU or when the segmenter asks for the official float32."""
    flag = torch.backends.cuda.matmul
    assert flag.allow_tf32 is False  # torch's default, which the rest of the app (the transformer) runs under
    with V.tf32_matmuls(torch.device("cuda")):
        assert flag.allow_tf32 is True
    assert flag.allow_tf32 is False
    with pytest.raises(RuntimeError), V.tf32_matmuls(torch.device("cuda")):
        raise RuntimeError("a failed segmentation")
    assert flag.allow_tf32 is False
    with V.tf32_matmuls("cuda:0"):  # a device given by name
        assert flag.allow_tf32 is True
    for device, enabled in ((torch.device("cpu"), True), (torch.device("cuda"), False)):
        with V.tf32_matmuls(device, enabled):
            assert flag.allow_tf32 is False


def test_the_segmenter_runs_sam2_under_the_tf32_switch(monkeypatch):
    """segment() enters tf32_matmuls with its device and setting around the model's calls."""
    import contextlib

    entered = []

    @contextlib.contextmanager
    def recording(device, enabled=True):
        entered.append((str(device), enabled))
        yield

    monkeypatch.setattr(V, "tf32_matmuls", recording)
    segmenter = V.tiny_sam2_video()
    frames = np.zeros((2, 48, 64, 3), np.uint8)
    masks = segmenter.segment(frames, {0: np.array([[32.0, 24.0]], np.float32)})
    assert masks.shape == (2, 48, 64)
    assert entered == [("cpu", True)]
