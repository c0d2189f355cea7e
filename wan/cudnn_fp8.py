"""cuDNN's fused FP8 attention (e4m3 Q, K, V, probabilities and output, per-tensor scales) through PyPI
`nvidia-cudnn-frontend`: the FP8 self-attention before fa3-fwd's, kept as a benchmark comparison (that package is not
in requirements.txt; the app's `attention: "fp8"` runs wan.attention_kernels.fa3_fp8_attention)."""

from __future__ import annotations

from typing import Any

import torch

from .attention_kernels import FP8_E4M3_MAX, register_attention_op


def quantize_fp8_per_tensor(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x -> (x * s as float8 e4m3, 1/s as a [1, 1, 1, 1] float32 tensor) with s = 448 / max|x|, all on the device
    (no host sync)."""
    amax = x.abs().amax().float().clamp_min(1e-12)
    scale = FP8_E4M3_MAX / amax
    x_fp8 = (x.float() * scale).to(torch.float8_e4m3fn)
    return x_fp8, (1.0 / scale).reshape(1, 1, 1, 1)


def _build_fp8_sdpa_plan(
    cudnn: Any, handle: Any, batch: int, seq_q: int, seq_kv: int, heads: int, head_dim: int, fp8_out: bool
):
    """A built cuDNN graph: FP8 Q, K, V in [B, S, H, D] memory order -> O in the same order, bf16 (or FP8 where
    cuDNN offers only that), softmax probabilities quantized with the fixed scale 448 (they lie in [0, 1] before
    normalisation)."""
    fp8, f32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
    graph = cudnn.pygraph(handle=handle, io_data_type=fp8, intermediate_data_type=f32, compute_data_type=f32)
    q_stride = [seq_q * heads * head_dim, head_dim, heads * head_dim, 1]  # [B, H, S, D] dims over BSHD memory
    kv_stride = [seq_kv * heads * head_dim, head_dim, heads * head_dim, 1]
    q = graph.tensor(name="q", dim=[batch, heads, seq_q, head_dim], stride=q_stride, data_type=fp8)
    k = graph.tensor(name="k", dim=[batch, heads, seq_kv, head_dim], stride=kv_stride, data_type=fp8)
    v = graph.tensor(name="v", dim=[batch, heads, seq_kv, head_dim], stride=kv_stride, data_type=fp8)
    scalars = {
        name: graph.tensor(name=name, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=f32)
        for name in ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o")
    }
    o, _, amax_s, amax_o = graph.sdpa_fp8(
        q, k, v, *scalars.values(), generate_stats=False, attn_scale=head_dim**-0.5, name="sdpa_fp8"
    )
    o.set_output(True).set_dim([batch, heads, seq_q, head_dim]).set_stride(q_stride)
    o.set_data_type(fp8 if fp8_out else cudnn.data_type.BFLOAT16)
    for amax in (amax_s, amax_o):
        amax.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(f32)
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    tensors = {"q": q, "k": k, "v": v, "o": o, "amax_s": amax_s, "amax_o": amax_o, **scalars}
    return graph, tensors, graph.get_workspace_size()


# Built cuDNN plans per shape (and one handle per device), kept for the process like torch keeps its own cuDNN plans.
_PLANS: dict[tuple, Any] = {}


def _cudnn_fp8_impl(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    import cudnn

    batch, seq_q, heads, head_dim = query.shape
    seq_kv = key.shape[1]
    device = query.device
    handle_key = ("handle", device.index)
    if handle_key not in _PLANS:
        with torch.cuda.device(device):
            _PLANS[handle_key] = cudnn.create_handle()
    handle = _PLANS[handle_key]
    cudnn.set_stream(handle=handle, stream=torch.cuda.current_stream(device).cuda_stream)
    shape_key = (device.index, batch, seq_q, seq_kv, heads, head_dim)
    if shape_key not in _PLANS:
        try:
            _PLANS[shape_key] = (*_build_fp8_sdpa_plan(cudnn, handle, *shape_key[1:], fp8_out=False), False)
        except Exception as bf16_error:  # no bf16-output FP8 kernel in this cuDNN: FP8 output, scaled back below
            try:
                _PLANS[shape_key] = (*_build_fp8_sdpa_plan(cudnn, handle, *shape_key[1:], fp8_out=True), True)
            except Exception as fp8_error:
                raise RuntimeError(
                    f"cuDNN FP8 attention unavailable; bf16 output: {bf16_error!r}; fp8 output: {fp8_error!r}"
                ) from fp8_error
    graph, tensors, workspace_size, fp8_out = _PLANS[shape_key]

    q8, descale_q = quantize_fp8_per_tensor(query)
    k8, descale_k = quantize_fp8_per_tensor(key)
    v8, descale_v = quantize_fp8_per_tensor(value)
    one = torch.ones(1, 1, 1, 1, device=device, dtype=torch.float32)
    out_dtype = torch.float8_e4m3fn if fp8_out else torch.bfloat16
    out = torch.empty(batch, seq_q, heads, head_dim, device=device, dtype=out_dtype)
    # |O| <= max|V| (rows of softmax sum to 1); 10% headroom for the rounding of the FP8 probabilities.
    scale_o = 0.9 / descale_v if fp8_out else one
    buffers = {
        "q": q8.contiguous(),
        "k": k8.contiguous(),
        "v": v8.contiguous(),
        "o": out,
        "amax_s": torch.empty_like(one),
        "amax_o": torch.empty_like(one),
        "descale_q": descale_q,
        "descale_k": descale_k,
        "descale_v": descale_v,
        "descale_s": one / FP8_E4M3_MAX,
        "scale_s": one * FP8_E4M3_MAX,
        "scale_o": scale_o,
    }
    workspace = torch.empty(max(workspace_size, 1), device=device, dtype=torch.uint8)
    graph.execute({tensors[name]: buf for name, buf in buffers.items()}, workspace, handle=handle)
    if fp8_out:
        return (out.float() / scale_o).to(torch.bfloat16)
    return out


def cudnn_fp8_op() -> Any:
    return register_attention_op("cudnn_fp8_attention", _cudnn_fp8_impl, out_dtype=torch.bfloat16)


def cudnn_fp8_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """cuDNN fused attention with FP8 (e4m3) Q, K, V and per-tensor scales on [B, S, H, D] CUDA tensors; bf16 out.

    On Hopper cuDNN (9.19) writes the output in FP8 too (bf16 output is Blackwell-only), scaled back here."""
    return cudnn_fp8_op()(query.contiguous(), key.contiguous(), value.contiguous())
