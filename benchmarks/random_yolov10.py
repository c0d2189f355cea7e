"""A random-weight YOLOv10m, the stand-in for the release's person detector (`yolov10m.onnx`), and the helpers that
make random weights detect people.

The layer list of ultralytics' `yolov10m.yaml` (scale m: depth 0.67, width 0.75, max 768 channels), our own
implementation; only the one-to-one (NMS-free) head runs at inference, as in the released graph, and its end-to-end
output is (N, 300, 6): x1, y1, x2, y2 in 640x640 input pixels, score, class (what `preprocess.detection.decode_end2end`
reads). tests/test_bench_preprocess.py checks its size (YOLOv10-M's 15.4M parameters) and output; it was compared
with ultralytics' own model on shared weights while ultralytics (AGPL-3.0, no longer installed) was a test
dependency. `preprocess_models.write_yolov10_onnx` exports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class YoloScale:
    """ultralytics' compound scaling: repeats x depth (rounded), channels x width (multiple of 8), capped."""

    depth: float = 0.67
    width: float = 0.75
    max_channels: int = 768

    def channels(self, c: int) -> int:
        return int(math.ceil(min(c, self.max_channels) * self.width / 8) * 8)

    def repeats(self, n: int) -> int:
        return max(round(n * self.depth), 1) if n > 1 else n


YOLOV10M = YoloScale()
YOLOV10_TINY = YoloScale(depth=0.33, width=0.125, max_channels=1024)
NUM_CLASSES = 80
REG_MAX = 16  # distribution bins per box side
MAX_DET = 300
DET_SIZE = 640


class ConvBnAct(nn.Module):
    """Convolution (no bias, 'same' padding) + BatchNorm (eps 1e-3) + SiLU (or nothing)."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1, groups: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def depthwise(c: int, k: int = 3, s: int = 1, act: bool = True) -> ConvBnAct:
    return ConvBnAct(c, c, k, s, groups=c, act=act)


class Bottleneck(nn.Module):
    """Two 3x3 convolutions, with a residual connection when asked."""

    def __init__(self, c: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = ConvBnAct(c, c, 3)
        self.cv2 = ConvBnAct(c, c, 3)
        self.residual = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.residual else y


class CompactInvertedBlock(nn.Module):
    """YOLOv10's CIB: depthwise 3x3, pointwise to 2c, depthwise 3x3, pointwise back, depthwise 3x3 (+ residual)."""

    def __init__(self, c: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = nn.Sequential(
            depthwise(c), ConvBnAct(c, 2 * c), depthwise(2 * c), ConvBnAct(2 * c, c), depthwise(c)
        )
        self.residual = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv1(x)
        return x + y if self.residual else y


class SplitBlocks(nn.Module):
    """C2f / C2fCIB: a 1x1 conv split in two halves, n blocks chained on the second, every output concatenated."""

    def __init__(self, c_in: int, c_out: int, n: int, shortcut: bool, cib: bool = False) -> None:
        super().__init__()
        self.hidden = c_out // 2
        self.cv1 = ConvBnAct(c_in, 2 * self.hidden)
        self.cv2 = ConvBnAct((2 + n) * self.hidden, c_out)
        block = CompactInvertedBlock if cib else Bottleneck
        self.m = nn.ModuleList(block(self.hidden, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = list(self.cv1(x).chunk(2, 1))
        for block in self.m:
            parts.append(block(parts[-1]))
        return self.cv2(torch.cat(parts, 1))


class SpatialChannelDown(nn.Module):
    """YOLOv10's SCDown: pointwise channel change, then a depthwise stride-2 convolution (no activation)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.cv1 = ConvBnAct(c_in, c_out)
        self.cv2 = depthwise(c_out, 3, 2, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv2(self.cv1(x))


class FastPyramidPool(nn.Module):
    """SPPF: halve the channels, three chained 5x5 max-pools, concatenate the four, 1x1 conv."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.cv1 = ConvBnAct(c_in, c_in // 2)
        self.cv2 = ConvBnAct(c_in // 2 * 4, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.cv1(x)]
        for _ in range(3):
            parts.append(F.max_pool2d(parts[-1], 5, 1, 2))
        return self.cv2(torch.cat(parts, 1))


class ConvAttention(nn.Module):
    """Multi-head attention over all positions with 1x1-conv projections (keys half the head width) and a
    depthwise 3x3 positional term on the values."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.key_dim = self.head_dim // 2
        self.qkv = ConvBnAct(dim, dim + 2 * self.key_dim * heads, act=False)
        self.proj = ConvBnAct(dim, dim, act=False)
        self.pe = depthwise(dim, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        qkv = self.qkv(x).view(batch, self.heads, 2 * self.key_dim + self.head_dim, height * width)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.head_dim], dim=2)
        weights = ((q.transpose(-2, -1) @ k) * self.key_dim**-0.5).softmax(dim=-1)
        mixed = (v @ weights.transpose(-2, -1)).view(batch, channels, height, width)
        return self.proj(mixed + self.pe(v.reshape(batch, channels, height, width)))


class PartialSelfAttention(nn.Module):
    """YOLOv10's PSA: split in two halves, attention + feed-forward (both residual) on one, concatenate, 1x1 conv."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.hidden = c // 2
        self.cv1 = ConvBnAct(c, 2 * self.hidden)
        self.cv2 = ConvBnAct(2 * self.hidden, c)
        self.attn = ConvAttention(self.hidden, heads=self.hidden // 64)
        self.ffn = nn.Sequential(ConvBnAct(self.hidden, 2 * self.hidden), ConvBnAct(2 * self.hidden, self.hidden, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).split((self.hidden, self.hidden), dim=1)
        b = b + self.attn(b)
        b = b + self.ffn(b)
        return self.cv2(torch.cat((a, b), 1))


class OneToOneHead(nn.Module):
    """YOLOv10's NMS-free head on P3/P4/P5: per level a box branch (4 x 16 distance bins) and a light class branch;
    boxes decoded from the bins' expectations around grid-cell centres, then the 300 best (anchor, class) pairs."""

    def __init__(self, channels: tuple[int, ...], num_classes: int = NUM_CLASSES, strides: tuple[int, ...] = (8, 16, 32)):
        super().__init__()
        self.num_classes = num_classes
        self.strides = strides
        box_c = max(16, channels[0] // 4, REG_MAX * 4)
        cls_c = max(channels[0], min(num_classes, 100))
        self.box = nn.ModuleList(
            nn.Sequential(ConvBnAct(c, box_c, 3), ConvBnAct(box_c, box_c, 3), nn.Conv2d(box_c, 4 * REG_MAX, 1))
            for c in channels
        )
        self.cls = nn.ModuleList(
            nn.Sequential(
                nn.Sequential(depthwise(c), ConvBnAct(c, cls_c)),
                nn.Sequential(depthwise(cls_c), ConvBnAct(cls_c, cls_c)),
                nn.Conv2d(cls_c, num_classes, 1),
            )
            for c in channels
        )
        self.register_buffer("bins", torch.arange(REG_MAX, dtype=torch.float32), persistent=False)

    def _anchors(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Grid-cell centres (A, 2) in feature cells and the stride (A, 1) of each, level after level."""
        centres, strides = [], []
        for feature, stride in zip(features, self.strides, strict=True):
            height, width = feature.shape[2:]
            ys = torch.arange(height, dtype=feature.dtype, device=feature.device) + 0.5
            xs = torch.arange(width, dtype=feature.dtype, device=feature.device) + 0.5
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            centres.append(torch.stack((grid_x, grid_y), -1).view(-1, 2))
            strides.append(torch.full((height * width, 1), float(stride), dtype=feature.dtype, device=feature.device))
        return torch.cat(centres), torch.cat(strides)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        batch = features[0].shape[0]
        outs = [torch.cat((box(f), cls(f)), 1).flatten(2) for f, box, cls in zip(features, self.box, self.cls, strict=True)]
        raw = torch.cat(outs, 2)  # (N, 64 + classes, A)
        bins, logits = raw.split((4 * REG_MAX, self.num_classes), 1)
        dist = (bins.view(batch, 4, REG_MAX, -1).softmax(2) * self.bins.view(1, 1, REG_MAX, 1)).sum(2)  # (N, 4, A)
        centres, strides = self._anchors(features)
        left_top, right_bottom = dist.transpose(1, 2).chunk(2, -1)  # (N, A, 2) each
        boxes = torch.cat((centres - left_top, centres + right_bottom), -1) * strides  # (N, A, 4) xyxy in pixels
        scores = logits.sigmoid().transpose(1, 2)  # (N, A, classes)
        return self._top_detections(boxes, scores)

    def _top_detections(self, boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """(N, 300, 6): the 300 anchors with the best class score, then their 300 best (anchor, class) pairs."""
        k = min(MAX_DET, boxes.shape[1])
        anchors = scores.amax(dim=-1).topk(k)[1].unsqueeze(-1)  # (N, k, 1)
        boxes = boxes.gather(1, anchors.expand(-1, -1, 4))
        scores = scores.gather(1, anchors.expand(-1, -1, self.num_classes))
        best, flat = scores.flatten(1).topk(k)
        picked = boxes.gather(1, (flat // self.num_classes).unsqueeze(-1).expand(-1, -1, 4))
        classes = (flat % self.num_classes).to(boxes.dtype)
        return torch.cat((picked, best.unsqueeze(-1), classes.unsqueeze(-1)), -1)


class YoloV10(nn.Module):
    """YOLOv10 (yolov10{n,s,m,...}.yaml layer list at a given scale): (N, 3, 640, 640) RGB in [0, 1] -> (N, 300, 6)."""

    def __init__(self, scale: YoloScale = YOLOV10M, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        c, n = scale.channels, scale.repeats
        layers: list[nn.Module] = [
            ConvBnAct(3, c(64), 3, 2),  # 0: P1/2
            ConvBnAct(c(64), c(128), 3, 2),  # 1: P2/4
            SplitBlocks(c(128), c(128), n(3), True),  # 2
            ConvBnAct(c(128), c(256), 3, 2),  # 3: P3/8
            SplitBlocks(c(256), c(256), n(6), True),  # 4
            SpatialChannelDown(c(256), c(512)),  # 5: P4/16
            SplitBlocks(c(512), c(512), n(6), True),  # 6
            SpatialChannelDown(c(512), c(1024)),  # 7: P5/32
            SplitBlocks(c(1024), c(1024), n(3), True, cib=True),  # 8
            FastPyramidPool(c(1024), c(1024)),  # 9
            PartialSelfAttention(c(1024)),  # 10
            # top-down path (upsampling and concatenation have no weights)
            SplitBlocks(c(1024) + c(512), c(512), n(3), False),  # yaml 13: P4
            SplitBlocks(c(512) + c(256), c(256), n(3), False),  # yaml 16: P3 out
            # bottom-up path
            ConvBnAct(c(256), c(256), 3, 2),  # yaml 17
            SplitBlocks(c(256) + c(512), c(512), n(3), True, cib=True),  # yaml 19: P4 out
            SpatialChannelDown(c(512), c(512)),  # yaml 20
            SplitBlocks(c(512) + c(1024), c(1024), n(3), True, cib=True),  # yaml 22: P5 out
        ]
        self.layers = nn.ModuleList(layers)
        self.head = OneToOneHead((c(256), c(512), c(1024)), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.layers
        p3 = m[4](m[3](m[2](m[1](m[0](x)))))
        p4 = m[6](m[5](p3))
        p5 = m[10](m[9](m[8](m[7](p4))))
        top4 = m[11](torch.cat((F.interpolate(p5, scale_factor=2.0, mode="nearest"), p4), 1))
        out3 = m[12](torch.cat((F.interpolate(top4, scale_factor=2.0, mode="nearest"), p3), 1))
        out4 = m[14](torch.cat((m[13](out3), top4), 1))
        out5 = m[16](torch.cat((m[15](out4), p5), 1))
        return self.head([out3, out4, out5])


def random_yolov10(scale: YoloScale = YOLOV10M, seed: int = 0) -> YoloV10:
    """YOLOv10 with PyTorch's default initialisation, BatchNorm statistics calibrated on random images, and class
    biases that make persons likely (see below)."""
    torch.manual_seed(seed)
    model = YoloV10(scale)
    calibrate_batchnorm(model, smooth_random_images(2, DET_SIZE))
    for cls in model.head.cls:
        _plausible_persons(cls[-1])
    return model.eval()


def smooth_random_images(count: int, size: int) -> torch.Tensor:
    """(count, 3, size, size) in [0, 1]: random 20x20 colour fields upsampled bilinearly, closer to photographs'
    statistics (mostly low frequencies) than pixel noise."""
    return F.interpolate(torch.rand(count, 3, 20, 20), size=(size, size), mode="bilinear", align_corners=False)


def calibrate_batchnorm(model: nn.Module, sample: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics to those of `sample`'s activations (one forward in train mode).

    Why: with PyTorch's default convolution init and identity BatchNorm, activations shrink ~3x per layer and reach
    1e-12 at YOLO's head, so every score is exactly 0.5 and every box the same. Real networks keep activations
    normalised through their BatchNorm statistics; calibrating them on one batch does the same for random weights.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
    model.train()
    with torch.no_grad():
        model(sample)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.eval()


def _plausible_persons(final: nn.Conv2d) -> None:
    """Class logits of -9 (scores ~1e-4, about YOLO's own prior) except 'person' 0 (scores ~0.5), plus small noise
    (weights of std 0.01, so real frames, whose features differ from the calibration images', cannot swing them far):
    every frame then holds many person boxes above the 0.05 threshold, so NMS and the largest-person choice do their
    full work."""
    with torch.no_grad():
        nn.init.normal_(final.weight, std=0.01)
        final.bias.fill_(-9.0)
        final.bias[0] = 0.0
