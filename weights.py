"""Every weight the app needs, by Hugging Face Hub repo, revision and file pattern, and how setup fetches them.

The app downloads only the files it uses (huggingface_hub `snapshot_download` with `allow_patterns`) into
one cache folder, and reuses them without touching the network when they are already there.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

WAN_ANIMATE_REPO = "Wan-AI/Wan2.2-Animate-14B"  # the original release: bf16 DiT shards, LoRA, preprocess models
WAN_ANIMATE_DIFFUSERS_REPO = "Wan-AI/Wan2.2-Animate-14B-Diffusers"  # HF-format VAE, UMT5, CLIP vision
FLUX_KONTEXT_REPO = "black-forest-labs/FLUX.1-Kontext-dev"  # gated: needs an accepted licence + HF_TOKEN
# LightX2V's step + CFG distillation LoRAs for Wan 2.1 (Apache-2.0); the I2V one is what LightX2V's own Wan-Animate
# config (configs/wan22/wan_animate_lora.json) loads.
DISTILL_LORA_REPO = "lightx2v/Wan2.1-Distill-Loras"
DISTILL_LORA_FILE = "wan2.1_i2v_lora_rank64_lightx2v_4step.safetensors"

# Revisions: each component is fetched at its `revision` unless WAN_ANIMATE_REVISION_<NAME> (e.g.
# WAN_ANIMATE_REVISION_TRANSFORMER) is set to a commit hash. Only the distillation LoRA has a commit hash pinned (below);
# for Wan-AI/Wan2.2-Animate-14B, Wan-AI/Wan2.2-Animate-14B-Diffusers and black-forest-labs/FLUX.1-Kontext-dev no
# commit hash was found in any public source readable from here (the Hub itself is unreachable), so they follow "main".
DEFAULT_REVISION = "main"
# lightx2v/Wan2.1-Distill-Loras at the commit a public third-party manifest pins and verifies the same file at
# (739,472,104 bytes, SHA-256 8833bd4f...b0f1; github.com/sawfwair/mere-run, its adapter catalog and model docs).
DISTILL_LORA_REVISION = "27ae38da91014b947dd39cc3fa78b97cd7b386dd"

ENV_CACHE_DIR = "WAN_ANIMATE_CACHE_DIR"


@dataclass(frozen=True)
class HubComponent:
    """One piece of the app's weights: where it lives on the Hub and which files of that repo it needs."""

    name: str
    repo_id: str
    allow_patterns: tuple[str, ...]
    approx_gb: float  # download size, for README and logs
    revision: str = DEFAULT_REVISION

    def pinned_revision(self) -> str:
        return os.environ.get(f"WAN_ANIMATE_REVISION_{self.name.upper()}", self.revision)


TRANSFORMER = HubComponent(
    "transformer",
    WAN_ANIMATE_REPO,
    ("config.json", "diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model.safetensors.index.json"),
    34.5,
)
RELIGHTING_LORA = HubComponent("relighting_lora", WAN_ANIMATE_REPO, ("relighting_lora.ckpt",), 1.5)
DETECTOR = HubComponent("detector", WAN_ANIMATE_REPO, ("process_checkpoint/det/yolov10m.onnx",), 0.06)
POSE = HubComponent("pose", WAN_ANIMATE_REPO, ("process_checkpoint/pose2d/*",), 2.5)
# Only the transformer's config.json from the Diffusers repo (the weights come from the bf16 release above).
TRANSFORMER_CONFIG = HubComponent("transformer_config", WAN_ANIMATE_DIFFUSERS_REPO, ("transformer/config.json",), 0.0)
VAE = HubComponent("vae", WAN_ANIMATE_DIFFUSERS_REPO, ("vae/*",), 0.5)
TEXT_ENCODER = HubComponent("text_encoder", WAN_ANIMATE_DIFFUSERS_REPO, ("text_encoder/*", "tokenizer/*"), 11.4)
IMAGE_ENCODER = HubComponent("image_encoder", WAN_ANIMATE_DIFFUSERS_REPO, ("image_encoder/*", "image_processor/*"), 1.3)
# The release's own SAM 2.0 hiera-large checkpoint (what the official preprocessing loads), converted in memory
# to transformers' Sam2VideoModel by preprocess/sam2_checkpoint.py.
SAM2 = HubComponent("sam2", WAN_ANIMATE_REPO, ("process_checkpoint/sam2/sam2_hiera_large.pt",), 0.9)
DISTILL_LORA = HubComponent("distill_lora", DISTILL_LORA_REPO, (DISTILL_LORA_FILE,), 0.74, DISTILL_LORA_REVISION)
FLUX_KONTEXT = HubComponent(
    "flux_kontext",
    FLUX_KONTEXT_REPO,
    ("model_index.json", "scheduler/*", "text_encoder/*", "text_encoder_2/*", "tokenizer/*", "tokenizer_2/*",
     "transformer/*", "vae/*"),
    33.0,
)  # fmt: skip

CORE_COMPONENTS: tuple[HubComponent, ...] = (
    TRANSFORMER, TRANSFORMER_CONFIG, RELIGHTING_LORA, VAE, TEXT_ENCODER, IMAGE_ENCODER, DETECTOR, POSE, SAM2,
)  # fmt: skip


class WeightsUnavailableError(RuntimeError):
    """The weights are neither in the cache nor downloadable (offline, gated or missing)."""


def default_cache_dir() -> Path:
    """One cache folder for everything: $WAN_ANIMATE_CACHE_DIR, else the Hub's own cache ($HF_HOME)."""
    explicit = os.environ.get(ENV_CACHE_DIR)
    if explicit:
        return Path(explicit)
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _missing_patterns(root: Path, patterns: tuple[str, ...]) -> list[str]:
    """Patterns that match no file under `root` (paths relative to it, '/'-separated)."""
    files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()]
    return [pat for pat in patterns if not any(fnmatch.fnmatch(f, pat) for f in files)]


def fetch_component(component: HubComponent, cache_dir: Path | None = None) -> Path:
    """Local snapshot folder holding `component`'s files: from the cache when complete, else downloaded."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    kwargs = dict(
        repo_id=component.repo_id,
        revision=component.pinned_revision(),
        cache_dir=str(cache),
        allow_patterns=list(component.allow_patterns),
    )
    try:
        root = Path(snapshot_download(local_files_only=True, **kwargs))
        if not _missing_patterns(root, component.allow_patterns):
            return root
    except LocalEntryNotFoundError:
        pass
    if _is_offline():
        raise WeightsUnavailableError(
            f"{component.name}: {component.repo_id}@{component.pinned_revision()} files "
            f"{list(component.allow_patterns)} are not in the cache {cache} and HF_HUB_OFFLINE is set. "
            "Unset HF_HUB_OFFLINE to download them, or point WAN_ANIMATE_CACHE_DIR at a cache that has them."
        )
    logger.info("downloading %s (~%.1f GB) from %s", component.name, component.approx_gb, component.repo_id)
    try:
        root = Path(snapshot_download(**kwargs))
    except HfHubHTTPError as error:
        raise WeightsUnavailableError(
            f"{component.name}: download from {component.repo_id} failed ({error}). Gated repos need an accepted "
            "licence on the Hub and HF_TOKEN set."
        ) from error
    missing = _missing_patterns(root, component.allow_patterns)
    if missing:
        raise WeightsUnavailableError(f"{component.name}: {component.repo_id} has no files matching {missing}")
    return root


@dataclass(frozen=True)
class WeightPaths:
    """Local paths of every file the full model needs (what setup hands to the loaders)."""

    transformer_dir: Path  # config.json + bf16 safetensors shards in the original key layout
    transformer_config: Path  # the diffusers config.json of the same transformer (sizes the converter maps to)
    relighting_lora: Path  # relighting_lora.ckpt
    diffusers_dir: Path  # snapshot of the Diffusers repo: vae/, text_encoder/, tokenizer/, image_encoder/, ...
    detector_onnx: Path  # yolov10m.onnx
    pose_onnx: Path  # folder or file the official code passes to onnxruntime (vitpose_h_wholebody.onnx)
    sam2_checkpoint: Path  # sam2_hiera_large.pt (original SAM2 layout)
    flux_kontext_dir: Path | None = None
    distill_lora: Path | None = None  # wan2.1_i2v_lora_rank64_lightx2v_4step.safetensors (LightX2V layout)


def fetch_all(cache_dir: Path | None = None, with_flux: bool = False, with_distill: bool = False) -> WeightPaths:
    """Fetch every component setup needs (FLUX Kontext and the distillation LoRA only when asked); their local paths."""
    roots = {c.name: fetch_component(c, cache_dir) for c in CORE_COMPONENTS}
    flux_dir = fetch_component(FLUX_KONTEXT, cache_dir) if with_flux else None
    distill = fetch_component(DISTILL_LORA, cache_dir) / DISTILL_LORA_FILE if with_distill else None
    return WeightPaths(
        transformer_dir=roots["transformer"],
        transformer_config=roots["transformer_config"] / "transformer" / "config.json",
        relighting_lora=roots["relighting_lora"] / "relighting_lora.ckpt",
        diffusers_dir=roots["vae"],
        detector_onnx=roots["detector"] / "process_checkpoint" / "det" / "yolov10m.onnx",
        pose_onnx=roots["pose"] / "process_checkpoint" / "pose2d" / "vitpose_h_wholebody.onnx",
        sam2_checkpoint=roots["sam2"] / "process_checkpoint" / "sam2" / "sam2_hiera_large.pt",
        flux_kontext_dir=flux_dir,
        distill_lora=distill,
    )
