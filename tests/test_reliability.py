"""A warm worker stays healthy: repeated jobs neither leak memory nor reload weights, temporary files are
removed on success and on failure, and GPU out-of-memory becomes a user error the worker recovers from."""

from __future__ import annotations

import asyncio
import gc
import os
import tempfile
from pathlib import Path

import psutil
import pytest

from local_runner import APP_ROOT, import_app_module

inference = import_app_module("inference")
worker_module = import_app_module("worker")
InputError = import_app_module("errors").InputError
EXAMPLE = APP_ROOT / "examples" / "smoke"


def smoke_input(**overrides: object) -> object:
    return inference.AppInput(
        driving_video={"path": str(EXAMPLE / "driving.mp4")},
        reference_image={"path": str(EXAMPLE / "reference.jpg")},
        resolution_width=512,
        resolution_height=512,
        fps=2,
        clip_len=5,
        sampling_steps=1,
        seed=1,
        **overrides,
    )


def run_dirs() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("wan-animate-run-")}


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp root of this test's own, so other processes' runs cannot show up in run_dirs()."""
    root = tmp_path / "tmproot"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


@pytest.mark.slow
def test_twenty_runs_in_one_process_do_not_grow_memory_or_reload_weights(
    smoke_app: object, monkeypatch: pytest.MonkeyPatch, private_tmp: Path
) -> None:
    """20 requests in one warm worker: RSS, open fds, threads and temp entries recorded after each."""
    wan = import_app_module("wan")
    loads = []
    monkeypatch.setattr(wan, "build_tiny_models", lambda *a, **k: loads.append(1))
    monkeypatch.setattr(worker_module, "load_runtime", lambda *a, **k: loads.append(1))
    transformer = smoke_app.runtime.wan_models.transformer
    process = psutil.Process()
    rss, fds, threads, temp_entries = [], [], [], []
    for _ in range(20):
        output = asyncio.run(smoke_app.run(smoke_input()))
        Path(output.video.path).unlink()
        gc.collect()
        rss.append(process.memory_info().rss)
        fds.append(process.num_fds())
        threads.append(process.num_threads())
        temp_entries.append(len(list(private_tmp.iterdir())))
    assert loads == [] and smoke_app.runtime.wan_models.transformer is transformer
    growth_mb = (rss[-1] - rss[1]) / 2**20  # run 1 warms caches (allocator pools, codec libraries)
    assert growth_mb < 100, f"RSS grew {growth_mb:.0f} MB over 18 runs: {[r // 2**20 for r in rss]}"
    last = rss[-15:]
    assert (max(last) - last[0]) / 2**20 < 100, f"RSS over the last 15 runs (MB): {[r // 2**20 for r in last]}"
    assert len(set(fds[-15:])) == 1, f"open fds per run: {fds}"
    assert len(set(threads[-15:])) == 1, f"threads per run: {threads}"
    assert max(temp_entries) <= 1, f"temp entries per run: {temp_entries}"  # at most the last run's output folder


def out_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.name.startswith("wan-animate-out-"))


def test_only_the_last_runs_output_stays_and_unload_removes_it(smoke_app: object, private_tmp: Path) -> None:
    """A long-running worker does not accumulate outputs: each run removes the previous run's output folder (the
    platform has uploaded it by then), unload removes the last."""
    outputs = []
    for _ in range(3):
        outputs.append(Path(asyncio.run(smoke_app.run(smoke_input())).video.path))
        assert out_dirs(private_tmp) == [outputs[-1].parent] and outputs[-1].is_file()
    assert not any(p.exists() for p in outputs[:-1])
    worker = inference.App()  # a second app on the same models, so unloading it leaves the shared fixture loaded
    worker.runtime = smoke_app.runtime
    last = Path(asyncio.run(worker.run(smoke_input())).video.path)
    assert last.is_file()
    worker.runtime = None
    asyncio.run(worker.unload())
    assert not last.exists() and out_dirs(private_tmp) == [outputs[-1].parent]


def test_temporary_files_are_removed_on_success_and_on_failure(smoke_app: object, tmp_path: Path, private_tmp: Path) -> None:
    before = run_dirs()
    assert before == set()
    output = asyncio.run(smoke_app.run(smoke_input()))
    assert Path(output.video.path).is_file()
    assert run_dirs() == before
    assert any(p.name.startswith("wan-animate-out-") for p in private_tmp.iterdir())  # the output stays
    tiny = tmp_path / "tiny.png"  # too small to use: refused inside the run, after its temp folder exists
    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(tiny)
    bad = smoke_input()
    bad.reference_image = inference.File(path=str(tiny))
    with pytest.raises(InputError) as info:
        asyncio.run(smoke_app.run(bad))
    assert (info.value.code, info.value.field) == ("image_too_small", "reference_image")
    assert run_dirs() == before


def synthetic_preprocess(driving: Path, reference: Path, options: object, models: object, should_cancel: object = None
                         ) -> object:  # fmt: skip
    """Stand-in for preprocessing (the GPU machine lacks the smoke pose model): mid-grey frames of the asked size."""
    import numpy as np

    pp = import_app_module("preprocess")
    width, height = options.resolution_width // 16 * 16, options.resolution_height // 16 * 16
    frames = 77 if options.fps == 30 else 4
    grey = np.full((frames, height, width, 3), 128, np.uint8)
    return pp.Conditioning(
        pose_frames=grey, face_frames=np.full((frames, 512, 512, 3), 128, np.uint8), reference=grey[0], fps=8.0
    )


@pytest.mark.gpu
def test_gpu_out_of_memory_is_a_user_error_and_the_worker_recovers(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    wan = import_app_module("wan")
    monkeypatch.setattr(import_app_module("preprocess"), "preprocess", synthetic_preprocess)
    app = inference.App()
    app.setup_options = inference.AppSetup(preset="smoke")
    app.runtime = worker_module.Runtime(
        preset="smoke", device=torch.device("cuda"), preprocess_models=None,
        wan_models=wan.build_tiny_models(device="cuda"),
    )  # fmt: skip
    baseline = torch.cuda.memory_allocated()
    torch.cuda.set_per_process_memory_fraction(0.002)  # ~160 MB of an 80 GB card
    try:
        big = smoke_input()
        big.resolution_width, big.resolution_height, big.clip_len, big.fps = 1920, 1080, 77, 30
        with pytest.raises(InputError) as info:
            asyncio.run(app.run(big))
        assert info.value.code == "gpu_out_of_memory"
        assert "resolution_width" in str(info.value) and "offload_model" in str(info.value)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert torch.cuda.memory_allocated() <= baseline + 64 * 2**20
    output = asyncio.run(app.run(smoke_input()))  # the same warm worker runs the next job
    assert Path(output.video.path).is_file() and output.num_frames == 4
