"""tracking: one performer followed through the real two-person fixtures (recorded YOLO11n-pose detections, see
tests/recorded_people.py), the `person` input, and the official largest-person box wherever one person is seen."""

from __future__ import annotations

import numpy as np
import pytest
import recorded_people as rec
from wan_animate.errors import InputError
from wan_animate.preprocess import person_choice as pc
from wan_animate.preprocess import tracking as trk
from wan_animate.preprocess.detection import largest_person

FPS = 30.0  # the fixtures' frame rate (all frames recorded)


def _centres(name: str, boxes: np.ndarray, statuses: list[str]) -> np.ndarray:
    """Box centre x as a fraction of the frame width, for the frames where the performer has a box."""
    keep = [s in ("detected", "interpolated") for s in statuses]
    return (boxes[keep, 0] + boxes[keep, 2]) / 2 / rec.recorded(name)["width"]


def _labels(name: str, boxes: np.ndarray, statuses: list[str]) -> set[str]:
    return {rec.who(name, t, b) for t, (b, s) in enumerate(zip(boxes, statuses, strict=True)) if s == "detected"}


@pytest.mark.parametrize("name", [rec.SMALL, rec.WALK])
def test_largest_person_per_frame_jumps_between_the_two(name):
    """The official rule on the same detections: the chosen box's centre jumps across the frame."""
    width, height = rec.recorded(name)["width"], rec.recorded(name)["height"]
    boxes = [largest_person(d, height, width) for d in rec.detections(name)]
    picked = [(t, b) for t, b in enumerate(boxes) if b[4] > 0]
    shifts = [
        abs((a[0] + a[2]) - (b[0] + b[2])) / 2 / width for (_, a), (_, b) in zip(picked, picked[1:], strict=False)
    ]
    assert max(shifts) > 0.3
    assert {rec.who(name, t, b) for t, b in picked} >= {"walker", "jumper"}


@pytest.mark.parametrize(("name", "expected"), [(rec.SMALL, "walker"), (rec.WALK, "jumper")])
def test_auto_follows_the_most_prominent_person_without_jumps(name, expected):
    boxes, statuses = trk.performer_boxes(rec.detections(name), pc.PersonChoice(), FPS)
    assert np.abs(np.diff(_centres(name, boxes, statuses))).max() < 0.03  # the official rule: > 0.3
    assert _labels(name, boxes, statuses) <= {expected, "?"}
    assert statuses.count("detected") > 0.8 * len(statuses)


@pytest.mark.parametrize(("name", "index", "expected"),
                         [(rec.SMALL, 0, "jumper"), (rec.SMALL, 1, "walker"), (rec.WALK, 0, "jumper"),
                          (rec.WALK, 1, "walker")])  # fmt: skip
def test_index_picks_left_to_right_and_follows_that_person(name, index, expected):
    # first frame where both are seen: the man on the box is left of the walker in both videos
    boxes, statuses = trk.performer_boxes(rec.detections(name), pc.PersonChoice("index", index), FPS)
    assert _labels(name, boxes, statuses) <= {expected, "?"} and expected in _labels(name, boxes, statuses)
    assert np.abs(np.diff(_centres(name, boxes, statuses))).max() < 0.05


def test_the_walker_is_followed_while_she_crosses_in_front_of_the_box():
    """Walk video, frames 120-150: her box passes under and across the man's (horizontal centres cross)."""
    boxes, statuses = trk.performer_boxes(rec.detections(rec.WALK), pc.PersonChoice("index", 1), FPS)
    jumper, _ = trk.performer_boxes(rec.detections(rec.WALK), pc.PersonChoice("index", 0), FPS)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    jx = (jumper[:, 0] + jumper[:, 2]) / 2
    assert cx[120] > jx[120] + 50 and cx[150] < jx[140] - 200  # they do cross
    assert all(rec.who(rec.WALK, t, boxes[t]) == "walker" for t in range(37, 141) if statuses[t] == "detected")
    assert all(s == "detected" for s in statuses[37:141])


def test_point_and_box_pick_the_person_there():
    name = rec.SMALL
    first = rec.detections(name)[0]
    jumper = next(d for d in first if rec.who(name, 0, d) == "jumper" and d[3] - d[1] > 150)
    x, y = (jumper[0] + jumper[2]) / 2, (jumper[1] + jumper[3]) / 2
    for choice in (pc.PersonChoice("point", coords=(x, y)), pc.PersonChoice("box", coords=tuple(jumper[:4]))):
        boxes, statuses = trk.performer_boxes(rec.detections(name), choice, FPS)
        assert _labels(name, boxes, statuses) == {"jumper"}
        assert np.abs(np.diff(_centres(name, boxes, statuses))).max() < 0.05
    with pytest.raises(InputError) as err:
        trk.performer_boxes(rec.detections(name), pc.PersonChoice("point", coords=(5.0, 5.0)), FPS)
    assert (err.value.code, err.value.field) == ("person_not_found", "person")


def test_index_beyond_the_people_found_says_how_many():
    with pytest.raises(InputError) as err:
        trk.performer_boxes(rec.detections(rec.SMALL), pc.PersonChoice("index", 2), FPS)
    assert (err.value.code, err.value.field) == ("person_not_found", "person")
    assert "2 people were found" in err.value.message and "0 to 1" in err.value.message


def test_a_second_box_on_the_same_person_is_not_a_person():
    """The man's upper body is detected on its own in 21 frames of the small video: still two people."""
    tracks = trk.link_tracks(rec.detections(rec.SMALL), FPS)
    assert len([tr for tr in tracks if len(tr.frames) >= 9]) == 3
    assert len(trk.people(tracks, 90)) == 2


@pytest.mark.parametrize(("name", "person"), [(rec.SMALL, "walker"), (rec.SMALL, "jumper"), (rec.WALK, "walker"),
                                              (rec.WALK, "jumper")])  # fmt: skip
def test_one_person_gets_the_official_largest_person_box_in_every_frame(name, person):
    """Real detections of one person (the other removed; the man's second, upper-body boxes kept): every frame with
    one detection gets exactly the official choice. Where no frame shows two boxes side by side (all but the
    jumper of the walk video, whose crouch at frame 225 gives three), every frame gets the official choice,
    frames with nobody the official whole-frame fallback (score -1)."""
    width, height = rec.recorded(name)["width"], rec.recorded(name)["height"]
    dets = rec.only(name, person)
    boxes, statuses = trk.performer_boxes(dets, pc.PersonChoice(), FPS)
    single = [t for t, d in enumerate(dets) if len(d) == 1]
    assert len(single) > 0.4 * len(dets)
    for t in single:
        np.testing.assert_array_equal(boxes[t], largest_person(dets[t], height, width))
    if (name, person) == (rec.WALK, "jumper"):
        assert not trk.one_in_view(dets[225])
        return
    assert all(trk.one_in_view(d) for d in dets)
    for t, d in enumerate(dets):
        if len(d):
            np.testing.assert_array_equal(boxes[t], largest_person(d, height, width))
        else:
            assert statuses[t] == "nobody" and boxes[t][4] == -1


def test_single_person_frames_of_the_two_person_video_match_the_official_choice():
    """Only the frames where the detector saw one person, in order: the largest-person box each time."""
    name = rec.WALK
    dets = [d for d in rec.detections(name) if len(d) == 1]
    boxes, statuses = trk.performer_boxes(dets, pc.PersonChoice(), FPS)
    assert statuses == ["detected"] * len(dets)
    np.testing.assert_array_equal(boxes, np.concatenate(dets))


def test_short_misses_are_bridged_by_the_same_track():
    name = rec.SMALL
    dets = rec.detections(name)
    for t in range(30, 36):  # the walker missed for six frames
        dets[t] = dets[t][[rec.who(name, t, d) != "walker" for d in dets[t]]]
    boxes, statuses = trk.performer_boxes(dets, pc.PersonChoice(), FPS)
    assert statuses[30:36] == ["interpolated"] * 6 and _labels(name, boxes, statuses) == {"walker"}
    assert np.abs(np.diff(_centres(name, boxes, statuses))).max() < 0.03


@pytest.mark.parametrize("hidden", [range(23, 27), range(18, 28)])
def test_crossing_people_of_the_same_size_keep_their_identity(hidden):
    """Two equal boxes moving towards each other and crossing: one missed while they overlap, or both missed
    while they cross (they come back on the other's side, where a tracker without motion would swap them)."""
    frames = []
    for t in range(40):
        a = np.array([100 + 10 * t, 100, 200 + 10 * t, 400, 0.9])
        b = np.array([600 - 10 * t, 110, 700 - 10 * t, 410, 0.8])
        if t not in hidden:
            frames.append(np.stack([a, b]))
        else:
            frames.append(b[None] if len(hidden) < 5 else np.zeros((0, 5)))
    tracks = trk.link_tracks(frames, FPS)
    assert len(tracks) == 2
    for tr in tracks:
        steps = np.diff([trk.box_centre(b)[0] for b in tr.boxes])
        assert (steps > 0).all() or (steps < 0).all()


def test_a_performer_who_leaves_and_comes_back_alone_is_followed_again():
    """Two people side by side for 1 s, nobody for 3 s, then one person alone: a new track (the gap is over
    MAX_GAP_SECONDS) that shares no frame with anyone else, so it is the performer again, not an absence."""
    a = np.array([100.0, 100, 200, 400, 0.9])
    b = np.array([500.0, 100, 600, 400, 0.8])
    frames = [np.stack([a, b])] * 30 + [np.zeros((0, 5))] * 90 + [(a + [20, 0, 20, 0, 0])[None]] * 30
    boxes, statuses = trk.performer_boxes(frames, pc.PersonChoice("index", 0), FPS)
    assert statuses[:30] == ["detected"] * 30 and statuses[120:] == ["detected"] * 30
    assert statuses[30:120] == ["absent"] * 90  # gap too long to interpolate: the nearest pose is used there
    np.testing.assert_array_equal(boxes[125], a + [20, 0, 20, 0, 0])
    other, other_statuses = trk.performer_boxes(frames, pc.PersonChoice("index", 1), FPS)
    assert other_statuses[120:] == ["absent"] * 30  # the one who comes back is not the other person


@pytest.mark.parametrize("fps", [5, 10, 15, 24])
@pytest.mark.parametrize("name", [rec.SMALL, rec.WALK])
def test_two_people_at_every_frame_rate_and_each_followed(name, fps):
    """The pipeline tracks at the output rate: the recorded frames resampled to 5-24 fps still give two people,
    and auto / index 0 / index 1 each stay on one of them without jumps."""
    idx = [int(i * FPS / fps) for i in range(int(len(rec.detections(name)) * fps / FPS))]
    dets = [rec.detections(name)[i] for i in idx]
    assert len(trk.people(trk.link_tracks(dets, fps), len(dets), fps)) == 2
    auto = "walker" if name == rec.SMALL else "jumper"
    for choice, expected in ((pc.PersonChoice(), auto), (pc.PersonChoice("index", 0), "jumper"),
                             (pc.PersonChoice("index", 1), "walker")):  # fmt: skip
        boxes, statuses = trk.performer_boxes(dets, choice, fps)
        labels = {rec.who(name, t, boxes[k]) for k, t in enumerate(idx) if statuses[k] == "detected"}
        assert labels - {"?"} == {expected}, (choice, labels)
        assert np.abs(np.diff(_centres(name, boxes, statuses))).max() < 0.08


# ---------------------------------------------------------------------------------------------------
# link_tracks, one array pass per frame, against the pair-by-pair rule it replaced


def _scalar_cost(last: np.ndarray, velocity: np.ndarray, last_frame: int, frame: int, det: np.ndarray) -> float | None:
    """The rule pair by pair (the tracker's code before it computed a frame's pairs as one array)."""
    pred = last[:4] + velocity * min(frame - last_frame, max(1, round(trk.MAX_EXTRAPOLATION_SECONDS * FPS)))
    misses = frame - last_frame - 1
    pred_h, det_h = max(pred[3] - pred[1], 1.0), max(det[3] - det[1], 1.0)
    size = abs(np.log(det_h / pred_h))
    if size > np.log(trk.MAX_SIZE_RATIO):
        return None
    iou = trk.box_iou(pred, det)
    shift = float(np.linalg.norm(trk.box_centre(pred) - trk.box_centre(det))) / max(pred_h, det_h)
    if iou < trk.MIN_IOU and shift > trk.MAX_CENTRE_SHIFT + trk.MISS_SHIFT_PER_SECOND * misses / FPS:
        return None
    return (1.0 - iou) + shift + size + trk.MISS_COST_PER_SECOND * misses / FPS


def _scalar_link_tracks(detections: list[np.ndarray]) -> list[trk.Track]:
    tracks: list[trk.Track] = []
    live: list[int] = []
    for t, dets in enumerate(detections):
        live = [k for k in live if t - tracks[k].frames[-1] - 1 <= trk.max_gap_frames(FPS)]
        pairs = []
        for k in live:
            tr = tracks[k]
            for j, det in enumerate(dets):
                cost = _scalar_cost(tr.boxes[-1], tr.velocity, tr.frames[-1], t, det)
                if cost is not None:
                    pairs.append((cost, k, j))
        used_tracks, used_dets = set(), set()
        for _, k, j in sorted(pairs):
            if k not in used_tracks and j not in used_dets:
                tracks[k].add(t, dets[j])
                used_tracks.add(k)
                used_dets.add(j)
        for j, det in enumerate(dets):
            if j not in used_dets:
                tracks.append(trk.Track())
                tracks[-1].add(t, det)
                live.append(len(tracks) - 1)
    return tracks


def _crowd(people: int, frames: int, seed: int = 0) -> list[np.ndarray]:
    """`people` boxes walking with jitter across a 1280x720 frame, each missed in ~20% of frames, order shuffled:
    crowded enough that tracks compete for boxes, break and restart."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform([50, 200], [1230, 600], size=(people, 2))
    speed = rng.normal(0, 10, size=(people, 2))
    height = rng.uniform(120, 400, size=people)
    out = []
    for _ in range(frames):
        centre += speed + rng.normal(0, 8, size=(people, 2))
        h = height * rng.uniform(0.95, 1.05, size=people)
        boxes = np.column_stack([centre[:, 0] - h / 5, centre[:, 1] - h / 2, centre[:, 0] + h / 5, centre[:, 1] + h / 2,
                                 rng.uniform(0.3, 0.9, size=people)])  # fmt: skip
        seen = rng.random(people) > 0.2
        out.append(rng.permutation(boxes[seen]))
    return out


@pytest.mark.parametrize("case", ["small", "walk", "crowd"])
def test_link_tracks_equals_the_pair_by_pair_rule(case):
    """Same tracks (frames and boxes) as the pair-by-pair tracker, on both real recordings and a 60-person crowd
    (3,600 pairs a frame, the load that made the pair-by-pair loop take ~40 s for 10 s of video)."""
    detections = {"small": lambda: rec.detections(rec.SMALL), "walk": lambda: rec.detections(rec.WALK),
                  "crowd": lambda: _crowd(60, 60)}[case]()  # fmt: skip
    got, want = trk.link_tracks(detections, FPS), _scalar_link_tracks(detections)
    assert len(got) == len(want) and len(want) > 1
    for a, b in zip(got, want, strict=True):
        assert a.frames == b.frames
        np.testing.assert_array_equal(np.array(a.boxes), np.array(b.boxes))


def test_match_costs_refuses_what_the_gates_refuse():
    """A box three times taller is refused whatever it overlaps; a far box with no overlap is refused; a box on the
    prediction costs only its miss time."""
    pred = np.array([[100.0, 100.0, 200.0, 400.0]])
    dets = np.array([[100.0, 100.0, 200.0, 400.0], [100.0, 0.0, 200.0, 1000.0], [900.0, 100.0, 1000.0, 400.0]])
    cost = trk.match_costs(pred, np.array([3.0]), dets, FPS)
    assert cost[0, 0] == pytest.approx(trk.MISS_COST_PER_SECOND * 3 / FPS)
    assert np.isinf(cost[0, 1]) and np.isinf(cost[0, 2])


def _scalar_join_distance(track: trk.Track, person: trk.Track, fps: float) -> float | None:
    """The shared-frame test frame by frame (the tracker's code before it took a pair's shared frames as arrays)."""
    shared = [f for f in track.frames if f in person.by_frame]
    if shared:
        same = sum(trk.same_place(track.box_at(f), person.box_at(f)) for f in shared)
        return 0.0 if same >= trk.SAME_PLACE_FRACTION * len(shared) else None
    return _array_join_distance(track, person, fps)  # no shared frame: the unchanged end-to-end gate


_array_join_distance = trk._join_distance


@pytest.mark.parametrize("case", ["small", "walk", "crowd"])
def test_people_equal_the_frame_by_frame_shared_test(case, monkeypatch):
    """Same people (frames and boxes) when the shared frames' `same_place` runs frame by frame, on both recordings
    and a crowd in which half the people also get a second box (their box with its bottom edge moved up)."""
    if case == "crowd":
        frames = _crowd(30, 90)
        detections = [np.concatenate([d, d[: len(d) // 2] * [1, 1, 1, 0.9, 1]]) for d in frames]
    else:
        detections = rec.detections(rec.SMALL if case == "small" else rec.WALK)
    tracks = trk.link_tracks(detections, FPS)
    got = trk.people(tracks, len(detections), FPS)
    monkeypatch.setattr(trk, "_join_distance", _scalar_join_distance)
    want = trk.people(tracks, len(detections), FPS)
    assert len(got) == len(want) > 1
    for a, b in zip(got, want, strict=True):
        assert a.frames == b.frames
        np.testing.assert_array_equal(np.array(a.boxes), np.array(b.boxes))


def test_track_arrays_follow_the_track_as_it_grows():
    """`Track.arrays` is built once per length: a box added after a look-up is in the next look-up."""
    track = trk.Track()
    track.add(0, np.array([0.0, 0.0, 10.0, 20.0, 0.9]))
    frames, boxes = track.arrays()
    assert track.arrays()[0] is frames  # the same arrays while the track is unchanged
    track.add(3, np.array([1.0, 0.0, 11.0, 20.0, 0.8]))
    frames, boxes = track.arrays()
    assert frames.tolist() == [0, 3]
    np.testing.assert_array_equal(boxes, np.array(track.boxes))
