"""Speed options on a tiny random WanAnimateTransformer3DModel: each option applies, the default path keeps the
model's output, the replacement self-attention processor is exact, and diffusers' FirstBlockCache is shown to be
wrong here (the app's own step cache: test_wan_step_cache.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from wan_animate.wan import attention_kernels, cudnn_fp8, speed

# Tiny config of the real class (diffusers' own test config, plus the I2V image projection the 14B model has).
TINY_CONFIG = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "in_channels": 12,
    "latent_channels": 4,
    "out_channels": 4,
    "text_dim": 16,
    "freq_dim": 256,
    "ffn_dim": 32,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "image_dim": 16,
    "added_kv_proj_dim": 24,
    "rope_max_seq_len": 32,
    "motion_encoder_channel_sizes": {"4": 16, "8": 16, "16": 16},
    "motion_encoder_size": 16,
    "motion_style_dim": 8,
    "motion_dim": 4,
    "motion_encoder_dim": 16,
    "face_encoder_hidden_dim": 16,
    "face_encoder_num_heads": 2,
    "inject_face_latents_blocks": 2,
}


def tiny_model(
    num_layers: int = 2, seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32, head_dim: int = 12
):
    from diffusers import WanAnimateTransformer3DModel

    torch.manual_seed(seed)
    overrides = {"num_layers": num_layers, "attention_head_dim": head_dim, "added_kv_proj_dim": 2 * head_dim}
    model = WanAnimateTransformer3DModel(**{**TINY_CONFIG, **overrides})
    return model.to(device=device, dtype=dtype).eval()


def tiny_inputs(model, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 1):
    # 64x64 pixels -> 8x8 latents -> 4x4 patches per frame; 77 frames -> 1 + 20 latent frames, 336 tokens.
    return speed.make_example_inputs(model.config, 64, 64, num_frames=77, device=device, dtype=dtype, seed=seed)


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def test_default_options_are_the_exact_fast_path():
    options = speed.SpeedOptions()
    assert options.attention_backend == speed.DEFAULT_ATTENTION_BACKEND
    assert options.compile_blocks is True
    assert options.fp8_linears is False
    assert options.fp8_attention is False


def test_example_inputs_have_one_clip_shapes_at_720p():
    config = SimpleNamespace(in_channels=36, latent_channels=16, text_dim=4096, image_dim=1280, motion_encoder_size=8)
    inputs = speed.make_example_inputs(config, 720, 1280, num_frames=77)
    shapes = {name: tuple(t.shape) for name, t in inputs.items()}
    assert shapes == {
        "hidden_states": (1, 36, 21, 90, 160),
        "timestep": (1,),
        "encoder_hidden_states": (1, 512, 4096),
        "encoder_hidden_states_image": (1, 257, 1280),
        "pose_hidden_states": (1, 16, 20, 90, 160),
        "face_pixel_values": (1, 3, 77, 8, 8),
    }
    assert inputs["hidden_states"].dtype == torch.bfloat16
    # 21 latent frames x 45 x 80 patches = the 75,600 tokens of a 720p clip.
    assert 21 * (90 // 2) * (160 // 2) == 75600


def test_example_inputs_reject_bad_sizes():
    config = SimpleNamespace(in_channels=12, latent_channels=4, text_dim=16, image_dim=16, motion_encoder_size=16)
    with pytest.raises(ValueError):
        speed.make_example_inputs(config, 720, 1280, num_frames=76)
    with pytest.raises(ValueError):
        speed.make_example_inputs(config, 728, 1280)


def test_fp8_filter_takes_only_block_linears():
    model = tiny_model()
    picked = [name for name, module in model.named_modules() if speed.is_block_linear(module, name)]
    # Per block: self-attn q, k, v, out; cross-attn q, k, v, out, add_k, add_v; feed-forward in, out.
    assert len(picked) == 2 * 12
    assert all(name.startswith("blocks.") for name in picked)
    assert "proj_out" not in picked and not any(name.startswith("face_adapter") for name in picked)


def test_opt_in_modes_need_cuda():
    model = tiny_model()
    with pytest.raises(RuntimeError, match="CUDA"):
        speed.apply_speed_options(model, speed.SpeedOptions(fp8_linears=True, compile_blocks=False))
    with pytest.raises(RuntimeError, match="CUDA"):
        speed.apply_speed_options(model, speed.SpeedOptions(cudnn_fp8_attention=True, compile_blocks=False))
    with pytest.raises(RuntimeError, match="CUDA"):
        speed.apply_speed_options(model, speed.SpeedOptions(fp8_attention=True, compile_blocks=False))
    with pytest.raises(RuntimeError, match="CUDA"):
        speed.apply_speed_options(model, speed.SpeedOptions(flash4_attention=True, compile_blocks=False))
    with pytest.raises(ValueError, match="one self-attention kernel"):
        speed.apply_speed_options(model, speed.SpeedOptions(cudnn_fp8_attention=True, fp8_attention=True))
    with pytest.raises(ValueError, match="one self-attention kernel"):
        speed.apply_speed_options(model, speed.SpeedOptions(flash4_attention=True, fp8_attention=True))
    with pytest.raises(ValueError, match="flash4_attention bypasses"):
        speed.apply_speed_options(model, speed.SpeedOptions(flash4_attention=True, context_parallel="ulysses"))


def test_flash4_is_unavailable_off_hopper_and_blackwell():
    assert not attention_kernels.flash4_available("cpu")
    assert not attention_kernels.default_uses_flash4("cpu")


def test_default_falls_back_to_cudnn_when_flash4_fails_its_self_check(monkeypatch, caplog):
    """Where FA4 imports but its kernel cannot be built or is wrong, the worker logs why and keeps cuDNN attention;
    under context parallelism it is never tried. (The kernel is faked on the CPU: the real one needs a GPU.)"""
    monkeypatch.setattr(attention_kernels, "flash4_available", lambda device: True)

    def broken(query, key, value):
        raise RuntimeError("CuTe DSL: cannot compile for this driver")

    monkeypatch.setattr(attention_kernels, "flash4_attention", broken)
    with caplog.at_level("WARNING", logger=attention_kernels.__name__):
        assert not attention_kernels.default_uses_flash4("cpu")
    assert "cuDNN attention instead: RuntimeError: CuTe DSL: cannot compile" in caplog.text
    monkeypatch.setattr(attention_kernels, "flash4_attention", lambda query, key, value: torch.zeros_like(query))
    assert "relative error 1 " in attention_kernels.flash4_self_check("cpu")
    assert not attention_kernels.default_uses_flash4("cpu")
    monkeypatch.setattr(attention_kernels, "flash4_attention", attention_kernels.sdpa_attention)
    assert attention_kernels.flash4_self_check("cpu") is None
    assert attention_kernels.default_uses_flash4("cpu")
    assert not attention_kernels.default_uses_flash4("cpu", context_parallel="ulysses")


def test_flash4_internal_forward_takes_the_tile_arguments():
    """The Hopper tile choice goes through flash-attn-4's internal forward: fail here, not on a GPU worker, when an
    upgrade of the pinned package changes it."""
    import inspect

    interface = pytest.importorskip("flash_attn.cute.interface")
    parameters = inspect.signature(interface._flash_attn_fwd).parameters
    assert {"q", "k", "v", "tile_mn", "mma_pv_is_rs"} <= set(parameters)


def test_fp8_per_tensor_quantization_round_trip():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 64, 3, 16, generator=gen, dtype=torch.float32) * 7.0
    x_fp8, descale = cudnn_fp8.quantize_fp8_per_tensor(x)
    assert x_fp8.dtype == torch.float8_e4m3fn and descale.shape == (1, 1, 1, 1)
    # The largest magnitude maps to the top of the e4m3 range; descale undoes the scale.
    assert x_fp8.float().abs().max().item() == attention_kernels.FP8_E4M3_MAX
    torch.testing.assert_close(descale.reshape(()), x.abs().max() / attention_kernels.FP8_E4M3_MAX)
    # e4m3 keeps 3 mantissa bits: relative rounding error at most 2^-4 per element for normal numbers.
    assert rel_l2(x_fp8.float() * descale, x) < 2**-4


def test_default_path_on_cpu_compiles_fullgraph_and_keeps_output():
    model = tiny_model()
    inputs = tiny_inputs(model)
    ref = speed.run_forward(model, inputs)
    torch._dynamo.reset()
    # aot_eager traces exactly what inductor would get (fullgraph: any graph break raises) without C++ builds.
    out_model = speed.apply_speed_options(model, speed.SpeedOptions(compile_backend="aot_eager"))
    assert out_model is model
    compiled = [m for m in model.modules() if type(m).__name__ in speed.COMPILED_BLOCK_CLASSES]
    assert len(compiled) == 2 + 1  # 2 blocks, 1 face adapter (inject every 2 blocks)
    assert all(m._compiled_call_impl is not None for m in compiled)
    seconds = speed.warmup(model, inputs)
    assert seconds > 0
    out = speed.run_forward(model, inputs)
    torch._dynamo.reset()
    assert out.shape == ref.shape == (1, 4, 21, 8, 8)
    assert rel_l2(out, ref) < 1e-6


@pytest.mark.parametrize("dynamic", [False, True])
def test_dynamic_compile_serves_a_second_frame_size_without_a_new_graph(dynamic: bool):
    """compile_dynamic (a benchmark option): blocks compiled once run a second frame size (a portrait request after
    the landscape warm-up) from the same graphs and give eager's output; static shapes trace new ones."""
    from torch._dynamo.utils import counters

    model = tiny_model()
    landscape = tiny_inputs(model)
    portrait = speed.make_example_inputs(model.config, 96, 64, num_frames=77, dtype=torch.float32, seed=2)
    refs = [speed.run_forward(model, x) for x in (landscape, portrait)]
    torch._dynamo.reset()
    counters.clear()
    options = speed.SpeedOptions(compile_backend="aot_eager", compile_dynamic=dynamic)
    speed.apply_speed_options(model, options)
    out_landscape = speed.run_forward(model, landscape)
    graphs = counters["stats"]["unique_graphs"]
    out_portrait = speed.run_forward(model, portrait)
    new_graphs = counters["stats"]["unique_graphs"] - graphs
    torch._dynamo.reset()
    assert graphs > 0
    assert (new_graphs == 0) if dynamic else (new_graphs > 0)
    assert rel_l2(out_landscape, refs[0]) < 1e-5 and rel_l2(out_portrait, refs[1]) < 1e-5


def test_eager_blocks_suspends_and_restores_every_compiled_block():
    model = tiny_model()
    count = speed.compile_blocks(model, backend="eager")
    compiled = {name: m._compiled_call_impl for name, m in model.named_modules() if m._compiled_call_impl is not None}
    assert len(compiled) == count > 0
    with speed.eager_blocks(model) as suspended:
        assert suspended == count
        assert all(m._compiled_call_impl is None for m in model.modules())
    assert {n: m._compiled_call_impl for n, m in model.named_modules() if m._compiled_call_impl is not None} == compiled


def test_self_attention_processor_reproduces_diffusers():
    model = tiny_model()
    inputs = tiny_inputs(model)
    ref = speed.run_forward(model, inputs)
    changed = speed.use_self_attention_fn(model, attention_kernels.sdpa_attention)
    assert changed == 2
    assert all(isinstance(b.attn1.processor, speed.WanSelfAttentionProcessor) for b in model.blocks)
    out = speed.run_forward(model, inputs)
    assert rel_l2(out, ref) < 1e-6


def test_self_attention_processor_with_fused_projections():
    model = tiny_model()
    inputs = tiny_inputs(model)
    ref = speed.run_forward(model, inputs)
    for block in model.blocks:
        block.attn1.fuse_projections()
    speed.use_self_attention_fn(model, attention_kernels.sdpa_attention)
    assert rel_l2(speed.run_forward(model, inputs), ref) < 1e-6


def test_rotary_matches_complex_rotation():
    # RoPE as complex multiplication: (x0 + i x1) * e^{i theta}, independent of the real-valued formula.
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 5, 2, 6, generator=gen)
    theta = torch.randn(1, 5, 1, 3, generator=gen)
    cos = theta.cos().repeat_interleave(2, dim=-1)
    sin = theta.sin().repeat_interleave(2, dim=-1)
    expected = torch.view_as_real(
        torch.view_as_complex(x.unflatten(-1, (-1, 2))) * torch.polar(torch.ones_like(theta), theta)
    )
    out = speed.apply_rotary(x, cos, sin)
    torch.testing.assert_close(out, expected.flatten(-2), rtol=1e-6, atol=1e-6)


def test_first_block_cache_is_wrong_on_this_model():
    """Why wan/step_cache.py exists: diffusers does not register this model's block class; registering it makes
    FirstBlockCache run, but a cached step with the SAME input does not reproduce the computed output (a correct
    cache would): the face adapters sit outside `blocks` and get added twice."""
    from diffusers.hooks import FirstBlockCacheConfig
    from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry
    from diffusers.models.transformers import transformer_wan_animate

    model = tiny_model(num_layers=4)
    inputs = tiny_inputs(model)
    with pytest.raises(ValueError, match="not registered"):
        model.enable_cache(FirstBlockCacheConfig(threshold=0.5))

    block_cls = transformer_wan_animate.WanTransformerBlock
    TransformerBlockRegistry.register(block_cls, TransformerBlockMetadata(return_hidden_states_index=0))
    try:
        model = tiny_model(num_layers=4)
        ref = speed.run_forward(model, inputs)
        model.enable_cache(FirstBlockCacheConfig(threshold=0.5))
        with model.cache_context("cond"):
            computed = speed.run_forward(model, inputs)
            cached = speed.run_forward(model, inputs)  # same input: residual change 0 < threshold, so skipped
        assert rel_l2(computed, ref) < 1e-6
        assert rel_l2(cached, ref) > 0.05
    finally:
        TransformerBlockRegistry._registry.pop(block_cls, None)


# --- CUDA only: the real kernels (run on the device machine; skipped in CI) -------------------------------------------


def cuda_pair(**option_overrides):
    # Head dim 16: cuDNN attention needs a multiple of 8 (the real model has 128).
    model = tiny_model(device="cuda", dtype=torch.bfloat16, head_dim=16)
    inputs = tiny_inputs(model, device="cuda", dtype=torch.bfloat16)
    ref = speed.run_forward(model, inputs).float()
    torch._dynamo.reset()
    options = speed.SpeedOptions(**{"compile_blocks": False, **option_overrides})
    speed.apply_speed_options(model, options)
    return model, inputs, ref


@pytest.mark.gpu
def test_cuda_default_path_keeps_output():
    model, inputs, ref = cuda_pair(compile_blocks=True)
    speed.warmup(model, inputs)
    out = speed.run_forward(model, inputs).float()
    torch._dynamo.reset()
    assert rel_l2(out, ref) < 2e-2  # bf16 rounding of a different kernel order


@pytest.mark.gpu
def test_cuda_cudnn_fp8_attention_against_sdpa():
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 1024, 4, 128, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
    ref = attention_kernels.sdpa_attention(q.float(), k.float(), v.float())
    out = cudnn_fp8.cudnn_fp8_attention(q, k, v)
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    deviation = rel_l2(out.float(), ref)
    print(f"cuDNN FP8 attention relative L2 vs fp32 SDPA: {deviation:.4f}")
    assert deviation < 0.1


@pytest.mark.gpu
def test_cuda_flash4_attention_against_sdpa():
    if not attention_kernels.flash4_available("cuda"):
        pytest.skip("flash-attn-4 not installed, or not a Hopper/Blackwell GPU")
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 1024, 4, 128, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
    ref = attention_kernels.sdpa_attention(q.float(), k.float(), v.float())
    out = attention_kernels.flash4_attention(q, k, v)
    bf16_kernel = attention_kernels.sdpa_attention(q, k, v).float()
    assert attention_kernels.default_uses_flash4("cuda")  # the self-check passes where the kernel runs
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    # Exact attention: as close to the float32 reference as torch's own bf16 kernel, within rounding.
    assert rel_l2(out.float(), ref) < 2 * rel_l2(bf16_kernel, ref) + 1e-3


@pytest.mark.gpu
def test_cuda_flash4_path_keeps_output():
    if not attention_kernels.flash4_available("cuda"):
        pytest.skip("flash-attn-4 not installed, or not a Hopper/Blackwell GPU")
    model = tiny_model(device="cuda", dtype=torch.bfloat16, head_dim=128)
    inputs = tiny_inputs(model, device="cuda", dtype=torch.bfloat16)
    ref = speed.run_forward(model, inputs).float()
    torch._dynamo.reset()
    speed.apply_speed_options(model, speed.SpeedOptions(flash4_attention=True))
    speed.warmup(model, inputs)
    out = speed.run_forward(model, inputs).float()
    torch._dynamo.reset()
    assert rel_l2(out, ref) < 2e-2  # bf16 rounding of a different kernel order, like the default path


@pytest.mark.gpu
@pytest.mark.parametrize("option", ["fp8_attention", "cudnn_fp8_attention", "flash4_attention", "fa3_attention"])
def test_cuda_kernel_option_compiles_in_a_fresh_process(option):
    """The kernels' custom ops must exist before compile traces the blocks (registering one inside a trace fails):
    a fresh process, where nothing registered them yet, runs a compiled forward with the option."""
    if option == "flash4_attention" and not attention_kernels.flash4_available("cuda"):
        pytest.skip("flash-attn-4 not installed, or not a Hopper/Blackwell GPU")
    if option in ("fp8_attention", "fa3_attention") and not attention_kernels.fa3_available("cuda"):
        pytest.skip("fa3-fwd not installed, or not a Hopper GPU")
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    code = "\n".join([
        f"import sys; sys.path[:0] = [{str(tests.parent)!r}, {str(tests)!r}]",
        "from local_runner import load_app_package; load_app_package()",
        "import torch",
        "from test_wan_speed import tiny_inputs, tiny_model",
        "from wan_animate.wan import speed",
        "model = tiny_model(device='cuda', dtype=torch.bfloat16, head_dim=128)",
        f"speed.apply_speed_options(model, speed.SpeedOptions({option}=True))",
        "out = speed.run_forward(model, tiny_inputs(model, device='cuda', dtype=torch.bfloat16))",
        "assert torch.isfinite(out).all()",
    ])  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, timeout=900)


@pytest.mark.gpu
def test_cuda_fp8_linears_deviation():
    model, inputs, ref = cuda_pair(fp8_linears=True)
    out = speed.run_forward(model, inputs).float()
    deviation = rel_l2(out, ref)
    print(f"fp8 relative L2 on the tiny model: {deviation:.4f}")
    assert deviation < 0.1


@pytest.mark.gpu
def test_cuda_fp8_per_tensor_linears_deviation():
    """The benchmark's per-tensor FP8 scales: a different GEMM, a deviation of the same order as per-row scales."""
    model, inputs, ref = cuda_pair(fp8_linears=True, fp8_granularity="tensor")
    deviation = rel_l2(speed.run_forward(model, inputs).float(), ref)
    print(f"fp8 per-tensor relative L2 on the tiny model: {deviation:.4f}")
    assert deviation < 0.1


def test_fp8_granularity_must_be_row_or_tensor():
    with pytest.raises(ValueError, match="fp8 granularity"):
        speed.quantize_block_linears_fp8(tiny_model(), "column")


def test_compile_budget_admits_known_signatures_and_refuses_past_its_size():
    budget = speed.CompileBudget(max_signatures=2)
    assert budget.admit("720p") and budget.admit("480p")
    assert budget.admit("720p")  # compiled before: always
    assert not budget.admit("576p")  # a third graph: eager
    assert budget.compiled == {"720p", "480p"}
    with torch._dynamo.config.patch(recompile_limit=8):
        assert speed.CompileBudget.below_recompile_limit().max_signatures == 7


def _compiled_forward_at(model, side: int, budget: speed.CompileBudget | None) -> torch.Tensor:
    """One forward at side x side pixels; with a budget, an unadmitted size runs its blocks eagerly."""
    inputs = speed.make_example_inputs(model.config, side, side, num_frames=5, dtype=torch.float32, seed=side)
    if budget is None or budget.admit(side):
        return speed.run_forward(model, inputs)
    with speed.eager_blocks(model):
        return speed.run_forward(model, inputs)


def test_new_shapes_past_dynamos_limit_fail_a_fullgraph_block_and_the_budget_runs_them_eagerly():
    """The bug the budget prevents: a worker's Nth frame size makes the compiled blocks raise."""
    sides = (32, 48, 64)
    model = tiny_model()
    speed.compile_blocks(model, backend="eager")
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=2):
        _compiled_forward_at(model, sides[0], None)
        _compiled_forward_at(model, sides[1], None)
        with pytest.raises(torch._dynamo.exc.FailOnRecompileLimitHit):
            _compiled_forward_at(model, sides[2], None)

        torch._dynamo.reset()
        budget = speed.CompileBudget.below_recompile_limit()
        assert budget.max_signatures == 1
        outs = [_compiled_forward_at(model, side, budget) for side in sides]
    torch._dynamo.reset()
    assert budget.compiled == {sides[0]}
    with speed.eager_blocks(model):
        refs = [_compiled_forward_at(model, side, None) for side in sides]
    assert all(rel_l2(out, ref) < 1e-6 for out, ref in zip(outs, refs, strict=True))


def test_model_attention_backend_leaves_the_process_default_alone():
    """diffusers' set_attention_backend also switches every other model in the process; ours must not (a CUDA worker's
    cuDNN choice once made a CPU model built later fail with 'No viable backend')."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    before, _ = _AttentionBackendRegistry.get_active_backend()
    model = tiny_model()
    speed.set_model_attention_backend(model, "_native_cudnn")
    assert _AttentionBackendRegistry.get_active_backend()[0] == before
    backends = {str(block.attn1.processor._attention_backend.value) for block in model.blocks}
    assert backends == {"_native_cudnn"}
    other = tiny_model(seed=1)
    out = speed.run_forward(other, tiny_inputs(other))  # CPU float32: would fail under a process-wide cuDNN default
    assert torch.isfinite(out).all()
