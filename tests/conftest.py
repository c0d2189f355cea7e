"""Shared test set-up: the app folder importable as `wan_animate`, paths to the real fixtures in tests/fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

APP_ROOT = Path(__file__).resolve().parents[1]
if str(APP_ROOT) not in sys.path:
    sys.path.insert(0, str(APP_ROOT))

from local_runner import load_app_package  # noqa: E402

load_app_package()

FIXTURES = APP_ROOT / "tests" / "fixtures"


def fixture_path(name: str) -> Path:
    """A file from tests/fixtures (committed with the repository): a missing one fails the test, never skips it."""
    path = FIXTURES / name
    if not path.is_file():
        pytest.fail(f"fixture {name} missing from {FIXTURES} (it is part of the repository: restore it)")
    return path


@pytest.fixture(scope="module")
def smoke_app() -> object:
    """The app set up once with the smoke preset (tiny random weights), shared by a module's tests."""
    import asyncio

    from local_runner import import_app_module

    inference = import_app_module("inference")
    app = inference.App()
    asyncio.run(app.setup(inference.AppSetup(preset="smoke")))
    yield app
    asyncio.run(app.unload())


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped without one")
    config.addinivalue_line("markers", "slow: takes more than ~30 s on 2 CPU cores")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # torch missing or broken: no GPU tests
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
