"""Run the CUDA tests of tests/test_wan_speed.py, test_wan_attention_kernels.py, test_wan_step_cache.py and test_wan_parallel.py (2 GPUs: context
parallel under torchrun) on a machine without the app's own dependencies (pydantic etc.).

tests/conftest.py imports the app's local runner; here the app folder is registered as package `wan_animate` by the
same `local_runner.load_app_package` (it imports no pydantic), and pytest runs with --noconftest so only torch,
diffusers, torchao and the kernels' packages (fa3-fwd, flash-attn-4, nvidia-cudnn-frontend) are needed.

    python benchmarks/run_gpu_tests.py [extra pytest args]
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

APP_ROOT = Path(__file__).resolve().parents[1]


if __name__ == "__main__":
    sys.path.insert(0, str(APP_ROOT))
    from local_runner import load_app_package

    load_app_package()
    sys.path.insert(0, str(APP_ROOT / "tests"))
    names = ("test_wan_speed.py", "test_wan_attention_kernels.py", "test_wan_step_cache.py", "test_wan_parallel.py")
    tests = [str(APP_ROOT / "tests" / name) for name in names]
    args = [*tests, "--noconftest", "-q", "-rA", "-p", "no:cacheprovider"]
    sys.exit(pytest.main(args + sys.argv[1:]))
