"""pipeline: both modes end to end on the real fixtures; the smoke pose path (production detector + pose classes
on fixed-output ONNX graphs) for the real-data checks, a scripted pose estimator (and stand-in retarget/masks
modules) for the wiring checks."""

from __future__ import annotations

import sys
import types

import cv2
import numpy as np
import pytest
from conftest import fixture_path
from wan_animate.errors import InputError
from wan_animate.limits import Limits
from wan_animate.preprocess import PreprocessModels, PreprocessOptions, preprocess, save_debug_files
from wan_animate.preprocess import pipeline as pipeline_module
from wan_animate.preprocess import video_decode as vdec
from wan_animate.preprocess import video_io as vio
from wan_animate.preprocess.pose_meta import PoseMeta

VIDEO = "driving_two_people_3s_small.mp4"  # 884x498, 30 fps, 90 frames
REFERENCE = "reference_astronaut.png"  # 512x512


class ScriptedEstimator:
    """A stand-in pose model: one upright stick figure in the middle of every frame (or nobody)."""

    def __init__(self, person: bool = True) -> None:
        self.person = person
        self.calls: list[tuple[int, int, int]] = []

    def __call__(self, frames: np.ndarray) -> list[PoseMeta]:
        n, h, w = frames.shape[:3]
        self.calls.append((n, h, w))
        return [self._pose(w, h) for _ in range(n)]

    def _pose(self, w: int, h: int) -> PoseMeta:
        meta = PoseMeta.empty(w, h)
        cx = w / 2
        for index, (x, y) in {0: (cx, 0.2 * h), 1: (cx, 0.3 * h), 8: (cx - 5, 0.6 * h), 11: (cx + 5, 0.6 * h)}.items():
            meta.body[index] = (x, y, 0.9)
        xs = np.linspace(cx - 0.04 * w, cx + 0.04 * w, 68)
        ys = np.concatenate([np.linspace(0.15 * h, 0.25 * h, 34), np.linspace(0.25 * h, 0.15 * h, 34)])
        meta.face = np.stack([xs, ys, np.full(68, 0.9)], axis=1).astype(np.float32)
        meta.person_box = np.array([0.4 * w, 0.1 * h, 0.6 * w, 0.9 * h, 0.9 if self.person else -1.0])
        return meta


def _options(**kw) -> PreprocessOptions:
    return PreprocessOptions(**{"resolution_width": 256, "resolution_height": 256, "fps": 5, **kw})


# --- real data, smoke pose backend -----------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_models() -> PreprocessModels:
    """The smoke preset's pose path: the production detector + ViTPose classes on the fixed-output smoke graphs."""
    from wan_animate.preprocess.smoke_models import smoke_pose_estimator

    return PreprocessModels(pose_estimator=smoke_pose_estimator())


@pytest.fixture(scope="module")
def animation(smoke_models):
    return preprocess(fixture_path(VIDEO), fixture_path(REFERENCE), _options(), smoke_models)


def test_animation_shapes_and_sizes(animation):
    cond = animation
    # 90 frames at 30 fps resampled to 5 fps: int(90 / 30 * 5) = 15 frames
    assert cond.num_frames == 15 and cond.fps == 5.0
    # the output size is the reference's, resized by area: 512x512 at 256*256 -> 256x256
    assert cond.pose_frames.shape == (15, 256, 256, 3) and cond.pose_frames.dtype == np.uint8
    assert cond.face_frames.shape == (15, 512, 512, 3) and cond.face_frames.dtype == np.uint8
    # the model's reference is the raw image letterboxed with INTER_LINEAR (official generate()), not resized by area
    expected_ref = vio.letterbox(vio.load_image(fixture_path(REFERENCE)), 256, 256, cv2.INTER_LINEAR)
    np.testing.assert_array_equal(cond.reference, expected_ref)
    assert cond.background_frames is None and cond.mask_frames is None
    assert all(crop.std() > 5 for crop in cond.face_frames)  # picture content, not blank crops


def test_animation_skeleton_is_where_the_person_is(animation, smoke_models):
    cond = animation
    frames = vdec.read_frames(fixture_path(VIDEO), vio.frame_indices_for_fps(90, 30.0, 5))
    poses = smoke_models.pose_estimator(frames)
    # the 884x498 canvas is letterboxed into 256x256: scale 256 / 884, height int(256 / 884 * 498) = 144,
    # top bar int((256 - 144) / 2) = 56
    scale, top = 256 / 884, 56
    drawn_frames = 0
    for img, pose in zip(cond.pose_frames, poses, strict=True):
        ys, xs = np.nonzero(img.max(axis=2) > 30)
        assert ys.size == 0 or (ys.min() >= top and ys.max() < top + 144)  # nothing in the black bars
        if not pose.has_person:
            continue
        assert ys.size > 20
        drawn_frames += 1
        x1, y1, x2, y2 = pose.person_box[:4] * scale + np.array([0, top, 0, top])
        inside = (xs >= x1 - 4) & (xs <= x2 + 4) & (ys >= y1 - 4) & (ys <= y2 + 4)
        assert inside.mean() > 0.9
    assert drawn_frames >= 12


def test_debug_files(animation, tmp_path):
    files = save_debug_files(animation, tmp_path)
    assert {p.name for p in files.values()} == {"src_pose.mp4", "src_face.mp4", "src_ref.png"}
    pose_info = vdec.probe_video(files["pose"])
    assert (pose_info.frames, pose_info.width, pose_info.height) == (15, 256, 256)
    assert pose_info.fps == pytest.approx(5.0)
    assert vdec.probe_video(files["face"]).width == 512
    np.testing.assert_array_equal(vio.load_image(files["ref"]), animation.reference)


# --- wiring with a scripted pose model -------------------------------------------------------------


def test_fps_resampling_and_pose_batches():
    estimator = ScriptedEstimator()
    cond = preprocess(fixture_path(VIDEO), fixture_path(REFERENCE), _options(fps=2), PreprocessModels(estimator))
    assert cond.num_frames == 6  # int(90 / 30 * 2)
    assert estimator.calls == [(6, 498, 884)]  # animation mode: poses on the frames at source resolution


def test_animation_reference_is_the_raw_image_letterboxed_bilinear():
    # Official generate() letterboxes the ORIGINAL reference (512x600) with INTER_LINEAR to the pose video's size.
    # Area 256 * 256 at aspect 512 / 600 -> 224x272 (each side floored to 16). 600 / 512 < 272 / 224, so the
    # width fills: new height int(224 / 512 * 600) = 262, top bar int((272 - 262) / 2) = 5 rows.
    raw = vio.load_image(fixture_path("reference_grace_hopper.jpg"))
    cond = preprocess(fixture_path(VIDEO), fixture_path("reference_grace_hopper.jpg"), _options(fps=2),
                      PreprocessModels(ScriptedEstimator()))  # fmt: skip
    expected = np.zeros((272, 224, 3), np.uint8)
    expected[5:267] = cv2.resize(raw, (224, 262), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(cond.reference, expected)
    assert cond.pose_frames.shape[1:3] == (272, 224)
    # the area-averaged copy (what pose estimation sees) is a different picture: the model no longer gets it
    area_resized = vio.resize_by_area(raw, 256 * 256)
    assert np.abs(area_resized.astype(int) - cond.reference).max() > 10


def test_no_person_in_video():
    models = PreprocessModels(ScriptedEstimator(person=False))
    with pytest.raises(InputError) as err:
        preprocess(fixture_path(VIDEO), fixture_path(REFERENCE), _options(fps=2), models)
    assert (err.value.code, err.value.field) == ("no_person_in_video", "driving_video")


def test_frame_limit_checked_before_decoding(monkeypatch):
    monkeypatch.setattr(pipeline_module, "LIMITS", Limits(max_output_frames=5))
    estimator = ScriptedEstimator()
    with pytest.raises(InputError) as err:
        preprocess(fixture_path(VIDEO), fixture_path(REFERENCE), _options(fps=2), PreprocessModels(estimator))
    assert (err.value.code, err.value.field) == ("too_many_frames", "fps")
    assert estimator.calls == []


def test_bad_reference_image(tmp_path):
    (tmp_path / "ref.png").write_bytes(b"not a png" * 20)
    with pytest.raises(InputError) as err:
        preprocess(fixture_path(VIDEO), tmp_path / "ref.png", _options(fps=2), PreprocessModels(ScriptedEstimator()))
    assert err.value.field == "reference_image"


def _fake_module(monkeypatch, name: str, **functions) -> None:
    module = types.ModuleType(f"wan_animate.preprocess.{name}")
    for key, fn in functions.items():
        setattr(module, key, fn)
    monkeypatch.setitem(sys.modules, f"wan_animate.preprocess.{name}", module)


def test_retarget_draws_at_reference_size(monkeypatch):
    calls = {}

    def retarget_poses(driving_first, reference, driving, driving_edit=None, reference_edit=None):
        calls.update(first=driving_first, reference=reference, n=len(driving), edits=(driving_edit, reference_edit))
        out = []
        for pose in driving:  # put every pose in the reference's 256x256 space, 10 px right of centre
            moved = pose.copy()
            moved.width, moved.height = reference.width, reference.height
            moved.body[:, 0] = moved.body[:, 0] / pose.width * 256 + 10
            moved.body[:, 1] = moved.body[:, 1] / pose.height * 256
            out.append(moved)
        return out

    _fake_module(monkeypatch, "retarget", retarget_poses=retarget_poses)
    estimator = ScriptedEstimator()
    cond = preprocess(fixture_path(VIDEO), fixture_path(REFERENCE), _options(fps=2, retarget_flag=True),
                      PreprocessModels(estimator))  # fmt: skip
    assert calls["n"] == 6 and calls["edits"] == (None, None)
    assert (calls["first"].width, calls["reference"].width) == (884, 256)  # driving frame vs reference pose
    assert (1, 256, 256) in estimator.calls  # the reference pose, on the resized reference
    # drawn straight at 256x256 (no letterbox): the neck at (138, 0.3 * 256 = 76.8)
    assert cond.pose_frames[0][76, 138].max() > 0


def test_retargeted_skeletons_paint_the_right_hand_first(monkeypatch):
    def retarget_poses(driving_first, reference, driving, driving_edit=None, reference_edit=None):
        out = []
        for _ in driving:  # hands crossing at (row 100, col 128) of the 256x256 reference space
            pose = PoseMeta.empty(reference.width, reference.height)
            pose.right_hand[0], pose.right_hand[1] = (108, 100, 0.9), (148, 100, 0.9)  # bone 0: red, horizontal
            pose.left_hand[5], pose.left_hand[6] = (128, 80, 0.9), (128, 120, 0.9)  # bone 5: vertical
            out.append(pose)
        return out

    _fake_module(monkeypatch, "retarget", retarget_poses=retarget_poses)
    cond = preprocess(fixture_path(VIDEO), fixture_path(REFERENCE), _options(fps=2, retarget_flag=True),
                      PreprocessModels(ScriptedEstimator()))  # fmt: skip
    assert cond.pose_frames[0][100, 118].tolist() == [255, 0, 0]  # the right hand's bone
    assert cond.pose_frames[0][100, 128].tolist() != [255, 0, 0]  # painted over by the left hand's bone


def test_retarget_needs_a_person_in_the_reference(monkeypatch):
    _fake_module(monkeypatch, "retarget", retarget_poses=lambda *a, **k: pytest.fail("must not be reached"))

    class NobodyInReference(ScriptedEstimator):
        def __call__(self, frames):
            metas = super().__call__(frames)
            if frames.shape[1:3] == (256, 256):
                metas[0].person_box[4] = -1.0
            return metas

    with pytest.raises(InputError) as err:
        preprocess(fixture_path(VIDEO), fixture_path(REFERENCE), _options(fps=2, retarget_flag=True),
                   PreprocessModels(NobodyInReference()))  # fmt: skip
    assert (err.value.code, err.value.field) == ("no_person_in_reference", "reference_image")


def test_flux_requested_without_model(monkeypatch):
    _fake_module(monkeypatch, "retarget", retarget_poses=lambda *a, **k: pytest.fail("must not be reached"))
    with pytest.raises(InputError) as err:
        preprocess(fixture_path(VIDEO), fixture_path(REFERENCE), _options(fps=2, retarget_flag=True, use_flux=True),
                   PreprocessModels(ScriptedEstimator()))  # fmt: skip
    assert err.value.field == "use_flux"


@pytest.mark.parametrize("iterations", [3, 0])
def test_replacement_sizes_from_video_and_wires_masks(monkeypatch, tmp_path, iterations):
    seen = {}

    def person_masks(frames, poses, segmenter, should_cancel=None, out=None):
        seen["frames"], seen["segmenter"], seen["out"] = frames.shape, segmenter, type(out).__name__
        for i, pose in enumerate(poses):
            x1, y1, x2, y2 = pose.person_box[:4].astype(int)
            mask = np.zeros(frames.shape[1:3], np.uint8)
            mask[y1:y2, x1:x2] = 1
            out[i] = mask
        return out

    def refine_masks(masks, iterations, kernel_size, w_subdivisions, h_subdivisions):
        seen["refine"] = (iterations, kernel_size, w_subdivisions, h_subdivisions)
        return masks

    def remove_person(frames, masks):
        return np.asarray(frames) * (1 - np.asarray(masks)[..., None])

    _fake_module(monkeypatch, "masks", person_masks=person_masks, refine_masks=refine_masks,
                 remove_person=remove_person)  # fmt: skip
    estimator = ScriptedEstimator()
    options = _options(fps=2, mode="replacement", mask_iterations=iterations, mask_kernel_size=5)
    cond = preprocess(fixture_path(VIDEO), fixture_path(REFERENCE), options, PreprocessModels(estimator, "sam2"))
    # size from the video: 884x498 at 256*256 -> h = sqrt(65536 / 1.7751) = 192.1 -> 192, w = 341.1 -> 336
    assert cond.pose_frames.shape == (6, 192, 336, 3)
    assert cond.background_frames.shape == (6, 192, 336, 3) and cond.mask_frames.shape == (6, 192, 336)
    assert cond.mask_frames.dtype == np.uint8 and set(np.unique(cond.mask_frames)) <= {0, 1}
    assert estimator.calls == [(6, 192, 336)]  # poses on the resized frames
    assert seen["frames"] == (6, 192, 336, 3) and seen["segmenter"] == "sam2"
    assert seen["out"] == "FrameStore"  # the masks are written to disk
    assert seen.get("refine") == ((3, 5, 1, 1) if iterations else None)  # official: no refinement at 0
    # the reference is letterboxed to the frame: 512x512 into 336x192 -> 192 wide, bars of 72 px
    assert cond.reference.shape == (192, 336, 3)
    assert cond.reference[:, :72].max() == 0 and cond.reference[:, 264:].max() == 0
    assert cond.reference[:, 72:264].mean() > 20
    # background: zero inside the mask, the (resized) frame elsewhere
    assert cond.background_frames[np.asarray(cond.mask_frames) == 1].max() == 0
    files = save_debug_files(cond, tmp_path)
    assert {"bg", "mask"} <= set(files)
    mask_video = vdec.read_frames(files["mask"], [0])[0]
    assert mask_video[cond.mask_frames[0] == 1].mean() > 200 and mask_video[cond.mask_frames[0] == 0].mean() < 30


def test_replacement_without_segmenter(monkeypatch):
    _fake_module(monkeypatch, "masks", person_masks=None, refine_masks=None, remove_person=None)
    with pytest.raises(InputError) as err:
        preprocess(fixture_path(VIDEO), fixture_path(REFERENCE), _options(fps=2, mode="replacement"),
                   PreprocessModels(ScriptedEstimator()))  # fmt: skip
    assert err.value.field == "mode"


@pytest.mark.parametrize(("mode", "frame_bytes"),
                         [("animation", 512 * 512 * 3), ("replacement", 512 * 512 * 3 + 192 * 336 * 4)])  # fmt: skip
def test_too_little_temporary_disk_is_refused_before_any_decoding(monkeypatch, tmp_path, mode, frame_bytes):
    free = {"bytes": 6 * frame_bytes}  # 6 frames' worth (fps 2 -> 6 frames need 6 x 1.05)

    def disk_usage(path):
        assert path == tmp_path  # the run's folder is the one checked
        return types.SimpleNamespace(total=10**12, used=0, free=free["bytes"])

    monkeypatch.setattr(pipeline_module.shutil, "disk_usage", disk_usage)
    estimator = ScriptedEstimator()
    options = _options(fps=2, mode=mode)
    with pytest.raises(InputError) as err:
        preprocess(fixture_path(VIDEO), fixture_path(REFERENCE), options, PreprocessModels(estimator, "sam2"),
                   work_dir=tmp_path)  # fmt: skip
    assert (err.value.code, err.value.field) == ("not_enough_disk", "driving_video")
    assert "6 output frames" in str(err.value) and "lower fps" in str(err.value)
    assert estimator.calls == []  # refused before a frame was decoded
    free["bytes"] = 7 * frame_bytes  # room for the frames and the margin: the run goes on
    if mode == "animation":
        assert preprocess(fixture_path(VIDEO), fixture_path(REFERENCE), options, PreprocessModels(estimator),
                          work_dir=tmp_path).num_frames == 6  # fmt: skip
