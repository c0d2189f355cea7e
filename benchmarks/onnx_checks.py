"""bench_preprocess's onnxruntime checks: which provider each session really runs on, the GPU memory onnxruntime
holds outside torch's pool, and each model's speed alone per batch size."""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def onnx_sessions(models: Any) -> dict[str, Any]:
    """The detector's and the pose model's onnxruntime sessions inside the app's pose estimator."""
    estimator = models.pose_estimator
    return {"detector": estimator.detector.runner.session, "pose": estimator.pose.runner.session}


def check_providers(sessions: dict[str, Any], want_cuda: bool) -> dict[str, Any]:
    """Active providers and options per session; SystemExit when a CUDA run silently fell back to the CPU."""
    import onnxruntime as ort
    from wan_animate.preprocess.detection import uses_cuda

    report: dict[str, Any] = {"onnxruntime": ort.__version__, "available": ort.get_available_providers()}
    for name, session in sessions.items():
        active = session.get_providers()
        options = session.get_provider_options().get("CUDAExecutionProvider", {})
        keep = ("device_id", "cudnn_conv_algo_search", "use_tf32", "arena_extend_strategy", "gpu_mem_limit")
        report[name] = {"active": active, "cuda_options": {k: options[k] for k in keep if k in options},
                        "input": [str(d) for d in session.get_inputs()[0].shape]}  # fmt: skip
        if want_cuda and not uses_cuda(session):
            raise SystemExit(
                f"FAIL: onnxruntime runs the {name} model on {active}, not CUDAExecutionProvider "
                f"(onnxruntime {ort.__version__}, available {ort.get_available_providers()}). Install onnxruntime-gpu "
                "built for this CUDA (and import torch first so its CUDA/cuDNN libraries are loaded)."
            )
    return report


def gpu_free_gib() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info()
    return free / 2**30


def onnx_gpu_gib(free_before: float) -> float:
    """GPU memory used since `free_before` outside torch's own pool: onnxruntime's weights and arena."""
    import torch

    return round(free_before - gpu_free_gib() - torch.cuda.memory_reserved() / 2**30, 2)


def onnx_throughput(session: Any, shape: tuple[int, ...], batches: tuple[int, ...], reps: int) -> dict[str, Any]:
    """Model-only speed of one session: median seconds per `session.run` at each batch size (after one warm-up)."""
    name = session.get_inputs()[0].name
    out: dict[str, Any] = {}
    for batch in batches:
        x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
        session.run(None, {name: x})
        times = []
        for _ in range(reps):
            began = time.perf_counter()
            session.run(None, {name: x})
            times.append(time.perf_counter() - began)
        median = float(np.median(times))
        out[f"batch {batch}"] = {"s_per_run": round(median, 4), "frames_per_s": round(batch / median, 1)}
    return out
