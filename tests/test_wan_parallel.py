"""Context (sequence) parallel generation: the shard-aware face adapter, the plan's pieces, and 2-process runs
under torchrun (gloo on CPU; NCCL on GPUs) that must equal one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from wan_animate.wan import attention_kernels, distributed, parallel, speed

APP_ROOT = Path(__file__).resolve().parents[1]
WORKER = APP_ROOT / "tests" / "cp_worker.py"


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


# --- the face adapter on shards ---------------------------------------------------------------------------------------


def face_adapter(dim: int = 24, heads: int = 2, seed: int = 0) -> torch.nn.Module:
    from diffusers.models.transformers.transformer_wan_animate import WanAnimateFaceBlockCrossAttention

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = WanAnimateFaceBlockCrossAttention(dim, heads, dim // heads, cross_attention_dim_head=dim // heads)
        for param in module.parameters():  # non-trivial norms too
            torch.nn.init.normal_(param, std=0.5)
    return module.eval()


def test_frames_of_shard_covers_the_shard_with_whole_frames():
    assert parallel.frames_of_shard(0, 12, 6) == (0, 2, 0, 0)  # exactly frames 0-1
    assert parallel.frames_of_shard(15, 15, 6) == (2, 3, 3, 0)  # tokens 15..29: frames 2-4, 3 padded in front
    assert parallel.frames_of_shard(9, 9, 6) == (1, 2, 3, 0)
    assert parallel.frames_of_shard(7, 3, 8) == (0, 2, 7, 6)  # straddles frames 0 and 1
    assert parallel.frames_of_shard(9, 4, 8) == (1, 1, 1, 3)  # inside frame 1
    for start, length, per_frame in ((0, 1, 5), (4, 11, 5), (13, 2, 7)):
        first, count, front, back = parallel.frames_of_shard(start, length, per_frame)
        assert first * per_frame + front == start and (first + count) * per_frame - back == start + length
        assert 0 <= front < per_frame and 0 <= back < per_frame


@pytest.mark.parametrize(
    ("frames", "tokens_per_frame", "num_shards"),
    [(5, 12, 1), (5, 12, 2), (5, 12, 3), (5, 12, 4), (5, 12, 6), (7, 8, 8), (21, 6, 7), (3, 6, 2)],
)
def test_sharded_face_processor_on_every_shard_equals_diffusers_on_the_whole_sequence(
    frames: int, tokens_per_frame: int, num_shards: int
):
    """Shard boundaries mid-frame (e.g. 60 tokens of 12 per frame on 4 shards: 15 each) and shards smaller than a
    frame (56 tokens of 8 on 8 shards: 7 each) must give exactly what diffusers gives on all tokens at once."""
    module = face_adapter()
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, frames * tokens_per_frame, 24, generator=gen)  # [B, S, C]
    motion = torch.randn(2, frames, 5, 24, generator=gen)  # [B, T, N, C]
    with torch.no_grad():
        ref = module(hidden, motion)
        shard_len = hidden.shape[1] // num_shards
        pieces = []
        for index in range(num_shards):
            module.set_processor(parallel.ShardedFaceAttnProcessor(index, num_shards))
            pieces.append(module(hidden[:, index * shard_len : (index + 1) * shard_len], motion))
    torch.testing.assert_close(torch.cat(pieces, dim=1), ref, rtol=1e-5, atol=1e-6)


def test_diffusers_face_processor_on_a_mid_frame_shard_is_wrong():
    """Why the project's processor exists: diffusers' reshapes the shard as if it started at frame 0."""
    from diffusers.models.transformers.transformer_wan_animate import WanAnimateFaceBlockAttnProcessor

    module = face_adapter()
    gen = torch.Generator().manual_seed(1)
    hidden, motion = torch.randn(1, 30, 24, generator=gen), torch.randn(1, 5, 5, 24, generator=gen)
    with torch.no_grad():
        ref = module(hidden, motion)[:, 15:]
        module.set_processor(WanAnimateFaceBlockAttnProcessor())
        wrong = module(hidden[:, 15:], motion)
    assert rel_l2(wrong, ref) > 0.1


def test_sharded_face_processor_refuses_tokens_that_are_not_whole_frames():
    module = face_adapter()
    module.set_processor(parallel.ShardedFaceAttnProcessor(0, 2))
    with pytest.raises(ValueError, match="do not split into 5 latent frames"), torch.no_grad():
        module(torch.randn(1, 7, 24), torch.randn(1, 5, 5, 24))  # 14 tokens, 5 frames
    with pytest.raises(ValueError, match="out of range"):
        parallel.ShardedFaceAttnProcessor(2, 2)


def test_use_sharded_face_adapters_keeps_the_attention_backend():
    from wan_animate.wan.models import build_tiny_models

    transformer = build_tiny_models().transformer
    transformer.set_attention_backend("native")
    assert parallel.use_sharded_face_adapters(transformer, 1, 2) == len(transformer.face_adapter) == 1
    processor = transformer.face_adapter[0].processor
    assert isinstance(processor, parallel.ShardedFaceAttnProcessor)
    assert (processor.shard_index, processor.num_shards) == (1, 2)
    assert str(getattr(processor._attention_backend, "value", processor._attention_backend)) == "native"


# --- the plan and its checks ------------------------------------------------------------------------------------------


def test_plan_splits_tokens_and_rope_and_gathers_the_output():
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    plan = parallel.animate_cp_plan()
    assert set(plan) == {"rope", "blocks.0", "proj_out"}
    assert plan["rope"][0] == plan["rope"][1] == ContextParallelInput(split_dim=1, expected_dims=4, split_output=True)
    assert plan["blocks.0"]["hidden_states"] == ContextParallelInput(split_dim=1, expected_dims=3)
    assert plan["proj_out"] == ContextParallelOutput(gather_dim=1, expected_dims=3)


def test_config_per_mode_and_gpu_count():
    config = parallel.context_parallel_config("ulysses", 8, 40)
    assert (config.ulysses_degree, config.ring_degree) == (8, 1)
    config = parallel.context_parallel_config("ring", 3, 40)
    assert (config.ulysses_degree, config.ring_degree) == (1, 3)
    with pytest.raises(ValueError, match="3 does not divide them"):
        parallel.context_parallel_config("ulysses", 3, 40)
    with pytest.raises(ValueError, match="at least 2"):
        parallel.context_parallel_config("ring", 1, 40)
    with pytest.raises(ValueError, match="must be one of"):
        parallel.context_parallel_config("tensor", 2, 40)


def test_unsupported_combinations_are_refused():
    from wan_animate.wan.models import build_tiny_models

    transformer = build_tiny_models().transformer
    with pytest.raises(RuntimeError, match="torchrun"):
        parallel.enable_context_parallel(transformer, "ulysses")  # no process group
    with pytest.raises(ValueError, match="log-sum-exp"):
        parallel.check_context_parallel_support(transformer, "ring")  # CPU: plain SDPA, no LSE
    parallel.check_context_parallel_support(transformer, "ulysses")
    speed.use_self_attention_fn(transformer, attention_kernels.sdpa_attention)
    with pytest.raises(ValueError, match="do not split across GPUs"):
        parallel.check_context_parallel_support(transformer, "ulysses")
    with pytest.raises(ValueError, match="cannot be combined"):
        speed.apply_speed_options(transformer, speed.SpeedOptions(context_parallel="ulysses", fp8_attention=True))


def test_distributed_env_from_torchrun_variables():
    assert distributed.distributed_env({}) == distributed.DistributedEnv(0, 1, 0)
    env = distributed.distributed_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3"})
    assert env.is_parallel and not env.is_main and env.local_rank == 3
    with pytest.raises(ValueError, match="inconsistent"):
        distributed.distributed_env({"RANK": "2", "WORLD_SIZE": "2"})
    assert distributed.broadcast_value(5) == 5 and distributed.gather_values(5) == [5]  # no process group: itself


# --- frame sizes the ranks can split ----------------------------------------------------------------------------------


def test_common_sizes_split_unchanged():
    for height, width in ((720, 1280), (1280, 720), (480, 832), (960, 960)):
        for world in (2, 4, 8):
            assert parallel.parallel_frame_size(height, width, 77, world) == (height, width)
    assert parallel.clip_tokens(77, 720, 1280) == 75_600 and parallel.clip_tokens(77, 480, 832) == 32_760


def test_odd_token_grids_lose_the_fewest_pixels():
    # 4:3 at the 720p area: 1104x816 = 69x51 tokens per frame, 21 frames: odd, so 2 GPUs cannot split it evenly.
    assert parallel.clip_tokens(77, 816, 1104) % 2 == 1
    height, width = parallel.parallel_frame_size(816, 1104, 77, 2)
    assert (height, width) == (816, 1088)  # 16 pixels off the width: 51 tokens per frame lost (69 off the height)
    assert parallel.parallel_frame_size(816, 1104, 81, 2) == (816, 1104)  # 22 latent frames: already even
    for height, width, clip_len, world in ((816, 1104, 77, 8), (592, 1008, 49, 4), (528, 944, 77, 5), (16, 16, 5, 3)):
        h, w = parallel.parallel_frame_size(height, width, clip_len, world)
        assert parallel.clip_tokens(clip_len, h, w) % world == 0
        assert h % 16 == w % 16 == 0 and height - h < 16 * world and width - w < 16 * world


def test_center_crop_keeps_the_middle_of_every_spatial_input():
    from tiny_conditioning import tiny_conditioning  # imports preprocess/ (not on the GPU test machines)

    cond = tiny_conditioning(3, height=48, width=64, mode="replacement", seed=2)
    cropped = parallel.center_crop_conditioning(cond, 32, 64)
    assert (cropped.height, cropped.width, cropped.num_frames) == (32, 64, 3)
    np.testing.assert_array_equal(cropped.pose_frames, cond.pose_frames[:, 8:40])
    np.testing.assert_array_equal(cropped.reference, cond.reference[8:40])
    np.testing.assert_array_equal(cropped.background_frames, cond.background_frames[:, 8:40])
    np.testing.assert_array_equal(cropped.mask_frames, cond.mask_frames[:, 8:40])
    assert cropped.face_frames is cond.face_frames
    assert parallel.center_crop_conditioning(cond, 48, 64) is cond
    with pytest.raises(ValueError, match="larger"):
        parallel.center_crop_conditioning(cond, 64, 64)


def test_center_crop_of_frames_on_disk_reads_nothing_until_a_clip_is_read(tmp_path):
    import dataclasses

    from tiny_conditioning import tiny_conditioning
    from wan_animate.preprocess.frame_store import FrameStore

    cond = tiny_conditioning(3, height=48, width=64, mode="replacement", seed=2)
    stores = {}
    for name in ("background_frames", "mask_frames"):
        frames = getattr(cond, name)
        stores[name] = FrameStore(len(frames), frames.shape[1:], tmp_path)
        stores[name][:] = frames
    on_disk = dataclasses.replace(cond, **stores)
    cropped = parallel.center_crop_conditioning(on_disk, 32, 64)
    assert isinstance(cropped.background_frames, FrameStore) and isinstance(cropped.mask_frames, FrameStore)
    assert cropped.background_frames.shape == (3, 32, 64, 3) and cropped.mask_frames.shape == (3, 32, 64)
    np.testing.assert_array_equal(cropped.background_frames[[2, 0]], cond.background_frames[[2, 0], 8:40])
    np.testing.assert_array_equal(cropped.mask_frames, cond.mask_frames[:, 8:40])


# --- two processes under torchrun -------------------------------------------------------------------------------------


def run_worker(out_dir: Path, nproc: int, device: str, mode: str, checks: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        str(WORKER), str(out_dir), "--device", device, "--mode", mode, "--checks", checks,
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=APP_ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def load_results(out_dir: Path, check: str, nproc: int) -> list[dict[str, torch.Tensor]]:
    return [torch.load(out_dir / f"{check}.rank{rank}.pt") for rank in range(nproc)]


def test_two_processes_on_cpu_equal_one_forward_compiled_forward_and_generate(tmp_path: Path):
    """2 ranks (gloo, ulysses) with the shard boundary mid-frame: a transformer forward, the same forward with the
    blocks compiled (fullgraph, aot_eager), and a whole generate() of 2 clips x 2 guided steps, each equal to one
    process up to float32 rounding on every rank; diffusers' face processor under the same split is not."""
    run_worker(tmp_path, 2, "cpu", "ulysses", "forward,compile,generate")
    for rank, result in enumerate(load_results(tmp_path, "forward", 2)):
        assert result["local_tokens"] == 15, "each rank must see half of the 30 tokens"
        torch.testing.assert_close(result["parallel"], result["reference"], rtol=1e-5, atol=1e-5, msg=f"rank {rank}")
        assert rel_l2(result["unpatched"], result["reference"]) > 0.05
        torch.testing.assert_close(result["disabled"], result["reference"], rtol=1e-5, atol=1e-5)
    for rank, result in enumerate(load_results(tmp_path, "compile", 2)):
        assert result["local_tokens"] == 15
        torch.testing.assert_close(result["parallel"], result["reference"], rtol=1e-5, atol=1e-5, msg=f"rank {rank}")
        torch.testing.assert_close(result["parallel_again"], result["reference"], rtol=1e-5, atol=1e-5)
    for rank, result in enumerate(load_results(tmp_path, "generate", 2)):
        assert result["local_tokens"] == 15
        assert result["reference"].shape == (21, 3, 32, 48)
        torch.testing.assert_close(result["parallel"], result["reference"], rtol=1e-5, atol=1e-5, msg=f"rank {rank}")


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["ulysses", "ring"])
def test_cuda_two_gpus_equal_one_in_bf16(tmp_path: Path, mode: str):
    """The same on 2 GPUs (NCCL, cuDNN attention, bf16), eager and inductor-compiled: ring merges two partial
    attentions by their LSE, so equality is up to bf16 rounding."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    run_worker(tmp_path, 2, "cuda", mode, "forward,compile")
    for check in ("forward", "compile"):
        for rank, result in enumerate(load_results(tmp_path, check, 2)):
            deviation = rel_l2(result["parallel"], result["reference"])
            print(f"{mode} {check} rank {rank}: rel L2 vs one GPU {deviation:.2e}")
            assert result["local_tokens"] == 15
            assert deviation < 2e-2
            if "unpatched" in result:
                assert rel_l2(result["unpatched"], result["reference"]) > 0.05


@pytest.mark.slow
def test_parallel_benchmark_tiny_smoke_run(tmp_path: Path):
    """benchmarks/bench_parallel.py --tiny under torchrun on 2 CPU processes: runs, and its split forward equals the
    unsplit one (the script exits 1 otherwise)."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        str(APP_ROOT / "benchmarks" / "bench_parallel.py"), "--tiny", "--out", str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=APP_ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "| 2 | tiny | 120 | ulysses |" in result.stdout
    assert (tmp_path / "results.json").is_file() and (tmp_path / "results.md").is_file()
