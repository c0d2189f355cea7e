"""The `full` preset's real loading path, offline: a fake Hub cache holding tiny checkpoints written in the release's
own file formats (sharded original-layout DiT + index, relighting .ckpt, YOLOv10/ViTPose ONNX in the release's
folder layout, the original SAM2 .pt, HF-format VAE/UMT5/CLIP/tokenizer, the transformer's diffusers config, LightX2V's
distillation LoRA in its release layout), then App.setup(preset="full") and requests through it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import release_checkpoints
import torch
from wan_animate.preprocess.smoke_models import write_detector, write_vitpose

from local_runner import APP_ROOT, import_app_module

inference = import_app_module("inference")
weights = import_app_module("weights")
wan_models = import_app_module("wan.models")
masks = import_app_module("preprocess.masks")
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
EXAMPLE = APP_ROOT / "examples" / "smoke"
DATA = APP_ROOT / "tests" / "data"


def snapshot(cache: Path, repo_id: str) -> Path:
    """An empty snapshot folder of `repo_id` at COMMIT (or the commit weights.py pins for it), with refs/main pointing
    at it (huggingface_hub's layout)."""
    commit = weights.DISTILL_LORA_REVISION if repo_id == weights.DISTILL_LORA_REPO else COMMIT
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    folder = repo / "snapshots" / commit
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_release(cache: Path) -> torch.nn.Module:
    """Tiny checkpoints of every component in the release's formats; returns the transformer they came from."""
    tiny = wan_models.build_tiny_models(seed=0, motion_encoder_size=512)  # release motion-encoder layout
    original = snapshot(cache, weights.WAN_ANIMATE_REPO)
    release_checkpoints.write_original_checkpoint(tiny.transformer, original, num_shards=2)
    release_checkpoints.write_relighting_checkpoint(tiny.transformer, original / "relighting_lora.ckpt")
    # One confident person box over the middle of the 640x640 detector input: x1, y1, x2, y2, score, class.
    (original / "process_checkpoint/det").mkdir(parents=True)
    write_detector(original / "process_checkpoint/det/yolov10m.onnx", np.array([[160, 60, 480, 620, 0.9, 0]]))
    weight = np.random.default_rng(0).normal(size=(133, 3)).astype(np.float32)
    write_vitpose(original / "process_checkpoint/pose2d/vitpose_h_wholebody.onnx", weight)
    keys = json.loads((DATA / "sam2_hiera_tiny_keys.json").read_text())["keys"]
    generator = torch.Generator().manual_seed(0)
    sam2 = {key: torch.randn(shape, generator=generator) * 0.02 for key, shape in keys.items()}
    (original / "process_checkpoint/sam2").mkdir(parents=True)
    torch.save({"model": sam2}, original / "process_checkpoint/sam2/sam2_hiera_large.pt")

    diffusers_repo = snapshot(cache, weights.WAN_ANIMATE_DIFFUSERS_REPO)
    tiny.vae.save_pretrained(diffusers_repo / "vae")
    tiny.text_encoder.save_pretrained(diffusers_repo / "text_encoder")
    tiny.tokenizer.save_pretrained(diffusers_repo / "tokenizer")
    tiny.image_encoder.save_pretrained(diffusers_repo / "image_encoder")
    tiny.image_processor.save_pretrained(diffusers_repo / "image_processor")
    (diffusers_repo / "transformer").mkdir()
    (diffusers_repo / "transformer" / "config.json").write_text(tiny.transformer.to_json_string())

    distill_repo = snapshot(cache, weights.DISTILL_LORA_REPO)
    release_checkpoints.write_lightx2v_lora(tiny.transformer, distill_repo / weights.DISTILL_LORA_FILE, rank=4, seed=1)
    return tiny.transformer


@pytest.fixture(scope="module")
def full_app(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, torch.nn.Module]:
    cache = tmp_path_factory.mktemp("hub")
    source = write_release(cache)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        app = inference.App()
        asyncio.run(app.setup(inference.AppSetup(preset="full", cache_dir=str(cache))))
    yield app, source
    asyncio.run(app.unload())


def test_setup_loads_every_component_from_the_cache(full_app: tuple[object, torch.nn.Module]) -> None:
    app, source = full_app
    models = app.runtime.wan_models
    assert app.runtime.preset == "full" and models.relighting_adapter is not None
    # The distillation LoRA: every pair an adapter layer, every difference kept for its parameter, all inactive.
    from safetensors.torch import load_file

    distill_file = next(Path(app.setup_options.cache_dir).glob(f"models--lightx2v--*/snapshots/*/{weights.DISTILL_LORA_FILE}"))
    state = load_file(str(distill_file))
    adapted = [m for m in models.transformer.modules() if models.distill.adapter_name in getattr(m, "lora_A", {})]
    assert 2 * len(adapted) + len(models.distill.deltas) == len(state) and not models.distill.applied
    # PEFT wraps the linears the LoRAs target: their weights sit under `.base_layer.`.
    loaded = {k.replace(".base_layer.", "."): v for k, v in models.transformer.state_dict().items() if "lora_" not in k}
    # The original layout converts back to the same weights, at bf16 precision (the release is bf16; the loader
    # reads it in bf16 and restores float32 storage for the modules diffusers keeps in float32).
    assert set(loaded) == set(source.state_dict())
    for key, value in source.state_dict().items():
        assert torch.equal(loaded[key].float(), value.to(torch.bfloat16).float()), key
    assert loaded["scale_shift_table"].dtype == torch.float32 and loaded["blocks.0.attn1.to_q.weight"].dtype == torch.bfloat16
    assert type(app.runtime.preprocess_models.segmenter).__name__ == "Sam2VideoSegmenter"
    assert models.text_encoder.config.d_model == 32  # the tiny UMT5 written above, not a default


@pytest.mark.parametrize(("mode", "distill"), [("animation", False), ("replacement", False), ("replacement", True)])
def test_a_request_runs_through_the_full_preset(
    full_app: tuple[object, torch.nn.Module], mode: str, distill: bool
) -> None:
    app, _ = full_app
    # distill (with relighting in replacement mode): the LoRA's own 4 Euler steps
    steps = {} if distill else {"sampling_steps": 1}
    request = inference.AppInput(
        driving_video={"path": str(EXAMPLE / "driving.mp4")}, reference_image={"path": str(EXAMPLE / "reference.jpg")},
        mode=mode, resolution_width=512, resolution_height=512, fps=2, clip_len=5, seed=5, distill=distill, **steps,
    )  # fmt: skip
    output = asyncio.run(app.run(request))
    assert Path(output.video.path).is_file() and output.num_frames == 4
    assert output.output_meta.outputs[0].extra["sampling_steps"] == (4 if distill else 1)
    assert not app.runtime.wan_models.distill.applied


def test_offloaded_workers_load_the_pose_models_and_sam2_per_request(full_app: tuple[object, torch.nn.Module]) -> None:
    """`per_request` (offloaded workers): the ONNX sessions and SAM2 exist only inside the request's block, and are
    gone after it even while the caller still holds the models object; resident models pass through unchanged."""
    import gc
    import weakref

    from PIL import Image

    model_loading = import_app_module("preprocess.model_loading")
    app, _ = full_app
    paths, cpu = app.runtime.weight_paths, torch.device("cpu")
    base = model_loading.load_preprocess_models(paths, cpu, per_request=True)
    assert base.pose_estimator is None and base.segmenter is None
    frame = np.asarray(Image.open(EXAMPLE / "reference.jpg").convert("RGB"))
    with model_loading.models_for_request(base, paths, cpu) as models:
        assert type(models.segmenter).__name__ == "Sam2VideoSegmenter" and models.flux is base.flux
        session = weakref.ref(models.pose_estimator.pose.runner.session)
        segmenter = weakref.ref(models.segmenter)
        assert len(models.pose_estimator(frame[None])) == 1  # the tiny ONNX models run
    gc.collect()
    assert session() is None and segmenter() is None
    assert models.pose_estimator is None and base.pose_estimator is None
    with model_loading.models_for_request(app.runtime.preprocess_models, paths, cpu) as resident:
        assert resident is app.runtime.preprocess_models
    assert resident.pose_estimator is not None
