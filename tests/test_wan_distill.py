"""LightX2V's 4-step distillation LoRA: the release's key layout, loading with every tensor placed, the same function as
LightX2V's merge, switching per request (bit-exact off), and together with relighting, user LoRAs, offload, compile."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from release_checkpoints import write_lightx2v_lora, write_relighting_checkpoint, write_user_lora
from safetensors.torch import load_file, save_file
from tiny_conditioning import tiny_conditioning
from wan_animate.wan import GenerationOptions, build_tiny_models, generate_clips, speed
from wan_animate.wan.distill import (
    DISTILL_ADAPTER,
    load_distill_lora,
    split_lightx2v_state,
)
from wan_animate.wan.lora import load_relighting_lora, request_adapters
from wan_animate.wan.models import convert_original_state_dict
from wan_animate.wan.offload import place_models
from wan_animate.wan.smoke import lightx2v_lora_shapes, lightx2v_lora_tensors, to_original_layout

# wan2.1_i2v_lora_rank64_lightx2v_4step.safetensors in lightx2v/Wan2.1-Distill-Loras at commit 27ae38da9101..., as
# recorded (size and SHA-256) by a third-party adapter manifest (github.com/sawfwair/mere-run). That reader also checks
# 487 down/up pairs and 775 .diff/.diff_b tensors.
RELEASE_BYTES = 739_472_104
OPTIONS = dict(clip_len=5, refert_num=1, seed=5, color_match=False)
DISTILLED = dict(sampling_steps=4, sample_solver="euler", shift=5.0, guide_scale=1.0)


def safetensors_bytes(shapes: dict[str, tuple[int, ...]], dtype: str = "BF16", itemsize: int = 2) -> int:
    """Size of a safetensors file of these tensors: 8-byte length, compact JSON header padded to 8 bytes, data in
    name order (one dtype)."""
    header, offset = {}, 0
    for name in sorted(shapes):
        size = math.prod(shapes[name]) * itemsize
        header[name] = {"dtype": dtype, "shape": list(shapes[name]), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"))
    return 8 + -(-len(text) // 8) * 8 + offset


def forward(transformer: torch.nn.Module, num_frames: int = 5) -> torch.Tensor:
    inputs = speed.make_example_inputs(transformer.config, 64, 64, num_frames=num_frames, dtype=torch.float32, seed=3)
    return speed.run_forward(transformer, inputs)


def parameters(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in transformer.named_parameters()}


@pytest.fixture(scope="module")
def release_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A distillation LoRA for the tiny model, written in the release's layout (rank 4 instead of 64)."""
    return write_lightx2v_lora(build_tiny_models().transformer, tmp_path_factory.mktemp("distill") / "lora.safetensors")


def test_layout_is_the_releases_byte_for_byte(tmp_path: Path) -> None:
    """The layout written for the 14B model has the release's tensor counts and serialises to its exact size."""
    from accelerate import init_empty_weights
    from diffusers import WanAnimateTransformer3DModel
    from wan_animate.wan.models import ANIMATE_14B_DIFFUSERS_CONFIG

    small = {"b.weight": (3, 5), "a.diff_b": (7,), "c.lora_up.weight": (2, 2)}  # the size formula, checked
    save_file({k: torch.zeros(s, dtype=torch.bfloat16) for k, s in small.items()}, str(tmp_path / "small.safetensors"))
    assert (tmp_path / "small.safetensors").stat().st_size == safetensors_bytes(small)

    with init_empty_weights():
        model = WanAnimateTransformer3DModel.from_config(ANIMATE_14B_DIFFUSERS_CONFIG)
    shapes = lightx2v_lora_shapes(model, rank=64)
    assert sum(k.endswith(".lora_down.weight") for k in shapes) == 487
    assert sum(k.endswith(".lora_up.weight") for k in shapes) == 487
    assert sum(k.endswith((".diff", ".diff_b")) for k in shapes) == 775 == len(shapes) - 2 * 487
    assert shapes["diffusion_model.patch_embedding.diff"] == (5120, 36, 1, 2, 2)
    assert shapes["diffusion_model.blocks.39.cross_attn.k_img.lora_down.weight"] == (64, 5120)
    assert safetensors_bytes(shapes) == RELEASE_BYTES  # every key name and shape counts towards this
    # With the modulation differences of older LightX2V files the release would be 2.5 MB larger.
    assert safetensors_bytes(lightx2v_lora_shapes(model, rank=64, modulation=True)) > RELEASE_BYTES + 2_000_000


def test_every_tensor_of_the_file_lands_where_it_belongs(release_file: Path) -> None:
    state = load_file(str(release_file))
    models = build_tiny_models()
    distill = load_distill_lora(models.transformer, release_file)
    pairs = {k.removesuffix(".lora_down.weight") for k in state if k.endswith(".lora_down.weight")}
    diffs = [k for k in state if k.endswith((".diff", ".diff_b"))]
    assert len(state) == 2 * len(pairs) + len(diffs) and (len(pairs), len(diffs)) == (2 * 12 + 7, 2 * 19 + 15)
    assert distill.adapter_name == DISTILL_ADAPTER and len(distill.deltas) == len(diffs)
    adapted = {name for name, m in models.transformer.named_modules() if DISTILL_ADAPTER in getattr(m, "lora_A", {})}
    assert len(adapted) == len(pairs)
    # Spot checks against the file, by the diffusers names of the original modules.
    q = models.transformer.blocks[1].attn2.add_k_proj  # original blocks.1.cross_attn.k_img
    assert torch.equal(q.lora_A[DISTILL_ADAPTER].weight, state["diffusion_model.blocks.1.cross_attn.k_img.lora_down.weight"].float())
    assert torch.equal(q.lora_B[DISTILL_ADAPTER].weight, state["diffusion_model.blocks.1.cross_attn.k_img.lora_up.weight"].float())
    time_proj = models.transformer.condition_embedder.time_proj  # original time_projection.1
    assert torch.equal(time_proj.lora_A[DISTILL_ADAPTER].weight, state["diffusion_model.time_projection.1.lora_down.weight"].float())
    assert torch.equal(distill.deltas["blocks.0.norm2.weight"], state["diffusion_model.blocks.0.norm3.diff"])  # norm3 -> norm2
    assert torch.equal(distill.deltas["proj_out.weight"], state["diffusion_model.head.head.diff"])
    assert torch.equal(distill.deltas["condition_embedder.image_embedder.norm1.bias"], state["diffusion_model.img_emb.proj.0.diff_b"])
    assert torch.equal(distill.deltas["blocks.1.attn2.norm_added_k.weight"], state["diffusion_model.blocks.1.cross_attn.norm_k_img.diff"])
    # Adapter weights take the dtype of the layer they adapt (the tiny model is float32 throughout).
    assert {p.dtype for n, p in models.transformer.named_parameters() if DISTILL_ADAPTER in n} == {torch.float32}


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda s: s.update({"diffusion_model.blocks.0.self_attn.q.lora_mid.weight": torch.zeros(2, 2)}), "unknown keys"),
        (lambda s: s.pop("diffusion_model.blocks.1.ffn.2.lora_up.weight"), "without its partner"),
        (lambda s: s.update({"diffusion_model.blocks.7.norm3.diff": torch.zeros(24)}), "no parameter"),
        (lambda s: s.update({"diffusion_model.blocks.0.norm3.diff": torch.zeros(25)}), "difference"),
        (lambda s: s.update({"diffusion_model.blocks.0.ffn.0.lora_up.weight": torch.zeros(31, 4)}), "weight"),
    ],
)
def test_a_key_that_finds_no_place_is_an_error(release_file: Path, change, message: str) -> None:
    state = load_file(str(release_file))
    change(state)
    with pytest.raises((ValueError, KeyError), match=message):
        load_distill_lora(build_tiny_models().transformer, state)


def test_alphas_and_lora_a_b_names_are_read_like_lightx2v(release_file: Path) -> None:
    """LightX2V's loader also takes lora_A/lora_B names and `.alpha` (scale alpha / rank); the release has neither."""
    state = load_file(str(release_file))
    renamed = {k.replace(".lora_down.", ".lora_A.").replace(".lora_up.", ".lora_B."): v for k, v in state.items()}
    renamed["diffusion_model.blocks.0.ffn.0.alpha"] = torch.tensor(2.0)  # rank 4: scale 0.5
    lora = split_lightx2v_state(renamed)
    down, up = lora.pairs["blocks.0.ffn.0"]
    torch.testing.assert_close(down, state["diffusion_model.blocks.0.ffn.0.lora_down.weight"] * 0.5)
    assert torch.equal(lora.pairs["blocks.0.ffn.2"][0], state["diffusion_model.blocks.0.ffn.2.lora_down.weight"])


def test_active_lora_equals_lightx2v_merged_into_the_weights() -> None:
    """On: the model computes what LightX2V's merge gives, W += up @ down and p += diff in the ORIGINAL key layout (also
    the older files' `.diff_m` on the modulation tables), converted by the app's checkpoint loader. Off: the plain model."""
    models = build_tiny_models(motion_encoder_size=512)  # the release's motion-encoder layout: convertible checkpoint
    state = lightx2v_lora_tensors(models.transformer, rank=4, seed=3, modulation=True)
    original = {k: v.clone() for k, v in to_original_layout(models.transformer.state_dict()).items()}
    for key, value in state.items():
        name = key.removeprefix("diffusion_model.")
        if name.endswith(".lora_down.weight"):
            base = name.removesuffix(".lora_down.weight")
            original[f"{base}.weight"] += state[f"diffusion_model.{base}.lora_up.weight"].float() @ value.float()
        elif name.endswith(".diff"):
            original[name.removesuffix(".diff") + ".weight"] += value.float()
        elif name.endswith(".diff_b"):
            original[name.removesuffix(".diff_b") + ".bias"] += value.float()
        elif name.endswith(".diff_m"):
            original[name.removesuffix("diff_m") + "modulation"] += value.float()
    merged = build_tiny_models(motion_encoder_size=512).transformer
    merged.load_state_dict(convert_original_state_dict(original, dict(merged.config)), strict=True)

    plain = forward(models.transformer)
    distill = load_distill_lora(models.transformer, state)
    assert any(name.endswith("scale_shift_table") for name in distill.deltas)  # modulation differences are applied
    with request_adapters(models.transformer, None, False, [], distill):
        on = forward(models.transformer)
    torch.testing.assert_close(on, forward(merged), rtol=1e-5, atol=1e-5)
    assert (on - plain).abs().max() > 1e-2
    assert torch.equal(forward(models.transformer), plain)


def test_switching_on_changes_the_output_and_off_restores_every_parameter_bit_exactly(release_file: Path) -> None:
    models = build_tiny_models()
    distill = load_distill_lora(models.transformer, release_file)
    before, plain = parameters(models.transformer), forward(models.transformer)
    for _ in range(2):
        with request_adapters(models.transformer, None, False, [], distill) as active:
            assert active == {DISTILL_ADAPTER: 1.0} and distill.applied
            assert not torch.equal(forward(models.transformer), plain)
        assert not distill.applied
        assert torch.equal(forward(models.transformer), plain)
        after = parameters(models.transformer)
        assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    # A failure inside the request restores too.
    with pytest.raises(RuntimeError, match="boom"), request_adapters(models.transformer, None, False, [], distill):
        raise RuntimeError("boom")
    assert torch.equal(forward(models.transformer), plain)
    # Applying is all or nothing: a parameter that cannot take its difference leaves none applied.
    distill.deltas["blocks.0.not_a_parameter"] = torch.zeros(1)
    with pytest.raises(KeyError), request_adapters(models.transformer, None, False, [], distill):
        pass
    del distill.deltas["blocks.0.not_a_parameter"]
    assert not distill.applied and torch.equal(forward(models.transformer), plain)


def test_diffusers_own_converter_would_drop_differences(release_file: Path) -> None:
    """Why the app reads the file itself: diffusers' Wan LoRA converter keeps the LoRA pairs and linear biases but
    silently drops the norm, patch-embedding and CLIP-norm differences."""
    from diffusers.loaders import WanLoraLoaderMixin

    converted = WanLoraLoaderMixin.lora_state_dict(str(release_file))
    assert not any("norm" in k for k in converted) and not any("patch_embedding" in k for k in converted)
    assert len(split_lightx2v_state(load_file(str(release_file))).diffs) == 2 * 19 + 15


def test_generation_with_relighting_distillation_and_a_user_lora(tmp_path: Path, release_file: Path) -> None:
    """Replacement mode with all three adapters active; afterwards the user's adapter is gone, the other two stay
    loaded and inactive, and a plain request gives the frames it gave before."""
    models = build_tiny_models()
    relit = write_relighting_checkpoint(models.transformer, tmp_path / "relighting_lora.ckpt")
    models.relighting_adapter = load_relighting_lora(models.transformer, relit)
    models.distill = load_distill_lora(models.transformer, release_file)
    user = write_user_lora(models.transformer, tmp_path / "user.safetensors")
    cond = tiny_conditioning(5, mode="replacement", seed=2, face_size=16)

    def video(**extra: object) -> torch.Tensor:
        options = GenerationOptions(mode="replacement", **{**OPTIONS, "sampling_steps": 2, **extra})
        return torch.cat(list(generate_clips(models, cond, options)))

    plain = video()
    steps: list[int] = []
    options = GenerationOptions(mode="replacement", distill=True, loras=[(user, 1.0)], **OPTIONS, **DISTILLED)
    distilled = torch.cat(list(generate_clips(models, cond, options, on_step=lambda *a: steps.append(a[2]))))
    assert steps == [0, 1, 2, 3] and torch.isfinite(distilled).all() and not torch.equal(distilled, plain)
    assert not torch.equal(video(distill=True, **DISTILLED), distilled)  # the user LoRA acts with the others
    peft = models.transformer.peft_config
    assert set(peft) == {models.relighting_adapter, DISTILL_ADAPTER} and not models.distill.applied
    assert torch.equal(video(), plain)


def test_distill_without_the_lora_loaded_is_refused() -> None:
    models = build_tiny_models()
    with pytest.raises(ValueError, match="distillation LoRA"):
        next(generate_clips(models, tiny_conditioning(5, face_size=16), GenerationOptions(distill=True, **OPTIONS)))


def test_offloaded_worker_gives_the_resident_frames(release_file: Path) -> None:
    models = build_tiny_models()
    models.distill = load_distill_lora(models.transformer, release_file)
    cond = tiny_conditioning(5, face_size=16)
    options = GenerationOptions(distill=True, **OPTIONS, **DISTILLED)
    resident = torch.cat(list(generate_clips(models, cond, options)))
    plain = torch.cat(list(generate_clips(models, cond, GenerationOptions(**OPTIONS, sampling_steps=2))))
    place_models(models, "model")
    offloaded = torch.cat(list(generate_clips(models, cond, options)))
    torch.testing.assert_close(offloaded, resident, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        torch.cat(list(generate_clips(models, cond, GenerationOptions(**OPTIONS, sampling_steps=2)))), plain, rtol=0, atol=1e-6
    )


def test_compiled_blocks_see_the_switched_parameters(release_file: Path) -> None:
    """Regional compile traces parameters as graph inputs, so the differences written in per request reach the
    compiled blocks (aot_eager: what inductor would be given)."""
    models = build_tiny_models()
    distill = load_distill_lora(models.transformer, release_file)
    with request_adapters(models.transformer, None, False, [], distill):
        eager_on = forward(models.transformer)
    eager_off = forward(models.transformer)
    torch._dynamo.reset()
    try:
        speed.compile_blocks(models.transformer, backend="aot_eager")
        for _ in range(2):
            with request_adapters(models.transformer, None, False, [], distill):
                torch.testing.assert_close(forward(models.transformer), eager_on, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(forward(models.transformer), eager_off, rtol=1e-6, atol=1e-6)
    finally:
        torch._dynamo.reset()


@pytest.mark.gpu
def test_cuda_adapter_over_fp8_block_linears() -> None:
    """On a GPU, bf16, FP8 block linears (torchao, applied after loading as the app does): the adapter stays unfused
    over the FP8 weights, switches on and off, and off gives the plain FP8 model's output bit-exactly."""
    from test_wan_speed import rel_l2, tiny_model

    model = tiny_model(device="cuda", dtype=torch.bfloat16, head_dim=32)  # sides multiples of 16: FP8-compatible
    inputs = speed.make_example_inputs(model.config, 64, 64, num_frames=5, device="cuda", dtype=torch.bfloat16)
    distill = load_distill_lora(model, lightx2v_lora_tensors(model, rank=16, device="cuda"))
    with request_adapters(model, None, False, [], distill):
        bf16_on = speed.run_forward(model, inputs).float()
    speed.quantize_block_linears_fp8(model)
    assert type(model.blocks[0].attn1.to_q.base_layer.weight.data) is not torch.Tensor  # quantized
    plain = speed.run_forward(model, inputs)
    with request_adapters(model, None, False, [], distill):
        on = speed.run_forward(model, inputs).float()
    assert torch.isfinite(on).all() and rel_l2(on, plain.float()) > 1e-3
    print(f"distill on, FP8 vs bf16 blocks: relative L2 {rel_l2(on, bf16_on):.4f}")
    assert rel_l2(on, bf16_on) < 0.1
    assert torch.equal(speed.run_forward(model, inputs), plain)


@pytest.mark.gpu
def test_cuda_group_offload_gives_the_resident_frames_and_restores_the_parameters(release_file: Path) -> None:
    """On a GPU, bf16: an offloaded worker (pinned copies, prefetch stream) sees the differences written in for the
    request and its own values again afterwards."""
    device = torch.device("cuda")
    models = build_tiny_models(device=device, dtype=torch.bfloat16)
    models.distill = load_distill_lora(models.transformer, release_file)
    cond = tiny_conditioning(5, face_size=16)
    options = GenerationOptions(distill=True, **OPTIONS, **DISTILLED)
    plain_options = GenerationOptions(**OPTIONS, sampling_steps=2)
    plain = torch.cat(list(generate_clips(models, cond, plain_options)))
    resident = torch.cat(list(generate_clips(models, cond, options)))
    assert torch.isfinite(resident).all() and not torch.equal(resident, plain)
    place_models(models, "model")
    for _ in range(2):  # the first request after enabling offload, and one after a full offload cycle
        torch.testing.assert_close(torch.cat(list(generate_clips(models, cond, options))), resident, rtol=0, atol=2e-2)
        torch.testing.assert_close(torch.cat(list(generate_clips(models, cond, plain_options))), plain, rtol=0, atol=2e-2)


def test_setup_warm_up_compiles_each_adapter_set_once(tmp_path: Path, release_file: Path) -> None:
    """The worker's warm-up visits animation / replacement with and without distillation: one graph of the blocks per
    adapter set (and one of the face adapters, which carry no LoRA); requests in those sets then compile nothing."""
    from torch._dynamo.utils import counters
    from wan_animate.compile_policy import warm_up_adapter_sets

    models = build_tiny_models()
    relit = write_relighting_checkpoint(models.transformer, tmp_path / "relighting_lora.ckpt")
    models.relighting_adapter = load_relighting_lora(models.transformer, relit)
    models.distill = load_distill_lora(models.transformer, release_file)
    inputs = speed.make_example_inputs(models.transformer.config, 64, 64, num_frames=5, dtype=torch.float32, seed=3)
    torch._dynamo.reset()
    counters.clear()
    try:
        speed.compile_blocks(models.transformer, backend="aot_eager")
        budget = speed.CompileBudget(max_signatures=7)
        timings = warm_up_adapter_sets(models, inputs, budget)
        adapters = [(), (models.relighting_adapter,), (models.distill.adapter_name,)]
        adapters.append(tuple(sorted(adapters[1] + adapters[2])))
        assert budget.compiled == {(64, 64, 5, names) for names in adapters}  # the signatures runs_compiled builds
        assert [(relight, distill) for relight, distill, _ in timings] == [
            (False, False), (True, False), (False, True), (True, True)
        ]  # fmt: skip
        graphs = counters["stats"]["unique_graphs"]
        assert graphs == 4 + 1
        for relight, distill, _ in reversed(timings):
            with request_adapters(models.transformer, models.relighting_adapter, relight, [], models.distill if distill else None):
                speed.run_forward(models.transformer, inputs)
        assert counters["stats"]["unique_graphs"] == graphs
    finally:
        torch._dynamo.reset()
