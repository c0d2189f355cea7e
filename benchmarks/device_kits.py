"""Build the wheel kits the lent device machine needs, in the git-ignored folders one device call carries.

The device machine has torch but not diffusers, torchao, the attention kernels or the app's I/O packages, and a call
carries at most 64 MiB (the tracked tree included). This script downloads the pinned wheels from PyPI (cp312,
manylinux) and lays them out as benchmarks/README.md's chains expect:

- `.whl/`: diffusers, torchao, cudnn-frontend, fa3-fwd, the CUDA 12 runtime fa3-fwd links, ftfy + wcwidth (49 MB).
- `.fa4p0/part`, `.fa4p1/part` (+ `sha`): a tar of FlashAttention-4 and its CuTe DSL wheels, cut in parts.
- `.rjp0/part` ... (+ `sha` in the last): a tar of onnxruntime-gpu (CUDA 13 build), PyAV, imageio-ffmpeg,
  inferencesh, pydantic and peft, for bench_run_job / bench_preprocess.

It also lists the folders in `.git/info/exclude`: an untracked folder that git does not ignore would travel with
every call. A fresh checkout has none of them, so run this first:

    python benchmarks/device_kits.py            # about 30 s: 475 MB of wheels from PyPI
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CALL_LIMIT_BYTES = 64 * 2**20  # what one device call carries, the tracked tree included
MARGIN_BYTES = 2 * 2**20  # room for files the tree gains between building the kits and the calls

WHEELS_BASE = (
    "diffusers==0.42.1",
    "torchao==0.17.0",  # the release built for the device's torch 2.11
    "nvidia-cudnn-frontend==1.32.0",
    "fa3-fwd==0.0.1",
    "nvidia-cuda-runtime-cu12==12.8.90",  # fa3-fwd 0.0.1 is a CUDA 12 build; the device's torch is CUDA 13
    "ftfy==6.3.1",
    "wcwidth==0.2.14",
)
WHEELS_FA4 = (
    "flash-attn-4==4.0.0b36",
    "nvidia-cutlass-dsl==4.8.1",
    "nvidia-cutlass-dsl-libs-base==4.8.1",
    "nvidia-cutlass-dsl-libs-core==4.8.1",
    "nvidia-cutlass-dsl-libs-cu12==4.8.1",
    "quack-kernels==0.6.5",
    "apache-tvm-ffi==0.1.15.post2",
    "torch-c-dlpack-ext==0.1.5",
)
WHEELS_RUN_JOB = (
    "onnxruntime-gpu==1.31.1",  # the CUDA 13 build, to match the device's torch (the app pins the CUDA 12 one)
    "av==18.1.0",
    "imageio-ffmpeg==0.6.0",
    "inferencesh==0.36.0",
    "pydantic==2.12.5",
    "pydantic-core==2.41.5",
    "annotated-types==0.7.0",
    "typing-inspection==0.4.2",
    "peft==0.18.1",
    "accelerate==1.15.0",
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64")


def download(requirements: tuple[str, ...], folder: Path) -> list[Path]:
    """`pip download` the pinned wheels (no dependencies: the chains list every one) for the device's cp312."""
    folder.mkdir(parents=True, exist_ok=True)
    platforms = [arg for name in PLATFORMS for arg in ("--platform", name)]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", *platforms, "-d", str(folder), *requirements]
    subprocess.run(cmd, check=True)
    return sorted(folder.glob("*.whl"))


def tracked_bytes(root: Path) -> int:
    """Bytes of the files git tracks: every device call carries them besides the kit folder."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=root, check=True, capture_output=True).stdout.split(b"\0")
    return sum((root / name.decode()).stat().st_size for name in names if name and (root / name.decode()).is_file())


def part_budget(tree_bytes: int) -> int:
    """The most one kit part may hold so that its call stays under the carry limit."""
    budget = CALL_LIMIT_BYTES - tree_bytes - MARGIN_BYTES
    if budget < 8 * 2**20:
        raise SystemExit(f"the tracked tree ({tree_bytes / 1e6:.1f} MB) leaves no room for kit parts")
    return budget


def split_into_parts(blob: Path, part_bytes: int, root: Path, prefix: str) -> list[Path]:
    """Cut `blob` into `root/.{prefix}{i}/part` of at most `part_bytes` each; the last folder also gets `sha`, the
    sha256 of the whole under the name `/tmp/{blob.name}` (where the last call joins it) for `sha256sum -c`."""
    for old in root.glob(f".{prefix}[0-9]*"):
        shutil.rmtree(old)
    digest, parts = hashlib.sha256(), []
    with blob.open("rb") as source:
        while chunk := source.read(part_bytes):
            digest.update(chunk)
            folder = root / f".{prefix}{len(parts)}"
            folder.mkdir()
            (folder / "part").write_bytes(chunk)
            parts.append(folder / "part")
    (parts[-1].parent / "sha").write_text(f"{digest.hexdigest()}  /tmp/{blob.name}\n")
    return parts


def tar_wheels(wheels: list[Path], out: Path) -> Path:
    """One uncompressed tar of the wheels, flat (wheels are zip files already: compressing again saves little)."""
    with tarfile.open(out, "w") as tar:
        for wheel in wheels:
            tar.add(wheel, arcname=wheel.name)
    return out


def exclude_from_git(root: Path, patterns: list[str]) -> None:
    """Add the kit folders to `.git/info/exclude` so git ignores them (and a device call carries them only when
    named in `carry`)."""
    exclude = root / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    exclude.write_text("\n".join(lines + [p for p in patterns if p not in lines]) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="the checkout the device calls carry")
    parser.add_argument("--kits", default="whl,fa4,rj", help="which kits to build")
    args = parser.parse_args()
    kits = set(args.kits.split(","))
    budget = part_budget(tracked_bytes(args.root))
    exclude_from_git(args.root, ["/.whl/", "/.fa4p[0-9]*/", "/.rjp[0-9]*/"])
    with tempfile.TemporaryDirectory(prefix="device-kits-") as tmp:
        work = Path(tmp)
        if "whl" in kits:
            shutil.rmtree(args.root / ".whl", ignore_errors=True)
            wheels = download(WHEELS_BASE, args.root / ".whl")
            size = sum(w.stat().st_size for w in wheels)
            if size > budget:
                raise SystemExit(f".whl holds {size / 1e6:.1f} MB, over one call's {budget / 1e6:.1f} MB")
            print(f".whl: {len(wheels)} wheels, {size / 1e6:.1f} MB")
        for kit, requirements, prefix in (("fa4", WHEELS_FA4, "fa4p"), ("rj", WHEELS_RUN_JOB, "rjp")):
            if kit in kits:
                blob = tar_wheels(download(requirements, work / kit), work / f"{kit}.tar")
                parts = split_into_parts(blob, budget, args.root, prefix)
                print(f".{prefix}0-{len(parts) - 1}: {blob.stat().st_size / 1e6:.1f} MB in {len(parts)} parts")


if __name__ == "__main__":
    main()
