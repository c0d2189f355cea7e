"""wan-animate: Wan 2.2 Animate 14B as an inference.sh app.

A driving video and a reference image go in; an MP4 comes out in which the character performs the
driving motion (`animation`) or replaces the person in the scene (`replacement`). `run` is
validate -> preprocess (pose, faces, masks) -> generate (the 14B diffusion loop) -> write MP4.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from inferencesh import BaseApp, BaseAppInput, BaseAppOutput, BaseAppSetup, File, OutputMeta, VideoMeta
from pydantic import Field, field_validator, model_validator

from .errors import InputError
from .limits import LIMITS

logger = logging.getLogger("wan_animate")

DEFAULT_PROMPT = "视频中的人在做动作"  # the model's own default prompt ("the person in the video is moving")
MAX_SEED = 2**32 - 1


class AppSetup(BaseAppSetup):
    """Per-worker switches, fixed for the worker's life (chosen by the inf.yml variant)."""

    preset: Literal["full", "smoke"] = Field(
        default="full",
        description="'full' loads Wan 2.2 Animate 14B from the Hub. 'smoke' builds the same model classes with "
        "tiny RANDOM weights and a small real pose model: it runs on CPU in seconds and its video is noise. "
        "For trying the app end to end offline, never for real use.",
    )
    fp8: bool = Field(
        default=False,
        description="FP8 weights+activations (torchao, rowwise scales) for every linear of the 40 DiT blocks: about "
        "half the transformer's memory and faster; small numeric deviation (see BENCHMARKS.md).",
    )
    attention: Literal["default", "cudnn", "fp8"] = Field(
        default="default",
        description="Self-attention kernel of the DiT blocks: 'default' = FlashAttention-4 on Hopper/Blackwell GPUs, "
        "cuDNN attention elsewhere (both exact up to bf16), 'cudnn' = cuDNN attention everywhere, 'fp8' = "
        "FlashAttention-3's FP8 forward (fa3-fwd; Hopper GPUs: H100/H200), faster, deviates slightly.",
    )
    compile: bool = Field(default=True, description="Regional torch.compile of the DiT blocks, warmed up at setup.")
    vae_bf16: bool = Field(
        default=False,
        description="Run the VAE (encode and decode) in bf16 instead of the official float32: faster per clip, "
        "small pixel deviation (see BENCHMARKS.md).",
    )
    offload_model: bool = Field(
        default=False,
        description="Load with text encoder, CLIP and VAE kept off the GPU while idle (24-48 GB cards; slower).",
    )
    enable_flux: bool = Field(
        default=False, description="Download FLUX.1-Kontext-dev at setup so `use_flux` retargeting can run (33 GB)."
    )
    distill_lora: bool = Field(
        default=True,
        description="Load LightX2V's 4-step distillation LoRA (lightx2v/Wan2.1-Distill-Loras, 0.74 GB) so requests "
        "can set `distill` (4 forwards per clip instead of 20). Costs ~0.7 GB of memory and, with compile, two more "
        "warm-up graphs at setup.",
    )
    cache_dir: str | None = Field(default=None, description="Weight cache folder (default: the Hugging Face cache).")
    context_parallel: Literal["ulysses", "ring"] = Field(
        default="ulysses",
        description="Only when started with torchrun on several GPUs: every GPU holds the model and each step's "
        "tokens are split across them. 'ulysses' exchanges attention heads (all-to-all; the GPU count must divide "
        "40: 2, 4, 5 or 8), 'ring' exchanges keys/values (any count). Ignored in a single process.",
    )


class LoraInput(BaseAppInput):
    """A user LoRA for the transformer."""

    file: File = Field(description="LoRA weights (.safetensors) in the original Wan or diffusers key layout.")
    weight: float = Field(default=1.0, ge=-4.0, le=4.0, description="Scale of the LoRA (0 disables it).")


class AppInput(BaseAppInput):
    driving_video: File = Field(
        description="Video of a person moving (MP4/MOV/WebM...). Its motion and expressions drive the character. "
        f"At most {LIMITS.max_duration_s:.0f} s, {LIMITS.max_input_pixels // 1_000_000} MP per frame.",
        json_schema_extra={"contentMediaType": "video/*"},
    )
    reference_image: File = Field(
        description="Image of the character (PNG/JPEG/WebP). One person, body and face visible.",
        json_schema_extra={"contentMediaType": "image/*"},
    )
    mode: Literal["animation", "replacement"] = Field(
        default="animation",
        description="'animation': the character performs the motion on the reference image's background. "
        "'replacement': the character replaces the person inside the driving video's scene, relit to match.",
    )
    resolution_width: int = Field(
        default=1280, ge=512, le=1920,
        description="Target area is width x height; the aspect ratio is the input's (reference image in "
        "animation mode, driving video in replacement mode), each side floored to a multiple of 16.",
    )  # fmt: skip
    resolution_height: int = Field(default=720, ge=512, le=1920, description="See resolution_width.")
    fps: float = Field(
        default=30, description="Output frame rate; the driving video is resampled to it. -1 keeps the source rate."
    )
    retarget_flag: bool = Field(
        default=False,
        description="Animation only: rescale the driving skeleton to the character's body proportions.",
    )
    use_flux: bool = Field(
        default=False,
        description="With retarget_flag: standardise both poses with FLUX.1 Kontext before measuring bones "
        "(needs the worker set up with enable_flux).",
    )
    clip_len: int = Field(default=77, ge=5, le=121, description="Frames per generated clip; must be 4n+1.")
    refert_num: Literal[1, 5] = Field(
        default=1, description="Frames each next clip takes from the previous one for continuity (1 or 5)."
    )
    shift: float = Field(default=5.0, ge=0.1, le=20.0, description="Flow-matching noise schedule shift.")
    sample_solver: Literal["dpm++", "unipc", "euler"] = Field(
        default="dpm++", description="Sampler. 'euler': the distillation LoRA's (plain Euler flow steps)."
    )
    sampling_steps: int = Field(default=20, ge=1, le=100, description="Denoising steps per clip.")
    guide_scale: float = Field(
        default=1.0, ge=1.0, le=20.0,
        description="Classifier-free guidance on the prompt and the face (expression). 1.0 = off, one forward "
        "per step (fastest); higher doubles the cost.",
    )  # fmt: skip
    seed: int = Field(default=-1, ge=-1, le=MAX_SEED, description="Random seed; -1 picks one (returned).")
    input_prompt: str = Field(
        default="", max_length=2000, description=f"Prompt; empty uses the model's default ({DEFAULT_PROMPT!r})."
    )
    n_prompt: str = Field(
        default="", max_length=2000, description="Negative prompt (only used when guide_scale > 1); empty = model default."
    )
    offload_model: bool = Field(
        default=False,
        description="Keep text encoder, CLIP and VAE off the GPU while idle and stream the transformer's "
        "blocks: fits a 24-48 GB card, slower.",
    )
    color_match: bool = Field(
        default=True, description="Match each new clip's colours to the frames it continues (stops drift)."
    )
    distill: bool = Field(
        default=False,
        description="4-step distillation: LightX2V's step + CFG distillation LoRA for Wan 2.1 I2V 14B, 5x fewer "
        "forwards than the default 20 steps, slightly different look. Where left at their defaults: sampling_steps=4, "
        "shift=5, sample_solver='euler', guide_scale=1 (the LoRA authors' settings). Needs a worker set up with "
        "distill_lora.",
    )
    step_cache: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Step caching (opt-in speed-up, changes the output): a denoising step whose first DiT block "
        "changed by less than this fraction since the last full step reuses that step's result for the other 39 "
        "blocks. 0 = off; 0.05-0.1 typical. The first 20% of steps and the last always run in full, never more than "
        "2 skipped in a row. Not with context parallel workers.",
    )
    loras: list[LoraInput] = Field(default_factory=list, max_length=4, description="Extra LoRAs for the transformer.")
    mask_iterations: int = Field(
        default=3, ge=0, le=20, description="Replacement: dilation passes over the person mask (0 = raw mask)."
    )
    mask_kernel_size: int = Field(default=7, ge=1, le=51, description="Replacement: dilation kernel side in pixels.")
    mask_w_subdivisions: int = Field(
        default=1, ge=1, le=32,
        description="Replacement: the mask becomes a grid of filled cells over the person's box; 1x1 = whole box.",
    )  # fmt: skip
    mask_h_subdivisions: int = Field(default=1, ge=1, le=32, description="Replacement: see mask_w_subdivisions.")
    return_debug_videos: bool = Field(
        default=False, description="Also return the skeleton, face-crop and (replacement) mask videos."
    )

    def sampling_settings(self) -> dict[str, Any]:
        """sampling_steps, shift, sample_solver and guide_scale for this request: with `distill`, the LoRA's
        recommended values for each one the request left at its default (other values win).

        "At its default", not "not sent": forms and API clients often send every field with its default, and
        20 dpm++ steps would silently waste the distillation. The one thing this cannot express, distill with
        exactly a default value (e.g. 20 steps), is not a setting anyone needs.
        """
        values = {name: getattr(self, name) for name in ("sampling_steps", "shift", "sample_solver", "guide_scale")}
        if self.distill:
            from .wan.distill import RECOMMENDED_SAMPLING

            fields = type(self).model_fields
            values.update({k: v for k, v in RECOMMENDED_SAMPLING.items() if values[k] == fields[k].default})
        return values

    @field_validator("fps")
    @classmethod
    def _fps_valid(cls, value: float) -> float:
        if value != -1 and not (1 <= value <= LIMITS.max_fps):
            raise ValueError(f"fps must be -1 (keep the source rate) or between 1 and {LIMITS.max_fps}")
        return value

    @field_validator("clip_len")
    @classmethod
    def _clip_len_4n1(cls, value: int) -> int:
        if value % 4 != 1:
            raise ValueError(f"clip_len must be 4n+1 (e.g. 77, 81); {value} is not. Nearest: {4 * round((value - 1) / 4) + 1}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> AppInput:
        if self.refert_num >= self.clip_len:
            raise ValueError(f"refert_num ({self.refert_num}) must be smaller than clip_len ({self.clip_len})")
        if self.use_flux and not self.retarget_flag:
            raise ValueError("use_flux only acts with retarget_flag=true; set both or neither")
        if self.retarget_flag and self.mode == "replacement":
            raise ValueError("retarget_flag applies to mode 'animation' only (replacement keeps the video's person size)")
        return self


class AppOutput(BaseAppOutput):
    video: File = Field(description="The generated MP4 (H.264, with the driving video's audio when it has one).")
    seed: int = Field(description="The seed used.")
    num_frames: int = Field(description="Frames in the output video.")
    fps: float = Field(description="Frame rate of the output video.")
    width: int = Field(description="Output width in pixels.")
    height: int = Field(description="Output height in pixels.")
    timings: dict[str, float] = Field(description="Seconds per stage: preprocess, generate, encode, total.")
    pose_video: File | None = Field(default=None, description="Debug: the skeleton video the model saw.")
    face_video: File | None = Field(default=None, description="Debug: the 512x512 face crops.")
    mask_video: File | None = Field(default=None, description="Debug (replacement): the person mask.")


def _check_file(file: File | None, field: str) -> Path:
    """The local path of a required input file, or an InputError naming the field."""
    if file is None:
        raise InputError("missing_input", field, "is required: give a URL or a file path")
    path = Path(file.path) if file.path else None
    if path is None or not path.is_file():
        raise InputError("file_not_found", field, f"could not read {file.uri or file.path!r}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise InputError("empty_file", field, "the file is empty (0 bytes); upload the file again")
    if size > LIMITS.max_file_bytes:
        raise InputError(
            "file_too_large", field, f"is {size / 1e9:.1f} GB; the limit is {LIMITS.max_file_bytes / 1e9:.1f} GB"
        )
    return path


def _resolve_seed(seed: int) -> int:
    return random.randint(0, MAX_SEED) if seed == -1 else seed


class App(BaseApp):
    async def setup(self, config: AppSetup | dict[str, Any] | None = None, metadata: Any = None) -> None:
        """Load (or build, for the smoke preset) every model once per worker."""
        from .runtime import load_runtime

        if config is None:
            setup = AppSetup()
        elif isinstance(config, AppSetup):
            setup = config
        else:
            setup = AppSetup(**dict(config))
        variant = getattr(metadata, "app_variant", None) if metadata is not None else None
        if variant == "fp8_offload":
            setup = setup.model_copy(update={"fp8": True, "offload_model": True})
        start = time.perf_counter()
        self.setup_options = setup
        self.runtime = load_runtime(setup)
        logger.info("setup done in %.1f s (preset=%s)", time.perf_counter() - start, setup.preset)

    def _cancel_requested(self) -> bool:
        context = getattr(self, "context", None)
        return bool(getattr(context, "cancel_requested", False))

    async def run(self, input_data: AppInput, metadata: Any = None) -> AppOutput | None:
        """validate -> preprocess -> generate -> MP4, all temporary files in one folder removed at the end.

        Under torchrun (context parallel) every process runs this in step; rank 0 returns the output, the other
        ranks None.
        """
        from .runtime import run_job

        driving = _check_file(input_data.driving_video, "driving_video")
        reference = _check_file(input_data.reference_image, "reference_image")
        if input_data.use_flux and self.runtime.preprocess_models.flux is None:  # before decoding anything
            raise InputError(
                "flux_unavailable", "use_flux", "this worker has no FLUX Kontext model loaded; set use_flux=false"
            )
        if input_data.distill and self.runtime.wan_models.distill is None:
            raise InputError(
                "distill_unavailable",
                "distill",
                "this worker has no distillation LoRA loaded (set up with distill_lora=false); set distill=false",
            )
        if input_data.step_cache > 0 and self.runtime.context_parallel:
            raise InputError(
                "step_cache_unavailable",
                "step_cache",
                "step caching does not combine with this worker's context parallelism; set step_cache=0",
            )
        seed = _resolve_seed(input_data.seed)
        if self.runtime.context_parallel:  # every process must sample the same noise: rank 0's draw
            from .wan.parallel import broadcast_value

            seed = broadcast_value(seed)
        out_dir = Path(tempfile.mkdtemp(prefix="wan-animate-out-"))
        work_dir = Path(tempfile.mkdtemp(prefix="wan-animate-run-"))
        try:
            result = run_job(
                self.runtime,
                input_data,
                driving=driving,
                reference=reference,
                seed=seed,
                work_dir=work_dir,
                out_dir=out_dir,
                should_cancel=self._cancel_requested,
            )
        except BaseException:
            shutil.rmtree(out_dir, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
        if result.video_path is None:  # a torchrun rank other than 0: rank 0 returns the output
            shutil.rmtree(out_dir, ignore_errors=True)
            return None

        sampling = input_data.sampling_settings()
        meta = VideoMeta(
            width=result.width,
            height=result.height,
            resolution_mp=round(result.width * result.height / 1e6, 3),
            resolution=_resolution_label(result.width, result.height),
            seconds=round(result.num_frames / result.fps, 3),
            fps=int(round(result.fps)),
            extra={"mode": input_data.mode, "sampling_steps": sampling["sampling_steps"],
                   "guide_scale": sampling["guide_scale"], "distill": input_data.distill},
        )  # fmt: skip
        debug = result.debug_files
        return AppOutput(
            video=File(path=str(result.video_path)),
            seed=seed,
            num_frames=result.num_frames,
            fps=result.fps,
            width=result.width,
            height=result.height,
            timings=result.timings,
            pose_video=File(path=str(debug["pose"])) if "pose" in debug else None,
            face_video=File(path=str(debug["face"])) if "face" in debug else None,
            mask_video=File(path=str(debug["mask"])) if "mask" in debug else None,
            output_meta=OutputMeta(outputs=[meta]),
        )

    async def unload(self) -> None:
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            runtime.close()
        self.runtime = None


def _resolution_label(width: int, height: int) -> str:
    """The standard preset name for a frame size, by its short side."""
    short = min(width, height)
    for label, side in (("4k", 2160), ("1440p", 1440), ("1080p", 1080), ("720p", 720), ("480p", 480)):
        if short >= side * 0.9:
            return label
    return "480p"


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
