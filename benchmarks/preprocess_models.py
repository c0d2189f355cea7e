"""Random-weight stand-ins for the released preprocessing models, at full size, in the formats the app reads.

The release's files (Wan-AI/Wan2.2-Animate-14B `process_checkpoint/`) cannot be downloaded here, so the preprocessing
benchmark builds models of the same architecture and size and writes them where and how the app's loaders expect:

- `ViTPoseWholeBody`: ViTPose-H whole-body (ViTPose's `ViTPose_huge_wholebody_256x192` config): a ViT-H/16 backbone
  (embed 1280, depth 32, 16 heads, MLP 5120, qkv bias, LayerNorm eps 1e-6, a learned position embedding of
  1 + 16x12 tokens added as `pos[1:] + pos[0]`, final LayerNorm) on a 256x192 crop (16x12 patches: the patch
  convolution pads by 2, as ViTPose's), then the classic heatmap head: two 4x4 stride-2 transposed convolutions
  with 256 channels (no bias) + BatchNorm + ReLU, and a 1x1 convolution to 133 heatmaps of 64x48. Exported to
  `<folder>/end2end.onnx` + external weights, the release's layout (`preprocess.pose.resolve_pose_onnx`).
- `YoloV10` (benchmarks/random_yolov10.py): YOLOv10 with the layer list of ultralytics' `yolov10m.yaml`, exported
  here to one .onnx file with the released graph's end-to-end (N, 300, 6) output.
- `write_sam2_release_checkpoint`: SAM2 in the release's `sam2_hiera_large.pt` format (`{"model": state dict}` with
  the original SAM2 key names), filled with transformers' own random initialisation of `Sam2VideoModel`.

Weights are random, so a few output biases are set so that downstream stages do their full work (see `_plausible_*`):
people are detected in every frame and every keypoint scores above the drawing threshold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from random_yolov10 import DET_SIZE, YOLOV10M, YoloScale, random_yolov10
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
SAM2_KEYS = {
    "hiera_large": REPO_ROOT / "tests" / "data" / "sam2_hiera_large_keys.json",
    "hiera_tiny": REPO_ROOT / "tests" / "data" / "sam2_hiera_tiny_keys.json",
}

# ---------------------------------------------------------------------------------------------------
# ViTPose whole-body


@dataclass(frozen=True)
class VitPoseSize:
    """Backbone and head widths of a ViTPose model (the input is always 256x192, the output 133 x 64 x 48)."""

    dim: int = 1280
    depth: int = 32
    heads: int = 16
    mlp: int = 5120
    head_channels: int = 256


VITPOSE_H = VitPoseSize()
VITPOSE_TINY = VitPoseSize(dim=64, depth=2, heads=2, mlp=256, head_channels=32)
POSE_INPUT_HW = (256, 192)
NUM_KEYPOINTS = 133
PATCH = 16


class VitBlock(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x)); attention written out (MatMul, Softmax)."""

    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, mlp)
        self.fc2 = nn.Linear(mlp, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        weights = (q * (dim // self.heads) ** -0.5) @ k.transpose(-2, -1)
        mixed = (weights.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, tokens, dim)
        x = x + self.proj(mixed)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViTPoseWholeBody(nn.Module):
    """(N, 3, 256, 192) normalised crops -> (N, 133, 64, 48) heatmaps."""

    def __init__(self, size: VitPoseSize = VITPOSE_H) -> None:
        super().__init__()
        rows, cols = POSE_INPUT_HW[0] // PATCH, POSE_INPUT_HW[1] // PATCH
        self.grid = (rows, cols)
        self.patch_embed = nn.Conv2d(3, size.dim, PATCH, stride=PATCH, padding=2)  # ViTPose pads by 2: 16x12 patches
        self.pos_embed = nn.Parameter(torch.zeros(1, rows * cols + 1, size.dim))  # +1: the pretraining class token
        self.blocks = nn.ModuleList(VitBlock(size.dim, size.heads, size.mlp) for _ in range(size.depth))
        self.last_norm = nn.LayerNorm(size.dim, eps=1e-6)
        c = size.head_channels
        self.head = nn.Sequential(
            nn.ConvTranspose2d(size.dim, c, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
            nn.ConvTranspose2d(c, c, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, NUM_KEYPOINTS, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = tokens + self.pos_embed[:, 1:] + self.pos_embed[:, :1]
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.last_norm(tokens)
        features = tokens.transpose(1, 2).reshape(x.shape[0], -1, *self.grid)
        return self.head(features)


def random_vitpose(size: VitPoseSize = VITPOSE_H, seed: int = 0) -> ViTPoseWholeBody:
    """ViTPose with ViTPose's initialisation (truncated normal 0.02 for linears and the position embedding)."""
    torch.manual_seed(seed)
    model = ViTPoseWholeBody(size)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(model.pos_embed, std=0.02)
        _plausible_heatmaps(model.head[-1])
    return model.eval()


def _plausible_heatmaps(final: nn.Conv2d, level: float = 0.6) -> None:
    """Heatmaps of about `level` plus small noise: every keypoint then scores above the drawing threshold (0.5)
    and the face-usability threshold (0.3), so skeleton drawing and face cropping do all their work."""
    nn.init.normal_(final.weight, std=1e-3)
    nn.init.constant_(final.bias, level)


# ---------------------------------------------------------------------------------------------------
# ONNX export


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, external_data: bool, dynamo: bool = True) -> Path:
    """torch.onnx.export with a dynamic batch: input `input`, output `output`.

    `dynamo`: the torch.export-based exporter (opset 18; needs onnxscript), else TorchScript's (opset 17; deprecated,
    kept as a fallback should the dynamo exporter of another torch version refuse a model). `external_data`: weights
    in files beside the graph, as the released ViTPose folder keeps them (the TorchScript exporter does that by itself
    for models over 2 GB).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = {"input_names": ["input"], "output_names": ["output"]}
    with torch.no_grad():
        if dynamo:
            program = torch.onnx.export(
                model, (example,), dynamo=True, opset_version=18, dynamic_shapes={"x": {0: torch.export.Dim.AUTO}},
                external_data=external_data, verbose=False, **names,
            )  # fmt: skip
            program.save(str(path), external_data=external_data)
        else:
            torch.onnx.export(
                model, (example,), str(path), dynamo=False, opset_version=17,
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, **names,
            )  # fmt: skip
    return path


def export_with_fallback(model: nn.Module, example: torch.Tensor, path: Path, external_data: bool) -> Path:
    """`export_onnx` with the dynamo exporter, and with TorchScript's if that one fails (the error is printed)."""
    try:
        return export_onnx(model, example, path, external_data, dynamo=True)
    except Exception as error:  # noqa: BLE001 - any exporter failure: try the other exporter
        print(f"dynamo ONNX export of {type(model).__name__} failed ({type(error).__name__}: {str(error)[:300]}); "
              "retrying with the TorchScript exporter", flush=True)  # fmt: skip
        for stale in Path(path).parent.glob(Path(path).name + "*"):
            stale.unlink()
        return export_onnx(model, example, path, external_data, dynamo=False)


def write_vitpose_onnx(folder: Path, size: VitPoseSize = VITPOSE_H, seed: int = 0) -> Path:
    """`folder/end2end.onnx` + `end2end.onnx.data`: the released pose model's layout, random weights."""
    model = random_vitpose(size, seed)
    return export_with_fallback(model, torch.zeros(2, 3, *POSE_INPUT_HW), Path(folder) / "end2end.onnx", True)


def write_yolov10_onnx(path: Path, scale: YoloScale = YOLOV10M, seed: int = 0) -> Path:
    """One self-contained .onnx file (the release's yolov10m.onnx is 0.06 GB, under protobuf's 2 GB limit)."""
    model = random_yolov10(scale, seed)
    return export_with_fallback(model, torch.zeros(2, 3, DET_SIZE, DET_SIZE), Path(path), external_data=False)


# ---------------------------------------------------------------------------------------------------
# SAM2 in the release's checkpoint format


def original_sam2_state(variant: str = "hiera_large", seed: int = 0, device: Any = "cpu") -> dict[str, torch.Tensor]:
    """A state dict with the original SAM2 key names and shapes of `variant` (tests/data/sam2_<variant>_keys.json),
    holding transformers' random initialisation of Sam2VideoModel mapped back through the app's key conversion."""
    from transformers import Sam2VideoModel
    from wan_animate.preprocess import sam2_checkpoint

    shapes = json.loads(SAM2_KEYS[variant].read_text())["keys"]
    torch.manual_seed(seed)
    with torch.device(device):
        model = Sam2VideoModel(sam2_checkpoint.sam2_config(variant))
    initialised = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    point_prefix = "sam_prompt_encoder.point_embeddings."
    state: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        if key.startswith(point_prefix):  # four (1, C) tables in the original, one (4, C) table in transformers
            index = int(key[len(point_prefix) :].split(".")[0])
            value = initialised["prompt_encoder.point_embed.weight"][index : index + 1]
        else:
            value = initialised[sam2_checkpoint.original_to_hf_key(key)]
        if list(value.shape) != list(shape):
            raise ValueError(f"{key}: transformers gives {list(value.shape)}, the original has {shape}")
        state[key] = value.clone()
    return state


def write_sam2_release_checkpoint(path: Path, variant: str = "hiera_large", seed: int = 0, device: Any = "cpu") -> Path:
    """`path` (e.g. .../sam2_hiera_large.pt) as the release stores it: torch.save({"model": original state dict})."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": original_sam2_state(variant, seed, device)}, path)
    return path
