"""benchmarks/kernel_profile.py: CUDA kernel names sorted into the kinds bench_forward's --profile table sums."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import kernel_profile as kp  # noqa: E402


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("void flash::FlashAttnFwdSm90<flash::CollectiveMainloopFwdSm90<2, cute::tuple<...>>>", "attention"),
        ("cudnn_generated_fort_native_sdpa_sm90_knob_7_64x128x128_4x1x1_kernel0_0", "attention"),
        ("void cutlass::device_kernel<at::cuda::detail::f8f8bf16_rowwise_kernel<...>>", "gemm_fp8"),
        ("nvjet_tst_256x128_64x4_2x1_v_bz_coopB_TNT", "gemm"),
        ("nvjet_sm90_qqtst_192x208_128x4_2x1_v_bz_coopB_bias_TNT", "gemm_fp8"),
        ("triton_poi_fused__scaled_mm__to_copy_clamp_div_t_view_15", "triton_fused"),
        ("triton_poi_fused__to_copy_clamp_clamp_min_div_fa3_fp8_attention_mean_mul_ones_like_reciprocal_0", "triton_fused"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1", "gemm"),
        ("triton_per_fused__to_copy_add_mul_native_layer_norm_0", "triton_fused"),
        ("void at::native::elementwise_kernel<128, 2, ...>", "other"),
    ],
)
def test_kernel_kinds(name: str, kind: str):
    assert kp.kernel_kind(name) == kind


def test_profile_markdown_lists_kinds_with_their_share():
    profile = {"wall_s": 2.0, "total_kernel_s": 1.5, "by_kind_s": {"attention": 1.0, "gemm": 0.5},
               "top_kernels": [{"name": "flash_fwd", "kind": "attention", "calls": 40, "s": 1.0}]}  # fmt: skip
    text = "\n".join(kp.profile_markdown("fast", "720p", profile))
    assert "| attention | 1.000 | 66.7% |" in text and "| `flash_fwd` | attention | 40 | 1.0000 |" in text
