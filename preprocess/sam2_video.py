"""The SAM2 video segmenter: transformers' Sam2VideoModel driven like the official SAM2VideoPredictor.

SAM2 implementation: transformers' port (`Sam2VideoModel` + `Sam2VideoInferenceSession`, transformers 5.23), not
the `sam2` package (source-only on PyPI, its build compiles against the installed torch, which breaks hosted
installs). Weights (sam2_checkpoint.py): by default the release's own `sam2_hiera_large.pt`, converted in memory.
Whether `facebook/sam2-hiera-large` on the Hub carries transformers-format files could not be checked offline (the
`facebook/sam2-hiera-large-hf` repo is Meta's 2024 upload, made before transformers had SAM2, so not this format);
a folder in transformers format (config.json + safetensors) loads directly with `from_pretrained`.

One-off check (not a test: it needs the sam2 sources): a random sam2_hiera_t checkpoint run through the original
SAM2VideoPredictor (official overrides and pixel pipeline) and through this module gave the same mask logits to
3e-7 on 5 real frames, two prompted key frames, propagation included.

Settings the official predictor overrides: dynamic multimask via stability (delta 0.05, threshold 0.98,
transformers' defaults), binarised click masks for the memory encoder (transformers always does this), and
`fill_hole_area=8` (transformers has no hole filling: done here on the low-resolution logits). Frames are resized
to the model size with PIL bicubic as official (transformers' video processor uses bilinear), so we feed the
session our own pixel values: kept as uint8 and normalised when read (sam2_session.py), a quarter of the memory of
transformers' float32 frames (1.2 instead of 4.7 GiB for a 400-frame chunk), the same values.

On CUDA the float32 model's matmuls run in TF32 while it segments (`tf32_matmuls`; the official predictor leaves
torch's default, float32 matmuls, and both run the convolutions in TF32, torch's default for cuDNN). TF32 rounds
products to 10 mantissa bits, finer than bf16's 7 (issue 16's bound for a default); on an H100 SAM2's 300 frames took
24.3 s against 33.4 s, with 0.05% of raw mask pixels differing on random weights (BENCHMARKS.md, preprocessing), and
the app's default mask is the dilated mask's box, which those boundary pixels rarely move.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from .frame_store import Frames
from .frame_threads import map_frames
from .sam2_checkpoint import model_from_original, tiny_sam2_config

# Hub locations (weights.py pins the revisions).
SAM2_RELEASE_REPO = "Wan-AI/Wan2.2-Animate-14B"
SAM2_RELEASE_FILE = "process_checkpoint/sam2/sam2_hiera_large.pt"  # the original SAM 2.0 checkpoint
SAM2_HF_REPO = "facebook/sam2-hiera-large"  # only if it carries transformers-format files (unverified)
SAM2_HF_REVISION: str | None = None  # placeholder: pinned by weights.py

FILL_HOLE_AREA = 8  # official predictor override: background holes up to 8 low-res pixels become mask
HOLE_FILL_VALUE = 0.1  # the logit SAM2 writes into filled holes
OBJECT_ID = 1
PLANE_BATCH = 32  # frames read and resized to the model size at a time
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@contextmanager
def tf32_matmuls(device: Any, enabled: bool = True) -> Iterator[None]:
    """Float32 matmuls in TF32 on CUDA inside the block (torch's process-wide switch, restored after it)."""
    import torch

    if not enabled or torch.device(device).type != "cuda":
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


class VideoSegmenter(Protocol):
    """Segments one object through a clip from positive clicks on some of its frames."""

    def segment(self, frames: Frames, clicks: dict[int, np.ndarray]) -> np.ndarray:
        """frames (N, H, W, 3) uint8 RGB (an array or a FrameStore view: read a few at a time); clicks: frame
        index -> (K, 2) pixel x, y. Returns (N, H, W) bool."""
        ...


@dataclass
class Sam2VideoSegmenter:
    """transformers' Sam2VideoModel driven like the official SAM2VideoPredictor (one object, clicks, propagate)."""

    model: Any  # transformers.Sam2VideoModel, eval mode, on `device`
    device: Any  # torch.device the model runs on
    dtype: Any  # torch dtype of the model and the session
    fill_hole_area: int = FILL_HOLE_AREA
    matmul_tf32: bool = True  # float32 matmuls in TF32 on CUDA (module docstring); False: the official float32

    @property
    def image_size(self) -> int:
        return int(self.model.config.image_size)

    def _planes(self, frame: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (3, S, S) uint8 channel planes at the model size; PIL bicubic as the official loader."""
        from PIL import Image

        size = self.image_size
        resized = np.asarray(Image.fromarray(frame).convert("RGB").resize((size, size)))
        return np.ascontiguousarray(resized.transpose(2, 0, 1))

    def _pixels(self, frame: np.ndarray) -> Any:
        """(H, W, 3) uint8 -> (3, S, S) normalised float32 tensor, the official input (what the session reads)."""
        import torch

        planes = self._planes(frame)
        return torch.from_numpy(normalisation_table()[np.arange(3)[:, None, None], planes])

    def pixel_frames(self, frames: Frames) -> list[np.ndarray]:
        """Every frame's (3, S, S) uint8 planes (`_planes`), frames read PLANE_BATCH at a time (a FrameStore holds
        them on disk) and prepared side by side."""
        planes: list[np.ndarray] = []
        for start in range(0, len(frames), PLANE_BATCH):
            planes += map_frames(self._planes, frames[start : start + PLANE_BATCH])
        return planes

    def _processor(self) -> Any:
        from transformers import Sam2ImageProcessor, Sam2VideoProcessor, Sam2VideoVideoProcessor

        return Sam2VideoProcessor(
            image_processor=Sam2ImageProcessor(), video_processor=Sam2VideoVideoProcessor(), target_size=self.image_size
        )

    def low_res_logits(self, frames: Frames, clicks: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Frame index -> (h, w) float32 mask logits at the model's low resolution (before hole filling)."""
        import torch

        from .sam2_session import Uint8FrameSession

        height, width = frames.shape[1:3]
        session = Uint8FrameSession(
            normalisation_table(),
            video_height=height,
            video_width=width,
            inference_device=self.device,
            inference_state_device=self.device,
            video_storage_device="cpu",
            dtype=self.dtype,
        )
        for index, planes in enumerate(self.pixel_frames(frames)):
            session.add_new_frame(planes, index)
        processor = self._processor()
        logits: dict[int, np.ndarray] = {}
        with torch.inference_mode(), tf32_matmuls(self.device, self.matmul_tf32):
            for index in sorted(clicks):  # official: add_new_points on each key frame, then propagate
                points = np.asarray(clicks[index], np.float32)
                processor.add_inputs_to_inference_session(
                    inference_session=session,
                    frame_idx=index,
                    obj_ids=OBJECT_ID,
                    input_points=[[points.tolist()]],
                    input_labels=[[[1] * len(points)]],
                )
                self.model(inference_session=session, frame_idx=index)
            first = min(clicks)
            passes = [False] if first == 0 else [False, True]  # official starts at frame 0: forward only
            for reverse in passes:
                for out in self.model.propagate_in_video_iterator(session, start_frame_idx=first, reverse=reverse):
                    logits[int(out.frame_idx)] = out.pred_masks[0, 0].float().cpu().numpy()
        return logits

    def segment(self, frames: Frames, clicks: dict[int, np.ndarray]) -> np.ndarray:
        """(N, H, W) bool masks of the clicked object (official: logits > 0 after bilinear upsampling)."""
        height, width = frames.shape[1:3]
        masks = np.zeros((len(frames), height, width), bool)
        for index, low in self.low_res_logits(frames, clicks).items():
            masks[index] = upsample_logits(fill_small_holes(low, self.fill_hole_area), height, width) > 0
        return masks


def normalisation_table() -> np.ndarray:
    """(3, 256) float32: SAM2's input for each channel and uint8 value, the official (x / 255 - mean) / std computed
    in float32 step by step as the official loader does."""
    values = np.arange(256, dtype=np.float32) / np.float32(255.0)
    return np.stack([(values - IMAGENET_MEAN[c]) / IMAGENET_STD[c] for c in range(3)]).astype(np.float32)


def fill_small_holes(logits: np.ndarray, max_area: int) -> np.ndarray:
    """Background regions (logits <= 0, 8-connected) of at most `max_area` pixels set to 0.1 (SAM2 rule)."""
    if max_area <= 0:
        return logits
    background = (logits <= 0).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(background, connectivity=8)
    small = stats[:, cv2.CC_STAT_AREA] <= max_area
    small[0] = False  # label 0 is the foreground (non-background) pixels
    if count <= 1 or not small.any():
        return logits
    out = logits.copy()
    out[small[labels]] = HOLE_FILL_VALUE
    return out


def upsample_logits(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) -> (height, width) bilinear, half-pixel centres (torch align_corners=False, as SAM2)."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(logits, np.float32))[None, None]
    return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


# ---------------------------------------------------------------------------------------------------
# loading


def load_sam2_video(repo_or_path: str | Path, device: Any, dtype: Any = None, revision: str | None = None
                    ) -> Sam2VideoSegmenter:  # fmt: skip
    """The SAM2 video segmenter from an original .pt, a folder holding one, or transformers-format weights.

    `repo_or_path`: the release's `sam2_hiera_large.pt` (converted in memory), a folder containing it (or
    `process_checkpoint/sam2/sam2_hiera_large.pt` under it), a local transformers folder (config.json),
    or a Hub repo id: SAM2_RELEASE_REPO (downloads SAM2_RELEASE_FILE) or a transformers-format repo.
    `dtype` defaults to float32, as the official predictor runs.
    """
    import torch
    from transformers import Sam2VideoModel

    dtype = torch.float32 if dtype is None else dtype
    path = Path(repo_or_path)
    candidates = [path, path / "sam2_hiera_large.pt", path / SAM2_RELEASE_FILE, path / "sam2" / "sam2_hiera_large.pt"]
    original = next((p for p in candidates if p.is_file() and p.suffix in (".pt", ".pth")), None)
    if original is not None:
        model = model_from_original(original)
    elif (path / "config.json").is_file():
        model = Sam2VideoModel.from_pretrained(str(path), dtype=dtype)
    elif str(repo_or_path) == SAM2_RELEASE_REPO:
        from huggingface_hub import hf_hub_download

        model = model_from_original(Path(hf_hub_download(SAM2_RELEASE_REPO, SAM2_RELEASE_FILE, revision=revision)))
    else:
        model = Sam2VideoModel.from_pretrained(str(repo_or_path), revision=revision, dtype=dtype)
    device = torch.device(device)
    model = model.to(device=device, dtype=dtype).eval()
    return Sam2VideoSegmenter(model=model, device=device, dtype=dtype)


def tiny_sam2_video(device: Any = "cpu", seed: int = 0) -> Sam2VideoSegmenter:
    """SMOKE/TESTS ONLY: a random-weight Sam2VideoModel from `tiny_sam2_config`; its masks are meaningless
    (mostly empty), which exercises the empty-mask fallback of `person_masks`."""
    import torch
    from transformers import Sam2VideoModel

    torch.manual_seed(seed)
    device = torch.device(device)
    model = Sam2VideoModel(tiny_sam2_config()).to(device).eval()
    return Sam2VideoSegmenter(model=model, device=device, dtype=torch.float32)


def load_segmenter(path: str | Path, device: Any) -> Sam2VideoSegmenter:
    """The production segmenter (the name model_loading.load_preprocess_models looks up)."""
    return load_sam2_video(path, device)


def smoke_segmenter(device: Any) -> Sam2VideoSegmenter:
    """The smoke preset's segmenter (the name model_loading.smoke_preprocess_models looks up)."""
    return tiny_sam2_video(device)
