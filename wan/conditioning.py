"""Encode side: text, reference image and per-clip video conditioning, as the official WanAnimate.generate() builds it.

Shapes use B=1. Pixel tensors are in [-1, 1]; latents are the VAE's normalised latents ((mu - mean) / std).
"""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .vae_layout import input_memory_format

if TYPE_CHECKING:
    from .models import WanAnimateModels

TEXT_LEN = 512  # official config text_len: UMT5 tokens, padded with zero embeddings
LATENT_CHANNELS = 16
VAE_STRIDE_T = 4
VAE_STRIDE_HW = 8


def clean_prompt(text: str) -> str:
    """Official tokenizer clean='whitespace': ftfy fix, HTML unescape twice, collapse whitespace."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


@torch.no_grad()
def encode_prompt(models: WanAnimateModels, text: str, device: torch.device) -> torch.Tensor:
    """(1, 512, text_dim) in the transformer dtype: UMT5 states of the real tokens, zeros after them.

    Official: tokens padded to 512 with a mask, the encoder's output trimmed to the real length, then zero-padded
    back to 512 inside the model (diffusers' pipeline does the same padding itself).
    """
    tokens = models.tokenizer(
        [clean_prompt(text)],
        padding="max_length",
        max_length=TEXT_LEN,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    ids = tokens.input_ids.to(device)
    mask = tokens.attention_mask.to(device)
    length = int(mask.gt(0).sum())
    states = models.text_encoder(ids, mask).last_hidden_state  # (1, 512, text_dim)
    out = torch.zeros_like(states)
    out[:, :length] = states[:, :length]
    return out.to(models.dtype)


def pixels_from_uint8(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (1, 3, T, H, W) float32 in [-1, 1]: official x / 127.5 - 1.

    Written (x - 127.5) / 127.5: the subtraction is exact, so float32 gives the official float64 values rounded
    once, for all 256 levels (x / 127.5 - 1 in float32 is off by an ulp for half of them).
    """
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    return ((tensor.permute(3, 0, 1, 2).unsqueeze(0).float() - 127.5) / 127.5).contiguous()


def round_to(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round through `dtype` and back to float32: the official code casts every input video to bf16 first."""
    return tensor.to(dtype).float()


@torch.no_grad()
def clip_embedding(models: WanAnimateModels, reference: np.ndarray, device: torch.device) -> torch.Tensor:
    """(1, tokens, clip_dim) in the transformer dtype: CLIP's penultimate hidden states of the reference.

    Deliberately OFFICIAL, not diffusers: the letterboxed reference is squashed to the encoder's square input
    (bicubic, no crop), so the whole character is seen. diffusers' pipeline runs CLIPImageProcessor, which resizes
    the short side and centre-crops, cutting the sides of a non-square reference.
    """
    size = int(models.image_encoder.config.image_size)
    pixels = round_to(pixels_from_uint8(reference[None], device)[:, :, 0], models.dtype)  # (1, 3, H, W)
    # The official code interpolates the bf16 tensor itself; float32 here (differs by bf16 rounding only).
    pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=False)
    mean = torch.tensor(models.image_processor.image_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(models.image_processor.image_std, device=device).view(1, 3, 1, 1)
    pixels = ((pixels * 0.5 + 0.5) - mean) / std
    encoder_dtype = next(models.image_encoder.parameters()).dtype
    out = models.image_encoder(pixel_values=pixels.to(encoder_dtype), output_hidden_states=True)
    return out.hidden_states[-2].to(models.dtype)  # official: the output of block 31 of 32 (use_31_block)


def _latent_stats(vae: torch.nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, 1/std), each (1, 16, 1, 1, 1) float32."""
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32, device=device).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, dtype=torch.float32, device=device).view(1, -1, 1, 1, 1)
    return mean, 1.0 / std


@torch.no_grad()
def vae_encode(models: WanAnimateModels, video: torch.Tensor) -> torch.Tensor:
    """(1, 3, T, H, W) pixels -> (1, 16, 1 + (T - 1) // 4, H / 8, W / 8) float32 normalised latents (the mean)."""
    vae = models.vae
    vae_dtype = next(vae.parameters()).dtype
    video = video.to(vae_dtype).contiguous(memory_format=input_memory_format(vae))
    mu = vae.encode(video).latent_dist.mode().float().contiguous()  # the transformer reads contiguous latents
    mean, inv_std = _latent_stats(vae, mu.device)
    return (mu - mean) * inv_std


@torch.no_grad()
def vae_decode(models: WanAnimateModels, latents: torch.Tensor) -> torch.Tensor:
    """(1, 16, t, h, w) normalised latents -> (1, 3, 1 + 4 (t - 1), 8 h, 8 w) float32 pixels clamped to [-1, 1]."""
    vae = models.vae
    vae_dtype = next(vae.parameters()).dtype
    mean, inv_std = _latent_stats(vae, latents.device)
    z = (latents.float() / inv_std + mean).to(vae_dtype).contiguous(memory_format=input_memory_format(vae))
    return vae.decode(z, return_dict=False)[0].float().contiguous().clamp(-1.0, 1.0)


def i2v_mask(
    lat_t: int, lat_h: int, lat_w: int, mask_len: int, pixel_mask: torch.Tensor | None = None, device=None
) -> torch.Tensor:
    """(1, 4, lat_t, h, w) mask channels: pixel frame k of 1 + 4 (lat_t - 1) -> latent frame, 4 sub-channels.

    Official get_i2v_mask: start from `pixel_mask` (1, T, h, w) or zeros, set the first `mask_len` pixel frames to 1,
    repeat pixel frame 0 four times (the VAE's first latent frame stands for one pixel frame), fold 4 frames per
    latent frame into channels.
    """
    if pixel_mask is None:
        mask = torch.zeros(1, (lat_t - 1) * VAE_STRIDE_T + 1, lat_h, lat_w, device=device)
    else:
        mask = pixel_mask.clone().float()
    mask[:, :mask_len] = 1
    mask = torch.cat([mask[:, :1].repeat_interleave(VAE_STRIDE_T, dim=1), mask[:, 1:]], dim=1)
    return mask.view(1, lat_t, VAE_STRIDE_T, lat_h, lat_w).transpose(1, 2)


@torch.no_grad()
def reference_condition(models: WanAnimateModels, reference: np.ndarray, device: torch.device) -> torch.Tensor:
    """(1, 20, 1, h, w): mask 1 (4 channels) + the reference's latents: latent frame 0 of every clip."""
    pixels = round_to(pixels_from_uint8(reference[None], device), models.dtype)  # (1, 3, 1, H, W)
    latents = vae_encode(models, pixels)
    mask = i2v_mask(1, latents.shape[3], latents.shape[4], 1, device=device)
    return torch.cat([mask, latents], dim=1)


@torch.no_grad()
def pose_latents(models: WanAnimateModels, pose_frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """(1, 16, lat_t, h, w) float32: the skeleton clip through the VAE (added to latent frames 1.. by the model)."""
    return vae_encode(models, round_to(pixels_from_uint8(pose_frames, device), models.dtype))


def face_pixels(models: WanAnimateModels, face_frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """(1, 3, T, S, S) in the transformer dtype, S the motion encoder's input size (512 for the real model).

    The real model takes the 512x512 crops as they are; only the tiny test model (S = 16) needs a resize.
    """
    pixels = pixels_from_uint8(face_frames, device)
    size = int(models.transformer.config.motion_encoder_size)
    if pixels.shape[-1] != size or pixels.shape[-2] != size:
        frames = pixels[0].transpose(0, 1)  # (T, 3, H, W)
        frames = F.interpolate(frames, size=(size, size), mode="area")
        pixels = frames.transpose(0, 1).unsqueeze(0)
    return pixels.to(models.dtype)


@torch.no_grad()
def clip_condition(
    models: WanAnimateModels,
    clip_len: int,
    height: int,
    width: int,
    device: torch.device,
    carried: torch.Tensor | None = None,
    background: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> torch.Tensor:
    """(1, 20, lat_t, h, w): mask (4) + latents (16) of one clip's guide video, lat_t = 1 + (clip_len - 1) / 4.

    carried: (r, 3, H, W) float pixels, the previous clip's last r decoded frames (None for the first clip).
    Animation (background None): guide = carried frames then mid-grey (0); mask 1 on the carried frames only.
    Replacement: guide = carried frames then the background frames; mask = 1 - person mask (keep the scene), and 1
    on the carried frames. Exactly the official generate()'s y_reft / msk_reft for both modes.
    The animation guide of a first clip (no carried frames) is encoded once per shape and then read from
    `models.blank_guide_cache` (a whole VAE encode of the clip per request saved; callers do not modify it).
    """
    lat_t = (clip_len - 1) // VAE_STRIDE_T + 1
    lat_h, lat_w = height // VAE_STRIDE_HW, width // VAE_STRIDE_HW
    mask_len = 0 if carried is None else int(carried.shape[0])
    blank_key = None
    if carried is None and background is None and mask is None:  # the same mid-grey guide every request
        blank_key = (clip_len, height, width, str(device), next(models.vae.parameters()).dtype)
        if blank_key in models.blank_guide_cache:
            return models.blank_guide_cache[blank_key]
    if background is None:
        pixels = torch.zeros(1, 3, clip_len, height, width, device=device)
    else:
        pixels = pixels_from_uint8(background, device)
    if carried is not None:
        pixels[:, :, :mask_len] = carried.transpose(0, 1).unsqueeze(0).to(device)
    latents = vae_encode(models, round_to(pixels, models.dtype))
    pixel_mask = None
    if mask is not None:
        keep = 1.0 - torch.from_numpy(np.ascontiguousarray(mask)).to(device).float()  # (T, H, W): 1 = keep the scene
        pixel_mask = F.interpolate(keep[:, None], size=(lat_h, lat_w), mode="nearest")[:, 0].unsqueeze(0)
    msk = i2v_mask(lat_t, lat_h, lat_w, mask_len, pixel_mask, device=device)
    condition = torch.cat([msk, latents], dim=1)
    if blank_key is not None:
        models.blank_guide_cache[blank_key] = condition
    return condition
