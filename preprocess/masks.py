"""Replacement mode: the driving person's mask per frame (SAM2 video), refined, and the background frames.

Official flow (process_pipepline.py `get_mask`, utils.py `get_mask_body_img`/`get_aug_mask`): SAM2 hiera-large
segments the resized driving frames in chunks of 400, prompted on a few key frames per chunk with positive
clicks at 8 body keypoints; each mask is dilated (`iterations` x a `k` x `k` square kernel), turned into
filled grid cells over its bounding box, and the background is the frame with the mask zeroed.

SAM2 implementation: transformers' port (`Sam2VideoModel` + `Sam2VideoInferenceSession`, transformers
5.23), not the `sam2` package (source-only on PyPI, its build compiles against the installed torch, which
breaks hosted installs). Which weights, and the evidence:
- The official code builds `sam2_hiera_l.yaml` (SAM 2.0, not 2.1) and loads `sam2/sam2_hiera_large.pt`
  (UserGuider.md; requirements_animate.txt pins facebookresearch/sam2@0e78a11). The release ships that
  file as `process_checkpoint/sam2/sam2_hiera_large.pt` in Wan-AI/Wan2.2-Animate-14B.
- transformers' own converter (convert_sam2_video_to_hf.py in the transformers repository, not shipped
  in the wheel, so not importable) supports "sam2_hiera_large": SAM 2.0 = Sam2VideoConfig with
  `enable_temporal_pos_encoding_for_object_pointers=False` and `enable_occlusion_spatial_embedding=False`
  (the only two differences between sam2_hiera_l.yaml and sam2.1_hiera_l.yaml), hiera-large backbone
  (embed 144, stages 2/6/36/4, global blocks 23/33/43, windows 8/4/16/8, background 7x7).
- Whether `facebook/sam2-hiera-large` on the Hub carries transformers-format files could not be checked
  offline (the `facebook/sam2-hiera-large-hf` repo is Meta's 2024 upload, made before transformers had
  SAM2, so not this format). So the default path is the release's own .pt, converted in memory by
  `convert_original_sam2` below (our key mapping, written from the converter's renaming rules, checked
  against the 900 keys and shapes of the real sam2_hiera_large state dict: tests/data/). A folder in
  transformers format (config.json + safetensors) loads directly with `from_pretrained`.
- One-off check (not a test: it needs the sam2 sources): a random sam2_hiera_t checkpoint run through the
  original SAM2VideoPredictor (official overrides and pixel pipeline) and through this module gave the
  same mask logits to 3e-7 on 5 real frames, two prompted key frames, propagation included.

Settings the official predictor overrides: dynamic multimask via stability (delta 0.05, threshold 0.98,
transformers' defaults), binarised click masks for the memory encoder (transformers always does this),
and `fill_hole_area=8` (transformers has no hole filling: done here on the low-resolution logits).
Frames are resized to the model size with PIL bicubic as official (transformers' video processor uses
bilinear), so we feed the session our own pixel values.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from ..errors import InputError, check_cancel
from .frame_threads import map_frames
from .pose_meta import PoseMeta

logger = logging.getLogger("wan_animate.preprocess.masks")

# Hub locations (weights.py pins the revisions).
SAM2_RELEASE_REPO = "Wan-AI/Wan2.2-Animate-14B"
SAM2_RELEASE_FILE = "process_checkpoint/sam2/sam2_hiera_large.pt"  # the original SAM 2.0 checkpoint
SAM2_HF_REPO = "facebook/sam2-hiera-large"  # only if it carries transformers-format files (unverified)
SAM2_HF_REVISION: str | None = None  # placeholder: pinned by weights.py

OFFICIAL_CHUNK = 400  # frames per SAM2 session (official th_step)
CLICK_POINTS = (0, 1, 2, 5, 8, 11, 10, 13)  # nose, neck, shoulders, hips, ankles (official order)
CLICK_MIN_SCORE = 0.5  # deliberate: the official code clicks every point, however unsure (see click_points)
FILL_HOLE_AREA = 8  # official predictor override: background holes up to 8 low-res pixels become mask
HOLE_FILL_VALUE = 0.1  # the logit SAM2 writes into filled holes
BOX_MARGIN = 0.1  # keypoint fallback box grows by this fraction of its size on each side
OBJECT_ID = 1
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


# ---------------------------------------------------------------------------------------------------
# the segmenter interface


class VideoSegmenter(Protocol):
    """Segments one object through a clip from positive clicks on some of its frames."""

    def segment(self, frames: np.ndarray, clicks: dict[int, np.ndarray]) -> np.ndarray:
        """frames (N, H, W, 3) uint8 RGB; clicks: frame index -> (K, 2) pixel x, y. Returns (N, H, W) bool."""
        ...


@dataclass
class Sam2VideoSegmenter:
    """transformers' Sam2VideoModel driven like the official SAM2VideoPredictor (one object, clicks, propagate)."""

    model: Any  # transformers.Sam2VideoModel, eval mode, on `device`
    device: Any  # torch.device the model runs on
    dtype: Any  # torch dtype of the model and the session
    fill_hole_area: int = FILL_HOLE_AREA
    frames_on_cpu: bool = True  # keep the clip's model-size frames in CPU memory (400 frames = 5 GB in fp32)

    @property
    def image_size(self) -> int:
        return int(self.model.config.image_size)

    def _pixels(self, frame: np.ndarray) -> Any:
        """(H, W, 3) uint8 -> (3, S, S) normalised float tensor; PIL bicubic resize as the official loader."""
        import torch
        from PIL import Image

        size = self.image_size
        resized = np.asarray(Image.fromarray(frame).convert("RGB").resize((size, size)))
        # The official ((x / 255 - mean) / std) in float32, element for element, but on contiguous channel planes:
        # broadcasting over a last axis of 3 is several times slower in NumPy.
        planes = resized.transpose(2, 0, 1).astype(np.float32, order="C")
        planes /= np.float32(255.0)
        for channel in range(3):
            planes[channel] -= IMAGENET_MEAN[channel]
            planes[channel] /= IMAGENET_STD[channel]
        return torch.from_numpy(planes)

    def pixel_frames(self, frames: np.ndarray) -> list[Any]:
        """Every frame's model input (`_pixels`), frames prepared side by side."""
        return map_frames(self._pixels, frames)

    def _processor(self) -> Any:
        from transformers import Sam2ImageProcessor, Sam2VideoProcessor, Sam2VideoVideoProcessor

        return Sam2VideoProcessor(
            image_processor=Sam2ImageProcessor(), video_processor=Sam2VideoVideoProcessor(), target_size=self.image_size
        )

    def low_res_logits(self, frames: np.ndarray, clicks: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Frame index -> (h, w) float32 mask logits at the model's low resolution (before hole filling)."""
        import torch
        from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

        height, width = frames.shape[1:3]
        session = Sam2VideoInferenceSession(
            video_height=height,
            video_width=width,
            inference_device=self.device,
            inference_state_device=self.device,
            video_storage_device="cpu" if self.frames_on_cpu else self.device,
            dtype=self.dtype,
        )
        for index, pixels in enumerate(self.pixel_frames(frames)):
            session.add_new_frame(pixels, index)
        processor = self._processor()
        logits: dict[int, np.ndarray] = {}
        with torch.inference_mode():
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

    def segment(self, frames: np.ndarray, clicks: dict[int, np.ndarray]) -> np.ndarray:
        """(N, H, W) bool masks of the clicked object (official: logits > 0 after bilinear upsampling)."""
        height, width = frames.shape[1:3]
        masks = np.zeros((len(frames), height, width), bool)
        for index, low in self.low_res_logits(frames, clicks).items():
            masks[index] = upsample_logits(fill_small_holes(low, self.fill_hole_area), height, width) > 0
        return masks


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
# SAM2 weights


# SAM2 backbones (from the sam2 package's yaml configs): embed dim, blocks per stage, global-attention
# blocks, window sizes per stage, background size of the windowed position embedding.
_HIERA: dict[str, dict[str, Any]] = {
    "hiera_tiny": dict(dim=96, heads=1, stages=[1, 2, 7, 2], glob=[5, 7, 9], windows=[8, 4, 14, 7], bkg=[7, 7]),
    "hiera_small": dict(dim=96, heads=1, stages=[1, 2, 11, 2], glob=[7, 10, 13], windows=[8, 4, 14, 7], bkg=[7, 7]),
    "hiera_base_plus": dict(
        dim=112, heads=2, stages=[2, 3, 16, 3], glob=[12, 16, 20], windows=[8, 4, 14, 7], bkg=[14, 14]
    ),
    "hiera_large": dict(dim=144, heads=2, stages=[2, 6, 36, 4], glob=[23, 33, 43], windows=[8, 4, 16, 8], bkg=[7, 7]),
}


def sam2_config(variant: str = "hiera_large", sam2_1: bool = False) -> Any:
    """Sam2VideoConfig of an original SAM2 checkpoint (SAM 2.0 unless `sam2_1`)."""
    from transformers import Sam2HieraDetConfig, Sam2VideoConfig, Sam2VisionConfig

    spec = _HIERA[variant]
    dims = [spec["dim"] * 2**i for i in range(4)]
    backbone = Sam2HieraDetConfig(
        hidden_size=spec["dim"],
        embed_dim_per_stage=dims,
        num_attention_heads_per_stage=[spec["heads"] * 2**i for i in range(4)],
        blocks_per_stage=spec["stages"],
        global_attention_blocks=spec["glob"],
        window_size_per_stage=spec["windows"],
        window_positional_embedding_background_size=spec["bkg"],
    )
    return Sam2VideoConfig(
        vision_config=Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=dims[::-1]),
        enable_temporal_pos_encoding_for_object_pointers=sam2_1,
        enable_occlusion_spatial_embedding=sam2_1,
    )


def detect_sam2_variant(state_dict: dict[str, Any]) -> tuple[str, bool]:
    """(variant, is_sam2_1) of an original SAM2 state dict, from its backbone width and block count."""
    dim = int(state_dict["image_encoder.trunk.patch_embed.proj.weight"].shape[0])
    blocks = 1 + max(int(k.split(".")[3]) for k in state_dict if k.startswith("image_encoder.trunk.blocks."))
    sam2_1 = "no_obj_embed_spatial" in state_dict
    for name, spec in _HIERA.items():
        if spec["dim"] == dim and sum(spec["stages"]) == blocks:
            return name, sam2_1
    raise ValueError(f"not a known SAM2 checkpoint (backbone width {dim}, {blocks} blocks)")


# Original -> transformers names. Whole-key renames first, then substring renames applied in order.
_EXACT_RENAMES = {
    "maskmem_tpos_enc": "memory_temporal_positional_encoding",
    "no_mem_embed": "no_memory_embedding",
    "no_mem_pos_enc": "no_memory_positional_encoding",
    "no_obj_ptr": "no_object_pointer",
    "no_obj_embed_spatial": "occlusion_spatial_embedding_parameter",  # SAM 2.1 only
}
_PREFIX_RENAMES = (
    ("image_encoder.trunk.", "vision_encoder.backbone."),
    ("image_encoder.neck.", "vision_encoder.neck."),
    ("sam_mask_decoder.", "mask_decoder."),
    ("sam_prompt_encoder.", "prompt_encoder."),
    ("obj_ptr_proj.", "object_pointer_proj."),
    ("obj_ptr_tpos_proj.", "temporal_positional_encoding_projection_layer."),  # SAM 2.1 only
    ("memory_encoder.fuser.", "memory_encoder.memory_fuser."),
)
_PART_RENAMES = (
    (".patch_embed.proj.", ".patch_embed.projection."),
    (".output_upscaling.0.", ".upscale_conv1."),
    (".output_upscaling.1.", ".upscale_layer_norm."),
    (".output_upscaling.3.", ".upscale_conv2."),
    (".mask_downscaling.0.", ".mask_embed.conv1."),
    (".mask_downscaling.1.", ".mask_embed.layer_norm1."),
    (".mask_downscaling.3.", ".mask_embed.conv2."),
    (".mask_downscaling.4.", ".mask_embed.layer_norm2."),
    (".mask_downscaling.6.", ".mask_embed.conv3."),
    (".pe_layer.positional_encoding_gaussian_matrix", ".shared_embedding.positional_embedding"),
    (".dwconv.", ".depthwise_conv."),
    (".pwconv1.", ".pointwise_conv1."),
    (".pwconv2.", ".pointwise_conv2."),
    (".gamma", ".scale"),
    ("memory_encoder.out_proj.", "memory_encoder.projection."),
    ("memory_encoder.pix_feat_proj.", "memory_encoder.feature_projection."),
    (".out_proj.", ".o_proj."),
    (".norm_final_attn.", ".layer_norm_final_attn."),
)
# MLPs: the original nn.ModuleList `layers.i` becomes proj_in / layers.j / proj_out.
_THREE_LAYER_MLPS = ("iou_prediction_head", "output_hypernetworks_mlps", "pred_obj_score_head", "object_pointer_proj")


def _rename_mlp(key: str) -> str:
    parts = key.split(".")
    if "layers" not in parts:
        return key
    at = len(parts) - 1 - parts[::-1].index("layers")  # the last "layers" holds the MLP's linear index
    if at + 1 >= len(parts) or not parts[at + 1].isdigit() or parts[at - 1] == "mask_downsampler":
        return key
    index = int(parts[at + 1])
    owner = ".".join(parts[:at])
    if any(re.search(rf"(^|\.){name}(\.\d+)?$", owner) for name in _THREE_LAYER_MLPS):
        names = {0: ["proj_in"], 1: ["layers", "0"], 2: ["proj_out"]}[index]
    elif owner.endswith(".mlp"):  # two-layer MLPs: Hiera blocks and the mask decoder's transformer
        names = {0: ["proj_in"], 1: ["proj_out"]}[index]
    else:
        return key  # e.g. memory_attention.layers.N / transformer.layers.N are module lists, not MLPs
    return ".".join(parts[:at] + names + parts[at + 2 :])


def _rename_norms(key: str) -> str:
    """normK -> layer_normK, and a bare `.norm.` -> `.layer_norm.` (memory attention, fuser, Hiera blocks)."""
    key = re.sub(r"\.norm(\d)\.", r".layer_norm\1.", key)
    return re.sub(r"\.norm\.", ".layer_norm.", key)


def _rename_mask_downsampler(key: str) -> str:
    """memory_encoder.mask_downsampler.encoder.{3i, 3i+1, 12} -> layers.i.conv / layers.i.layer_norm / final_conv."""
    marker = "memory_encoder.mask_downsampler.encoder."
    if not key.startswith(marker):
        return key
    index, rest = key[len(marker) :].split(".", 1)
    number = int(index)
    if number == 12:
        part = "final_conv"
    elif number % 3 == 0:
        part = f"layers.{number // 3}.conv"
    elif number % 3 == 1:
        part = f"layers.{number // 3}.layer_norm"
    else:
        raise ValueError(f"unexpected mask downsampler key {key}")
    return f"memory_encoder.mask_downsampler.{part}.{rest}"


def original_to_hf_key(key: str) -> str:
    """One original SAM2 parameter name -> its name in transformers' Sam2VideoModel."""
    if key in _EXACT_RENAMES:
        return _EXACT_RENAMES[key]
    for old, new in _PREFIX_RENAMES:
        if key.startswith(old):
            key = new + key[len(old) :]
            break
    key = _rename_mask_downsampler(key)
    for old, new in _PART_RENAMES:
        key = key.replace(old, new)
    key = re.sub(r"^(vision_encoder\.neck\.convs\.\d+)\.conv\.", r"\1.", key)  # FPN convs lose a level
    key = _rename_norms(key)
    return _rename_mlp(key)


def convert_original_sam2(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Original SAM2 `model` state dict -> transformers Sam2VideoModel state dict (same tensors)."""
    import torch

    out: dict[str, Any] = {}
    point_embeddings: dict[int, Any] = {}
    for key, value in state_dict.items():
        prefix = "sam_prompt_encoder.point_embeddings."
        if key.startswith(prefix):  # four (1, C) embeddings -> one (4, C) table
            point_embeddings[int(key[len(prefix) :].split(".")[0])] = value
            continue
        out[original_to_hf_key(key)] = value
    if point_embeddings:
        out["prompt_encoder.point_embed.weight"] = torch.cat([point_embeddings[i] for i in sorted(point_embeddings)])
    # transformers keeps a second copy of the random Fourier matrix for the image-wide position encoding
    shared = "prompt_encoder.shared_embedding.positional_embedding"
    if shared in out:
        out["shared_image_embedding.positional_embedding"] = out[shared]
    return out


def _model_from_original(checkpoint: Path) -> Any:
    """Sam2VideoModel with the weights of an original SAM2 .pt checkpoint (strict: every key must match)."""
    import torch
    from transformers import Sam2VideoModel

    raw = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    state = raw.get("model", raw)
    variant, sam2_1 = detect_sam2_variant(state)
    model = Sam2VideoModel(sam2_config(variant, sam2_1))
    converted = convert_original_sam2(state)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(converted)), sorted(set(converted) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{checkpoint} does not match SAM2 {variant}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.load_state_dict(converted, strict=True)
    return model


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
        model = _model_from_original(original)
    elif (path / "config.json").is_file():
        model = Sam2VideoModel.from_pretrained(str(path), dtype=dtype)
    elif str(repo_or_path) == SAM2_RELEASE_REPO:
        from huggingface_hub import hf_hub_download

        model = _model_from_original(Path(hf_hub_download(SAM2_RELEASE_REPO, SAM2_RELEASE_FILE, revision=revision)))
    else:
        model = Sam2VideoModel.from_pretrained(str(repo_or_path), revision=revision, dtype=dtype)
    device = torch.device(device)
    model = model.to(device=device, dtype=dtype).eval()
    return Sam2VideoSegmenter(model=model, device=device, dtype=dtype)


def tiny_sam2_config(image_size: int = 128) -> Any:
    """A small SAM 2.0-style Sam2VideoConfig (about 1.3M parameters) for CPU tests and the smoke preset.

    Constraints of transformers' implementation: the memory channels are fixed at 64 and the hidden size
    must be a larger multiple of them (object pointers are split into 64-wide tokens), and a global-
    attention block must not be the first block of a stage.
    """
    from transformers import (
        Sam2HieraDetConfig,
        Sam2VideoConfig,
        Sam2VideoMaskDecoderConfig,
        Sam2VideoPromptEncoderConfig,
        Sam2VisionConfig,
    )

    hidden, size = 128, image_size
    backbone = Sam2HieraDetConfig(
        hidden_size=16,
        embed_dim_per_stage=[16, 32, 64, 128],
        num_attention_heads_per_stage=[1, 1, 2, 2],
        blocks_per_stage=[1, 1, 2, 1],
        global_attention_blocks=[3],
        window_size_per_stage=[4, 4, 4, 4],
        window_positional_embedding_background_size=[2, 2],
        image_size=[size, size],
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[128, 64, 32, 16],
        fpn_hidden_size=hidden,
        backbone_feature_sizes=[[size // 4, size // 4], [size // 8, size // 8], [size // 16, size // 16]],
    )
    return Sam2VideoConfig(
        vision_config=vision,
        image_size=size,
        prompt_encoder_config=Sam2VideoPromptEncoderConfig(hidden_size=hidden, image_size=size, mask_input_channels=4),
        mask_decoder_config=Sam2VideoMaskDecoderConfig(
            hidden_size=hidden, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=hidden
        ),
        memory_attention_hidden_size=hidden,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[size // 16, size // 16],
        memory_encoder_hidden_size=hidden,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=hidden,
        memory_fuser_embed_dim=hidden,
        memory_fuser_intermediate_dim=64,
        enable_temporal_pos_encoding_for_object_pointers=False,
        enable_occlusion_spatial_embedding=False,
    )


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
    """The production segmenter (the name pipeline.load_preprocess_models looks up)."""
    return load_sam2_video(path, device)


def smoke_segmenter(device: Any) -> Sam2VideoSegmenter:
    """The smoke preset's segmenter (the name pipeline.smoke_preprocess_models looks up)."""
    return tiny_sam2_video(device)


# ---------------------------------------------------------------------------------------------------
# person masks


def key_frames(count: int) -> list[int]:
    """Prompted frames of a chunk, exactly the official rule: step = count // (4 if count > 4 else 1).

    So 400 frames -> 0, 100, 200, 300; but 10 frames -> 0, 2, 4, 6, 8 and 7 frames -> all 7 (the official
    range() gives more than 4 when count is not a multiple of 4).
    """
    if count <= 0:
        return []
    step = count // (4 if count > 4 else 1)
    return list(range(0, count, step))


def click_points(pose: PoseMeta, height: int, width: int, min_score: float = CLICK_MIN_SCORE) -> np.ndarray:
    """(K, 2) int32 pixel clicks at the official 8 body points that are confident and inside the frame.

    Deliberate: the official code clicks all 8 points whatever their score; a low-score point is a guess
    (often on the background, e.g. an ankle outside the frame), and a positive click there makes SAM2
    segment the background too. Coordinates are int()-truncated as official.
    """
    points = pose.body[list(CLICK_POINTS)]
    keep = (points[:, 2] >= min_score) & (points[:, 0] >= 0) & (points[:, 1] >= 0)
    keep &= (points[:, 0] < width) & (points[:, 1] < height)
    return points[keep, :2].astype(np.int32)


def chunk_clicks(poses: list[PoseMeta], height: int, width: int) -> dict[int, np.ndarray]:
    """Clicks for one chunk: the official key frames that have confident points; if none has any, the
    first frame of the chunk that does (the official code would click uncertain points). Empty if none."""
    clicks = {k: pts for k in key_frames(len(poses)) if len(pts := click_points(poses[k], height, width))}
    if clicks:
        return clicks
    for index, pose in enumerate(poses):
        points = click_points(pose, height, width)
        if len(points):
            return {index: points}
    return {}


def keypoint_box_mask(pose: PoseMeta, height: int, width: int) -> np.ndarray:
    """(H, W) bool box: the detector's person box when it found one, else the confident body points'
    bounding box grown by BOX_MARGIN per side. All False when the pose has neither."""
    mask = np.zeros((height, width), bool)
    box = pose.person_box
    if box is not None and float(box[4]) > 0:
        x1, y1, x2, y2 = (float(v) for v in box[:4])
    else:
        points = pose.body[pose.body[:, 2] >= CLICK_MIN_SCORE, :2]
        if len(points) == 0:
            return mask
        (x1, y1), (x2, y2) = points.min(axis=0), points.max(axis=0)
        grow_x, grow_y = BOX_MARGIN * (x2 - x1), BOX_MARGIN * (y2 - y1)
        x1, x2, y1, y2 = x1 - grow_x, x2 + grow_x, y1 - grow_y, y2 + grow_y
    left, top = max(int(math.floor(x1)), 0), max(int(math.floor(y1)), 0)
    right, bottom = min(int(math.ceil(x2)), width - 1), min(int(math.ceil(y2)), height - 1)
    if right >= left and bottom >= top:
        mask[top : bottom + 1, left : right + 1] = True
    return mask


def nearest_filled(filled: np.ndarray) -> np.ndarray:
    """(T,) index of the nearest True entry for every position (ties: the earlier one). `filled` needs a True."""
    indices = np.flatnonzero(filled)
    positions = np.arange(len(filled))
    after = np.clip(np.searchsorted(indices, positions), 0, len(indices) - 1)
    before = np.clip(after - 1, 0, len(indices) - 1)
    take_before = np.abs(positions - indices[before]) <= np.abs(indices[after] - positions)
    return np.where(take_before, indices[before], indices[after])


def _ranges(indices: np.ndarray) -> str:
    """[3, 4, 5, 9] -> '3-5, 9' (for log lines)."""
    parts, start = [], None
    for i, value in enumerate(indices):
        if start is None:
            start = value
        if i + 1 == len(indices) or indices[i + 1] != value + 1:
            parts.append(f"{start}" if start == value else f"{start}-{value}")
            start = None
    return ", ".join(parts)


def person_masks(frames: np.ndarray, poses: list[PoseMeta], segmenter: VideoSegmenter,
                 chunk_size: int = OFFICIAL_CHUNK, log: logging.Logger = logger,
                 should_cancel: Callable[[], bool] | None = None) -> np.ndarray:  # fmt: skip
    """(T, H, W) uint8 {0, 1} masks of the driving person, SAM2 in chunks as official.

    should_cancel() is asked before each chunk (True raises errors.Cancelled): a chunk of 400 frames takes minutes.

    Frames where SAM2 finds nothing take the nearest frame's SAM2 mask; if SAM2 found nothing anywhere,
    a box from each frame's pose (detector box, else confident keypoints), spread to frames without one.
    Raises InputError("cannot_mask_person") when no frame can be masked at all.
    """
    count, height, width = frames.shape[:3]
    if len(poses) != count:
        raise ValueError(f"{len(poses)} poses for {count} frames")
    masks = np.zeros((count, height, width), np.uint8)
    chunks = math.ceil(count / chunk_size)
    began = time.perf_counter()
    for index, start in enumerate(range(0, count, chunk_size)):
        check_cancel(should_cancel, f"during the person masks (SAM2 chunk {index + 1}/{chunks})")
        eta = (time.perf_counter() - began) / index * (chunks - index) if index else None
        log.info("masks: SAM2 chunk %d/%d (frames %d-%d) started%s", index + 1, chunks, start,
                 min(start + chunk_size, count) - 1, f", about {eta:.0f} s left" if eta is not None else "")  # fmt: skip
        chunk_poses = poses[start : start + chunk_size]
        clicks = chunk_clicks(chunk_poses, height, width)
        if not clicks:
            log.warning("masks: no confident body point in frames %d-%d; nothing to prompt SAM2 with",
                        start, start + len(chunk_poses) - 1)  # fmt: skip
            continue
        chunk_masks = segmenter.segment(frames[start : start + len(chunk_poses)], clicks)
        masks[start : start + len(chunk_poses)] = chunk_masks.astype(bool)
    found = masks.reshape(count, -1).any(axis=1)
    if found.all():
        return masks
    if found.any():
        empty = np.flatnonzero(~found)
        log.warning("masks: SAM2 found no person in %d frame(s) (%s); using the nearest frame's mask",
                    len(empty), _ranges(empty))  # fmt: skip
        return masks[nearest_filled(found)]
    for index, pose in enumerate(poses):
        masks[index] = keypoint_box_mask(pose, height, width)
    found = masks.reshape(count, -1).any(axis=1)
    if not found.any():
        raise InputError(
            "cannot_mask_person", "driving_video",
            "the person to replace could not be located in any frame (no segmentation and no confident body "
            "keypoints). Use a video in which one person is clearly visible, or use mode=animation.",
        )  # fmt: skip
    log.warning("masks: SAM2 found no person in any frame; using pose boxes (%d of %d frames have one)",
                int(found.sum()), count)  # fmt: skip
    return masks[nearest_filled(found)] if not found.all() else masks


# ---------------------------------------------------------------------------------------------------
# refinement and background


def grid_fill(mask: np.ndarray, w_subdivisions: int, h_subdivisions: int) -> np.ndarray:
    """(H, W) {0,1}: the mask's bounding box cut into w x h cells; every cell holding mask is filled.

    Deliberate differences from the official get_aug_mask: the box includes its last row and column
    (official ranges stop one short, so 1x1 left them unfilled), there are exactly w x h cells with
    integer edges floor(i * size / n) (official steps by int(size / n), which can give an extra thin
    cell and crashes when the box is narrower than n), and an empty mask is returned as is (official
    crashes).
    """
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return mask.copy()
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = mask[top:bottom, left:right].astype(bool)
    box_h, box_w = crop.shape
    starts_y = np.unique((np.arange(h_subdivisions) * box_h) // h_subdivisions)  # zero-height cells dropped
    starts_x = np.unique((np.arange(w_subdivisions) * box_w) // w_subdivisions)
    cells = np.logical_or.reduceat(np.logical_or.reduceat(crop, starts_y, axis=0), starts_x, axis=1)
    sizes_y = np.diff(np.append(starts_y, box_h))
    sizes_x = np.diff(np.append(starts_x, box_w))
    out = mask.copy()
    out[top:bottom, left:right] = np.repeat(np.repeat(cells, sizes_y, axis=0), sizes_x, axis=1)
    return out


def refine_masks(masks: np.ndarray, iterations: int, kernel_size: int, w_subdivisions: int, h_subdivisions: int
                 ) -> np.ndarray:  # fmt: skip
    """(T, H, W) uint8 {0,1}: dilated `iterations` times by a kernel_size x kernel_size square, then grid-filled.

    iterations 0 leaves the masks as they are (official: no dilation and no grid then). Arrays stay binary
    (the official code round-trips them through H.264 and never re-binarises).
    """
    binary = (masks > 0).astype(np.uint8)
    if iterations <= 0:
        return binary
    if kernel_size < 1 or w_subdivisions < 1 or h_subdivisions < 1:
        raise ValueError("kernel_size and subdivisions must be >= 1")
    kernel = np.ones((kernel_size, kernel_size), np.uint8)
    out = np.empty_like(binary)

    def refine(index: int, mask: np.ndarray) -> None:  # frames side by side: each writes only its own slice
        out[index] = grid_fill(cv2.dilate(mask, kernel, iterations=iterations), w_subdivisions, h_subdivisions)

    map_frames(refine, range(len(binary)), binary)
    return out


def remove_person(frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 background frames: the frames with the masked pixels set to 0 (official)."""
    if frames.shape[:3] != masks.shape:
        raise ValueError(f"frames {frames.shape} and masks {masks.shape} differ in size")
    return frames * (masks == 0)[..., None].astype(np.uint8)
