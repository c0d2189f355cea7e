"""Does the compiled (and optionally FP8) transformer keep its speed when requests switch LoRAs?

Full-size random weights, a rank-128 random relighting LoRA loaded the app's way (unmerged PEFT adapter), forwards
at 480p. Two scenarios:

- `relighting`: animation, replacement, animation, replacement, animation (the relighting adapter on and off).
- `user`: a sequence of requests carrying user LoRAs (random safetensors in the community layout, ranks 16-64),
  loaded and deleted per request through `request_adapters` exactly as `job.run_job` does; per request it
  prints the load time, the first forward (which pays any recompile), a second forward, and dynamo's graph count;
  then one forward with the same LoRA run eagerly (`eager_blocks`) for the compile-versus-eager trade.

- `load`: only the loading: each user LoRA loaded and deleted through the app's `load_lora`, and through the loader
  as it was before 2026-11-23 (PEFT's random init of the new layers, each tensor copied back to the CPU to check it),
  in alternation, for the speed-up side by side.

    python benchmarks/bench_lora_compile.py [--fp8] [--scenario relighting|user|load] --out $OUT
    python benchmarks/bench_lora_compile.py --tiny --scenario user   # CPU: the tiny model, aot_eager (graph counts)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

APP_ROOT = Path(__file__).resolve().parents[1]

# (request label, use relighting, user LoRA names); LoRA name -> rank in USER_LORA_RANKS
USER_REQUESTS: list[tuple[str, bool, list[str]]] = [
    ("no LoRA", False, []),
    ("LoRA A (rank 32)", False, ["A"]),
    ("no LoRA", False, []),
    ("LoRA A again (reloaded)", False, ["A"]),
    ("LoRA B (rank 64)", False, ["B"]),
    ("LoRAs A + B", False, ["A", "B"]),
    ("replacement + LoRA A", True, ["A"]),
    ("LoRA C (rank 16)", False, ["C"]),
    ("LoRA A again", False, ["A"]),
]
USER_LORA_RANKS = {"A": 32, "B": 64, "C": 16}


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_forward(speed: Any, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[float, bool]:
    """Seconds for one forward (CUDA-synchronised) and whether the output is finite."""
    synchronize()
    start = time.perf_counter()
    out = speed.run_forward(model, inputs)
    synchronize()
    return time.perf_counter() - start, bool(torch.isfinite(out).all())


def graphs_so_far() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def run_relighting(speed: Any, model: torch.nn.Module, adapter: str, inputs: dict[str, torch.Tensor]) -> list[dict]:
    from wan_animate.wan.lora import request_adapters

    rows = []
    for mode in ("animation", "replacement", "animation", "replacement", "animation"):
        with request_adapters(model, adapter, mode == "replacement", []):
            seconds, finite = timed_forward(speed, model, inputs)
        rows.append({"mode": mode, "seconds": round(seconds, 3), "graphs_so_far": graphs_so_far(), "finite": finite})
        print(rows[-1], flush=True)
    return rows


def run_user_loras(
    speed: Any, model: torch.nn.Module, adapter: str, inputs: dict[str, torch.Tensor], folder: Path
) -> list[dict]:
    from release_checkpoints import write_user_lora
    from wan_animate.wan.lora import request_adapters

    paths = {
        name: write_user_lora(model, folder / f"user_{name}.safetensors", rank=rank, alpha=rank, seed=i + 10)
        for i, (name, rank) in enumerate(USER_LORA_RANKS.items())
    }
    timed_forward(speed, model, inputs)  # compile the no-LoRA graph first, as setup's warmup does
    rows = []
    for label, relight, names in USER_REQUESTS:
        loras = [(paths[name], 1.0) for name in names]
        start = time.perf_counter()
        with request_adapters(model, adapter, relight, loras):
            load_s = time.perf_counter() - start
            first_s, finite = timed_forward(speed, model, inputs)
            second_s, _ = timed_forward(speed, model, inputs)
        row = {"request": label, "load_s": round(load_s, 2), "first_forward_s": round(first_s, 2),
               "second_forward_s": round(second_s, 3), "graphs_so_far": graphs_so_far(), "finite": finite}  # fmt: skip
        rows.append(row)
        print(row, flush=True)
    with request_adapters(model, adapter, False, [(paths["A"], 1.0)]), speed.eager_blocks(model):
        timed_forward(speed, model, inputs)
        eager_s, _ = timed_forward(speed, model, inputs)
    rows.append({"request": "LoRA A, blocks eager", "second_forward_s": round(eager_s, 3)})
    print(rows[-1], flush=True)
    return rows


def legacy_load_lora(model: torch.nn.Module, path: Path, adapter_name: str) -> None:
    """The app's user-LoRA loading as it was before 2026-11-23 (for the comparison only)."""
    from diffusers.loaders import WanLoraLoaderMixin
    from wan_animate.wan.lora import _cast_adapter, lora_state_dict

    state = WanLoraLoaderMixin._maybe_expand_t2v_lora_for_i2v(model, lora_state_dict(path))
    model.load_lora_adapter(dict(state), adapter_name=adapter_name, prefix="transformer")
    params = dict(model.named_parameters())
    for key, value in state.items():
        name = key.removeprefix("transformer.")
        for part in (".lora_A.", ".lora_B."):
            name = name.replace(part, f"{part}{adapter_name}.")
        assert torch.allclose(params[name].detach().float().cpu(), value.float().cpu(), rtol=1e-2, atol=1e-3)
    _cast_adapter(model, adapter_name)


def run_load_only(model: torch.nn.Module, folder: Path, repeats: int = 2) -> list[dict]:
    """Seconds to load + delete each user LoRA, the app's loader and the legacy one alternating."""
    from release_checkpoints import write_user_lora
    from wan_animate.wan.lora import load_lora

    paths = {
        name: write_user_lora(model, folder / f"user_{name}.safetensors", rank=rank, alpha=rank, seed=i + 10)
        for i, (name, rank) in enumerate(USER_LORA_RANKS.items())
    }
    rows = []
    for name, path in paths.items():
        for loader_name, loader in (("app", load_lora), ("legacy", legacy_load_lora)) * repeats:
            synchronize()
            start = time.perf_counter()
            loader(model, path, "timed")
            synchronize()
            load_s = time.perf_counter() - start
            model.delete_adapters(["timed"])
            rows.append({"lora": name, "rank": USER_LORA_RANKS[name], "loader": loader_name, "load_s": round(load_s, 2)})
            print(rows[-1], flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fp8", action="store_true")
    parser.add_argument("--scenario", choices=("relighting", "user", "load"), default="relighting")
    parser.add_argument("--rank", type=int, default=128, help="relighting LoRA rank")
    parser.add_argument("--tiny", action="store_true", help="CPU: tiny random model, aot_eager compile")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args()
    sys.path.insert(0, str(APP_ROOT / "benchmarks"))
    sys.path.insert(0, str(APP_ROOT / "tests"))  # release_checkpoints: LoRA files in the release layouts
    import bench_forward  # registers the app package; full-size model builder
    from release_checkpoints import write_relighting_checkpoint
    from wan_animate.wan.lora import load_relighting_lora
    from wan_animate.wan.models import build_tiny_models

    speed = bench_forward.speed
    model = build_tiny_models().transformer if args.tiny else bench_forward.build_model()
    with tempfile.TemporaryDirectory() as tmp:
        if args.scenario == "load":
            rows = run_load_only(model, Path(tmp))
            result = {"scenario": "load", "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "loads": rows}
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "lora_load.json").write_text(json.dumps(result, indent=2))
            return 0
        path = write_relighting_checkpoint(model, Path(tmp) / "relighting_lora.ckpt", rank=args.rank)
        adapter = load_relighting_lora(model, path)
        if args.tiny:
            options = speed.SpeedOptions(attention_backend=None, compile_backend="aot_eager")
            model = speed.apply_speed_options(model, options)
            inputs = speed.make_example_inputs(model.config, 32, 32, num_frames=9, dtype=torch.float32)
        else:
            model = speed.apply_speed_options(model, speed.SpeedOptions(fp8_linears=args.fp8))
            inputs = speed.make_example_inputs(model.config, 480, 832, device="cuda")
        if args.scenario == "relighting":
            rows = run_relighting(speed, model, adapter, inputs)
        else:
            rows = run_user_loras(speed, model, adapter, inputs, Path(tmp))
    result = {"scenario": args.scenario, "fp8": args.fp8, "rank": args.rank,
              "device": torch.cuda.get_device_name(0) if not args.tiny else "cpu (tiny model)",
              "torch": torch.__version__,
              "recompile_limit": getattr(torch._dynamo.config, "recompile_limit", None),
              "date": time.strftime("%Y-%m-%d"), "forwards": rows}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = ("_user" if args.scenario == "user" else "") + ("_fp8" if args.fp8 else "")
    (args.out / f"lora_compile{suffix}.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
