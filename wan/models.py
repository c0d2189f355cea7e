"""The Wan-Animate 14B components: where their files are, how they load, and a tiny random twin for tests.

Transformer: the ORIGINAL bf16 release (Wan-AI/Wan2.2-Animate-14B: config.json + diffusion_pytorch_model-*.
safetensors in the original key layout), converted on load by diffusers' own converter through
`WanAnimateTransformer3DModel.from_single_file`; or a Diffusers-format folder (Wan-AI/Wan2.2-Animate-14B-Diffusers/
transformer, fp32 on disk, 69 GB) through `from_pretrained`. VAE, UMT5 text encoder, tokenizer, CLIP vision encoder
and image processor: the Diffusers repo's HF-format subfolders (the original release ships them as .pth files in
a non-HF layout).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from diffusers import AutoencoderKLWan, WanAnimateTransformer3DModel
    from transformers import CLIPImageProcessor, CLIPVisionModel, PreTrainedTokenizerBase, UMT5EncoderModel

    from .distill import DistillLora

logger = logging.getLogger(__name__)

ORIGINAL_REPO = "Wan-AI/Wan2.2-Animate-14B"
DIFFUSERS_REPO = "Wan-AI/Wan2.2-Animate-14B-Diffusers"
RELIGHTING_LORA_FILE = "relighting_lora.ckpt"
ORIGINAL_INDEX_FILE = "diffusion_pytorch_model.safetensors.index.json"
DIFFUSERS_SUBFOLDERS = ("vae", "text_encoder", "tokenizer", "image_encoder", "image_processor")

# diffusers config of the 14B transformer, as diffusers' own conversion script (scripts/convert_wan_to_diffusers.py,
# "Wan2.2-Animate-14B") writes it. Used when the original release's folder is loaded: its config.json describes the
# original WanAnimateModel class, whose motion-encoder/face sizes are fixed in code rather than configured.
ANIMATE_14B_DIFFUSERS_CONFIG: dict[str, Any] = {
    "patch_size": [1, 2, 2],
    "num_attention_heads": 40,
    "attention_head_dim": 128,
    "in_channels": 36,
    "latent_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 13824,
    "num_layers": 40,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": 1280,
    "added_kv_proj_dim": 5120,
    "rope_max_seq_len": 1024,
    "pos_embed_seq_len": None,
    "motion_encoder_size": 512,
    "motion_style_dim": 512,
    "motion_dim": 20,
    "motion_encoder_dim": 512,
    "face_encoder_hidden_dim": 1024,
    "face_encoder_num_heads": 4,
    "inject_face_latents_blocks": 5,
    "motion_encoder_batch_size": 8,
}


@dataclass(frozen=True)
class ModelPaths:
    """Local files of the model (what the app's weights.py downloads)."""

    # Original release folder (config.json + sharded safetensors + index), one .safetensors file in the original
    # layout, or a Diffusers-format transformer folder (config.json with _class_name WanAnimateTransformer3DModel).
    transformer: Path
    # Snapshot of Wan-AI/Wan2.2-Animate-14B-Diffusers holding vae/, text_encoder/, tokenizer/, image_encoder/,
    # image_processor/.
    diffusers_dir: Path
    # relighting_lora.ckpt from the original release (replacement mode); None: replacement runs without it.
    relighting_lora: Path | None = None
    # Optional diffusers config.json for an original-layout transformer (default: the 14B config above, with the
    # sizes read from the release's config.json).
    transformer_config: Path | None = None
    # LightX2V's 4-step distillation LoRA (wan/distill.py); None: requests cannot ask for distillation.
    distill_lora: Path | None = None

    @classmethod
    def from_weight_paths(cls, paths: Any) -> ModelPaths:
        """From the app's weights.WeightPaths (transformer_dir, transformer_config, diffusers_dir, relighting_lora,
        distill_lora)."""

        def optional(name: str) -> Path | None:
            value = getattr(paths, name, None)
            return Path(value) if value else None

        return cls(
            transformer=Path(paths.transformer_dir),
            diffusers_dir=Path(paths.diffusers_dir),
            relighting_lora=optional("relighting_lora"),
            transformer_config=optional("transformer_config"),
            distill_lora=optional("distill_lora"),
        )


@dataclass
class WanAnimateModels:
    """Every component generation needs, plus where they run."""

    transformer: WanAnimateTransformer3DModel
    vae: AutoencoderKLWan
    text_encoder: UMT5EncoderModel
    tokenizer: PreTrainedTokenizerBase
    image_encoder: CLIPVisionModel
    image_processor: CLIPImageProcessor
    dtype: torch.dtype  # transformer compute dtype (bf16 for the real model)
    device: torch.device  # execution device
    offload: str = "none"  # placement chosen at load: 'none' (all on device) or 'model' (see wan/offload.py)
    relighting_adapter: str | None = None  # PEFT adapter name of the relighting LoRA, when loaded
    distill: DistillLora | None = None  # the 4-step distillation LoRA, when loaded
    # Encoded prompts by text, (1, 512, text_dim) on `device`: the default prompts are encoded once per worker.
    prompt_cache: dict[str, torch.Tensor] = field(default_factory=dict)
    # The first clip's animation guide (mid-grey video, no carried frames) through the VAE, by (frames, height, width,
    # device, VAE dtype): the same input every request, so it is encoded once per shape (wan.conditioning).
    blank_guide_cache: dict[tuple, torch.Tensor] = field(default_factory=dict)


def keep_fp32_modules(transformer: torch.nn.Module) -> torch.nn.Module:
    """Cast the parameters diffusers keeps in float32 (`_keep_in_fp32_modules`) back to float32.

    Same rule as diffusers' from_pretrained (a name component matching a listed module). from_single_file casts the
    whole model to `torch_dtype`; the release stores these in bf16, so upcasting loses nothing and the modulation,
    norms and time embedding then run in float32 as in diffusers (and as in the official autocast(float32) regions).
    """
    names = set(getattr(transformer, "_keep_in_fp32_modules", None) or [])
    for name, param in transformer.named_parameters():
        if param.is_floating_point() and names.intersection(name.split(".")):
            param.data = param.data.to(torch.float32)
    return transformer


def _is_diffusers_transformer_folder(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    return json.loads(config.read_text()).get("_class_name") == "WanAnimateTransformer3DModel"


def diffusers_config_from_original(original: dict[str, Any]) -> dict[str, Any]:
    """The diffusers transformer config for the release's config.json (WanAnimateModel fields)."""
    config = dict(ANIMATE_14B_DIFFUSERS_CONFIG)
    dim = int(original.get("dim", 5120))
    heads = int(original.get("num_heads", 40))
    config.update(
        num_attention_heads=heads,
        attention_head_dim=dim // heads,
        in_channels=int(original.get("in_dim", 36)),
        out_channels=int(original.get("out_dim", 16)),
        text_dim=int(original.get("text_dim", 4096)),
        freq_dim=int(original.get("freq_dim", 256)),
        ffn_dim=int(original.get("ffn_dim", 13824)),
        num_layers=int(original.get("num_layers", 40)),
        eps=float(original.get("eps", 1e-6)),
        added_kv_proj_dim=dim,
        motion_encoder_dim=int(original.get("motion_encoder_dim", 512)),
    )
    config["latent_channels"] = (config["in_channels"] - 4) // 2
    if "patch_size" in original:
        config["patch_size"] = list(original["patch_size"])
    return config


def read_original_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of an original-layout checkpoint: one .safetensors file, or a folder of shards + index."""
    from safetensors.torch import load_file

    if path.is_file():
        return load_file(str(path))
    index_file = path / ORIGINAL_INDEX_FILE
    if index_file.is_file():
        shards = sorted(set(json.loads(index_file.read_text())["weight_map"].values()))
    else:
        shards = sorted(p.name for p in path.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no safetensors weights in {path}")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(load_file(str(path / shard)))
    return state


def convert_original_state_dict(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Original keys -> diffusers keys with diffusers' own converter, checked against the model's parameter names.

    Missing weights are an error (from_single_file would leave them on the meta device); leftovers such as the
    original motion encoder's blur-kernel buffers (constants diffusers rebuilds itself) are dropped.
    """
    from accelerate import init_empty_weights
    from diffusers import WanAnimateTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    with init_empty_weights():
        expected = set(WanAnimateTransformer3DModel.from_config(config).state_dict())
    converted = convert_wan_transformer_to_diffusers(state)
    missing = sorted(expected - set(converted))
    if missing:
        raise RuntimeError(f"the transformer checkpoint lacks {len(missing)} weights, e.g. {missing[:5]}")
    unexpected = sorted(set(converted) - expected)
    if unexpected:
        logger.info("transformer checkpoint: ignoring %d unused tensors, e.g. %s", len(unexpected), unexpected[:3])
    return {key: converted[key] for key in expected}


def load_transformer(
    path: Path, dtype: torch.dtype = torch.bfloat16, config_path: Path | None = None
) -> WanAnimateTransformer3DModel:
    """The transformer on CPU in `dtype` (float32 kept where diffusers keeps it), from either release format."""
    from diffusers import WanAnimateTransformer3DModel

    path = Path(path)
    if path.is_dir() and _is_diffusers_transformer_folder(path):
        model = WanAnimateTransformer3DModel.from_pretrained(str(path), torch_dtype=dtype)
        return model.eval().requires_grad_(False)

    if config_path is not None:
        config = json.loads(Path(config_path).read_text())
    else:
        original_config_file = (path if path.is_dir() else path.parent) / "config.json"
        original = json.loads(original_config_file.read_text()) if original_config_file.is_file() else {}
        config = diffusers_config_from_original(original)
    config["_class_name"] = "WanAnimateTransformer3DModel"
    state = convert_original_state_dict(read_original_state_dict(path), config)
    with tempfile.TemporaryDirectory(prefix="wan-animate-config-") as config_dir:
        (Path(config_dir) / "config.json").write_text(json.dumps(config))
        # Keys already match the model exactly, so from_single_file loads them without converting a second time.
        model = WanAnimateTransformer3DModel.from_single_file(
            state, config=config_dir, torch_dtype=dtype, local_files_only=True
        )
    return keep_fp32_modules(model).eval().requires_grad_(False)


def image_encoder_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """Official CLIP runs in float16 on the GPU; float32 on CPU (or when the whole run is float32)."""
    if device.type == "cuda" and dtype != torch.float32:
        return torch.float16
    return torch.float32


def load_models(
    paths: ModelPaths | Any,
    device: torch.device | str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    offload: str | bool = "none",
    vae_dtype: torch.dtype = torch.float32,
) -> WanAnimateModels:
    """Load every component from local files and place them for `offload` ('none' | 'model' | 'auto').

    `paths` is a ModelPaths or the app's weights.WeightPaths. Dtypes follow the official code: transformer and
    UMT5 in `dtype` (bf16), CLIP in float16, VAE in float32 (`vae_dtype` bf16: the opt-in faster VAE, BENCHMARKS.md).
    """
    from diffusers import AutoencoderKLWan
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionModel, UMT5EncoderModel

    from .distill import load_distill_lora
    from .lora import load_relighting_lora
    from .offload import place_models, resolve_offload

    if not isinstance(paths, ModelPaths):
        paths = ModelPaths.from_weight_paths(paths)
    device = torch.device(device)
    root = Path(paths.diffusers_dir)
    missing = [sub for sub in DIFFUSERS_SUBFOLDERS if not (root / sub).is_dir()]
    if missing:
        raise FileNotFoundError(f"{root} lacks the Diffusers subfolders {missing} (from {DIFFUSERS_REPO})")

    transformer = load_transformer(Path(paths.transformer), dtype, paths.transformer_config)
    relighting = None
    if paths.relighting_lora is not None:
        if not Path(paths.relighting_lora).is_file():
            raise FileNotFoundError(f"relighting LoRA {paths.relighting_lora} not found ({RELIGHTING_LORA_FILE})")
        relighting = load_relighting_lora(transformer, Path(paths.relighting_lora))
    distill = None
    if paths.distill_lora is not None:
        if not Path(paths.distill_lora).is_file():
            raise FileNotFoundError(f"distillation LoRA {paths.distill_lora} not found")
        distill = load_distill_lora(transformer, Path(paths.distill_lora))
    vae = AutoencoderKLWan.from_pretrained(str(root / "vae"), torch_dtype=vae_dtype).eval().requires_grad_(False)
    text_encoder = UMT5EncoderModel.from_pretrained(str(root / "text_encoder"), dtype=dtype)
    image_encoder = CLIPVisionModel.from_pretrained(
        str(root / "image_encoder"), dtype=image_encoder_dtype(device, dtype)
    )
    models = WanAnimateModels(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder.eval().requires_grad_(False),
        tokenizer=AutoTokenizer.from_pretrained(str(root / "tokenizer")),
        image_encoder=image_encoder.eval().requires_grad_(False),
        image_processor=CLIPImageProcessor.from_pretrained(str(root / "image_processor")),
        dtype=dtype,
        device=device,
        relighting_adapter=relighting,
        distill=distill,
    )
    place_models(models, resolve_offload(offload, device))
    return models


# ---------------------------------------------------------------------------------------------- tiny twin


def tiny_transformer_config(motion_encoder_size: int = 16) -> dict[str, Any]:
    """A few-thousand-parameter WanAnimateTransformer3DModel (sizes from diffusers' own pipeline tests).

    motion_encoder_size 16 keeps the motion encoder cheap (face crops are resized to it); 512 gives the release's
    motion-encoder layout (7 residual blocks), used by the checkpoint-format tests.
    """
    sizes = [2**i for i in range(2, motion_encoder_size.bit_length())]
    return {
        "patch_size": (1, 2, 2),
        "num_attention_heads": 2,
        "attention_head_dim": 12,
        "in_channels": 36,
        "latent_channels": 16,
        "out_channels": 16,
        "text_dim": 32,
        "freq_dim": 256,
        "ffn_dim": 32,
        "num_layers": 2,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "image_dim": 4,
        "added_kv_proj_dim": 24,
        "rope_max_seq_len": 1024,  # the release value; positions beyond 32 appear at smoke sizes
        "motion_encoder_channel_sizes": {str(s): 4 for s in sizes},
        "motion_encoder_size": motion_encoder_size,
        "motion_style_dim": 8,
        "motion_dim": 4,
        "motion_encoder_dim": 16,
        "face_encoder_hidden_dim": 16,
        "face_encoder_num_heads": 2,
        "inject_face_latents_blocks": 2,
    }


TINY_VOCAB = ("<pad>", "</s>", "<unk>", "dance", "monkey", "the", "person", "moves", "blurry", "static", "ugly")


def build_tiny_tokenizer() -> PreTrainedTokenizerBase:
    """A word-level tokenizer built in code (no Hub): pad 0, eos 1 appended like T5's, unknown words -> <unk>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(TINY_VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_tiny_models(
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    motion_encoder_size: int = 16,
) -> WanAnimateModels:
    """The real component classes with tiny random weights: the whole loop runs on CPU in seconds at 64x64."""
    from diffusers import AutoencoderKLWan, WanAnimateTransformer3DModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(seed)
        transformer = WanAnimateTransformer3DModel(**tiny_transformer_config(motion_encoder_size))
        vae = AutoencoderKLWan(
            base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
        )
        text_config = UMT5Config(
            vocab_size=len(TINY_VOCAB), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, dropout_rate=0.0,
        )  # fmt: skip
        text_encoder = UMT5EncoderModel(text_config)
        clip_config = CLIPVisionConfig(
            hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            intermediate_size=16, patch_size=8,
        )  # fmt: skip
        image_encoder = CLIPVisionModel(clip_config)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    models = WanAnimateModels(
        transformer=keep_fp32_modules(transformer if dtype == torch.float32 else transformer.to(dtype)).eval(),
        vae=vae.eval().requires_grad_(False),
        text_encoder=text_encoder.to(dtype).eval().requires_grad_(False),
        tokenizer=build_tiny_tokenizer(),
        image_encoder=image_encoder.to(image_encoder_dtype(device, dtype)).eval().requires_grad_(False),
        image_processor=image_processor,
        dtype=dtype,
        device=device,
    )
    from .offload import place_models

    place_models(models, "none")
    return models
