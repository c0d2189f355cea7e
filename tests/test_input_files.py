"""input_files: a request's file values -> local files, as the hosted app (AppInput validation) and the local runner
receive them; downloads from a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

import pydantic
import pytest
from http_server import Route, serve

from local_runner import APP_ROOT, import_app_module, read_input_json

inference = import_app_module("inference")
input_files = import_app_module("input_files")
InputError = import_app_module("errors").InputError
DRIVING = APP_ROOT / "examples" / "smoke" / "driving.mp4"
REFERENCE = APP_ROOT / "examples" / "smoke" / "reference.jpg"


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own download cache (the SDK's FILE_CACHE_DIR)."""
    folder = tmp_path / "file-cache"
    monkeypatch.setenv("FILE_CACHE_DIR", str(folder))
    return folder


def limits(monkeypatch: pytest.MonkeyPatch, **changes: float) -> None:
    monkeypatch.setattr(input_files, "LIMITS", dataclasses.replace(input_files.LIMITS, **changes))


def cached_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def input_error(value: object, field: str = "driving_video") -> InputError:
    """The InputError that validating an AppInput with this driving_video (or LoRA list) raises."""
    request = {"driving_video": {"path": str(DRIVING)}, "reference_image": {"path": str(REFERENCE)}}
    request["loras" if field.startswith("loras") else field] = value
    with pytest.raises(pydantic.ValidationError) as info:
        inference.AppInput(**request)
    cause = info.value.errors()[0]["ctx"]["error"]
    assert isinstance(cause, InputError) and cause.field == field, info.value
    return cause


def test_a_url_in_path_uri_or_a_plain_string_downloads_in_app_input(cache_dir: Path) -> None:
    """The seed app's / README's `{"path": "https://..."}` form: the SDK alone takes it for a local path."""
    data = DRIVING.read_bytes()
    routes = {"/a/dance.mp4": Route(data), "/b/dance.mp4": Route(data), "/c/": Route(REFERENCE.read_bytes())}
    with serve(routes) as url:
        for value in ({"path": url("/a/dance.mp4")}, {"uri": url("/b/dance.mp4")}, url("/a/dance.mp4")):
            inp = inference.AppInput(driving_video=value, reference_image=url("/c/"))
            assert Path(inp.driving_video.path).read_bytes() == data
            assert Path(inp.driving_video.path).is_relative_to(cache_dir)
            assert inp.reference_image.path and Path(inp.reference_image.path).read_bytes() == REFERENCE.read_bytes()
    assert routes["/a/dance.mp4"].requests == 1  # the second ask of the same URL reused the complete copy
    assert inp.model_dump(mode="json")["driving_video"]["uri"] == url("/a/dance.mp4")


def test_a_download_logs_its_start_and_end(cache_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A slow stage says when it starts (hosted task logs show what a request is waiting for)."""
    with serve({"/dance.mp4": Route(DRIVING.read_bytes())}) as url, caplog.at_level("INFO", "wan_animate"):
        inference.AppInput(driving_video=url("/dance.mp4"), reference_image={"path": str(REFERENCE)})
    messages = [r.getMessage() for r in caplog.records if r.name == "wan_animate.input_files"]
    assert len(messages) == 2, messages
    assert messages[0].startswith("download for driving_video started") and "dance.mp4" in messages[0]
    assert messages[1].startswith("download for driving_video done")


def test_truncated_download_is_refused_and_never_reused(cache_dir: Path) -> None:
    data = DRIVING.read_bytes()
    route = Route(data, cut_after=3000)  # Content-Length is the whole file; the first answer stops at 3000 bytes
    with serve({"/dance.mp4": route}) as url:
        error = input_error({"path": url("/dance.mp4")})
        assert error.code == "download_incomplete" and "3000 of the" in error.message
        assert cached_files(cache_dir) == []  # nothing partial left, not even the temp file
        inp = inference.AppInput(driving_video=url("/dance.mp4"), reference_image={"path": str(REFERENCE)})
    assert Path(inp.driving_video.path).read_bytes() == data
    assert route.requests == 2


def test_size_cap_is_checked_from_content_length_before_the_transfer(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits(monkeypatch, max_file_bytes=100_000)
    route = Route(b"x" * 20_000_000, chunk=65536, delay_s=0.002)
    with serve({"/big.mp4": route}) as url:
        error = input_error(url("/big.mp4"))
    assert error.code == "file_too_large" and "20000000 bytes" in error.message
    # The client closed on the header: the server could only fill the socket buffers, not send the 20 MB.
    assert route.sent[0] < 20_000_000
    assert cached_files(cache_dir) == []


def test_size_cap_is_checked_from_the_bytes_when_there_is_no_content_length(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits(monkeypatch, max_file_bytes=100_000)
    with serve({"/big.mp4": Route(b"x" * 3_000_000, length=None, chunk=4096)}) as url:
        error = input_error({"uri": url("/big.mp4")})
    assert error.code == "file_too_large" and "stopped" in error.message
    assert cached_files(cache_dir) == []


def test_a_trickling_download_stops_at_the_total_deadline(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    limits(monkeypatch, download_timeout_s=1.0, download_stall_s=5.0)
    route = Route(b"x" * 1000, chunk=1, delay_s=0.05, max_send_s=8.0)  # a byte each 50 ms, never a stall
    with serve({"/slow.mp4": route}) as url:
        error = input_error(url("/slow.mp4"))
    assert error.code == "download_timeout"
    assert cached_files(cache_dir) == []


def test_a_stalled_download_stops_at_the_stall_limit(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    limits(monkeypatch, download_timeout_s=30.0, download_stall_s=0.5)
    route = Route(b"x" * 1000, chunk=10, delay_s=3.0, max_send_s=4.0)  # headers, then 3 s of silence
    with serve({"/stalled.mp4": route}) as url:
        error = input_error(url("/stalled.mp4"))
    assert error.code == "download_timeout"
    assert cached_files(cache_dir) == []


def test_http_errors_and_unreachable_hosts_name_the_field() -> None:
    with serve({}) as url:
        error = input_error({"path": url("/gone.mp4")})
    assert error.code == "download_failed" and "HTTP 404" in error.message
    error = input_error("http://127.0.0.1:9/dance.mp4")  # nothing listens on port 9
    assert error.code == "download_failed"


def test_a_lora_url_that_answers_404_names_its_index() -> None:
    with serve({}) as url:
        error = input_error([{"file": {"path": str(REFERENCE)}}, {"file": url("/style.safetensors")}], "loras[1].file")
    assert error.code == "download_failed" and "404" in error.message


def test_a_data_uri_in_path_or_uri_decodes_like_the_sdk() -> None:
    data = DRIVING.read_bytes()
    uri = "data:video/mp4;base64," + base64.b64encode(data).decode()
    for value in ({"path": uri}, {"uri": uri}, uri):
        inp = inference.AppInput(driving_video=value, reference_image={"path": str(REFERENCE)})
        assert Path(inp.driving_video.path).read_bytes() == data
        assert inp.driving_video.content_type == "video/mp4"
    assert input_error({"path": "data:video/mp4;base64"}).code == "invalid_data_uri"  # no comma: not a data URI


def test_a_data_uri_over_the_size_cap_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    limits(monkeypatch, max_file_bytes=1000)
    error = input_error("data:video/mp4;base64," + "A" * 4000)
    assert error.code == "file_too_large"


@pytest.mark.parametrize(
    ("value", "code", "words"),
    [
        (5, "invalid_file", "got a number"),
        ([str(DRIVING)], "invalid_file", "got a list"),
        ({"path": 5}, "invalid_file", "'path' must be a string"),
        ({"path": str(DRIVING), "foo": 1}, "invalid_file", "unknown key 'foo'"),
        ({"uri": None, "path": None, "size": 3}, "missing_input", "neither 'uri' nor 'path'"),
        ({"path": str(DRIVING), "size": "big"}, "invalid_file", "'size' must be an integer"),
        ({"path": "x" * 5000}, "path_too_long", "5000 characters"),
        ({"path": "/tmp/" + "y" * 300 + ".mp4"}, "path_too_long", "255 bytes per name"),
        ({"path": "a\0b.mp4"}, "invalid_path", "NUL"),
        ("ftp://example.com/dance.mp4", "unsupported_url", "only http"),
    ],
)
def test_wrong_file_values_are_one_input_error(value: object, code: str, words: str) -> None:
    error = input_error(value)
    assert error.code == code and words in error.message, error


def test_wrong_lora_values_name_the_lora() -> None:
    assert input_error([{"file": 5}], "loras[0].file").code == "invalid_file"
    error = input_error([{"file": str(REFERENCE), "wieght": 1.0}], "loras[0].wieght")
    assert error.code == "unknown_field" and "'weight'" in error.message
    with pytest.raises(pydantic.ValidationError, match="valid list"):
        inference.AppInput(driving_video=str(DRIVING), reference_image=str(REFERENCE), loras=5)


def test_a_file_built_in_python_with_an_impossible_path_is_a_clean_error() -> None:
    from inferencesh import File

    with pytest.raises(InputError) as info:
        input_files.check_local_file(File(path="/tmp/" + "z" * 300), "driving_video")
    assert info.value.code == "file_not_found"


def test_unknown_request_fields_are_refused_with_the_nearest_name() -> None:
    error = input_error(3, "sampling_step")
    assert error.code == "unknown_field" and "did you mean 'sampling_steps'" in error.message
    error = input_error(3, "zzzz")
    assert "the inputs are: driving_video" in error.message


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_are_refused_as_not_finite(value: float) -> None:
    for name in ("shift", "guide_scale", "fps", "step_cache"):
        with pytest.raises(pydantic.ValidationError, match="finite number") as info:
            inference.AppInput(driving_video=str(DRIVING), reference_image=str(REFERENCE), **{name: value})
        assert "should be <=" not in str(info.value) and "should be >=" not in str(info.value)
    with pytest.raises(pydantic.ValidationError, match="finite number"):
        inference.LoraInput(file=str(REFERENCE), weight=value)


def test_nesting_10000_levels_deep_is_a_clean_validation_error() -> None:
    deep: object = []
    for _ in range(10_000):
        deep = [deep]
    for name in ("driving_video", "input_prompt", "loras", "unknown_field_name"):
        with pytest.raises(pydantic.ValidationError) as info:
            inference.AppInput(**{"driving_video": str(DRIVING), "reference_image": str(REFERENCE), name: deep})
        assert name.split("_field")[0] in str(info.value)  # printable (no RecursionError), names the field


def test_relative_paths_in_path_uri_or_a_string_resolve_against_the_request_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "request"
    folder.mkdir()
    (folder / "driving.mp4").write_bytes(DRIVING.read_bytes())
    (folder / "style.safetensors").write_bytes(b"0")
    request = {"driving_video": {"uri": "driving.mp4"}, "reference_image": "driving.mp4",
               "loras": [{"file": {"path": "style.safetensors"}}, 7]}  # fmt: skip
    (folder / "input.json").write_text(json.dumps(request))
    monkeypatch.chdir(tmp_path)  # the process runs elsewhere
    data = read_input_json(folder / "input.json")
    assert data["driving_video"] == {"uri": str(folder / "driving.mp4")}
    assert data["reference_image"] == str(folder / "driving.mp4")
    assert data["loras"] == [{"file": {"path": str(folder / "style.safetensors")}}, 7]  # wrong types left to validation
    inp = inference.AppInput(**{**data, "loras": data["loras"][:1]})
    assert inp.driving_video.path == str(folder / "driving.mp4")
