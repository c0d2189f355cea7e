"""Run the app locally with `infsh run input.json` semantics, where the `infsh` CLI is not installed.

    python -m local_runner run input.json [--output-dir out/]

The inference.sh CLI copies this folder into a package and imports `<package>.inference`; this
runner does the same without copying: it registers the folder as the package `wan_animate`, so the
app's relative imports (`from .preprocess import ...`) resolve exactly as they do when deployed.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

APP_ROOT = Path(__file__).resolve().parent
PACKAGE_NAME = "wan_animate"


def load_app_package(name: str = PACKAGE_NAME) -> types.ModuleType:
    """Register the app folder as an importable package (idempotent) and return it."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(APP_ROOT)]
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    return package


def import_app_module(module: str) -> types.ModuleType:
    """Import `wan_animate.<module>` (e.g. "inference", "preprocess.skeleton")."""
    load_app_package()
    return importlib.import_module(f"{PACKAGE_NAME}.{module}")
