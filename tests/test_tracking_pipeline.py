"""The performer through the real pipeline: the two-person fixture decoded, its recorded real detections
(tests/recorded_people.py) replayed by a test-only detector into the real WholeBodyPoseEstimator, tracker,
skeleton drawing, face crops and mask prompts; the pose model is a stand-in that returns the recorded keypoints
of the box it is given. Also the `person` input from the app schema to PreprocessOptions."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import recorded_people as rec
from conftest import fixture_path
from pydantic import ValidationError
from wan_animate.errors import InputError
from wan_animate.preprocess import PreprocessModels, PreprocessOptions, preprocess
from wan_animate.preprocess import video_decode as vdec
from wan_animate.preprocess import video_io as vio
from wan_animate.preprocess.detection import largest_person
from wan_animate.preprocess.face import crop_face, face_box
from wan_animate.preprocess.pose import WholeBodyPoseEstimator, wholebody_to_pose_meta
from wan_animate.preprocess.tracking import box_iou

from local_runner import import_app_module

REFERENCE = "reference_astronaut.png"
NAME = rec.SMALL  # 884x498, 90 frames; fps=-1 below keeps all of them, so frame t is recorded frame t
TEMPLATE = np.array([  # COCO-17 positions inside a box (fractions of width, height) for boxes nobody recorded
    (0.5, 0.1), (0.45, 0.08), (0.55, 0.08), (0.4, 0.1), (0.6, 0.1), (0.3, 0.25), (0.7, 0.25), (0.25, 0.4),
    (0.75, 0.4), (0.2, 0.55), (0.8, 0.55), (0.4, 0.55), (0.6, 0.55), (0.4, 0.75), (0.6, 0.75), (0.4, 0.95),
    (0.6, 0.95),
])  # fmt: skip


def _scale(name: str, frames: np.ndarray) -> tuple[float, float]:
    """Frame pixels per recorded (source) pixel, x and y."""
    return frames.shape[2] / rec.recorded(name)["width"], frames.shape[1] / rec.recorded(name)["height"]


class RecordedDetector:
    """Test-only detector: the recorded person boxes of source frames `indices` in call order, scaled to the
    frames it is given."""

    def __init__(self, detections: list[np.ndarray], name: str = NAME, indices: list[int] | None = None) -> None:
        self.detections, self.name = detections, name
        self.indices = indices or list(range(len(detections)))
        self.next = 0

    def detect_all(self, frames: np.ndarray) -> list[np.ndarray]:
        sx, sy = _scale(self.name, frames)
        out = [self.detections[i] * [sx, sy, sx, sy, 1.0] for i in self.indices[self.next : self.next + len(frames)]]
        self.next += len(frames)
        return out

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return np.stack([largest_person(p, *frames.shape[1:3]) for p in self.detect_all(frames)])


def stand_in_keypoints(kps17: np.ndarray) -> np.ndarray:
    """(17, 3) COCO keypoints -> (133, 3) whole-body: body as given, 68 face points on a circle round the head."""
    kps = np.zeros((133, 3), np.float32)
    kps[:17] = kps17
    head = kps17[:5][kps17[:5, 2] >= 0.3]
    if len(head) >= 2:
        centre, radius = head[:, :2].mean(axis=0), max(np.ptp(head[:, 0]), np.ptp(head[:, 1]), 2.0)
        angle = np.linspace(0, 2 * np.pi, 68, endpoint=False)
        kps[23:91, 0] = centre[0] + radius * np.cos(angle)
        kps[23:91, 1] = centre[1] + radius * np.sin(angle)
        kps[23:91, 2] = head[:, 2].mean()
    return kps


class RecordedPose:
    """Stand-in for OnnxWholeBodyPose: the recorded keypoints of the recorded person whose box it is given (frames
    in call order); a box nobody recorded gets a stick figure inside it, the whole-image fallback nothing (-1)."""

    def __init__(self, name: str = NAME, indices: list[int] | None = None) -> None:
        self.name = name
        self.indices = indices or list(range(len(rec.detections(name))))
        self.next = 0

    def __call__(self, frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        sx, sy = _scale(self.name, frames)
        out = np.full((len(frames), 133, 3), -1.0, np.float32)
        out[..., 2] = 0.0
        for i, box in enumerate(boxes):
            t = self.indices[self.next + i]
            dets = rec.detections(self.name)[t] * [sx, sy, sx, sy, 1.0]
            ious = [box_iou(box, d) for d in dets]
            if ious and max(ious) > 0.95:
                kps17 = rec.keypoints(self.name)[t][int(np.argmax(ious))] * [sx, sy, 1.0]
            elif box[4] > 0:
                x1, y1, x2, y2 = box[:4]
                kps17 = np.concatenate([TEMPLATE * [x2 - x1, y2 - y1] + [x1, y1], np.full((17, 1), 0.9)], axis=1)
            else:
                continue
            out[i] = stand_in_keypoints(kps17.astype(np.float32))
        self.next += len(frames)
        return out


class LargestPerFrame:
    """The same models behind the pre-tracking interface (frames -> poses): the official per-frame choice."""

    def __init__(self, estimator: WholeBodyPoseEstimator) -> None:
        self.estimator = estimator

    def __call__(self, frames: np.ndarray):
        return self.estimator(frames)


def _models(detections: list[np.ndarray] | None = None, tracked: bool = True, segmenter=None) -> PreprocessModels:
    estimator = WholeBodyPoseEstimator(RecordedDetector(detections or rec.detections(NAME)), RecordedPose())
    return PreprocessModels(estimator if tracked else LargestPerFrame(estimator), segmenter)


def _run(models: PreprocessModels, **options):
    opts = PreprocessOptions(**{"resolution_width": 256, "resolution_height": 256, "fps": -1, **options})
    return preprocess(fixture_path(NAME), fixture_path(REFERENCE), opts, models)


def _skeleton_x(pose_frames: np.ndarray, left: int, width: int) -> np.ndarray:
    """(T,) mean x of the drawn skeleton pixels, as a fraction of the drawn video width (NaN: nothing drawn)."""
    xs = [np.nonzero(f.max(axis=2) > 30)[1] for f in pose_frames]
    return np.array([(x.mean() - left) / width if x.size else np.nan for x in xs])


def _inside(points: np.ndarray, box: np.ndarray, margin: float = 4.0) -> np.ndarray:
    return (points[:, 0] >= box[0] - margin) & (points[:, 0] <= box[2] + margin) & \
        (points[:, 1] >= box[1] - margin) & (points[:, 1] <= box[3] + margin)  # fmt: skip


def _boxes_of(person: str, frame: int, scale: float = 1.0) -> list[np.ndarray]:
    return [d[:4] * scale for d in rec.detections(NAME)[frame] if rec.who(NAME, frame, d) == person]


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return vdec.read_frames(fixture_path(NAME), list(range(90)))


def test_animation_skeleton_and_faces_follow_the_walker(frames):
    tracked = _run(_models())
    official = _run(_models(tracked=False))
    # 884x498 letterboxed into 256x256: 256 wide from x 0
    xs, official_xs = _skeleton_x(tracked.pose_frames, 0, 256), _skeleton_x(official.pose_frames, 0, 256)
    assert np.abs(np.diff(official_xs)).max() > 0.3  # the per-frame largest person jumps between the two
    assert np.abs(np.diff(xs)).max() < 0.05
    for t in range(90):  # every skeleton sits on the walker, every face crop is the walker's
        walker = _boxes_of("walker", t, 256 / 884)[0]
        assert walker[0] - 4 <= xs[t] * 256 <= walker[2] + 4
        kps = rec.keypoints(NAME)[t][[rec.who(NAME, t, d) == "walker" for d in rec.detections(NAME)[t]]][0]
        meta = wholebody_to_pose_meta(stand_in_keypoints(kps), 884, 498)
        np.testing.assert_array_equal(tracked.face_frames[t], crop_face(frames[t], face_box(meta, 498, 884)))


@pytest.mark.parametrize("person", ["0", "370,60"])  # by index, by a point on the man on the box (source px)
def test_replacement_picks_the_other_person_masks_and_skeleton_follow(monkeypatch, person):
    seen = {}

    def person_masks(frames, poses, segmenter, should_cancel=None, out=None):
        seen["poses"] = poses
        out[:] = np.ones(frames.shape[:3], np.uint8)
        return out

    module = types.ModuleType("wan_animate.preprocess.masks")
    module.person_masks = person_masks
    module.refine_masks = lambda masks, **kw: masks
    module.remove_person = lambda frames, masks: np.asarray(frames) * (1 - np.asarray(masks)[..., None])
    monkeypatch.setitem(sys.modules, "wan_animate.preprocess.masks", module)
    cond = _run(_models(segmenter="sam2"), mode="replacement", person=person)
    assert cond.pose_frames.shape == (90, 192, 336, 3)  # frames resized: 884x498 -> 336x192
    scale = 336 / 884
    clicked = 0
    for t, pose in enumerate(seen["poses"]):
        points = pose.body[pose.body[:, 2] >= 0.5, :2]
        if not len(points):
            continue
        clicked += 1
        assert any(_inside(points, box).mean() > 0.9 for box in _boxes_of("jumper", t, scale)), t
        ys, xs = np.nonzero(cond.pose_frames[t].max(axis=2) > 30)
        drawn = np.stack([xs, ys], axis=1)
        assert any(_inside(drawn, box, 8).mean() > 0.9 for box in _boxes_of("jumper", t, scale)), t
    assert clicked == 82  # the man is detected in frames 0-81; in 82-89 only the walker is: no clicks there
    for t in range(82, 90):  # the man is absent: his last pose and face crop are kept, not the walker's
        np.testing.assert_array_equal(cond.pose_frames[t], cond.pose_frames[81])
        np.testing.assert_array_equal(cond.face_frames[t], cond.face_frames[81])


def test_index_beyond_the_people_found():
    with pytest.raises(InputError) as err:
        _run(_models(), person="5")
    assert (err.value.code, err.value.field) == ("person_not_found", "person")
    assert "2 people were found" in err.value.message


def test_bad_person_fails_before_decoding():
    models = _models()
    with pytest.raises(InputError) as err:
        _run(models, person="the tall one")
    assert (err.value.code, err.value.field) == ("invalid_person", "person")
    assert models.pose_estimator.detector.next == 0


@pytest.mark.parametrize("person", ["walker", "jumper"])
def test_one_person_video_gives_the_official_output(person):
    """The recorded detections with the other person removed (the man keeps his second, upper-body box and has 8
    frames where nobody is detected): tracked output == per-frame largest person, array for array."""
    detections = rec.only(NAME, person)
    tracked = _run(_models(detections))
    official = _run(_models(detections, tracked=False))
    np.testing.assert_array_equal(tracked.pose_frames, official.pose_frames)
    np.testing.assert_array_equal(tracked.face_frames, official.face_frames)
    assert np.asarray(tracked.pose_frames).max() > 0  # drawn: preprocess() gives a SkeletonVideo


def test_person_input_in_the_schema_and_options():
    inference = import_app_module("inference")
    request_options = import_app_module("request_options")
    files = {"driving_video": {"path": "/tmp/driving.mp4"}, "reference_image": {"path": "/tmp/ref.png"}}
    assert inference.AppInput(**files).person == "auto"
    assert inference.AppInput(**files, person=1).person == "1"  # an integer in the JSON works too
    assert request_options.preprocess_options(inference.AppInput(**files, person=" 10,20 ")).person == "10,20"
    with pytest.raises(ValidationError, match="person"):
        inference.AppInput(**files, person="tallest")
    schema = inference.AppInput.model_json_schema()["properties"]["person"]
    assert schema["type"] == "string" and schema["default"] == "auto" and "left to right" in schema["description"]


def test_onnx_detector_gives_every_person_and_the_estimator_runs_the_tracked_path(tmp_path):
    """The released-model classes (tiny graphs): detect_all = every person in NMS order, no other class;
    __call__ = the official largest; WholeBodyPoseEstimator's detect_people/estimate drive preprocess()."""
    from wan_animate.preprocess.detection import OnnxPersonDetector
    from wan_animate.preprocess.pose import OnnxWholeBodyPose
    from wan_animate.preprocess.smoke_models import write_detector, write_vitpose

    rows = np.array([[320, 64, 576, 640, 0.9, 0], [0, 0, 50, 50, 0.8, 2], [64, 128, 256, 640, 0.7, 0]], np.float32)
    detector = OnnxPersonDetector(write_detector(tmp_path / "det.onnx", rows), providers=["CPUExecutionProvider"])
    frames = np.zeros((2, 480, 640, 3), np.uint8)
    people = detector.detect_all(frames)
    assert len(people) == 2
    np.testing.assert_allclose(people[0], [[320, 48, 576, 480, 0.9], [64, 96, 256, 480, 0.7]], rtol=1e-6)
    np.testing.assert_array_equal(detector(frames), [people[0][0]] * 2)
    weight = np.zeros((133, 3))
    weight[:, 2] = 1.0
    pose = OnnxWholeBodyPose(write_vitpose(tmp_path / "pose", weight), providers=["CPUExecutionProvider"])
    estimator = WholeBodyPoseEstimator(detector, pose)
    metas = estimator.estimate(frames, people[0][1:2].repeat(2, axis=0))
    assert [m.person_box[0] for m in metas] == [64, 64]
    calls = []
    estimator.detect_people = lambda f: calls.append(("detect", len(f))) or detector.detect_all(f)
    estimator.estimate = lambda f, b: calls.append(("estimate", b[:, 0].tolist())) or metas[:1] * len(f)
    with pytest.raises(InputError) as err:  # the tiny pose model finds no face: what matters here is the calls
        _run(PreprocessModels(estimator), fps=2, person="0")
    assert err.value.code == "no_face_in_video"
    assert calls == [("detect", 6), ("estimate", [int(64 * 884 / 640)] * 6)]  # index 0: the left person, all frames


def _ffmpeg_frames(path, width: int, height: int) -> np.ndarray:
    """Every frame, resized, decoded by imageio-ffmpeg's ffmpeg (decord cannot read this VP9 file yet)."""
    import subprocess

    raw = subprocess.run([vio.ffmpeg_exe(), "-v", "error", "-i", str(path), "-vf", f"scale={width}:{height}",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout  # fmt: skip
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


@pytest.fixture(scope="module")
def walk_frames() -> np.ndarray:
    return _ffmpeg_frames(fixture_path(rec.WALK), 884, 498)  # half size: the recorded boxes are scaled to it


@pytest.mark.parametrize(("person", "expected"), [("auto", "jumper"), ("1", "walker")])
def test_walk_video_skeleton_stays_on_one_person(monkeypatch, walk_frames, person, expected):
    """The 7.7 s walk fixture at 10 fps: she crosses under him, he jumps off the box and lands right of the middle,
    she leaves on the left; the skeleton stays on the chosen one while the per-frame largest person jumps."""
    from wan_animate.preprocess import driving_pass

    assert len(walk_frames) == len(rec.detections(rec.WALK)) == 230

    def iter_frames(path, indices, chunk=32, **kwargs):
        for start in range(0, len(indices), chunk):
            yield walk_frames[list(indices[start : start + chunk])]

    monkeypatch.setattr(driving_pass, "iter_frames", iter_frames)
    info = vdec.probe_video(fixture_path(rec.WALK))
    indices = vio.frame_indices_for_fps(vio.official_frame_count(info), info.fps, 10)
    opts = PreprocessOptions(resolution_width=256, resolution_height=256, fps=10, person=person)

    def run(tracked: bool):
        pose = WholeBodyPoseEstimator(RecordedDetector(rec.detections(rec.WALK), rec.WALK, indices),
                                      RecordedPose(rec.WALK, indices))  # fmt: skip
        models = PreprocessModels(pose if tracked else LargestPerFrame(pose))
        return preprocess(fixture_path(rec.WALK), fixture_path(REFERENCE), opts, models)

    xs = _skeleton_x(run(True).pose_frames, 0, 256)  # 884x498 letterboxed into 256x256: 256 wide from x 0
    assert np.isfinite(xs).sum() > 60  # she leaves at the left edge: her last poses there draw nothing
    assert np.nanmax(np.abs(np.diff(xs))) < 0.06
    if person == "auto":
        assert np.abs(np.diff(_skeleton_x(run(False).pose_frames, 0, 256))).max() > 0.3
    checked = 0
    for k, t in enumerate(indices):  # frames where both are seen and they do not overlap horizontally
        dets = rec.detections(rec.WALK)[t]
        mine = [d[:4] * 256 / 1768 for d in dets if rec.who(rec.WALK, t, d) == expected]
        other = [d[:4] * 256 / 1768 for d in dets if rec.who(rec.WALK, t, d) not in (expected, "?")]
        if np.isfinite(xs[k]) and mine and other and all(o[0] > m[2] or o[2] < m[0] for m in mine for o in other):
            assert any(m[0] - 4 <= xs[k] * 256 <= m[2] + 4 for m in mine), (k, t)
            checked += 1
    assert checked > 30
