"""Packaging as inference.sh deploys apps: inf.yml in the flat format, the two configurations, the package
`__init__`, type hints a runtime discovers, the CLI's generated sample input, and the root input.json."""

from __future__ import annotations

import json
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from local_runner import APP_ROOT, import_app_module, main, read_input_json

inference = import_app_module("inference")
deploy_env = import_app_module("deploy_env")

CONFIGS = {"inf.yml": 80_000_000_000, "inf.fp8-offload.yml": 24_000_000_000}  # file -> GPU memory it asks for
REQUIRED_KEYS = {"namespace", "name", "description", "metadata", "category", "images", "env", "kernel", "resources"}


def read_config(name: str) -> dict[str, Any]:
    return yaml.safe_load((APP_ROOT / name).read_text())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_inf_yml_is_the_current_flat_format(name: str) -> None:
    config = read_config(name)
    assert REQUIRED_KEYS <= set(config)
    assert "variants" not in config and "python" not in config  # the retired format's keys
    assert config["kernel"] == "python-3.11"
    assert config["category"] == "video" and config["description"].strip()
    assert set(config["images"]) == {"card", "thumbnail", "banner"}
    gpu = config["resources"]["gpu"]
    assert gpu == {"count": 1, "vram": CONFIGS[name], "type": "nvidia"}
    assert config["resources"]["ram"] == 64 * 2**30
    assert all(isinstance(v, str) for v in config["env"].values())  # env values are strings
    [secret] = config["secrets"]
    assert secret["key"] == "HF_TOKEN" and secret["optional"] is True and secret["description"]


def test_the_two_configurations_are_separate_apps() -> None:
    names = {read_config(name)["name"] for name in CONFIGS}
    assert names == {"wan-animate", "wan-animate-fp8-offload"}


def setup_under(config_name: str, **request: Any) -> Any:
    """The AppSetup a worker of that configuration uses for a setup request (no model is loaded)."""
    env = read_config(config_name)["env"]
    return deploy_env.setup_from_env(inference.AppSetup(**request), env)


def test_fp8_offload_configuration_turns_on_fp8_and_offload_in_setup() -> None:
    setup = setup_under("inf.fp8-offload.yml")
    assert setup.fp8 is True and setup.offload_model is True
    # the deployment's hardware wins over a request that sends every field at its default
    setup = setup_under("inf.fp8-offload.yml", fp8=False, offload_model=False, enable_flux=True)
    assert (setup.fp8, setup.offload_model, setup.enable_flux) == (True, True, True)


def test_default_configuration_keeps_the_setup_request() -> None:
    setup = setup_under("inf.yml")
    assert setup.fp8 is False and setup.offload_model is False
    assert setup_under("inf.yml", fp8=True).fp8 is True


@pytest.mark.parametrize(("value", "on"), [("1", True), ("true", True), ("YES", True), ("0", False), ("", False)])
def test_env_switch_values(value: str, on: bool) -> None:
    setup = deploy_env.setup_from_env(inference.AppSetup(), {"WAN_ANIMATE_FP8": value})
    assert setup.fp8 is on and setup.offload_model is False


def test_setup_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """App.setup hands load_runtime the environment's switches (load_runtime replaced: nothing is built)."""
    import asyncio

    worker = import_app_module("worker")  # App.setup imports load_runtime from worker when it runs
    seen = []
    monkeypatch.setattr(worker, "load_runtime", lambda setup: seen.append(setup) or object())
    monkeypatch.setenv("WAN_ANIMATE_FP8", "1")
    monkeypatch.setenv("WAN_ANIMATE_OFFLOAD_MODEL", "1")
    asyncio.run(inference.App().setup({"preset": "smoke"}))
    assert (seen[0].preset, seen[0].fp8, seen[0].offload_model) == ("smoke", True, True)


# --- the package and its type hints ----------------------------------------------------------------


def test_package_init_reexports_the_app_classes_and_stays_cheap() -> None:
    """Imported as a real package (the CLI copies the folder and imports it): App, AppInput, AppOutput, without
    torch or numpy."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('build', {str(APP_ROOT / '__init__.py')!r}, "
        f"submodule_search_locations=[{str(APP_ROOT)!r}])\n"
        "package = importlib.util.module_from_spec(spec); sys.modules['build'] = package\n"
        "spec.loader.exec_module(package)\n"
        "import build.inference as inference\n"
        "assert package.App is inference.App and package.AppInput is inference.AppInput\n"
        "assert package.AppOutput is inference.AppOutput and package.AppSetup is inference.AppSetup\n"
        "print(sorted(m for m in ('torch', 'numpy', 'cv2', 'diffusers') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_run_and_setup_type_hints_resolve_to_the_models() -> None:
    hints = typing.get_type_hints(inference.App.run)
    assert hints["return"] is inference.AppOutput
    assert hints["input_data"] is inference.AppInput
    setup_hints = typing.get_type_hints(inference.App.setup)
    assert inference.AppSetup in typing.get_args(setup_hints["config"])


def test_run_refuses_to_return_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a torchrun rank other than 0 gets from run_rank (None) never leaves run() as a silent None."""
    import asyncio

    async def no_output(*_args: Any, **_kwargs: Any) -> None:
        return None

    monkeypatch.setattr(inference.App, "run_rank", no_output)
    with pytest.raises(RuntimeError, match="run_rank"):
        asyncio.run(inference.App().run(cli_example()))


# --- the CLI's sample input ------------------------------------------------------------------------


def example_value(schema: dict[str, Any]) -> Any:
    """One field's sample value, by the rule of inference.sh's schema generator (inferencesh kernel/schema.py in
    inference-sh/sdk-python): type from `type` (or the first non-null anyOf), null default -> None, else
    `example or default or placeholder` (a falsy default such as "" gives the placeholder), arrays -> [item]."""
    kind = schema.get("type", "string")
    for option in schema.get("anyOf", []):
        if option.get("type") != "null":
            kind = option.get("type")
            break
    if kind == "null" or ("default" in schema and schema["default"] is None):
        return None
    placeholders = {"string": "example_string", "integer": 0, "number": 0.0, "boolean": False}
    if kind in placeholders:
        return schema.get("example") or schema.get("default") or placeholders[kind]
    if kind == "array":
        return [example_value(schema.get("items", {}))]
    if kind == "object":
        return {k: example_value(v) for k, v in schema.get("properties", {}).items()}
    return None


def cli_example() -> Any:
    """The CLI's generated sample input (`belt app test --save-example`), validated as AppInput."""
    properties = inference.AppInput.model_json_schema()["properties"]
    return inference.AppInput(**{name: example_value(field) for name, field in properties.items()})


def test_cli_sample_input_validates_without_placeholders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(APP_ROOT)  # the CLI runs in the app folder; the file examples are relative to it
    properties = inference.AppInput.model_json_schema()["properties"]
    sample = {name: example_value(field) for name, field in properties.items()}
    assert "example_string" not in json.dumps(sample, ensure_ascii=False)
    inp = inference.AppInput(**sample)
    assert inp.input_prompt == inference.DEFAULT_PROMPT and inp.n_prompt and inp.loras == []
    assert Path(inp.driving_video.path).is_file() and Path(inp.reference_image.path).is_file()


def test_loras_none_is_no_lora() -> None:
    files = {"driving_video": {"path": "/tmp/d.mp4"}, "reference_image": {"path": "/tmp/r.png"}}
    assert inference.AppInput(**files).loras == []
    assert inference.AppInput(**files, loras=None).loras == []


# --- input.json at the app root --------------------------------------------------------------------


def test_root_input_json_validates_with_paths_relative_to_the_app_root(monkeypatch: pytest.MonkeyPatch) -> None:
    data = json.loads((APP_ROOT / "input.json").read_text())
    for field in ("driving_video", "reference_image"):
        path = Path(data[field]["path"])
        assert not path.is_absolute() and (APP_ROOT / path).is_file()
    monkeypatch.chdir(APP_ROOT)  # as `belt app test --input input.json` from the app folder: the SDK's File
    inp = inference.AppInput(**data)  # takes relative paths from the working directory (os.path.abspath)
    assert Path(inp.driving_video.path) == APP_ROOT / data["driving_video"]["path"]
    assert inp.distill is True  # a real request: the distilled 4 steps, small and short
    local = inference.AppInput(**read_input_json(APP_ROOT / "input.json"))  # local_runner: relative to the JSON
    assert local.driving_video.path == inp.driving_video.path


@pytest.mark.slow
def test_root_input_json_runs_through_the_local_runner(tmp_path: Path) -> None:
    setup = APP_ROOT / "examples" / "smoke" / "setup.json"
    code = main(["run", str(APP_ROOT / "input.json"), "--setup", str(setup), "--output-dir", str(tmp_path)])
    assert code == 0
    output = json.loads((tmp_path / "output.json").read_text())
    assert Path(output["video"]["path"]).stat().st_size > 1000
    assert output["num_frames"] == 16 and output["fps"] == 8.0  # 2 s of driving video at 8 fps
