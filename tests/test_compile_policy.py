"""compile_policy.runs_compiled: which requests use the compiled transformer blocks and which run them eagerly."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from local_runner import APP_ROOT, import_app_module

inference = import_app_module("inference")
compile_policy = import_app_module("compile_policy")
request_options = import_app_module("request_options")
worker = import_app_module("worker")
speed = import_app_module("wan.speed")
EXAMPLE = APP_ROOT / "examples" / "smoke"


def request(**overrides: object) -> object:
    return inference.AppInput(
        driving_video={"path": str(EXAMPLE / "driving.mp4")},
        reference_image={"path": str(EXAMPLE / "reference.jpg")},
        **overrides,
    )


def compiled_runtime(max_signatures: int) -> object:
    """A Runtime as load_runtime leaves a compiled worker (no models needed for the decision)."""
    return worker.Runtime(
        preset="full",
        device="cuda",
        preprocess_models=None,
        wan_models=SimpleNamespace(relighting_adapter="relighting", distill=SimpleNamespace(adapter_name="distill")),
        speed=speed.SpeedOptions(),
        compile_budget=speed.CompileBudget(max_signatures=max_signatures),
    )


def test_new_sizes_compile_until_the_budget_is_spent_then_run_eagerly() -> None:
    rt = compiled_runtime(max_signatures=2)
    assert compile_policy.runs_compiled(rt, request(), 720, 1280, [])
    assert compile_policy.runs_compiled(rt, request(), 1280, 720, [])
    assert not compile_policy.runs_compiled(rt, request(), 832, 480, [])  # third size: eager
    assert compile_policy.runs_compiled(rt, request(), 720, 1280, [])  # compiled before: still compiled
    assert not compile_policy.runs_compiled(rt, request(clip_len=49), 720, 1280, [])  # new clip length


def test_relighting_is_part_of_the_signature() -> None:
    rt = compiled_runtime(max_signatures=1)
    assert compile_policy.runs_compiled(rt, request(), 720, 1280, [])
    assert not compile_policy.runs_compiled(rt, request(mode="replacement"), 720, 1280, [])


def test_the_distillation_adapter_is_part_of_the_signature() -> None:
    rt = compiled_runtime(max_signatures=2)
    assert compile_policy.runs_compiled(rt, request(), 720, 1280, [])
    assert compile_policy.runs_compiled(rt, request(distill=True), 720, 1280, [])
    assert not compile_policy.runs_compiled(rt, request(distill=True, mode="replacement"), 720, 1280, [])
    assert rt.compile_budget.compiled == {(720, 1280, 77, ()), (720, 1280, 77, ("distill",))}


def test_user_loras_run_eagerly_without_spending_the_budget() -> None:
    rt = compiled_runtime(max_signatures=4)
    assert not compile_policy.runs_compiled(rt, request(), 720, 1280, [(Path("style.safetensors"), 1.0)])
    assert rt.compile_budget.compiled == set()


def test_a_requests_offload_model_does_not_make_a_resident_worker_run_eagerly() -> None:
    # It is ignored (request_options.ignore_request_offload): the request runs compiled like any other.
    rt = compiled_runtime(max_signatures=4)
    assert compile_policy.runs_compiled(rt, request(offload_model=True), 720, 1280, [])
    assert rt.compile_budget.compiled == {(720, 1280, 77, ())}
    options = request_options.generation_options(request(offload_model=True), seed=0, loras=[])
    assert options.offload == "none"  # the worker's placement decides (offload_session keeps a 'model' worker)


def test_uncompiled_workers_are_not_touched() -> None:
    rt = compiled_runtime(max_signatures=0)
    rt.speed = speed.SpeedOptions(compile_blocks=False)
    assert compile_policy.runs_compiled(rt, request(), 720, 1280, [])
    rt.speed = None  # CPU or offloaded worker
    assert compile_policy.runs_compiled(rt, request(offload_model=True), 720, 1280, [])


def test_attention_fp8_is_refused_where_flashattention3_cannot_run(monkeypatch) -> None:
    """'fp8' runs fa3-fwd's Hopper kernel: elsewhere the worker refuses it at setup, naming the field and the fix."""
    import pytest
    import torch

    kernels = import_app_module("wan.attention_kernels")
    InputError = import_app_module("errors").InputError
    with pytest.raises(InputError) as info:
        worker._check_attention_choice(inference.AppSetup(attention="fp8"), torch.device("cpu"))
    assert info.value.field == "attention" and "Hopper" in info.value.message
    worker._check_attention_choice(inference.AppSetup(attention="default"), torch.device("cpu"))
    monkeypatch.setattr(kernels, "fa3_available", lambda device: True)
    worker._check_attention_choice(inference.AppSetup(attention="fp8"), torch.device("cpu"))
