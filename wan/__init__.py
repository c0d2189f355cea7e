"""Generation: Wan-Animate 14B from a preprocess.Conditioning to decoded frames, streamed clip by clip."""

from ..errors import Cancelled  # where a cancel raises it in every stage (preprocessing too)
from .generate import (
    DEFAULT_NEGATIVE_PROMPT,
    DEFAULT_PROMPT,
    GenerationOptions,
    generate,
    generate_clips,
)
from .models import ModelPaths, WanAnimateModels, build_tiny_models, load_models

__all__ = [
    "DEFAULT_NEGATIVE_PROMPT",
    "DEFAULT_PROMPT",
    "Cancelled",
    "GenerationOptions",
    "ModelPaths",
    "WanAnimateModels",
    "build_tiny_models",
    "generate",
    "generate_clips",
    "load_models",
]
