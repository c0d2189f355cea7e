"""The app under torchrun (context parallel): worker settings it refuses, a request's offload_model it ignores, and how it makes a
clip splittable. The 2-process runs themselves are in test_wan_parallel.py and test_local_runner.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_conditioning import tiny_conditioning
from wan_animate.wan.distributed import DistributedEnv
from wan_animate.wan.parallel import clip_tokens

from local_runner import import_app_module

inference = import_app_module("inference")
job = import_app_module("job")
request_options = import_app_module("request_options")
worker = import_app_module("worker")
InputError = import_app_module("errors").InputError

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("setup", "world_size", "device", "field"),
    [
        ({"offload_model": True}, 2, CPU, "offload_model"),
        ({"attention": "fp8"}, 2, CPU, "attention"),
        ({"attention": "fp8"}, 2, torch.device("cuda", 0), "attention"),
        ({"context_parallel": "ulysses"}, 3, torch.device("cuda", 0), "context_parallel"),  # 40 heads
        ({"context_parallel": "ulysses", "preset": "smoke"}, 4, CPU, "context_parallel"),  # the tiny model's 2 heads
        ({"context_parallel": "ring"}, 2, CPU, "context_parallel"),  # no CPU kernel returns the LSE
        ({"context_parallel": "ring", "preset": "smoke"}, 2, torch.device("cuda", 0), "context_parallel"),
    ],
)
def test_worker_settings_a_parallel_job_cannot_run_are_refused_before_loading(setup, world_size, device, field):
    with pytest.raises(InputError) as info:
        worker._check_parallel_setup(inference.AppSetup(**setup), world_size, device)
    assert info.value.field == field


def test_worker_settings_a_parallel_job_runs():
    for setup, world_size, device in (
        ({}, 2, CPU),
        ({}, 8, torch.device("cuda", 0)),
        ({"context_parallel": "ring"}, 3, torch.device("cuda", 0)),
        ({"fp8": True, "compile": True}, 4, torch.device("cuda", 0)),
        ({"attention": "cudnn"}, 2, torch.device("cuda", 0)),  # through diffusers' dispatcher: it splits
    ):
        worker._check_parallel_setup(inference.AppSetup(**setup), world_size, device)


def test_one_process_is_not_a_parallel_job(monkeypatch: pytest.MonkeyPatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    dist, device = worker.start_distributed(inference.AppSetup(preset="smoke"))
    assert dist is None and device == worker.pick_device()


def parallel_runtime(world_size: int) -> object:
    return worker.Runtime(
        preset="smoke", device=CPU, preprocess_models=None, wan_models=None, dist=DistributedEnv(0, world_size, 0)
    )


def test_a_parallel_worker_ignores_a_requests_offload_model(caplog: pytest.LogCaptureFixture):
    # Like every resident worker (issue 15.7): each GPU holds the whole model, the request runs as if unset.
    inp = inference.AppInput(
        driving_video={"path": "/nonexistent.mp4"}, reference_image={"path": "/nonexistent.png"}, offload_model=True
    )
    with caplog.at_level("WARNING", logger="wan_animate"):
        assert request_options.ignore_request_offload(parallel_runtime(2), inp) is True
    assert any("offload_model=true in the request is ignored" in r.getMessage() for r in caplog.records)
    assert request_options.generation_options(inp, seed=0, loras=[]).offload == "none"


def test_a_clip_the_processes_cannot_split_evenly_is_centre_cropped():
    # 48x80 pixels = 3x5 tokens per frame; clip_len 5 = 3 latent frames: 45 tokens, odd.
    cond = tiny_conditioning(5, height=48, width=80, seed=1)
    assert clip_tokens(5, 48, 80) % 2 == 1
    split = job._split_conditioning(parallel_runtime(2), cond, clip_len=5)
    assert (split.height, split.width) == (48, 64)  # one 16-pixel column off: 3 tokens per frame (a row: 5)
    assert clip_tokens(5, split.height, split.width) % 2 == 0
    assert job._split_conditioning(parallel_runtime(2), cond, clip_len=9) is cond  # 4 latent frames: even
    r = worker.Runtime(preset="smoke", device=CPU, preprocess_models=None, wan_models=None)
    assert not r.context_parallel and r.is_main
    assert parallel_runtime(2).context_parallel and parallel_runtime(2).is_main



def _skeleton_conditioning(num_frames: int, height: int, width: int) -> object:
    """tiny_conditioning with its skeletons as preprocess() gives them: poses drawn when read."""
    import dataclasses

    from wan_animate.preprocess.pose_meta import PoseMeta
    from wan_animate.preprocess.skeleton_video import SkeletonVideo

    poses = []
    for t in range(num_frames):  # a neck-to-hip stick moving right
        meta = PoseMeta.empty(width, height)
        meta.body[1] = (10 + 4 * t, 8, 0.9)
        meta.body[8] = (12 + 4 * t, 40, 0.9)
        poses.append(meta)
    cond = tiny_conditioning(num_frames, height=height, width=width, seed=3)
    return dataclasses.replace(cond, pose_frames=SkeletonVideo(poses, (height, width)))


def test_a_skeleton_video_is_checked_and_cropped_without_drawing_every_frame(monkeypatch, caplog):
    from wan_animate.preprocess import skeleton_video
    from wan_animate.wan import distributed

    cond = _skeleton_conditioning(5, 48, 80)
    everything = np.asarray(cond.pose_frames)
    assert everything.max() > 0

    def draw(self, indices):  # the checksum and the crop must not draw the whole video
        raise AssertionError(f"drew {len(indices)} frames")

    monkeypatch.setattr(skeleton_video.SkeletonVideo, "draw", draw)
    split = job._split_conditioning(parallel_runtime(2), cond, clip_len=5)
    assert isinstance(split.pose_frames, skeleton_video.SkeletonVideo) and split.pose_frames.crop == (0, 8, 48, 64)
    monkeypatch.undo()
    np.testing.assert_array_equal(np.asarray(split.pose_frames), everything[:, :, 8:72])
    # the fingerprint follows the poses: one point moved, or two frames' poses swapped, changes it
    checksum = job.conditioning_checksum(cond)
    moved = cond.pose_frames.poses[2].body
    moved[1, 0] += 1
    assert job.conditioning_checksum(cond) != checksum
    moved[1, 0] -= 1
    poses = cond.pose_frames.poses
    poses[0], poses[1] = poses[1], poses[0]
    assert job.conditioning_checksum(cond) != checksum
    poses[0], poses[1] = poses[1], poses[0]
    assert job.conditioning_checksum(cond) == checksum
    # processes whose fingerprints differ are told about it
    shape = (cond.num_frames, cond.height, cond.width)
    monkeypatch.setattr(distributed, "gather_values", lambda value: [value, (shape, value[1] + 1)])
    with caplog.at_level("WARNING", logger="wan_animate"):
        job._split_conditioning(parallel_runtime(2), cond, clip_len=5)
    assert any("conditioning differs slightly" in r.getMessage() for r in caplog.records)
