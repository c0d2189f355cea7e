"""LightX2V's 4-step distillation LoRA for Wan 2.1 I2V 14B on the Wan-Animate transformer, switched on per request.

The file (`lightx2v/Wan2.1-Distill-Loras`, `wan2.1_i2v_lora_rank64_lightx2v_4step.safetensors`, the LoRA LightX2V's
own Wan-Animate config `configs/wan22/wan_animate_lora.json` loads) is what LightX2V's extractor
(`tools/extract/lora_extractor.py`) writes for "distilled model minus base model": keys in the ORIGINAL Wan layout with
the `diffusion_model.` prefix, all bf16, no alphas, no metadata:

- `<linear>.lora_down.weight` (rank, in) and `<linear>.lora_up.weight` (out, rank), scale 1: an SVD of the difference of
  every 2-D weight of 1M+ parameters: the 12 linears of each block, text/time embedders, time projection, the two CLIP
  projection linears (40 x 12 + 7 = 487 pairs, rank 64);
- `<param>.diff` / `<param>.diff_b`: the full difference of every other weight / bias: biases, norms, the patch
  embedding, the output head (40 x 19 + 15 = 775 tensors). `.diff_m` (a modulation table) appears in older LightX2V
  files, not in this one.

That layout serialises to exactly the file's published size (739,472,104 bytes; tests/test_wan_distill.py). LightX2V
merges W += strength * up @ down and p += strength * diff. Here nothing is merged, so requests can switch it on and off:
the pairs become one unmerged PEFT adapter (like the relighting LoRA), and the differences are written into their
parameters while the request runs and the saved originals written back afterwards (bit-exact). diffusers' own Wan LoRA
converter is not used for this file: it drops the norm, patch-embedding, CLIP-norm and modulation differences with at
most a log line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .lora import load_lora, set_active_adapters

logger = logging.getLogger(__name__)

DISTILL_ADAPTER = "lightx2v_distill"
ORIGINAL_PREFIX = "diffusion_model."
# Settings LightX2V uses with this LoRA (configs/distill/wan_i2v_distill_lora_4step_cfg.json and
# docs/EN/source/method_tutorials/step_distill.md: 4 steps on the trained timesteps [1000, 750, 500, 250], shift 5,
# CFG off, strength 1; its Wan-Animate config configs/wan22/wan_animate_lora.json: 4 steps, shift 5, guide 1, strength 1).
RECOMMENDED_SAMPLING: dict[str, int | float | str] = {
    "sampling_steps": 4,
    "shift": 5.0,
    "sample_solver": "euler",
    "guide_scale": 1.0,
}
RECOMMENDED_STRENGTH = 1.0

_DOWN_SUFFIXES = (".lora_down.weight", ".lora_A.weight")
_UP_SUFFIXES = (".lora_up.weight", ".lora_B.weight")
# difference key suffix -> the parameter it adds to (`blocks.0.norm3.diff` -> `blocks.0.norm3.weight`,
# `blocks.0.diff_m` -> `blocks.0.modulation`)
_DIFF_SUFFIXES = {".diff": ".weight", ".diff_b": ".bias", ".diff_m": ".modulation"}


@dataclass(frozen=True)
class LightX2VLora:
    """A LightX2V LoRA file split by kind; names in the original Wan layout without the prefix."""

    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]  # linear -> (down (r, in) with alpha / r folded in, up (out, r))
    diffs: dict[str, torch.Tensor]  # parameter -> its full difference


def split_lightx2v_state(state: dict[str, torch.Tensor]) -> LightX2VLora:
    """Sort every tensor of a LightX2V LoRA into LoRA pairs and parameter differences; anything else is an error."""
    downs: dict[str, torch.Tensor] = {}
    ups: dict[str, torch.Tensor] = {}
    alphas: dict[str, float] = {}
    diffs: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        name = key.removeprefix(ORIGINAL_PREFIX)
        down = next((s for s in _DOWN_SUFFIXES if name.endswith(s)), None)
        up = next((s for s in _UP_SUFFIXES if name.endswith(s)), None)
        diff = next((s for s in _DIFF_SUFFIXES if name.endswith(s)), None)
        if down is not None:
            downs[name.removesuffix(down)] = value
        elif up is not None:
            ups[name.removesuffix(up)] = value
        elif name.endswith(".alpha"):
            alphas[name.removesuffix(".alpha")] = float(value)
        elif diff is not None:
            diffs[name.removesuffix(diff) + _DIFF_SUFFIXES[diff]] = value
        else:
            unknown.append(key)
    unpaired = sorted(set(downs) ^ set(ups))
    stray_alphas = sorted(set(alphas) - set(downs))
    if unknown or unpaired or stray_alphas:
        raise ValueError(
            f"not a LightX2V LoRA: {len(unknown)} unknown keys (e.g. {unknown[:3]}), {len(unpaired)} down/up without "
            f"its partner (e.g. {unpaired[:3]}), {len(stray_alphas)} alphas without a pair (e.g. {stray_alphas[:3]})"
        )
    if not downs and not diffs:
        raise ValueError("not a LightX2V LoRA: no tensors")
    pairs = {}
    for name, down in downs.items():
        up = ups[name]
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise ValueError(f"{name}: LoRA shapes down {tuple(down.shape)}, up {tuple(up.shape)} do not chain")
        scale = alphas[name] / down.shape[0] if name in alphas else 1.0
        pairs[name] = (down * scale if scale != 1.0 else down, up)
    return LightX2VLora(pairs=pairs, diffs=diffs)


def diffusers_names(original_names: Iterable[str]) -> dict[str, str]:
    """Original Wan parameter names -> WanAnimateTransformer3DModel names, through diffusers' own checkpoint converter."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    names = list(dict.fromkeys(original_names))
    tagged = {name: torch.tensor(i) for i, name in enumerate(names)}  # the converter renames keys; values tag them
    converted = convert_wan_transformer_to_diffusers(tagged)
    if len(converted) != len(names):
        raise ValueError("the Wan key converter merged or split some of these names")
    return {names[int(tag)]: new for new, tag in converted.items()}


def find_parameter(module: torch.nn.Module, name: str) -> torch.nn.Parameter:
    """The parameter `name` of `module`, also once PEFT has moved it under `base_layer`."""
    path, _, attr = name.rpartition(".")
    try:
        owner = module.get_submodule(path) if path else module
    except AttributeError:
        raise KeyError(name) from None
    owner = getattr(owner, "base_layer", owner)
    param = getattr(owner, attr, None)
    if not isinstance(param, torch.nn.Parameter):
        raise KeyError(name)
    return param


@dataclass
class DistillLora:
    """The loaded distillation LoRA: a PEFT adapter (inactive until asked for) plus full-parameter differences.

    `apply` writes parameter + strength * difference into the differenced parameters (norms, biases, patch embedding,
    head) and keeps their values; `restore` writes the kept values back, bit-exactly. Activate the adapter alongside
    (wan.lora.request_adapters does both).
    """

    adapter_name: str | None  # None: a differences-only file (LightX2V's extractor with --diff-only)
    deltas: dict[str, torch.Tensor]  # diffusers parameter name -> difference (the file's dtype, on the CPU)
    strength: float = RECOMMENDED_STRENGTH
    saved: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # originals while applied

    @property
    def applied(self) -> bool:
        return bool(self.saved)

    @torch.no_grad()
    def apply(self, transformer: torch.nn.Module) -> None:
        if self.applied:
            raise RuntimeError("the distillation LoRA's parameter differences are already applied")
        try:
            for name, delta in self.deltas.items():
                param = find_parameter(transformer, name)
                if type(param.data) is not torch.Tensor:  # e.g. a torchao FP8 weight: no plain addition
                    raise TypeError(f"{name} is a {type(param.data).__name__}; cannot add the LoRA's difference to it")
                self.saved[name] = param.detach().clone()
                updated = param.detach().float() + self.strength * delta.to(device=param.device, dtype=torch.float32)
                param.copy_(updated.to(param.dtype))
        except BaseException:
            self.restore(transformer)  # all or nothing
            raise

    @torch.no_grad()
    def restore(self, transformer: torch.nn.Module) -> None:
        for name, original in self.saved.items():
            find_parameter(transformer, name).copy_(original)
        self.saved.clear()


def _read_state(source: Path | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(source, dict):
        return dict(source)
    from safetensors.torch import load_file

    return load_file(str(source))


def load_distill_lora(
    transformer: torch.nn.Module,
    source: Path | dict[str, torch.Tensor],
    adapter_name: str = DISTILL_ADAPTER,
    strength: float = RECOMMENDED_STRENGTH,
) -> DistillLora:
    """Load a LightX2V LoRA (.safetensors path or state dict) as an inactive adapter plus parameter differences.

    Every tensor must find its place: an unknown key, a pair or difference for a module the model lacks, or a shape
    that does not match raises (nothing is skipped silently).
    """
    lora = split_lightx2v_state(_read_state(source))
    names = diffusers_names([*(f"{linear}.weight" for linear in lora.pairs), *lora.diffs])
    peft_state: dict[str, torch.Tensor] = {}
    for linear, (down, up) in lora.pairs.items():
        module = names[f"{linear}.weight"].removesuffix(".weight")
        weight = find_parameter(transformer, f"{module}.weight")  # KeyError: the model has no such linear
        if weight.shape != (up.shape[0], down.shape[1]):
            raise ValueError(f"{linear}: LoRA {tuple(up.shape)} @ {tuple(down.shape)} for a {tuple(weight.shape)} weight")
        peft_state[f"transformer.{module}.lora_A.weight"] = down
        peft_state[f"transformer.{module}.lora_B.weight"] = up
    deltas: dict[str, torch.Tensor] = {}
    for original, delta in lora.diffs.items():
        name = names[original]
        try:
            param = find_parameter(transformer, name)
        except KeyError:
            raise ValueError(f"{original}: the transformer has no parameter {name} for this difference") from None
        if param.shape != delta.shape:
            raise ValueError(f"{original}: difference {tuple(delta.shape)} for a {tuple(param.shape)} parameter")
        deltas[name] = delta.detach().cpu()
    if peft_state:
        load_lora(transformer, peft_state, adapter_name)  # checks that every tensor landed
        set_active_adapters(transformer, {})
    logger.info("distillation LoRA: %d LoRA pairs, %d parameter differences", len(lora.pairs), len(deltas))
    return DistillLora(adapter_name=adapter_name if peft_state else None, deltas=deltas, strength=strength)
