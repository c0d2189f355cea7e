"""Bad and odd inputs through the local runner: each ends in the documented error (exit 2, one line naming the
input) or in a correct MP4; never a hang or a raw traceback."""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import zlib
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from local_runner import APP_ROOT, import_app_module, main

inference = import_app_module("inference")
InputError = import_app_module("errors").InputError
EXAMPLE = APP_ROOT / "examples" / "smoke"
DRIVING = EXAMPLE / "driving.mp4"
REFERENCE = EXAMPLE / "reference.jpg"
FAST = {"resolution_width": 512, "resolution_height": 512, "fps": 2, "clip_len": 5, "sampling_steps": 1, "seed": 3}


def ffmpeg(*args: str) -> None:
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", *args], check=True, timeout=120)


def streams(path: Path) -> str:
    result = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    return result.stderr


def run_runner(tmp_path: Path, capsys: pytest.CaptureFixture[str], **request: object) -> tuple[int, str]:
    body = {"driving_video": {"path": str(DRIVING)}, "reference_image": {"path": str(REFERENCE)}, **FAST, **request}
    path = tmp_path / "input.json"
    path.write_text(json.dumps(body))
    code = main(["run", str(path), "--setup", str(EXAMPLE / "setup.json"), "--output-dir", str(tmp_path / "out")])
    return code, capsys.readouterr().err


def huge_png_header(path: Path, width: int, height: int) -> None:
    """A valid PNG signature + IHDR announcing width x height, with one tiny IDAT (a decompression-bomb shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))  # fmt: skip


@pytest.mark.parametrize(
    ("case", "code", "field"),
    [
        ("corrupt_video", "unreadable_video", "driving_video"),
        ("empty_video", "empty_file", "driving_video"),
        ("text_as_image", "unreadable_image", "reference_image"),
        ("video_as_image", "unreadable_image", "reference_image"),
        ("huge_image_header", "image_too_large", "reference_image"),
        ("too_long_video", "video_too_long", "driving_video"),
        ("unreachable_url", "download_failed", "driving_video"),
        ("truncated_video", "unreadable_video", "driving_video"),
    ],
)
def test_bad_input_is_one_clear_error(
    case: str, code: str, field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    request: dict[str, object] = {}
    bad = tmp_path / "bad.bin"
    if case == "corrupt_video":
        bad.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
        request["driving_video"] = {"path": str(bad)}
    elif case == "empty_video":
        bad.write_bytes(b"")
        request["driving_video"] = {"path": str(bad)}
    elif case == "text_as_image":
        bad = tmp_path / "ref.png"
        bad.write_text("not an image at all")
        request["reference_image"] = {"path": str(bad)}
    elif case == "video_as_image":
        bad = tmp_path / "ref.png"
        bad.write_bytes(DRIVING.read_bytes())
        request["reference_image"] = {"path": str(bad)}
    elif case == "huge_image_header":
        bad = tmp_path / "bomb.png"
        huge_png_header(bad, 60_000, 60_000)
        request["reference_image"] = {"path": str(bad)}
    elif case == "too_long_video":
        bad = tmp_path / "long.mp4"
        ffmpeg("-f", "lavfi", "-i", "color=c=gray:s=64x64:r=1:d=61", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(bad))
        request["driving_video"] = {"path": str(bad)}
    elif case == "unreachable_url":
        request["driving_video"] = "http://127.0.0.1:9/dance.mp4"  # nothing listens on port 9
    elif case == "truncated_video":
        bad = tmp_path / "cut.mp4"
        bad.write_bytes(DRIVING.read_bytes()[:3000])
        request["driving_video"] = {"path": str(bad)}
    exit_code, err = run_runner(tmp_path, capsys, **request)
    assert exit_code == 2, err
    assert f"[{code}] {field}:" in err, err
    assert "Traceback" not in err


def run_ok(smoke_app: object, driving: Path = DRIVING, reference: Path = REFERENCE, **overrides: object) -> object:
    request = inference.AppInput(driving_video={"path": str(driving)}, reference_image={"path": str(reference)},
                                 **{**FAST, **overrides})  # fmt: skip
    return asyncio.run(smoke_app.run(request))


def reference_variants(tmp_path: Path) -> dict[str, Path]:
    rgb = Image.open(REFERENCE).convert("RGB")
    paths = {}
    paths["grayscale"] = tmp_path / "gray.png"
    rgb.convert("L").save(paths["grayscale"])
    paths["cmyk"] = tmp_path / "cmyk.jpg"
    rgb.convert("CMYK").save(paths["cmyk"])
    paths["alpha"] = tmp_path / "alpha.png"
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    rgba.save(paths["alpha"])
    paths["16bit"] = tmp_path / "deep.png"
    Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257).save(paths["16bit"])
    paths["exif_rotated"] = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rgb.transpose(Image.Transpose.ROTATE_90).save(paths["exif_rotated"], exif=exif)
    return paths


def test_odd_reference_images_give_a_correct_video(smoke_app: object, tmp_path: Path) -> None:
    sizes = {}
    for name, path in reference_variants(tmp_path).items():
        output = run_ok(smoke_app, reference=path)
        assert Path(output.video.path).is_file(), name
        assert output.num_frames == 4, name  # 2.0 s at 2 fps
        sizes[name] = (output.width, output.height)
    # Animation output takes the reference's aspect: the EXIF-rotated photo, once upright, is the portrait
    # 512x600 original again, like every other variant.
    assert len(set(sizes.values())) == 1, sizes


def test_odd_videos_give_a_correct_video(smoke_app: object, tmp_path: Path) -> None:
    no_audio = tmp_path / "silent.mp4"
    ffmpeg("-i", str(DRIVING), "-an", "-c:v", "copy", str(no_audio))
    output = run_ok(smoke_app, driving=no_audio)
    assert "Audio:" not in streams(Path(output.video.path))

    mono_8k = tmp_path / "mono8k.mkv"  # odd audio: mono, 8 kHz, in a Matroska container, misleading extension next
    ffmpeg("-i", str(DRIVING), "-c:v", "copy", "-ac", "1", "-ar", "8000", "-c:a", "libvorbis", str(mono_8k))
    misnamed = tmp_path / "clip.txt"
    misnamed.write_bytes(mono_8k.read_bytes())
    output = run_ok(smoke_app, driving=misnamed)
    info = streams(Path(output.video.path))
    assert "Audio:" in info and output.num_frames == 4

    vfr = tmp_path / "vfr.mp4"  # variable frame rate: every third frame dropped, timestamps kept
    ffmpeg("-i", str(DRIVING), "-vf", "select='not(eq(mod(n,3),1))'", "-fps_mode", "vfr", "-an", str(vfr))
    output = run_ok(smoke_app, driving=vfr)
    assert Path(output.video.path).is_file() and output.num_frames >= 3


def test_one_frame_video_is_a_clear_error_or_a_one_frame_video(smoke_app: object, tmp_path: Path) -> None:
    single = tmp_path / "one.mp4"
    ffmpeg("-i", str(DRIVING), "-frames:v", "1", "-an", str(single))
    try:
        output = run_ok(smoke_app, driving=single, fps=-1)
    except InputError as error:
        assert (error.code, error.field) == ("video_too_short", "driving_video")
    else:
        assert output.num_frames == 1


def test_use_flux_on_a_worker_without_flux_is_refused_before_any_work(smoke_app: object, monkeypatch) -> None:
    pipeline = import_app_module("preprocess.pipeline")
    monkeypatch.setattr(pipeline, "probe_video", lambda *a, **k: pytest.fail("the video was opened"))
    with pytest.raises(InputError) as info:
        run_ok(smoke_app, retarget_flag=True, use_flux=True)
    assert (info.value.code, info.value.field) == ("flux_unavailable", "use_flux")


def test_distill_on_a_worker_without_the_lora_is_refused_before_any_work(smoke_app: object, monkeypatch) -> None:
    pipeline = import_app_module("preprocess.pipeline")
    monkeypatch.setattr(pipeline, "probe_video", lambda *a, **k: pytest.fail("the video was opened"))
    monkeypatch.setattr(smoke_app.runtime.wan_models, "distill", None)  # a worker set up with distill_lora=false
    with pytest.raises(InputError) as info:
        run_ok(smoke_app, distill=True)
    assert (info.value.code, info.value.field) == ("distill_unavailable", "distill")
    assert "distill_lora" in str(info.value)


def test_step_cache_on_a_context_parallel_worker_is_refused_before_any_work(smoke_app: object, monkeypatch) -> None:
    from types import SimpleNamespace

    pipeline = import_app_module("preprocess.pipeline")
    monkeypatch.setattr(pipeline, "probe_video", lambda *a, **k: pytest.fail("the video was opened"))
    monkeypatch.setattr(smoke_app.runtime, "dist", SimpleNamespace(is_parallel=True, is_main=True))
    with pytest.raises(InputError) as info:
        run_ok(smoke_app, step_cache=0.1)
    assert (info.value.code, info.value.field) == ("step_cache_unavailable", "step_cache")


def test_step_cache_reaches_the_sampler_and_stays_in_bounds(smoke_app: object, monkeypatch) -> None:
    job = import_app_module("job")  # run_job looks generation_options up in job
    seen = []
    original = job.generation_options
    monkeypatch.setattr(job, "generation_options", lambda *a: seen.append(original(*a)) or seen[-1])
    output = run_ok(smoke_app, step_cache=0.2)
    assert seen[0].step_cache == 0.2 and output.num_frames > 0
    with pytest.raises(ValueError, match="step_cache"):
        inference.AppInput(driving_video={"path": str(DRIVING)}, reference_image={"path": str(REFERENCE)}, step_cache=1.5)


# ---------------------------------------------------------------------------------------------------
# Request data and input files (issues 14 and 15): each class of bad value is one line naming the field, exit 2.


@pytest.fixture
def file_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "file-cache"
    monkeypatch.setenv("FILE_CACHE_DIR", str(folder))
    return folder


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    ("request_fields", "expected"),
    [
        ({"driving_video": 5}, "[invalid_file] driving_video:"),
        ({"driving_video": [str(DRIVING)]}, "[invalid_file] driving_video:"),
        ({"driving_video": {"path": 5}}, "[invalid_file] driving_video:"),
        ({"driving_video": {"path": "x.mp4", "foo": 1}}, "[invalid_file] driving_video: unknown key 'foo'"),
        ({"reference_image": {"uri": 7}}, "[invalid_file] reference_image:"),
        ({"loras": 5}, "loras: Input should be a valid list"),
        ({"loras": [{"file": 5}]}, "[invalid_file] loras[0].file:"),
        ({"loras": [{"file": str(REFERENCE), "wieght": 1}]}, "[unknown_field] loras[0].wieght:"),
        ({"driving_video": {"path": "data:video/mp4;base64"}}, "[invalid_data_uri] driving_video:"),
        ({"driving_video": {"path": "d" * 5000 + ".mp4"}}, "[path_too_long] driving_video:"),
        ({"driving_video": "ftp://example.com/dance.mp4"}, "[unsupported_url] driving_video:"),
        ({"sampling_step": 4}, "[unknown_field] sampling_step: is not an input of this app; did you mean 'sampling_steps'?"),
        ({"shift": float("nan")}, "shift: Input should be a finite number"),
        ({"guide_scale": float("inf")}, "guide_scale: Input should be a finite number"),
    ],
)
def test_bad_request_data_is_one_line_naming_the_field(
    request_fields: dict[str, object], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exit_code, err = run_runner(tmp_path, capsys, **request_fields)  # JSON: NaN/Infinity written as such
    assert exit_code == 2, err
    assert expected in one_error_line(err)


def test_a_setup_json_that_is_a_list_or_deep_json_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "input.json"
    good.write_text(json.dumps({"driving_video": str(DRIVING), "reference_image": str(REFERENCE)}))
    setup = tmp_path / "setup.json"
    setup.write_text('["smoke"]')
    assert main(["run", str(good), "--setup", str(setup), "--output-dir", str(tmp_path / "o")]) == 2
    assert "expected a JSON object of setup options, got a list" in one_error_line(capsys.readouterr().err)
    deep = tmp_path / "deep.json"
    deep.write_text('{"loras": ' + "[" * 10_000 + "]" * 10_000 + "}")
    assert main(["run", str(deep), "--setup", str(EXAMPLE / "setup.json"), "--output-dir", str(tmp_path / "o")]) == 2
    assert "nested too deeply" in one_error_line(capsys.readouterr().err)


@pytest.mark.slow
def test_bad_requests_in_a_real_runner_process_exit_2_without_a_traceback(tmp_path: Path) -> None:
    """As the issue measured it: `python -m local_runner run`, one process per request."""
    import os
    import sys

    cases = {
        "deep": "[" * 10_000 + "]" * 10_000,
        "list": json.dumps([{"driving_video": str(DRIVING)}]),
        "typo": json.dumps({"driving_video": str(DRIVING), "reference_image": str(REFERENCE), "sampling_step": 4}),
        "wrong_type": json.dumps({"driving_video": {"path": 5}, "reference_image": str(REFERENCE)}),
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "FILE_CACHE_DIR": str(tmp_path / "cache")}
    for name, text in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        result = subprocess.run([sys.executable, "-m", "local_runner", "run", str(path), "--setup",
                                 str(EXAMPLE / "setup.json")], cwd=APP_ROOT, env=env, capture_output=True, text=True,
                                timeout=300)  # fmt: skip
        assert result.returncode == 2, (name, result.stderr[-3000:])
        one_error_line(result.stderr)


def test_downloads_through_the_runner_are_bounded_and_never_keep_a_partial_file(
    file_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from http_server import Route, serve

    input_files = import_app_module("input_files")
    routes = {
        "/cut/dance.mp4": Route(DRIVING.read_bytes(), cut_after=3000, cut_times=99),
        "/big.mp4": Route(b"x" * 20_000_000, chunk=65536, delay_s=0.002),  # 20 MB vs a 1 MB cap: the 3 GB vs 2 GB
        "/slow.mp4": Route(b"x" * 1000, chunk=1, delay_s=0.05, max_send_s=8.0),
    }
    small = dataclasses.replace(input_files.LIMITS, max_file_bytes=1_000_000, download_timeout_s=1.0)
    monkeypatch.setattr(input_files, "LIMITS", small)
    with serve(routes) as url:
        cases = [
            ({"driving_video": {"path": url("/cut/dance.mp4")}}, "[download_incomplete] driving_video:"),
            ({"driving_video": {"path": url("/big.mp4")}}, "[file_too_large] driving_video:"),
            ({"reference_image": url("/slow.mp4")}, "[download_timeout] reference_image:"),
            ({"loras": [{"file": {"path": url("/none.safetensors")}}]}, "[download_failed] loras[0].file:"),
        ]
        for request_fields, expected in cases:
            exit_code, err = run_runner(tmp_path, capsys, **request_fields)
            assert exit_code == 2, err
            assert expected in one_error_line(err)
    assert routes["/big.mp4"].sent[0] < 20_000_000  # refused on the header: only the socket buffers were filled
    assert [p for p in file_cache.rglob("*") if p.is_file()] == []


def test_a_url_in_path_downloads_and_runs_in_the_app(smoke_app: object, file_cache: Path) -> None:
    """The seed app's request form, `{"path": "https://..."}`, built into AppInput as the hosted SDK does."""
    from http_server import Route, serve

    routes = {"/media/dance.mp4": Route(DRIVING.read_bytes()), "/media/character.jpg": Route(REFERENCE.read_bytes())}
    with serve(routes) as url:
        request = inference.AppInput(driving_video={"path": url("/media/dance.mp4")},
                                     reference_image={"path": url("/media/character.jpg")}, **FAST)  # fmt: skip
    output = asyncio.run(smoke_app.run(request))
    assert Path(output.video.path).is_file() and output.num_frames == 4
    assert [route.requests for route in routes.values()] == [1, 1]


def lora_file(smoke_app: object, tmp_path: Path, kind: str) -> Path:
    """A LoRA file of the given kind: a valid one for the smoke transformer, or one of the ways it can be wrong."""
    import torch
    from release_checkpoints import write_user_lora
    from safetensors.torch import save_file

    path = tmp_path / f"{kind}.safetensors"
    if kind == "valid":
        write_user_lora(smoke_app.runtime.wan_models.transformer, path)
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "other_keys":  # a real safetensors file, but a plain weight, not a LoRA
        save_file({"conv.weight": torch.zeros(4, 4), "conv.bias": torch.zeros(4)}, str(path))
    elif kind == "other_model":  # a LoRA for FLUX's transformer, not Wan's
        save_file({"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 8),
                   "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(8, 2)}, str(path))  # fmt: skip
    elif kind == "wrong_shapes":  # a Wan LoRA for a model of another width (e.g. the 1.3B for the 14B)
        from release_checkpoints import lora_tensors

        tensors = lora_tensors(smoke_app.runtime.wan_models.transformer, rank=2, seed=0, down="lora_down", up="lora_up")
        save_file({f"diffusion_model.{k}": torch.zeros(v.shape[0] + 3, v.shape[1] + 5) for k, v in tensors.items()},
                  str(path))  # fmt: skip
    elif kind == "truncated":
        write_user_lora(smoke_app.runtime.wan_models.transformer, tmp_path / "whole.safetensors")
        path.write_bytes((tmp_path / "whole.safetensors").read_bytes()[:-100])
    return path


@pytest.mark.parametrize(
    ("kind", "code"),
    [("garbage", "lora_not_safetensors"), ("other_keys", "not_a_lora"), ("other_model", "lora_wrong_model"),
     ("truncated", "lora_damaged")],
)  # fmt: skip
def test_a_lora_that_is_not_a_wan_lora_is_refused_before_any_work(
    smoke_app: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, code: str
) -> None:
    pipeline = import_app_module("preprocess.pipeline")
    monkeypatch.setattr(pipeline, "probe_video", lambda *a, **k: pytest.fail("the video was opened"))
    bad = lora_file(smoke_app, tmp_path, kind)
    with pytest.raises(InputError) as info:
        run_ok(smoke_app, loras=[{"file": str(lora_file(smoke_app, tmp_path, "valid"))}, {"file": str(bad)}])
    assert (info.value.code, info.value.field) == (code, "loras[1].file")


def test_a_valid_user_lora_passes_the_header_check_and_runs(smoke_app: object, tmp_path: Path) -> None:
    output = run_ok(smoke_app, loras=[{"file": {"path": str(lora_file(smoke_app, tmp_path, "valid"))}, "weight": 0.5}])
    assert Path(output.video.path).is_file() and output.num_frames == 4


@pytest.mark.parametrize(("size", "code"), [((2, 3000), "image_too_small"), ((3000, 2), "image_too_small"),
                                            ((100, 3000), "aspect_ratio_too_extreme")])  # fmt: skip
@pytest.mark.parametrize("mode", ["animation", "replacement"])
def test_degenerate_reference_images_are_refused_with_the_minimum(
    smoke_app: object, tmp_path: Path, size: tuple[int, int], code: str, mode: str
) -> None:
    path = tmp_path / "thin.png"
    Image.new("RGB", size, (120, 90, 60)).save(path)
    with pytest.raises(InputError) as info:
        run_ok(smoke_app, reference=path, mode=mode)
    assert (info.value.code, info.value.field) == (code, "reference_image")
    limits = import_app_module("limits").LIMITS
    expected = f"{limits.min_image_side} px" if code == "image_too_small" else f"{limits.max_image_aspect:g}:1"
    assert expected in info.value.message


def test_a_lora_of_the_wrong_shapes_is_an_input_error_and_the_next_request_runs(
    smoke_app: object, tmp_path: Path
) -> None:
    """Shapes are not in the header check (they depend on the worker's model): loading refuses it cleanly."""
    with pytest.raises(InputError) as info:
        run_ok(smoke_app, loras=[{"file": str(lora_file(smoke_app, tmp_path, "wrong_shapes"))}])
    assert (info.value.code, info.value.field) == ("lora_incompatible", "loras[0].file")
    adapters = getattr(smoke_app.runtime.wan_models.transformer, "peft_config", {})
    assert not [name for name in adapters if name.startswith("user_lora_")]  # nothing half-loaded left behind
    assert run_ok(smoke_app).num_frames == 4
