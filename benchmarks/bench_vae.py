"""The Wan VAE at full size: where a 720p clip's encode and decode time goes, and exact ways to cut it.

Builds diffusers' AutoencoderKLWan (the Wan 2.1 VAE, random weights) on the GPU and times, per variant, the two VAE
calls every clip pays in float32 (the app's default): the pose video's encode (77 frames) and the decode of one clip's
latents (20 latent frames). First a CUDA kernel profile of the eager decode and encode (convolutions against the
norms, activations, pads and copies around them), then variants that keep the float32 math and change only memory
layout or kernel fusion, each against eager on the same inputs (rel L2 of latents and frames, uint8 levels):

- `eager`: diffusers' VAE as it comes (the app's VAE until 2026-12-08).
- `channels_last`: the VAE's weights and inputs in `torch.channels_last_3d` (cuDNN's NDHWC convolutions).
- `norms_compiled`: every `WanRMS_norm` compiled (dynamic shapes: one graph for every frame size).
- `channels_last_norms_compiled`: both.
- `lean_convs`: the causal convs pad H and W inside the convolution instead of copying their inputs with F.pad, and
  `lean_norms`: the RMS norms in two passes after their reduction (`wan/vae_modules.py`).
- `app`: what the app runs (`set_vae_layout`: both lean modules, channels_last for float32 on CUDA).
- `eager_strict`: eager with cuDNN's TF32 off (true float32), the noise floor TF32 itself adds: run it
  first (`--variants eager_strict,eager,...`) and every row's deviation is measured against true float32.

Every other variant runs diffusers' own modules.

The first variant listed is the reference every row's `rel_l2_vs_first` is measured against. `--dtype bfloat16`
times the `vae_bf16` opt-in's VAE instead (the variants' layouts in bf16; `_strict` then changes nothing).

    python benchmarks/bench_vae.py --height 720 --width 1280 --out $OUT/vae
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from bench_encode import REPO_ROOT, log, rel_l2, timed, uint8_levels  # the same helpers as the whole-encoder bench

VARIANTS = (
    "eager", "channels_last", "norms_compiled", "channels_last_norms_compiled", "lean_convs", "lean_norms", "app",
    "eager_strict",
)  # fmt: skip


def set_variant(vae: torch.nn.Module, variant: str) -> torch.memory_format:
    """Put `vae` in `variant`'s layout and compile state (undoing the others); returns the inputs' memory format."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm
    from wan_animate.wan.vae_layout import conv3d_weights_to, vae_memory_format
    from wan_animate.wan.vae_modules import set_lean_modules

    channels_last = variant.startswith("channels_last")
    # torch's default runs cuDNN convolutions in TF32 (matmuls stay float32); `_strict` turns that off
    torch.backends.cudnn.allow_tf32 = not variant.endswith("_strict")
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    if variant == "app":
        memory_format = vae_memory_format(next(vae.parameters()).dtype, next(vae.parameters()).device)
    set_lean_modules(vae, lean=variant in ("lean_convs", "app"), norms=False)
    set_lean_modules(vae, lean=variant in ("lean_norms", "app"), convs=False)
    conv3d_weights_to(vae, memory_format)
    for module in vae.modules():
        if isinstance(module, WanRMS_norm):
            if "norms_compiled" in variant:
                module.compile(dynamic=True)
            else:
                module._compiled_call_impl = None
    return memory_format


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--frames", type=int, default=77)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--reps", type=int, default=2, help="timed calls per variant after one warm-up call")
    parser.add_argument("--no-profile", action="store_true", help="skip the CUDA kernel profile (saves ~30 s)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="the VAE's dtype")
    parser.add_argument("--device", default="cuda", help="cpu: the full-size VAE on the CPU (small sizes only)")
    parser.add_argument("--tiny", action="store_true", help="a small VAE on the CPU at 64x48x9 (the test suite)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")) / "vae")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    from local_runner import load_app_package

    load_app_package()  # wan_animate: the app's own VAE weight layout helper
    from diffusers import AutoencoderKLWan
    from kernel_profile import profile_kernels
    from torch._dynamo.utils import counters

    if args.tiny:
        args.height, args.width, args.frames = 48, 64, 9
    device = torch.device("cpu" if args.tiny else args.device)
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=16) if args.tiny else AutoencoderKLWan()
    dtype = getattr(torch, args.dtype)
    vae = vae.to(device, dtype).eval().requires_grad_(False)
    generator = torch.Generator(device).manual_seed(0)
    video = torch.rand(1, 3, args.frames, args.height, args.width, device=device, generator=generator) * 2 - 1
    latents = torch.randn(1, 16, 1 + (args.frames - 1) // 4, args.height // 8, args.width // 8, device=device,
                          generator=generator)  # fmt: skip
    video, latents = video.to(dtype), latents.to(dtype)  # the rounding the app's bf16 VAE inputs get
    results: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"), "size": f"{args.width}x{args.height}x{args.frames}",
        "dtype": args.dtype,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn_version": torch.backends.cudnn.version(), "variants": [],
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        (args.out / "vae.json").write_text(json.dumps(results, indent=2))

    torch._dynamo.config.recompile_limit = 64  # the norms see many (shape, stride, dim) signatures; count them below
    with torch.no_grad():
        encode = lambda fmt: vae.encode(video.contiguous(memory_format=fmt)).latent_dist.mode()  # noqa: E731
        decode = lambda fmt: vae.decode(latents.contiguous(memory_format=fmt), return_dict=False)[0]  # noqa: E731
        encode(torch.contiguous_format), decode(torch.contiguous_format)  # cuDNN handles and allocator warm
        if device.type == "cuda" and not args.no_profile:
            results["profile_decode"] = profile_kernels(lambda: decode(torch.contiguous_format), top=15)
            results["profile_encode"] = profile_kernels(lambda: encode(torch.contiguous_format), top=15)
            log(f"decode by kind: {results['profile_decode']['by_kind_s']}")
            log(f"encode by kind: {results['profile_encode']['by_kind_s']}")
            save()
        reference: dict[str, torch.Tensor] = {}
        for variant in args.variants.split(","):
            fmt = set_variant(vae, variant)
            start = time.perf_counter()
            encode(fmt), decode(fmt)
            row: dict[str, Any] = {"variant": variant, "first_call_s": round(time.perf_counter() - start, 1)}
            reps = [(timed(lambda f=fmt: encode(f)), timed(lambda f=fmt: decode(f))) for _ in range(args.reps)]
            row["encode_s"] = min(r[0][0] for r in reps)
            row["decode_s"] = min(r[1][0] for r in reps)
            (_, lat), (_, frames) = reps[-1]
            outs = {"latents": lat.float().contiguous(), "frames": frames.float().contiguous()}
            if not reference:
                reference = {k: v.clone() for k, v in outs.items()}
            row["dynamo_graphs"] = int(counters["stats"]["unique_graphs"])
            row["rel_l2_vs_first"] = {k: rel_l2(v, reference[k]) for k, v in outs.items()}
            row["frames_uint8_levels_vs_first"] = uint8_levels(outs["frames"], reference["frames"])
            if device.type == "cuda":
                row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
                torch.cuda.reset_peak_memory_stats()
            results["variants"].append(row)
            log(json.dumps(row))
            save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
