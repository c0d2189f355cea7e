"""Run the CUDA tests of tests/test_wan_speed.py, test_wan_attention_kernels.py, test_wan_step_cache.py,
test_wan_vae_layout.py (the VAE's CUDA layout and padding) and test_wan_parallel.py (2 GPUs: context parallel under
torchrun) on a machine without the app's own dependencies (pydantic etc.).

tests/conftest.py imports the app's local runner; here the app folder is registered as package `wan_animate` by the
same `local_runner.load_app_package` (it imports no pydantic), and pytest runs with --noconftest so only torch,
diffusers, torchao and the kernels' packages (fa3-fwd, flash-attn-4, nvidia-cudnn-frontend) are needed. The test
files are collected through symlinks in a temporary folder: collected in place, pytest would import the repo root's
`__init__.py` (the app, which needs inferencesh) as their package. Their APP_ROOT still resolves to the repo.

    python benchmarks/run_gpu_tests.py [extra pytest args]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

APP_ROOT = Path(__file__).resolve().parents[1]


if __name__ == "__main__":
    sys.path.insert(0, str(APP_ROOT))
    from local_runner import load_app_package

    load_app_package()
    sys.path.insert(0, str(APP_ROOT / "tests"))
    names = (
        "test_wan_speed.py",
        "test_wan_attention_kernels.py",
        "test_wan_step_cache.py",
        "test_wan_vae_layout.py",
        "test_wan_parallel.py",
    )
    with tempfile.TemporaryDirectory(prefix="gpu-tests-") as folder:
        for name in names:
            (Path(folder) / name).symlink_to(APP_ROOT / "tests" / name)
        ini = Path(folder) / "pytest.ini"
        ini.write_text("[pytest]\nmarkers =\n    gpu: needs a CUDA GPU\n    slow: takes more than ~30 s on 2 CPU cores\n")
        args = [folder, "-c", str(ini), "--rootdir", folder, "--noconftest", "-q", "-rA", "-p", "no:cacheprovider"]
        args.append("--continue-on-collection-errors")  # a file whose imports the machine lacks must not stop the rest
        sys.exit(pytest.main(args + sys.argv[1:]))
