"""wan-animate: Wan 2.2 Animate 14B as an inference.sh app.

A driving video and a reference image go in; an MP4 comes out in which the character performs the
driving motion (`animation`) or replaces the person in the scene (`replacement`). `run` is
validate -> preprocess (pose, faces, masks) -> generate (the 14B diffusion loop) -> write MP4.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Literal

from inferencesh import BaseApp, BaseAppInput, BaseAppOutput, BaseAppSetup, File
from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .deploy_env import setup_from_env
from .input_files import check_local_file, to_file
from .limits import LIMITS
from .request_fields import (
    check_clip_len,
    check_consistent,
    check_fps,
    check_person,
    fetch_lora_files,
    refuse_unknown_fields,
)
from .request_options import MAX_RESOLUTION_SIDE, MIN_RESOLUTION_SIDE, RESOLUTION_DEFAULT

logger = logging.getLogger("wan_animate")

DEFAULT_PROMPT = "视频中的人在做动作"  # the model's own default prompt ("the person in the video is moving")
MAX_SEED = 2**32 - 1


class AppSetup(BaseAppSetup):
    """Per-worker switches, fixed for the worker's life. A deployment's inf.yml `env` can force fp8 and offload_model
    on (WAN_ANIMATE_FP8=1, WAN_ANIMATE_OFFLOAD_MODEL=1: inf.fp8-offload.yml, the 24 GB configuration)."""

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

    model_config = ConfigDict(allow_inf_nan=False)  # NaN/inf: "should be a finite number", not a bound's message

    file: File = Field(description="LoRA weights (.safetensors) in the original Wan or diffusers key layout.")
    weight: float = Field(default=1.0, ge=-4.0, le=4.0, description="Scale of the LoRA (0 disables it).")

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        refuse_unknown_fields(data, cls, "loras[].")
        return data

    @field_validator("file", mode="before")
    @classmethod
    def _fetch_file(cls, value: Any) -> Any:
        return to_file(value, "loras[].file")  # AppInput already resolved it (naming the index) when it came from one


class AppInput(BaseAppInput):
    model_config = ConfigDict(allow_inf_nan=False)  # NaN/inf: "should be a finite number", not a bound's message

    driving_video: File = Field(
        description="Video of a person moving (MP4/MOV/WebM...). Its motion and expressions drive the character. "
        f"At most {LIMITS.max_duration_s:.0f} s, {LIMITS.max_input_pixels // 1_000_000} MP per frame.",
        json_schema_extra={"contentMediaType": "video/*", "example": "examples/smoke/driving.mp4"},
    )
    reference_image: File = Field(
        description="Image of the character (PNG/JPEG/WebP). One person, body and face visible.",
        json_schema_extra={"contentMediaType": "image/*", "example": "examples/smoke/reference.jpg"},
    )
    mode: Literal["animation", "replacement"] = Field(
        default="animation",
        description="'animation': the character performs the motion on the reference image's background. "
        "'replacement': the character replaces the person inside the driving video's scene, relit to match.",
    )
    resolution: Literal["480p", "580p", "720p"] = Field(
        default="720p",
        description="Output size preset, as the hosted Wan-Animate APIs name them: the target AREA of 854x480, "
        "1024x576 or 1280x720 (a 16:9 input gives 848x480, 1024x576, 1280x720). The aspect ratio is the input's "
        "(reference image in animation mode, driving video in replacement mode), each side floored to a multiple "
        "of 16. resolution_width/resolution_height override it when either is set to a value other than its "
        "default.",
    )
    resolution_width: int = Field(
        default=RESOLUTION_DEFAULT[0], ge=MIN_RESOLUTION_SIDE, le=MAX_RESOLUTION_SIDE,
        description="Custom target area width x height instead of the `resolution` preset (used when width or "
        "height differs from its default 1280x720; e.g. 832x480 for Wan's own 480p area). Same aspect rule.",
    )  # fmt: skip
    resolution_height: int = Field(
        default=RESOLUTION_DEFAULT[1], ge=MIN_RESOLUTION_SIDE, le=MAX_RESOLUTION_SIDE,
        description="See resolution_width.",
    )  # fmt: skip
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
    # Schema examples: the CLI's generated sample input takes a field's example, else its default unless empty, else
    # "example_string" (tests/test_deploy.py builds it that way), so the prompts carry real ones.
    input_prompt: str = Field(
        default="", max_length=2000, description=f"Prompt; empty uses the model's default ({DEFAULT_PROMPT!r}).",
        json_schema_extra={"example": DEFAULT_PROMPT},
    )  # fmt: skip
    n_prompt: str = Field(
        default="", max_length=2000,
        description="Negative prompt (only used when guide_scale > 1); empty = model default.",
        json_schema_extra={"example": "blurry, distorted, deformed hands, static frame, low quality"},
    )  # fmt: skip
    offload_model: bool = Field(
        default=False,
        description="Accepted for compatibility with the seed app's requests and ignored (a warning is logged): "
        "where the model lives is the worker's setup (AppSetup.offload_model, the 24-48 GB configuration). Per "
        "request it would only slow a resident worker down.",
    )
    merge_audio: bool = Field(
        default=True,
        description="Copy the driving video's audio (if it has any) into the output, cut to its length. false: a "
        "silent MP4.",
    )
    video_quality: Literal["low", "medium", "high", "maximum"] = Field(
        default="high",
        description="H.264 quality of the output (x264 CRF 28 / 23 / 18 / 12): 'high' (CRF 18) looks like the "
        "frames themselves; 'medium' is x264's default, about half the file size; 'low' about a quarter, visible "
        "artefacts in motion; 'maximum' about twice 'high', for further editing.",
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
    # `None` in the schema (null = none): a sample input generated from the schema then sends no LoRA, not a
    # placeholder one. The validator turns None into [], so the app always sees a list.
    loras: list[LoraInput] | None = Field(
        default=None, max_length=4, validate_default=True, description="Extra LoRAs for the transformer.",
        json_schema_extra={"example": []},
    )
    mask_iterations: int = Field(
        default=3, ge=0, le=20, description="Replacement: dilation passes over the person mask (0 = raw mask)."
    )
    mask_kernel_size: int = Field(default=7, ge=1, le=51, description="Replacement: dilation kernel side in pixels.")
    mask_w_subdivisions: int = Field(
        default=1, ge=1, le=32,
        description="Replacement: the mask becomes a grid of filled cells over the person's box; 1x1 = whole box.",
    )  # fmt: skip
    mask_h_subdivisions: int = Field(default=1, ge=1, le=32, description="Replacement: see mask_w_subdivisions.")
    person: str = Field(
        default="auto", max_length=100,
        description="Who performs when the driving video shows several people (followed through the whole video; "
        "their skeleton, face and, in replacement mode, mask). 'auto' = the most prominent person over the clip "
        "(largest box x confidence, summed over frames). '0', '1', ... = people numbered left to right on the first "
        "frame where all are visible. 'x,y' = the person at that point, 'x1,y1,x2,y2' = the person in that box, in "
        "pixels of the driving video, on the first frame where someone is there. One-person videos: no effect.",
        examples=["auto", "1", "640,360", "500,100,900,700"],
    )  # fmt: skip
    return_debug_videos: bool = Field(
        default=False, description="Also return the skeleton, face-crop and (replacement) mask videos."
    )

    @field_validator("loras")
    @classmethod
    def _loras_list(cls, value: list[LoraInput] | None) -> list[LoraInput]:
        return [] if value is None else value

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, data: Any) -> Any:
        refuse_unknown_fields(data, cls)
        return data

    @field_validator("driving_video", "reference_image", mode="before")
    @classmethod
    def _fetch_file(cls, value: Any, info: ValidationInfo) -> Any:
        """URLs (in `uri`, `path` or a plain string) downloaded within the limits, data URIs decoded, wrong JSON
        types refused: the hosted engine builds AppInput straight from the request JSON, so it happens here."""
        return to_file(value, str(info.field_name))

    @field_validator("loras", mode="before")
    @classmethod
    def _fetch_lora_files(cls, value: Any) -> Any:
        return fetch_lora_files(value, LoraInput)

    @field_validator("fps")
    @classmethod
    def _fps_valid(cls, value: float) -> float:
        return check_fps(value)

    @field_validator("person", mode="before")
    @classmethod
    def _person_valid(cls, value: Any) -> str:
        return check_person(value)

    @field_validator("clip_len")
    @classmethod
    def _clip_len_4n1(cls, value: int) -> int:
        return check_clip_len(value)

    @model_validator(mode="after")
    def _consistent(self) -> AppInput:
        check_consistent(self)
        return self


class AppOutput(BaseAppOutput):
    video: File = Field(
        description="The generated MP4 (H.264, with the driving video's audio when it has one and merge_audio is set)."
    )
    seed: int = Field(description="The seed used.")
    num_frames: int = Field(description="Frames in the output video.")
    fps: float = Field(description="Frame rate of the output video.")
    width: int = Field(description="Output width in pixels.")
    height: int = Field(description="Output height in pixels.")
    timings: dict[str, float] = Field(description="Seconds per stage: preprocess, generate, encode, total.")
    pose_video: File | None = Field(default=None, description="Debug: the skeleton video the model saw.")
    face_video: File | None = Field(default=None, description="Debug: the 512x512 face crops.")
    mask_video: File | None = Field(default=None, description="Debug (replacement): the person mask.")


class App(BaseApp):
    async def setup(self, config: AppSetup | dict[str, Any] | None = None, metadata: Any = None) -> None:
        """Load (or build, for the smoke preset) every model once per worker."""
        from .app_logging import configure_logging
        from .worker import load_runtime

        configure_logging()  # INFO lines (stage starts, step progress) into the hosted task log

        if config is None:
            setup = AppSetup()
        elif isinstance(config, AppSetup):
            setup = config
        else:
            setup = AppSetup(**dict(config))
        setup = setup_from_env(setup, os.environ)
        start = time.perf_counter()
        self.setup_options = setup
        self.runtime = load_runtime(setup)
        logger.info("setup done in %.1f s (preset=%s)", time.perf_counter() - start, setup.preset)

    def _cancel_requested(self) -> bool:
        """The platform sets context.cancel_requested from another thread (seen even while run blocks the event
        loop); on_cancel sets the event when the loop gets to run it."""
        context = getattr(self, "context", None)
        event = getattr(self, "_cancel_event", None)
        return bool(getattr(context, "cancel_requested", False)) or (event is not None and event.is_set())

    async def on_cancel(self) -> bool:
        """The platform's cancel hook: the running request stops at its next check (a denoising step, a pose or SAM2
        chunk, a VAE-decoded frame, the mux) with errors.Cancelled; the worker stays loaded. True: signal received."""
        logger.info("cancel requested")
        if getattr(self, "_cancel_event", None) is None:
            self._cancel_event = threading.Event()
        self._cancel_event.set()
        return True

    def _discard_last_output(self) -> None:
        """Remove the previous request's output folder: the platform has uploaded it by the time the next request
        (or unload) comes, and a long-running worker must not fill its disk with one folder per request."""
        last = getattr(self, "_last_out_dir", None)
        if last is not None:
            shutil.rmtree(last, ignore_errors=True)
        self._last_out_dir = None

    async def run(self, input_data: AppInput, metadata: Any = None) -> AppOutput:
        """One request -> its video: the platform's entry point, in a single process."""
        output = await self.run_rank(input_data, metadata)
        if output is None:
            raise RuntimeError("run() is for one process; under torchrun call run_rank() on every rank")
        return output

    async def run_rank(self, input_data: AppInput, metadata: Any = None) -> AppOutput | None:
        """validate -> preprocess -> generate -> MP4, all temporary files in one folder removed at the end; the
        output folder stays until the next request or unload (the platform uploads it in between). A cancel raises
        errors.Cancelled.

        Under torchrun (context parallel) every process runs this in step; rank 0 returns the output, the other
        ranks None.
        """
        from .job import check_worker_can_run, job_output, job_seed, run_job

        self._discard_last_output()
        self._cancel_event = threading.Event()  # a cancel of an earlier request must not stop this one
        driving = check_local_file(input_data.driving_video, "driving_video")
        reference = check_local_file(input_data.reference_image, "reference_image")
        check_worker_can_run(self.runtime, input_data)  # before decoding anything
        seed = job_seed(self.runtime, input_data.seed)
        out_dir = Path(tempfile.mkdtemp(prefix="wan-animate-out-"))
        self._last_out_dir = out_dir
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

        return job_output(result, input_data, seed)

    async def unload(self) -> None:
        self._discard_last_output()
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            runtime.close()
        self.runtime = None


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
