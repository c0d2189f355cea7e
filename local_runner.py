"""Run the app locally with `infsh run input.json` semantics, where the `infsh` CLI is not installed.

    python -m local_runner run input.json [--output-dir out/]
    torchrun --nproc-per-node 2 -m local_runner run input.json --output-dir out/   # one step split over 2 GPUs

The inference.sh CLI copies this folder into a package and imports `<package>.inference`; this
runner does the same without copying: it registers the folder as the package `wan_animate`, so the
app's relative imports (`from .preprocess import ...`) resolve exactly as they do when deployed.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import shutil
import signal
import sys
import threading
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: the benchmarks and GPU test runner call load_app_package without pydantic
    import pydantic

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


FILE_FIELDS = ("driving_video", "reference_image")


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON file that must hold one object; ValueError (one line) for anything else, absurd nesting included."""
    try:
        data = json.loads(path.read_text())
    except RecursionError:
        raise ValueError(f"{path}: the JSON is nested too deeply to be {what}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of {what}, got a {type(data).__name__}")
    return data


def read_input_json(path: Path) -> dict[str, Any]:
    """The request as the app receives it; local file paths (a plain string, `path` or `uri`) are taken relative
    to the JSON file's folder. Values of the wrong type are left for the app's validation to refuse by name."""
    input_files = import_app_module("input_files")
    data = read_json_object(path, "inputs")
    base = path.resolve().parent
    for name in FILE_FIELDS:
        if name in data:
            data[name] = input_files.absolutize(data[name], base)
    loras = data.get("loras")
    if isinstance(loras, list):
        data["loras"] = [
            {**lora, "file": input_files.absolutize(lora["file"], base)} if isinstance(lora, dict) and "file" in lora
            else lora
            for lora in loras
        ]  # fmt: skip
    return data


def _collect_files(output: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Copy every output file into `out_dir` and point the JSON at the copies."""
    result: dict[str, Any] = {}
    for key, value in output.items():
        if isinstance(value, dict) and "path" in value and Path(value["path"]).is_file():
            target = out_dir / f"{key}{Path(value['path']).suffix}"
            shutil.copyfile(value["path"], target)
            result[key] = {**value, "path": str(target)}
        else:
            result[key] = value
    return result


def torchrun_rank() -> int:
    """This process's rank in a torchrun job (0 when not started by torchrun)."""
    return int(os.environ.get("RANK", "0"))


async def run_app(inputs: dict[str, Any], setup: dict[str, Any], out_dir: Path) -> dict[str, Any] | None:
    """setup + run on one request, as the inference.sh engine does; returns the output JSON.

    Under torchrun every rank runs setup + run (the transformer's forwards are split across them); rank 0 alone
    writes `out_dir` and returns the JSON, the other ranks return None.
    """
    inference = import_app_module("inference")
    app_input = inference.AppInput(**inputs)  # validate (and download URLs) before any heavy work
    app = inference.App()
    await app.setup(inference.AppSetup(**setup))
    try:
        output = await app.run_rank(app_input)  # run() on one process; run_rank() also on the other torchrun ranks
        if output is None:  # a torchrun rank other than 0
            return None
        out_dir.mkdir(parents=True, exist_ok=True)
        result = _collect_files(output.model_dump(mode="json"), out_dir)  # before unload removes the app's copy
        (out_dir / "output.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
        return result
    finally:
        await app.unload()


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: raised in the main thread by the signal handler, so every `finally` on the way out
    runs (temp folders removed, ffmpeg writers killed). A BaseException, so no `except Exception` swallows it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal number, as shells report them
HARD_STOP_S = 20.0  # after the first signal, how long the clean unwinding may take before the process is ended


def _descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, grandchildren...), read from /proc (Linux; empty elsewhere)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":  # zombies are dead already
            parents[int(entry.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found.extend(children)
        frontier = children
    return found


def kill_descendants() -> None:
    """SIGKILL whatever child processes are left (ffmpeg, compile workers), so none outlives the run."""
    for child in _descendants(os.getpid()):
        try:
            os.kill(child, signal.SIGKILL)
        except OSError:
            pass


def _exit_line(signum: int) -> str:
    return f"error: interrupted by {signal.Signals(signum).name}; the run was stopped and its temporary files removed"


class SignalStop:
    """While active, SIGINT and SIGTERM stop the run at once (not when it ends): the first one raises Interrupted in
    the main thread; later ones are ignored while the run unwinds, which a watchdog bounds to HARD_STOP_S seconds.

    Installed before asyncio.run, which then keeps its hands off SIGINT (its own handler only cancels the main task,
    which a run busy in synchronous code never notices: the 'single Ctrl-C ignored' bug).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalStop:
        for signum in EXIT_CODES:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():  # interrupted: stay deaf to signals until the process exits
            signal.signal(signum, handler if self.signum is None else signal.SIG_IGN)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            return
        self.signum = signum
        threading.Thread(target=self._hard_stop, args=(signum,), daemon=True).start()
        raise Interrupted(signum)

    @staticmethod
    def _hard_stop(signum: int) -> None:
        """Last resort when unwinding hangs (a C call that does not return): kill the children and leave."""
        threading.Event().wait(HARD_STOP_S)
        kill_descendants()
        print(_exit_line(signum).replace("temporary files removed", "process ended"), file=sys.stderr, flush=True)
        os._exit(EXIT_CODES[signum])


def _format_validation_error(error: pydantic.ValidationError) -> str:
    """One line: the app's own InputError when a validator raised one (it names the field and the fix), else each
    pydantic error as `field: message`."""
    errors = import_app_module("errors")
    items = error.errors()
    for item in items:
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, errors.InputError):
            return str(cause)
    parts = []
    for item in items:
        where = ".".join(str(p) for p in item.get("loc", ())) or "input"
        parts.append(f"{where}: {item.get('msg')}")
    return "invalid input: " + "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_runner", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the app on input.json (setup + run), like `infsh run input.json`")
    run.add_argument("input_json", type=Path)
    run.add_argument("--setup", type=Path, default=None, help="JSON of AppSetup fields (e.g. {\"preset\": \"smoke\"})")
    run.add_argument("--output-dir", type=Path, default=Path("out"), help="where the MP4 and output.json go")
    args = parser.parse_args(argv)

    rank = torchrun_rank()
    # Under torchrun, rank 0 logs (its warnings are the other ranks' too); the others only log errors.
    prefix = "%(asctime)s" if rank == 0 else f"[rank {rank}]"
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.ERROR, format=f"{prefix} %(name)s %(levelname)s %(message)s"
    )
    load_app_package()
    errors = import_app_module("errors")
    try:
        setup = read_json_object(args.setup, "setup options") if args.setup else {}
        inputs = read_input_json(args.input_json)
    except (OSError, ValueError) as error:
        print(f"error: cannot read the request: {error}", file=sys.stderr)
        return 2
    import pydantic

    try:
        with SignalStop():
            result = asyncio.run(run_app(inputs, setup, args.output_dir))
    except Interrupted as stop:
        kill_descendants()
        print(_exit_line(stop.signum), file=sys.stderr, flush=True)
        return EXIT_CODES[stop.signum]
    except errors.InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except pydantic.ValidationError as error:
        print(f"error: {_format_validation_error(error)}", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
