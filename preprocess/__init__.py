"""Preprocessing: driving video + reference image -> Conditioning (pose, face, reference, masks)."""

from .conditioning import Conditioning, PreprocessOptions
from .debug_videos import save_debug_files
from .model_loading import PreprocessModels, load_preprocess_models, models_for_request, smoke_preprocess_models
from .pipeline import preprocess

__all__ = [
    "Conditioning",
    "PreprocessModels",
    "PreprocessOptions",
    "load_preprocess_models",
    "models_for_request",
    "preprocess",
    "save_debug_files",
    "smoke_preprocess_models",
]
