"""The app's input schema: every documented bound and choice is enforced, defaults are the documented ones."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from local_runner import import_app_module

inference = import_app_module("inference")
InputError = import_app_module("errors").InputError
request_options = import_app_module("request_options")
check_local_file = import_app_module("input_files").check_local_file
AppInput = inference.AppInput

FILES = {"driving_video": {"path": "/tmp/driving.mp4"}, "reference_image": {"path": "/tmp/ref.png"}}


def make(**overrides: object) -> object:
    return AppInput(**{**FILES, **overrides})


def test_defaults_are_the_documented_ones() -> None:
    inp = make()
    assert (inp.mode, inp.resolution_width, inp.resolution_height, inp.fps) == ("animation", 1280, 720, 30)
    assert (inp.clip_len, inp.refert_num, inp.shift, inp.sample_solver) == (77, 1, 5.0, "dpm++")
    assert (inp.sampling_steps, inp.guide_scale, inp.seed) == (20, 1.0, -1)
    assert (inp.mask_iterations, inp.mask_kernel_size, inp.mask_w_subdivisions, inp.mask_h_subdivisions) == (3, 7, 1, 1)
    assert inp.input_prompt == "" and inp.n_prompt == "" and inp.offload_model is False
    assert inp.retarget_flag is False and inp.use_flux is False and inp.distill is False
    assert request_options.sampling_settings(inp) == {"sampling_steps": 20, "shift": 5.0, "sample_solver": "dpm++", "guide_scale": 1.0}
    assert inp.resolution == "720p" and request_options.target_resolution(inp) == (1280, 720)
    assert inp.merge_audio is True and inp.video_quality == "high" and request_options.video_crf(inp) == 18  # the CRF used before


def test_resolution_presets_and_the_custom_override() -> None:
    assert request_options.RESOLUTION_PRESETS == {"480p": (854, 480), "580p": (1024, 576), "720p": (1280, 720)}
    for preset, area in request_options.RESOLUTION_PRESETS.items():
        assert request_options.target_resolution(make(resolution=preset)) == area
    # A client that sends every field with its default (a form) gets the preset it asked for.
    assert request_options.target_resolution(make(resolution="480p", resolution_width=1280, resolution_height=720)) == (854, 480)
    parsed = AppInput.model_validate_json('{"driving_video": {"path": "/tmp/d.mp4"}, "reference_image": '
                                          '{"path": "/tmp/r.png"}, "resolution": "580p", "resolution_width": 1280, '
                                          '"resolution_height": 720}')  # fmt: skip
    assert request_options.target_resolution(parsed) == (1024, 576)
    # Width/height other than their defaults are the custom area, whatever the preset.
    assert request_options.target_resolution(make(resolution="480p", resolution_width=832, resolution_height=480)) == (832, 480)
    assert request_options.target_resolution(make(resolution="720p", resolution_width=832, resolution_height=480)) == (832, 480)
    # Requests from before presets (no `resolution`): the same target area as then.
    for width, height in ((1280, 720), (1920, 1080), (512, 512), (1024, 720), (1280, 960)):
        assert request_options.target_resolution(make(resolution_width=width, resolution_height=height)) == (width, height)
    assert request_options.target_resolution(make(resolution_width=1920)) == (1920, 720)  # one side set: the other's default


def test_video_quality_presets_are_ordered_crfs() -> None:
    crf = request_options.VIDEO_QUALITY_CRF
    assert set(crf) == set(AppInput.model_json_schema()["properties"]["video_quality"]["enum"])
    assert crf["low"] > crf["medium"] > crf["high"] > crf["maximum"] > 0  # lower CRF = higher quality
    assert {q: request_options.video_crf(make(video_quality=q)) for q in crf} == crf


def test_distill_brings_the_loras_settings_where_the_request_has_defaults() -> None:
    recommended = {"sampling_steps": 4, "shift": 5.0, "sample_solver": "euler", "guide_scale": 1.0}
    assert request_options.sampling_settings(make(distill=True)) == recommended
    # Values other than the defaults win.
    assert request_options.sampling_settings(make(distill=True, sampling_steps=6)) == {**recommended, "sampling_steps": 6}
    assert request_options.sampling_settings(make(distill=True, sample_solver="unipc")) == {**recommended, "sample_solver": "unipc"}
    explicit = dict(sampling_steps=8, shift=3.0, sample_solver="unipc", guide_scale=2.0)
    assert request_options.sampling_settings(make(distill=True, **explicit)) == explicit
    # A client that sends every field with its default (a form) still gets the LoRA's settings.
    every_default = dict(sampling_steps=20, shift=5.0, sample_solver="dpm++", guide_scale=1.0)
    assert request_options.sampling_settings(make(distill=True, **every_default)) == recommended
    parsed = AppInput.model_validate_json('{"driving_video": {"path": "/tmp/d.mp4"}, "reference_image": '
                                          '{"path": "/tmp/r.png"}, "distill": true, "shift": 8, '
                                          '"sampling_steps": 20, "sample_solver": "dpm++"}')  # fmt: skip
    assert request_options.sampling_settings(parsed) == {**recommended, "shift": 8.0}
    assert request_options.sampling_settings(make(sampling_steps=6))["sampling_steps"] == 6  # without distill: as given


@pytest.mark.parametrize(
    ("field", "ok", "bad"),
    [
        ("resolution", ["480p", "580p", "720p"], ["1080p", "480", "", "720P"]),
        ("resolution_width", [256, 832, 1920], [255, 1921]),
        ("resolution_height", [256, 480, 1920], [255, 1921]),
        ("video_quality", ["low", "medium", "high", "maximum"], ["best", "", "18"]),
        ("fps", [-1, 1, 60, 23.976], [0, -2, 0.5, 61]),
        ("clip_len", [5, 77, 81, 121], [4, 6, 76, 78, 125, 1]),
        ("refert_num", [1, 5], [0, 2, 77]),
        ("shift", [0.1, 20.0], [0.0, 20.1]),
        ("sample_solver", ["dpm++", "unipc", "euler"], ["lcm", "dpm"]),
        ("sampling_steps", [1, 100], [0, 101]),
        ("guide_scale", [1.0, 20.0], [0.99, 20.5]),
        ("seed", [-1, 0, 2**32 - 1], [-2, 2**32]),
        ("mode", ["animation", "replacement"], ["animate", "replace", ""]),
        ("mask_iterations", [0, 20], [-1, 21]),
        ("mask_kernel_size", [1, 51], [0, 52]),
        ("mask_w_subdivisions", [1, 32], [0, 33]),
        ("mask_h_subdivisions", [1, 32], [0, 33]),
    ],
)
def test_bounds(field: str, ok: list[object], bad: list[object]) -> None:
    for value in ok:
        assert getattr(make(**{field: value}), field) == value
    for value in bad:
        with pytest.raises(ValidationError) as info:
            make(**{field: value})
        assert field in str(info.value)


def test_inconsistent_combinations_are_rejected_with_the_reason() -> None:
    with pytest.raises(ValidationError, match="refert_num"):
        make(clip_len=5, refert_num=5)
    with pytest.raises(ValidationError, match="use_flux only acts with retarget_flag"):
        make(use_flux=True)
    with pytest.raises(ValidationError, match="animation"):
        make(mode="replacement", retarget_flag=True)
    assert make(retarget_flag=True, use_flux=True).use_flux


def test_clip_len_error_names_the_nearest_valid_value() -> None:
    with pytest.raises(ValidationError, match="Nearest: 77"):
        make(clip_len=78)


def test_required_files_missing_or_empty_arrive_as_none_and_are_rejected_by_run() -> None:
    for empty in (None, "", {}):
        inp = AppInput(driving_video=empty, reference_image=FILES["reference_image"])
        assert inp.driving_video is None
        with pytest.raises(InputError) as info:
            check_local_file(inp.driving_video, "driving_video")
        assert info.value.code == "missing_input" and info.value.field == "driving_video"


def test_missing_local_path_validates_but_run_rejects_it(tmp_path) -> None:
    inp = make(driving_video={"path": str(tmp_path / "nope.mp4")})
    with pytest.raises(InputError) as info:
        check_local_file(inp.driving_video, "driving_video")
    assert info.value.code == "file_not_found"
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(InputError) as info:
        check_local_file(make(driving_video={"path": str(empty)}).driving_video, "driving_video")
    assert info.value.code == "empty_file"


def test_schema_lists_every_input_with_description() -> None:
    schema = AppInput.model_json_schema()
    expected = {
        "driving_video", "reference_image", "mode", "resolution_width", "resolution_height", "fps", "retarget_flag",
        "use_flux", "clip_len", "refert_num", "shift", "sample_solver", "sampling_steps", "guide_scale", "seed",
        "input_prompt", "n_prompt", "offload_model", "mask_iterations", "mask_kernel_size", "mask_w_subdivisions",
        "mask_h_subdivisions", "distill", "resolution", "merge_audio", "video_quality",
    }  # fmt: skip
    assert expected <= set(schema["properties"])
    for name in expected:
        assert schema["properties"][name].get("description"), name
    assert schema["required"] == ["driving_video", "reference_image"]
    assert schema["properties"]["driving_video"]["format"] == "file"


def test_output_and_setup_schemas() -> None:
    out = inference.AppOutput.model_json_schema()["properties"]
    assert {"video", "seed", "num_frames", "fps", "width", "height", "timings", "output_meta"} <= set(out)
    setup = inference.AppSetup()
    assert setup.preset == "full"  # the smoke preset is never the default
    # Used only under torchrun with several processes; ulysses by default, ring for GPU counts not dividing 40.
    assert setup.context_parallel == "ulysses"
    assert inference.AppSetup(context_parallel="ring").context_parallel == "ring"
    with pytest.raises(ValidationError, match="context_parallel"):
        inference.AppSetup(context_parallel="tensor")
    setup_schema = inference.AppSetup.model_json_schema()["properties"]
    assert all(field.get("description") for field in setup_schema.values())
    assert setup.distill_lora is True  # 0.74 GB, and what most requests will want


@settings(max_examples=200, deadline=None)
@given(
    clip_len=st.integers(-10, 200),
    refert_num=st.integers(-2, 8),
    width=st.integers(0, 3000),
    fps=st.floats(-5, 120, allow_nan=False),
)
def test_schema_accepts_exactly_the_documented_region(clip_len: int, refert_num: int, width: int, fps: float) -> None:
    valid = (
        5 <= clip_len <= 121
        and clip_len % 4 == 1
        and refert_num in (1, 5)
        and refert_num < clip_len
        and 256 <= width <= 1920
        and (fps == -1 or 1 <= fps <= 60)
    )
    try:
        make(clip_len=clip_len, refert_num=refert_num, resolution_width=width, fps=fps)
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted == valid
