"""LoRAs on the transformer through diffusers' Wan LoRA loader + PEFT, all kept unmerged.

- The relighting LoRA of the release (relighting_lora.ckpt: a torch checkpoint whose "state_dict" holds PEFT keys
  such as `blocks.0.self_attn.q.lora_A.weight`, rank 128, alpha 128, on every linear of the blocks except the face
  adapters). Official: replacement mode only. diffusers converts the original Wan key layout only when the keys carry
  the `diffusion_model.` prefix and otherwise skips them with a mere warning, so the prefix is added here and every
  tensor is checked to have landed.
- User LoRAs (.safetensors, original `diffusion_model.blocks.N...lora_down/lora_up[/alpha]` layout or diffusers
  `transformer.blocks.N...lora_A/lora_B`), loaded for one request and deleted after it.
- The 4-step distillation LoRA (wan/distill.py): an adapter loaded once like the relighting one, plus parameter
  differences applied for the requests that ask for it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .distill import DistillLora

logger = logging.getLogger(__name__)

RELIGHTING_ADAPTER = "wan_relighting"
USER_ADAPTER_PREFIX = "user_lora_"


_LORA_KEY = re.compile(r"lora_[AB]\b|lora_(down|up)\b|lora\.(down|up)\b")
_WAN_BLOCK_KEY = re.compile(r"(^|\.)(lora_unet_)?blocks[._]\d+[._]")  # Wan's `blocks.N.`, not FLUX's `transformer_blocks`
MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own header cap


def lora_file_problem(path: Path) -> tuple[str, str] | None:
    """(error code, reason) why a user file is not a usable Wan LoRA (None when it looks like one), read from the safetensors header
    alone (a few KB, no tensor loaded): not a safetensors file, damaged or truncated, no LoRA tensors, or a LoRA for
    another model (no key targets Wan's `blocks.N`)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        header_len = int.from_bytes(head, "little") if len(head) == 8 else 0
        if not 2 <= header_len <= min(MAX_HEADER_BYTES, size - 8):
            return "lora_not_safetensors", "is not a safetensors file (no valid header); LoRAs are accepted as .safetensors only"
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        return "lora_not_safetensors", "is not a safetensors file (its header is not JSON); LoRAs are accepted as .safetensors only"
    if not isinstance(header, dict):
        return "lora_not_safetensors", "is not a safetensors file (its header is not a JSON object)"
    data_bytes = size - 8 - header_len
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    for key, entry in tensors.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_bytes):  # fmt: skip
            return "lora_damaged", f"is damaged or truncated (tensor {key[:80]!r} lies outside the file); download it again"
    if not any(_LORA_KEY.search(key) for key in tensors):
        examples = ", ".join(repr(k[:60]) for k in list(tensors)[:3]) or "none"
        return "not_a_lora", f"holds no LoRA tensors (lora_A/lora_B or lora_down/lora_up; its tensors: {examples}); is it a LoRA?"
    if not any(_WAN_BLOCK_KEY.search(key) for key in tensors):
        example = next(k for k in tensors if _LORA_KEY.search(k))[:80]
        return "lora_wrong_model", f"is a LoRA for another model: no tensor targets Wan's transformer blocks (e.g. {example!r})"
    return None


def _has_adapters(transformer: torch.nn.Module) -> bool:
    return bool(getattr(transformer, "_hf_peft_config_loaded", False)) and bool(getattr(transformer, "peft_config", {}))


def original_peft_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT keys of the original model (`blocks.N.self_attn.q.lora_A.weight`) prefixed `diffusion_model.`.

    Accepts the forms PEFT writes: with or without `base_model.model.` / `diffusion_model.`, and with the adapter
    name (`lora_A.default.weight`).
    """
    out = {}
    for key, value in state_dict.items():
        name = key.removeprefix("base_model.model.").removeprefix("diffusion_model.")
        name = name.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")
        out["diffusion_model." + name] = value
    return out


def lora_state_dict(source: Path | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LoRA file or dict in diffusers' layout (`transformer.blocks.N.attn1.to_q.lora_A.weight`, alphas folded)."""
    from diffusers.loaders import WanLoraLoaderMixin

    if isinstance(source, dict):
        source = dict(source)  # diffusers' converter pops keys
    else:
        source = str(source)
    state = WanLoraLoaderMixin.lora_state_dict(source)
    if not state or not all(".lora" in k or "lora_" in k for k in state):
        raise ValueError("not a LoRA checkpoint: expected lora_A/lora_B (or lora_down/lora_up) tensors")
    return state


_COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _cast_adapter(transformer: torch.nn.Module, adapter_name: str) -> None:
    """Adapter weights in the dtype of the layer they adapt: bf16 in the blocks (the official run computes them under
    bf16 autocast), float32 where diffusers keeps the layer in float32 (the time embedder); over a quantized layer,
    the model's compute dtype."""
    default = transformer.patch_embedding.weight.dtype  # never quantized
    for module in transformer.modules():
        weight = getattr(getattr(module, "base_layer", None), "weight", None)
        if weight is None:
            continue
        dtype = weight.dtype if type(weight.data) is torch.Tensor and weight.dtype in _COMPUTE_DTYPES else default
        for layers in (getattr(module, "lora_A", {}), getattr(module, "lora_B", {})):
            if adapter_name in layers:
                layers[adapter_name].to(dtype)


def _check_loaded(transformer: torch.nn.Module, state: dict[str, torch.Tensor], adapter_name: str) -> None:
    """Every LoRA tensor of `state` (diffusers keys) is in the model under `adapter_name` with the same values.

    Compared where the model's tensors live, with one host sync in all (a copy back per tensor took seconds on the
    14B model)."""
    params = dict(transformer.named_parameters())
    missing, compared, matches = [], [], []
    for key, value in state.items():
        name = key.removeprefix("transformer.")
        for part in (".lora_A.", ".lora_B."):
            name = name.replace(part, f"{part}{adapter_name}.")
        param = params.get(name)
        if param is None:
            missing.append(key)
            continue
        loaded = param.detach().float()
        expected = value.to(device=loaded.device, dtype=torch.float32)
        compared.append(key)
        matches.append(((loaded - expected).abs() <= 1e-3 + 1e-2 * expected.abs()).all())
    different = []
    if matches:
        ok = torch.stack(matches).cpu()
        different = [key for key, good in zip(compared, ok.tolist(), strict=True) if not good]
    if missing or different:
        raise RuntimeError(
            f"LoRA {adapter_name!r}: {len(missing)} tensors were not loaded (e.g. {missing[:3]}), "
            f"{len(different)} differ after loading (e.g. {different[:3]})"
        )


def load_lora(
    transformer: torch.nn.Module, source: Path | dict[str, torch.Tensor], adapter_name: str
) -> dict[str, torch.Tensor]:
    """Add one LoRA as an unmerged PEFT adapter, checked to have loaded in full; returns its diffusers state dict."""
    from diffusers.loaders import WanLoraLoaderMixin

    state = lora_state_dict(source)
    # A T2V LoRA (no image-attention layers) gets zero image layers, as diffusers' load_lora_weights does.
    state = WanLoraLoaderMixin._maybe_expand_t2v_lora_for_i2v(transformer, state)
    try:
        # low_cpu_mem_usage: PEFT makes the LoRA layers empty and takes the file's tensors, instead of first filling
        # them with random values on the CPU (most of the seconds a user LoRA took on the 14B model).
        transformer.load_lora_adapter(
            dict(state), adapter_name=adapter_name, prefix="transformer", low_cpu_mem_usage=True
        )
    except ImportError as error:  # e.g. peft >= 0.19 refuses any LoRA layer when torchao < 0.16 is installed
        raise RuntimeError(f"PEFT cannot create LoRA layers in this environment: {error}") from error
    _check_loaded(transformer, state, adapter_name)
    _cast_adapter(transformer, adapter_name)
    return state


def load_relighting_lora(transformer: torch.nn.Module, path: Path, adapter_name: str = RELIGHTING_ADAPTER) -> str:
    """Load relighting_lora.ckpt (weights_only: never unpickle code) as an inactive adapter; returns its name."""
    checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path}: expected a torch checkpoint with a 'state_dict' of LoRA tensors")
    load_lora(transformer, original_peft_keys(state), adapter_name)
    set_active_adapters(transformer, {})
    logger.info("relighting LoRA loaded from %s (%d tensors)", path, len(state))
    return adapter_name


def set_active_adapters(transformer: torch.nn.Module, weights: dict[str, float]) -> None:
    """Activate exactly these adapters at these scales (none: LoRA layers bypassed)."""
    if not _has_adapters(transformer):
        if weights:
            raise ValueError(f"no adapters are loaded; cannot activate {sorted(weights)}")
        return
    if not weights:
        transformer.disable_lora()
        return
    transformer.enable_lora()
    transformer.set_adapters(list(weights), [float(w) for w in weights.values()])


def _load_user_lora(transformer: torch.nn.Module, path: Path, adapter_name: str, field: str) -> None:
    """load_lora for a user's file: a LoRA whose header passed the checks but whose tensors do not fit this model
    (other shapes, other layers) is an InputError naming the field, and leaves no half-loaded adapter behind."""
    from ..errors import InputError

    try:
        load_lora(transformer, path, adapter_name)
    except torch.OutOfMemoryError:
        raise
    except (ValueError, RuntimeError, KeyError) as error:
        if adapter_name in getattr(transformer, "peft_config", {}):
            transformer.delete_adapters([adapter_name])
        reason = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        raise InputError("lora_incompatible", field, f"does not fit this model's transformer ({reason})") from None


@contextmanager
def request_adapters(
    transformer: torch.nn.Module,
    relighting_adapter: str | None,
    use_relighting: bool,
    user_loras: Sequence[tuple[Path | str, float]],
    distill: DistillLora | None = None,
) -> Iterator[dict[str, float]]:
    """For one request: load the user's LoRAs, activate them (with relighting and the distillation LoRA when asked:
    `distill` is the loaded DistillLora to switch on, or None), undo it all afterwards."""
    from .offload import refresh_transformer_offload, transformer_is_offloaded

    loaded: list[str] = []
    distilled = False
    try:
        weights: dict[str, float] = {}
        if use_relighting and relighting_adapter is not None:
            weights[relighting_adapter] = 1.0
        elif use_relighting:
            logger.warning("replacement without the relighting LoRA (not loaded): the character will not be relit")
        if distill is not None and distill.adapter_name is not None:
            weights[distill.adapter_name] = distill.strength
        for i, (path, weight) in enumerate(user_loras):
            name = f"{USER_ADAPTER_PREFIX}{i}"
            _load_user_lora(transformer, Path(path), name, f"loras[{i}].file")
            loaded.append(name)
            weights[name] = float(weight)
        if distill is not None:
            distill.apply(transformer)
            distilled = True
        # Group offloading streams from its own pinned copies: re-register new adapters and changed parameters.
        if (loaded or distilled) and transformer_is_offloaded(transformer):
            refresh_transformer_offload(transformer)
        set_active_adapters(transformer, weights)
        yield weights
    finally:
        if loaded:
            transformer.delete_adapters(loaded)
        if distilled:
            distill.restore(transformer)
            if transformer_is_offloaded(transformer):
                refresh_transformer_offload(transformer)
        set_active_adapters(transformer, {})
