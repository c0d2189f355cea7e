"""Preprocessing: driving video + reference image -> Conditioning (pose, face, reference, masks)."""

from .conditioning import Conditioning, PreprocessOptions
from .pipeline import (
    PreprocessModels,
    load_preprocess_models,
    models_for_request,
    preprocess,
    save_debug_files,
    smoke_preprocess_models,
)

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
