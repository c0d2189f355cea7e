"""Step caching (wan/step_cache.py) on tiny random WanAnimateTransformer3DModels: off it changes nothing, a skipped
step with an unchanged input reproduces the computed output (diffusers' FirstBlockCache does not, see
test_wan_speed.py), the schedule rules hold, and the segment loop runs with it."""

from __future__ import annotations

import pytest
import torch
from test_wan_speed import rel_l2, tiny_inputs, tiny_model
from tiny_conditioning import tiny_conditioning
from wan_animate.wan import GenerationOptions, build_tiny_models, generate, speed
from wan_animate.wan.step_cache import StepCache, StepCacheOptions, installed, relative_change


def cached_forward(model, inputs, cache: StepCache, step: int, branch: str = "cond") -> torch.Tensor:
    cache.begin_step(step, branch)
    return speed.run_forward(model, inputs)


def count_calls(modules: list[torch.nn.Module]) -> list[int]:
    """A call counter per module (forward pre-hooks; they fire inside the wrappers too)."""
    counts = [0] * len(modules)
    for index, module in enumerate(modules):
        module.register_forward_pre_hook(lambda *_args, i=index: counts.__setitem__(i, counts[i] + 1))
    return counts


def test_threshold_zero_is_bit_identical_and_unwraps() -> None:
    model = tiny_model(num_layers=4)
    inputs = tiny_inputs(model)
    ref = speed.run_forward(model, inputs)
    keys = list(model.state_dict())
    cache = StepCache(StepCacheOptions(threshold=0.0), num_steps=4)
    with installed(model, cache):
        assert list(model.state_dict()) != keys  # wrapped while installed
        outs = [cached_forward(model, inputs, cache, step) for step in range(4)]
    assert all(torch.equal(out, ref) for out in outs)
    assert cache.skipped_steps == 0
    assert list(model.state_dict()) == keys
    assert type(model.blocks[1]).__name__ == "WanTransformerBlock" and type(model.norm_out).__name__ == "FP32LayerNorm"


@pytest.mark.parametrize("num_layers, inject_every", [(4, 2), (3, 1)])  # (3, 1): a face adapter after the last block
def test_skipped_step_with_same_input_reproduces_the_computed_output(num_layers: int, inject_every: int) -> None:
    model = tiny_model(num_layers=num_layers)
    if inject_every != model.config.inject_face_latents_blocks:
        from diffusers import WanAnimateTransformer3DModel

        torch.manual_seed(0)
        model = WanAnimateTransformer3DModel(**{**model.config, "inject_face_latents_blocks": inject_every}).eval()
    inputs = tiny_inputs(model)
    ref = speed.run_forward(model, inputs)
    block_calls = count_calls(list(model.blocks))
    adapter_calls = count_calls(list(model.face_adapter))
    cache = StepCache(StepCacheOptions(threshold=0.5, warmup_fraction=0.0), num_steps=10)
    with installed(model, cache):
        computed = cached_forward(model, inputs, cache, step=0)
        skipped = cached_forward(model, inputs, cache, step=1)
    assert cache.decisions == [(0, "cond", False), (1, "cond", True)]
    assert block_calls == [2] + [1] * (num_layers - 1)  # block 0 every time, the rest only when computed
    assert adapter_calls == [1] * len(model.face_adapter)
    assert rel_l2(computed, ref) == 0.0
    assert rel_l2(skipped, ref) < 1e-6


def test_skipped_step_adds_the_cached_residual_to_the_new_first_block_output() -> None:
    """A changed input on a skipped step: output = norm/proj of (block 0's new output + the computed step's
    residual of everything after block 0)."""
    model = tiny_model(num_layers=4)
    inputs = tiny_inputs(model)
    nudged = {**inputs, "hidden_states": inputs["hidden_states"] * 1.01}
    captured = {}
    model.blocks[0].register_forward_hook(lambda _m, _a, out: captured.__setitem__("head", out))
    model.norm_out.register_forward_pre_hook(lambda _m, args: captured.__setitem__("tail", args[0]))
    speed.run_forward(model, inputs)
    residual = captured["tail"] - captured["head"].float()
    speed.run_forward(model, nudged)
    expected_tail = captured["head"].float() + residual
    handle = model.norm_out.register_forward_pre_hook(lambda _m, _args: (expected_tail,))
    expected_out = speed.run_forward(model, nudged)  # the full model with norm_out's input replaced
    handle.remove()

    cache = StepCache(StepCacheOptions(threshold=0.5, warmup_fraction=0.0), num_steps=10)
    with installed(model, cache):
        cached_forward(model, inputs, cache, step=0)
        out = cached_forward(model, nudged, cache, step=1)
    assert cache.decisions[-1] == (1, "cond", True)
    assert rel_l2(out, expected_out) < 1e-6
    assert rel_l2(out, speed.run_forward(model, nudged)) > 1e-4  # and it is not the computed output


def test_warmup_last_step_and_consecutive_skip_limit() -> None:
    model = tiny_model(num_layers=2)
    inputs = tiny_inputs(model)
    cache = StepCache(StepCacheOptions(threshold=0.5, warmup_fraction=0.2, max_consecutive_skips=2), num_steps=10)
    with installed(model, cache):
        for step in range(10):
            cached_forward(model, inputs, cache, step)
    skipped = [step for step, _, skip in cache.decisions if skip]
    assert skipped == [2, 3, 5, 6, 8]  # steps 0-1 warm up, 4 and 7 after two skips, 9 is the last


def test_a_large_change_computes_and_branches_keep_their_own_state() -> None:
    model = tiny_model(num_layers=2)
    inputs = tiny_inputs(model)
    other = tiny_inputs(model, seed=7)  # different latents: block 0's residual changes a lot
    cache = StepCache(StepCacheOptions(threshold=0.05, warmup_fraction=0.0), num_steps=10)
    with installed(model, cache):
        cached_forward(model, inputs, cache, 0, "cond")
        cached_forward(model, other, cache, 0, "uncond")
        cached_forward(model, other, cache, 1, "cond")  # far from cond's step 0: computes
        cached_forward(model, other, cache, 1, "uncond")  # same as uncond's step 0: skips
    assert cache.decisions == [(0, "cond", False), (0, "uncond", False), (1, "cond", False), (1, "uncond", True)]


def test_relative_change_and_option_checks() -> None:
    before = torch.ones(2, 3)
    assert relative_change(before * 1.1, before) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="threshold"):
        StepCacheOptions(threshold=1.5)
    with pytest.raises(ValueError, match="max_consecutive_skips"):
        StepCacheOptions(threshold=0.1, max_consecutive_skips=0)
    assert StepCacheOptions(threshold=0.1).always_computes(0, 1)


def test_context_parallel_transformer_is_refused() -> None:
    model = tiny_model(num_layers=2)
    model._parallel_config = object()
    with pytest.raises(ValueError, match="context parallel"):
        with installed(model, StepCache(StepCacheOptions(threshold=0.1), num_steps=4)):
            pass
    assert type(model.blocks[0]).__name__ == "WanTransformerBlock"


def test_works_around_compiled_blocks() -> None:
    """The wrappers stay outside the fullgraph-compiled blocks: their Python decisions never enter a graph."""
    torch._dynamo.reset()
    model = tiny_model(num_layers=4)
    inputs = tiny_inputs(model)
    ref = speed.run_forward(model, inputs)
    speed.apply_speed_options(model, speed.SpeedOptions(attention_backend=None, compile_backend="aot_eager"))
    cache = StepCache(StepCacheOptions(threshold=0.5, warmup_fraction=0.0), num_steps=10)
    with installed(model, cache):
        computed = cached_forward(model, inputs, cache, step=0)
        skipped = cached_forward(model, inputs, cache, step=1)
    assert [skip for *_, skip in cache.decisions] == [False, True]
    assert rel_l2(computed, ref) < 1e-5 and rel_l2(skipped, ref) < 1e-5
    torch._dynamo.reset()


def test_segment_loop_with_step_cache(caplog) -> None:
    """The loop drives the cache (cond and uncond, a fresh cache per clip); off (0) it is the plain loop."""
    models = build_tiny_models()
    cond = tiny_conditioning(9, face_size=16)
    options = GenerationOptions(clip_len=9, sampling_steps=6, guide_scale=2.0)
    plain = list(generate(models, cond, options))
    calls = count_calls([models.transformer.blocks[1]])
    again = list(generate(models, cond, GenerationOptions(**{**options.__dict__, "step_cache": 0.0})))
    assert all((a == b).all() for a, b in zip(plain, again, strict=True))
    assert calls == [12]  # 6 steps x (cond + uncond)

    with caplog.at_level("INFO", logger="wan_animate.wan.generate"):
        cached = list(generate(models, cond, GenerationOptions(**{**options.__dict__, "step_cache": 1.0})))
    # Threshold 1 skips all the rules allow: step 0 warms up, 1-2 skip, 3 computes, 4 skips, 5 is the last.
    assert calls == [12 + 6]
    assert "clip 1 skipped 6 of 12 forwards" in caplog.text
    assert [clip.shape for clip in cached] == [clip.shape for clip in plain]
    assert not all((a == b).all() for a, b in zip(plain, cached, strict=True))
    assert type(models.transformer.blocks[0]).__name__ == "WanTransformerBlock"

    with pytest.raises(ValueError, match="step_cache"):
        next(generate(models, cond, GenerationOptions(clip_len=9, step_cache=2.0)))


def test_tiny_loop_benchmark(tmp_path) -> None:
    """benchmarks/bench_step_cache.py --tiny: the app's loop uncached and cached, with the skip log and deviation."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_step_cache

    assert bench_step_cache.main(["--tiny", "--steps", "10", "--thresholds", "0,1", "--out", str(tmp_path)]) == 0
    loops = json.loads((tmp_path / "results.json").read_text())["loops"]
    assert [(row["threshold"], row["skipped"]) for row in loops] == [(0.0, "0"), (1.0, "5 of 10 forwards")]
    assert len(loops[0]["head_change_trace"]) == 9 and len(loops[1]["step_s"]) == 10
    assert 0 < float(loops[1]["rel_l2"]) < 0.5
    assert "| fast | 1.0 | 5 of 10 forwards |" in (tmp_path / "results.md").read_text()


@pytest.mark.gpu
def test_cuda_step_cache_under_group_offload() -> None:
    """Skipped steps do not call most blocks, whose diffusers group-offload hooks prefetch each next block on a
    stream: the offloaded model must still give the on-device outputs, step by step, and end with its blocks off the
    GPU."""
    from wan_animate.wan.offload import enable_transformer_offload

    model = tiny_model(num_layers=4, device="cuda", dtype=torch.bfloat16, head_dim=16)
    inputs = tiny_inputs(model, device="cuda", dtype=torch.bfloat16)
    nudged = {**inputs, "hidden_states": inputs["hidden_states"] * 1.01}

    def run() -> tuple[list[torch.Tensor], list]:
        cache = StepCache(StepCacheOptions(threshold=0.5, warmup_fraction=0.0), num_steps=10)
        with installed(model, cache):
            outs = [cached_forward(model, x, cache, step) for step, x in enumerate([inputs, nudged, inputs, nudged])]
        return outs, cache.decisions

    on_device, decisions = run()
    assert [skip for *_, skip in decisions] == [False, True, True, False]
    enable_transformer_offload(model, torch.device("cuda"))
    offloaded, offloaded_decisions = run()
    assert offloaded_decisions == decisions
    for got, want in zip(offloaded, on_device, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.cuda.synchronize()
    assert all(p.device.type == "cpu" for p in model.blocks.parameters())
