"""The segment loop: Conditioning -> decoded frames, clip by clip, as the official WanAnimate.generate().

Streaming: each clip's NEW frames are yielded as soon as they are decoded; only the last `refert_num` decoded frames
stay on the device (the next clip's guide). The official code keeps the whole video and returns it at the end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from ..errors import check_cancel
from . import motion_cache
from .color import match_colors
from .conditioning import (
    LATENT_CHANNELS,
    VAE_STRIDE_HW,
    VAE_STRIDE_T,
    clip_condition,
    clip_embedding,
    encode_prompt,
    face_pixels,
    pose_latents,
    reference_condition,
    vae_decode,
)
from .lora import request_adapters
from .offload import Offload, offload_session, on_device, resolve_offload
from .segments import clip_starts, latent_frames_to_decode, mirror_indices, valid_length
from .step_cache import StepCache, StepCacheOptions, installed

if TYPE_CHECKING:
    from ..preprocess.conditioning import Conditioning
    from .models import WanAnimateModels

logger = logging.getLogger(__name__)

# Official defaults: wan/configs/wan_animate_14B.py (prompt) and shared_config.py (sample_neg_prompt).
DEFAULT_PROMPT = "视频中的人在做动作"
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，"
    "杂乱的背景，三条腿，背景人很多，倒着走"
)
PROMPT_CACHE_SIZE = 16

StepCallback = Callable[[int, int, int, int], None]  # (segment_idx, num_segments, step_idx, num_steps)


@dataclass(frozen=True)
class GenerationOptions:
    """Sampling options (defaults: the official generate()'s, except where noted)."""

    mode: Literal["animation", "replacement"] = "animation"
    clip_len: int = 77  # frames per clip, 4n + 1
    refert_num: int = 1  # frames each clip continues from (1 or 5)
    shift: float = 5.0
    sample_solver: Literal["dpm++", "unipc", "euler"] = "dpm++"  # euler: the distillation LoRA's sampler
    sampling_steps: int = 20
    guide_scale: float = 1.0  # > 1: second pass with the negative prompt AND a blank (-1) face
    seed: int = 0
    prompt: str = ""  # '' -> DEFAULT_PROMPT
    n_prompt: str = ""  # '' -> DEFAULT_NEGATIVE_PROMPT
    color_match: bool = True  # not official: see wan/color.py
    offload: str | bool = "none"  # 'none' | 'model' (| True/False); never less than what the models were loaded with
    loras: Sequence[tuple[Path | str, float]] = field(default_factory=tuple)  # user LoRAs (path, weight)
    distill: bool = False  # switch on the 4-step distillation LoRA (models.distill); sampling settings stay as given
    step_cache: float = 0.0  # > 0: step caching threshold (wan/step_cache.py); 0 computes every step in full

    def resolved_prompts(self) -> tuple[str, str]:
        return (self.prompt or DEFAULT_PROMPT, self.n_prompt or DEFAULT_NEGATIVE_PROMPT)


def check_inputs(cond: Conditioning, options: GenerationOptions) -> None:
    """Raise ValueError on inputs the loop cannot run (the app validates user input before this)."""
    if options.clip_len < 5 or options.clip_len % VAE_STRIDE_T != 1:
        raise ValueError(f"clip_len must be 4n + 1 and >= 5, not {options.clip_len}")
    if options.refert_num not in (1, 5) or options.refert_num >= options.clip_len:
        raise ValueError(f"refert_num must be 1 or 5 and below clip_len, not {options.refert_num}")
    if options.sampling_steps < 1:
        raise ValueError("sampling_steps must be >= 1")
    if not 0.0 <= options.step_cache <= 1.0:
        raise ValueError(f"step_cache must be in [0, 1], not {options.step_cache}")
    if options.mode not in ("animation", "replacement"):
        raise ValueError(f"mode must be 'animation' or 'replacement', not {options.mode!r}")
    if cond.num_frames < 1:
        raise ValueError("the conditioning has no frames")
    if cond.height % 16 or cond.width % 16:
        raise ValueError(f"frame size {cond.width}x{cond.height} must be a multiple of 16")
    if cond.face_frames.shape[0] != cond.num_frames or cond.reference.shape[:2] != (cond.height, cond.width):
        raise ValueError("face frames and reference must match the pose video's length and size")
    if options.mode == "replacement":
        if cond.background_frames is None or cond.mask_frames is None:
            raise ValueError("replacement needs background_frames and mask_frames")
        if cond.background_frames.shape[0] != cond.num_frames or cond.mask_frames.shape[0] != cond.num_frames:
            raise ValueError("background and mask must have as many frames as the pose video")


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(T, 3, H, W) in [-1, 1] -> (T, H, W, 3) uint8 as the official save_video: floor((x + 1) / 2 * 255)."""
    scaled = (frames.clamp(-1.0, 1.0) + 1.0) / 2.0 * 255.0
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _prompt_embeddings(
    models: WanAnimateModels, texts: Sequence[str], device: torch.device, offload: Offload
) -> list[torch.Tensor]:
    """(1, 512, text_dim) per text, through the models' small cache (the default prompts recur every request)."""
    missing = [text for text in texts if text not in models.prompt_cache]
    if missing:
        with on_device(models.text_encoder, device, offload):
            for text in missing:
                if len(models.prompt_cache) >= PROMPT_CACHE_SIZE:
                    models.prompt_cache.pop(next(iter(models.prompt_cache)))
                models.prompt_cache[text] = encode_prompt(models, text, device)
    return [models.prompt_cache[text].to(device) for text in texts]


def _reset_transformer_caches(transformer: torch.nn.Module) -> None:
    """Forget cached activations of diffusers' caching hooks (if a speed option added any) between clips."""
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is not None:
        registry.reset_stateful_hooks()


@torch.no_grad()
def _predict(
    transformer: torch.nn.Module,
    model_input: torch.Tensor,  # (1, 36, 1 + lat_t, h, w): noisy latents + conditioning channels
    timestep: torch.Tensor,  # (1,)
    context: torch.Tensor,  # (1, 512, text_dim)
    clip_context: torch.Tensor,  # (1, 257, image_dim)
    pose: torch.Tensor,  # (1, 16, lat_t, h, w)
    face: torch.Tensor,  # (1, 3, T, 512, 512)
    cache_name: str,
) -> torch.Tensor:
    """One transformer forward (flow prediction, float32); `cache_name` keeps cond/uncond caching hooks apart."""
    with transformer.cache_context(cache_name):
        return transformer(
            hidden_states=model_input,
            timestep=timestep,
            encoder_hidden_states=context,
            encoder_hidden_states_image=clip_context,
            pose_hidden_states=pose,
            face_pixel_values=face,
            return_dict=False,
        )[0].float()


def _denoise(
    models: WanAnimateModels,
    noise: torch.Tensor,
    y: torch.Tensor,
    pose: torch.Tensor,
    face: torch.Tensor,
    context: torch.Tensor,
    context_null: torch.Tensor | None,
    clip_context: torch.Tensor,
    options: GenerationOptions,
    segment: tuple[int, int],
    on_step: StepCallback | None,
    should_cancel: Callable[[], bool] | None,
) -> torch.Tensor:
    """Run the sampler on one clip: noise (1, 16, 1 + lat_t, h, w) float32 -> latents of the same shape.

    y: (1, 20, 1 + lat_t, h, w) conditioning; pose: (1, 16, lat_t, h, w); face: (1, 3, clip_len, S, S).
    """
    from .schedulers import make_scheduler

    transformer = models.transformer
    scheduler = make_scheduler(options.sample_solver, options.shift)
    scheduler.set_timesteps(options.sampling_steps, device=noise.device)
    timesteps = scheduler.timesteps
    guided = options.guide_scale > 1.0
    face_uncond = face * 0 - 1 if guided else None  # official: the unconditional pass sees a black face
    y = y.to(models.dtype)
    pose = pose.to(models.dtype)
    cache = StepCache(StepCacheOptions(options.step_cache), len(timesteps)) if options.step_cache > 0 else None
    motion = motion_cache.MotionFeatureCache()  # the face video's features, computed once per branch
    latents = noise
    with (
        installed(transformer, cache) if cache is not None else nullcontext(),
        motion_cache.installed(transformer, motion),
    ):
        for step, t in enumerate(timesteps):
            check_cancel(should_cancel, f"at clip {segment[0] + 1}/{segment[1]}, step {step + 1}/{len(timesteps)}")
            model_input = torch.cat([latents.to(models.dtype), y], dim=1)
            timestep = t.expand(1)
            if cache is not None:
                cache.begin_step(step, "cond")
            motion.begin_forward("cond")
            noise_pred = _predict(transformer, model_input, timestep, context, clip_context, pose, face, "cond")
            if guided:
                if cache is not None:
                    cache.begin_step(step, "uncond")
                motion.begin_forward("uncond")
                noise_uncond = _predict(
                    transformer, model_input, timestep, context_null, clip_context, pose, face_uncond, "uncond"
                )
                noise_pred = noise_uncond + options.guide_scale * (noise_pred - noise_uncond)
            latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            if on_step is not None:
                on_step(segment[0], segment[1], step, len(timesteps))
    if cache is not None:
        logger.info("step cache: clip %d skipped %d of %d forwards", segment[0] + 1, cache.skipped_steps,
                    len(cache.decisions))
    return latents


@contextmanager
def _cancellable_decode(vae: torch.nn.Module, should_cancel: Callable[[], bool] | None, where: str) -> Iterator[None]:
    """Check should_cancel before each decoder call: diffusers' Wan VAE decodes one latent frame (or tile) per call,
    so a cancel stops a long 720p decode after the current frame instead of at its end."""
    decoder = getattr(vae, "decoder", None)
    if should_cancel is None or decoder is None:
        yield
        return
    handle = decoder.register_forward_pre_hook(lambda module, args: check_cancel(should_cancel, where))
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def _generate_on_device(
    models: WanAnimateModels,
    cond: Conditioning,
    options: GenerationOptions,
    on_step: StepCallback | None,
    should_cancel: Callable[[], bool] | None,
) -> Iterator[torch.Tensor]:
    """The loop; yields each clip's new frames as float (t, 3, H, W) tensors in [-1, 1] on the device."""
    check_inputs(cond, options)
    device = models.device
    replacement = options.mode == "replacement"
    prompt, n_prompt = options.resolved_prompts()
    num_frames, height, width = cond.num_frames, cond.height, cond.width
    clip_len, refert = options.clip_len, options.refert_num
    target_len = valid_length(num_frames, clip_len, refert)
    indices = np.asarray(mirror_indices(num_frames, target_len))
    starts = clip_starts(target_len, clip_len, refert)
    lat_t = (clip_len - 1) // VAE_STRIDE_T + 1
    noise_shape = (1, LATENT_CHANNELS, lat_t + 1, height // VAE_STRIDE_HW, width // VAE_STRIDE_HW)
    logger.info("generate: %d frames -> %d padded, %d clips of %d", num_frames, target_len, len(starts), clip_len)
    if options.distill and models.distill is None:
        raise ValueError("distill=True needs the distillation LoRA loaded (models.distill is None)")
    distill = models.distill if options.distill else None

    with (
        request_adapters(models.transformer, models.relighting_adapter, replacement, options.loras, distill),
        offload_session(models, resolve_offload(options.offload, device)) as offload,
    ):
        texts = [prompt, n_prompt] if options.guide_scale > 1.0 else [prompt]
        embeddings = _prompt_embeddings(models, texts, device, offload)
        context = embeddings[0]
        context_null = embeddings[1] if len(embeddings) > 1 else None
        with on_device(models.image_encoder, device, offload):
            clip_context = clip_embedding(models, cond.reference, device)
        with on_device(models.vae, device, offload):
            ref_y = reference_condition(models, cond.reference, device)

        # One generator seeded once, drawn once per clip (official; on the execution device like the official CUDA
        # generator, so a GPU run reproduces the official noise).
        generator = torch.Generator(device=device).manual_seed(int(options.seed))
        carried_raw: torch.Tensor | None = None  # (r, 3, H, W) last decoded frames, the next clip's guide
        carried_shown: torch.Tensor | None = None  # the same frames as emitted (after colour matching)
        emitted = 0
        decode_s: float | None = None  # the previous clip's whole decode time: the next one's estimate
        for index, start in enumerate(starts):
            check_cancel(should_cancel, f"before clip {index + 1}/{len(starts)}")
            window = indices[start : start + clip_len]
            _reset_transformer_caches(models.transformer)
            noise = torch.randn(noise_shape, generator=generator, device=device, dtype=torch.float32)
            with on_device(models.vae, device, offload):
                pose = pose_latents(models, cond.pose_frames[window], device)
                clip_y = clip_condition(
                    models,
                    clip_len,
                    height,
                    width,
                    device,
                    carried=carried_raw,
                    background=cond.background_frames[window] if replacement else None,
                    mask=cond.mask_frames[window] if replacement else None,
                )
            y = torch.cat([ref_y, clip_y], dim=2)  # (1, 20, 1 + lat_t, h, w): reference first
            face = face_pixels(models, cond.face_frames[window], device)
            latents = _denoise(
                models, noise, y, pose, face, context, context_null, clip_context, options,
                (index, len(starts)), on_step, should_cancel,
            )  # fmt: skip
            del noise, y, pose, face, clip_y
            decoded_t = lat_t  # the last clip decodes only the frames it emits (and colour-matches on)
            if index == len(starts) - 1:
                decoded_t = latent_frames_to_decode((0 if start == 0 else refert) + num_frames - emitted, lat_t)
            estimate = f" (about {decode_s * decoded_t / lat_t:.0f} s)" if decode_s is not None else ""
            logger.info("VAE decode of clip %d/%d: %d latent frames, started%s", index + 1, len(starts), decoded_t,
                        estimate)  # fmt: skip
            decode_start = time.perf_counter()
            where = f"during the VAE decode of clip {index + 1}/{len(starts)}"
            with on_device(models.vae, device, offload), _cancellable_decode(models.vae, should_cancel, where):
                frames = vae_decode(models, latents[:, :, 1 : 1 + decoded_t])[0].transpose(0, 1)  # (<= clip_len, 3, H, W)
            decode_s = time.perf_counter() - decode_start
            del latents
            shown = frames
            if options.color_match and carried_shown is not None:
                shown = match_colors(frames, overlap=frames[:refert], reference=carried_shown)
            carried_raw = frames[-refert:].clone()  # official: the raw decoded frames guide the next clip
            carried_shown = shown[-refert:].clone()
            new = shown if start == 0 else shown[refert:]
            count = min(int(new.shape[0]), num_frames - emitted)
            if count > 0:
                emitted += count
                yield new[:count]
            del frames, shown, new


def generate_clips(
    models: WanAnimateModels,
    cond: Conditioning,
    options: GenerationOptions,
    on_step: StepCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> Iterator[torch.Tensor]:
    """Like `generate`, but yields float (t, 3, H, W) tensors in [-1, 1] on the CPU (for tests and analysis)."""
    for clip in _generate_on_device(models, cond, options, on_step, should_cancel):
        yield clip.float().cpu()


def generate(
    models: WanAnimateModels,
    cond: Conditioning,
    options: GenerationOptions,
    on_step: StepCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> Iterator[np.ndarray]:
    """Yield the video clip by clip as (t, H, W, 3) uint8 arrays; exactly cond.num_frames frames in total.

    on_step(segment_idx, num_segments, step_idx, num_steps) after every denoising step; should_cancel() before every
    clip, every step and every VAE decoder call (True raises errors.Cancelled). Colour matching (options.color_match)
    changes only the emitted pixels: the next clip is guided by the raw decoded frames, as in the official code.
    """
    for clip in _generate_on_device(models, cond, options, on_step, should_cancel):
        yield to_uint8(clip)  # converted on the device: only uint8 crosses to the CPU


def warm_up_encoders(models: WanAnimateModels, height: int, width: int, clip_len: int = 77) -> None:
    """At worker setup (all models on the device): encode the default prompts and the first clip's blank guide for
    the default request shape, so the first request does not pay them (both are then read from the models' caches,
    bit-identical to encoding them again; the guide's encode also loads the VAE's kernels), and run CLIP once on a
    grey image, its result dropped: a process's first CLIP call took 1.05 s against 0.01 s later (H200,
    BENCHMARKS.md), kernel loading that the first request would otherwise pay."""
    device = models.device
    _prompt_embeddings(models, [DEFAULT_PROMPT, DEFAULT_NEGATIVE_PROMPT], device, "none")
    clip_condition(models, clip_len, height, width, device)
    clip_embedding(models, np.full((height, width, 3), 128, np.uint8), device)  # a (H, W, 3) grey reference
