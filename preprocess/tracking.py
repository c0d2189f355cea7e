"""One performer through a multi-person driving video: person boxes linked into tracks, one person chosen.

Not in the official pipeline, which takes the largest detected person in each frame independently, so in a video
with two people the skeleton can jump from one to the other between frames. Here the detector's person boxes of
the WHOLE video are linked into tracks first (box IoU, centre distance and size against a constant-velocity
prediction; tracks survive misses of up to MAX_GAP_SECONDS), tracks are grouped into people (`people`: a second
box on someone, or someone leaving and coming back as a new track, joins them), then one person is the performer
for every frame:

- "auto": the most prominent person, the largest sum over their frames of box area x detection score;
- an index: the people seen in at least MIN_PERSON_FRACTION of the frames, numbered left to right by box centre
  on the first frame where all of them are visible (by mean centre when they never all are);
- a point "x,y" or a box "x1,y1,x2,y2" in source pixels: the person whose box holds the point (the smallest box
  when several do) / overlaps the box most, on the first frame where one does.

A video in which no frame shows two people side by side (every frame has one box, or boxes on one place such as
a second box on someone's upper body: `one_in_view`) keeps the official choice in every frame, so a single-person
video gives the official output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..errors import InputError
from .detection import largest_person
from .person_choice import PERSON_FIELD, PersonChoice

MIN_PERSON_FRACTION = 0.1  # a track detected in fewer frames than this fraction is not counted as a person
MIN_IOU = 0.2  # a detection overlapping a track's predicted box this much may join it...
MAX_CENTRE_SHIFT = 0.6  # ...or one whose centre is within this many predicted box heights...
MISS_SHIFT_PER_SECOND = 1.5  # ...plus this many per second the track was missed
MAX_EXTRAPOLATION_SECONDS = 0.5  # a missed track's box moves on at its last velocity for at most this long
MAX_GAP_SECONDS = 2.0  # a track missed for longer than this ends; shorter gaps in the performer are interpolated
PART_OVERLAP = 0.7  # a box with this fraction of its area inside another person's box is part of that person
DUPLICATE_IOU = 0.5  # two boxes overlapping this much in one frame are one person (the official NMS IoU)
SAME_PLACE_FRACTION = 0.8  # a track on one person in this fraction of the frames both are in is a second box on them
MAX_SIZE_RATIO = 3.0  # box heights of a track and a detection joining it differ by at most this factor
MISS_COST_PER_SECOND = 1.0  # added to the matching cost per second a track was missed: recent tracks first
VELOCITY_SMOOTHING = 0.5  # weight of the newest velocity estimate in the running one
POINT_BOX_MIN_IOU = 0.3  # a box given as `person` must overlap a person's box this much

FrameStatus = Literal["detected", "interpolated", "nobody", "absent"]


# ---------------------------------------------------------------------------------------------------
# tracks


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boxes x1, y1, x2, y2 (extra columns ignored)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def box_centre(box: np.ndarray) -> np.ndarray:
    """(2,) centre x, y of a box x1, y1, x2, y2."""
    return np.array([(box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0])


@dataclass
class Track:
    """One person followed over frames: the detector's own boxes (5,) x1, y1, x2, y2, score where it was found."""

    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))  # per frame, of x1, y1, x2, y2
    by_frame: dict[int, np.ndarray] = field(default_factory=dict)  # frame -> box, for look-ups
    _arrays: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def add(self, frame: int, box: np.ndarray) -> None:
        if self.frames:
            step = (box[:4] - self.boxes[-1][:4]) / (frame - self.frames[-1])
            smoothing = VELOCITY_SMOOTHING if len(self.frames) > 1 else 1.0
            self.velocity = smoothing * step + (1 - smoothing) * self.velocity
        self.frames.append(frame)
        self.boxes.append(np.asarray(box[:5], dtype=np.float64))
        self.by_frame[frame] = self.boxes[-1]

    @property
    def prominence(self) -> float:
        """Sum over the track's frames of box area x detection score: how much of the clip this person fills."""
        return float(sum((b[2] - b[0]) * (b[3] - b[1]) * b[4] for b in self.boxes))

    def box_at(self, frame: int) -> np.ndarray | None:
        return self.by_frame.get(frame)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(N,) frames and (N, 5) boxes as arrays, built once per length (a track only ever grows by appending)."""
        if self._arrays is None or len(self._arrays[0]) != len(self.frames):
            self._arrays = (np.asarray(self.frames), np.asarray(self.boxes))
        return self._arrays


def max_gap_frames(fps: float) -> int:
    """MAX_GAP_SECONDS in frames at `fps` (at least one)."""
    return max(1, round(MAX_GAP_SECONDS * fps))


def overlaps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersection area, area of a, area of b for boxes x1, y1, x2, y2 in the last axis, broadcast against each
    other (pairs a[i], b[i], or every pair of (K, 1, 4) against (1, M, 4)); the array form of `box_iou`'s parts."""
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter, area_a, area_b


def _ratio(inter: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """inter / whole where both are positive, else 0 (as the scalar box_iou / inside_fraction)."""
    return np.divide(inter, whole, out=np.zeros_like(inter), where=(inter > 0) & (whole > 0))


def _predicted_boxes(tracks: list[Track], frame: int, horizon: int) -> np.ndarray:
    """(K, 4) constant-velocity guesses of the tracks' boxes at `frame`, each moved on for at most `horizon` frames."""
    last = np.array([track.boxes[-1][:4] for track in tracks])  # (K, 4)
    velocity = np.array([track.velocity for track in tracks])  # (K, 4)
    steps = np.minimum(frame - np.array([track.frames[-1] for track in tracks]), horizon)  # (K,)
    return last + velocity * steps[:, None]


def match_costs(pred: np.ndarray, misses: np.ndarray, dets: np.ndarray, fps: float) -> np.ndarray:
    """(K, M) cost of detection j joining track k (lower is better); inf where it is not plausibly the same person.

    pred: (K, 4) the tracks' predicted boxes; misses: (K,) frames each has gone unseen; dets: (M, >=4) boxes.
    The cost is (1 - IoU) + centre shift in box heights + |log height ratio| + MISS_COST_PER_SECOND per second
    missed; the gates: heights within MAX_SIZE_RATIO, and IoU >= MIN_IOU or a shift within MAX_CENTRE_SHIFT (+
    MISS_SHIFT_PER_SECOND per second missed). One array pass per frame: a crowd of 80 boxes is 6,400 pairs a frame.
    """
    p, d = pred[:, None, :4], dets[None, :, :4]  # (K, 1, 4), (1, M, 4)
    pred_h = np.maximum(p[..., 3] - p[..., 1], 1.0)  # (K, 1)
    det_h = np.maximum(d[..., 3] - d[..., 1], 1.0)  # (1, M)
    size = np.abs(np.log(det_h / pred_h))  # (K, M)
    inter, area_p, area_d = overlaps(p, d)  # (K, M), (K, 1), (1, M)
    iou = _ratio(inter, area_p + area_d - inter)
    dx = (p[..., 0] + p[..., 2]) / 2.0 - (d[..., 0] + d[..., 2]) / 2.0
    dy = (p[..., 1] + p[..., 3]) / 2.0 - (d[..., 1] + d[..., 3]) / 2.0
    shift = np.sqrt(dx * dx + dy * dy) / np.maximum(pred_h, det_h)
    missed_s = (misses / fps)[:, None]  # (K, 1)
    cost = (1.0 - iou) + shift + size + MISS_COST_PER_SECOND * missed_s
    too_far = (iou < MIN_IOU) & (shift > MAX_CENTRE_SHIFT + MISS_SHIFT_PER_SECOND * missed_s)
    refused = (size > math.log(MAX_SIZE_RATIO)) | too_far
    return np.where(refused, np.inf, cost)


def link_tracks(detections: list[np.ndarray], fps: float) -> list[Track]:
    """Per-frame person boxes [(M_t, 5) x1, y1, x2, y2, score] at `fps` -> tracks over the whole video.

    Each frame, every (track, detection) pair that passes the gates of `match_costs` is ranked by its cost, and
    pairs are taken best first (ties: older track, then earlier detection; each track and detection once).
    A detection left over starts a track; a track not seen for more than MAX_GAP_SECONDS ends.
    """
    max_gap = max_gap_frames(fps)
    horizon = max(1, round(MAX_EXTRAPOLATION_SECONDS * fps))
    tracks: list[Track] = []
    live: list[int] = []  # indices of the tracks not yet ended, oldest first
    for t, dets in enumerate(detections):
        live = [k for k in live if t - tracks[k].frames[-1] - 1 <= max_gap]
        used_dets = np.zeros(len(dets), dtype=bool)
        if live and len(dets):
            live_tracks = [tracks[k] for k in live]
            misses = np.array([t - track.frames[-1] - 1 for track in live_tracks], dtype=np.float64)
            cost = match_costs(_predicted_boxes(live_tracks, t, horizon), misses, np.asarray(dets), fps)  # (K, M)
            rows, cols = np.nonzero(np.isfinite(cost))
            used_rows = np.zeros(len(live), dtype=bool)
            matches_left = min(len(live), len(dets))
            for i in np.lexsort((cols, rows, cost[rows, cols])):  # by cost, then track, then detection
                r, j = rows[i], cols[i]
                if used_rows[r] or used_dets[j]:
                    continue
                live_tracks[r].add(t, dets[j])
                used_rows[r] = used_dets[j] = True
                matches_left -= 1
                if matches_left == 0:  # every track or every detection taken
                    break
        for j in np.flatnonzero(~used_dets):
            track = Track()
            track.add(t, dets[j])
            tracks.append(track)
            live.append(len(tracks) - 1)
    return tracks


def inside_fraction(inner: np.ndarray, outer: np.ndarray) -> float:
    """Fraction of box `inner`'s area that lies inside box `outer`."""
    iw = min(inner[2], outer[2]) - max(inner[0], outer[0])
    ih = min(inner[3], outer[3]) - max(inner[1], outer[1])
    area = (inner[2] - inner[0]) * (inner[3] - inner[1])
    return float(iw * ih / area) if iw > 0 and ih > 0 and area > 0 else 0.0


def same_place(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two boxes in one frame are on one person: IoU >= DUPLICATE_IOU (a duplicate NMS kept), or one has
    PART_OVERLAP of its area inside the other (e.g. a second box on someone's upper body)."""
    return box_iou(a, b) >= DUPLICATE_IOU or max(inside_fraction(a, b), inside_fraction(b, a)) >= PART_OVERLAP


def same_place_many(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) `same_place` of box pairs a[i], b[i] ((N, >=4) each), in one array pass."""
    inter, area_a, area_b = overlaps(a, b)  # (N,) each
    iou = _ratio(inter, area_a + area_b - inter)
    return (iou >= DUPLICATE_IOU) | (np.maximum(_ratio(inter, area_a), _ratio(inter, area_b)) >= PART_OVERLAP)


def _join_distance(track: Track, person: Track, fps: float) -> float | None:
    """How far `track` is from being `person` (0: a second box on them), or None when it cannot be them.

    It can be when, on at least SAME_PLACE_FRACTION of the frames both are in, their boxes are `same_place`
    (distance 0), or when they share no frame and the track starts (ends) within the tracking gate of where the
    person was last (next) seen: MAX_CENTRE_SHIFT + MISS_SHIFT_PER_SECOND per second apart (the distance in heights).
    """
    (track_frames, track_boxes), (person_frames, person_boxes) = track.arrays(), person.arrays()
    _, mine, theirs = np.intersect1d(track_frames, person_frames, assume_unique=True, return_indices=True)
    if len(mine):  # frames both are in
        same = int(same_place_many(track_boxes[mine], person_boxes[theirs]).sum())
        return 0.0 if same >= SAME_PLACE_FRACTION * len(mine) else None
    best = None
    before = [f for f in person.frames if f < track.frames[0]]
    after = [f for f in person.frames if f > track.frames[-1]]
    ends = [(track.boxes[0], before[-1], track.frames[0] - before[-1])] if before else []
    ends += [(track.boxes[-1], after[0], after[0] - track.frames[-1])] if after else []
    for own, frame, apart in ends:
        theirs = person.box_at(frame)
        distance = float(np.linalg.norm(box_centre(own) - box_centre(theirs))) / max(
            own[3] - own[1], theirs[3] - theirs[1], 1.0
        )
        if distance <= MAX_CENTRE_SHIFT + MISS_SHIFT_PER_SECOND * apart / fps and (best is None or distance < best):
            best = distance
    return best


def _joined(person: Track, track: Track) -> Track:
    """One track holding the frames of both; where both have a box the person's is kept."""
    out = Track()
    for frame in sorted(set(person.frames) | set(track.frames)):
        out.frames.append(frame)
        out.boxes.append(person.box_at(frame) if frame in person.by_frame else track.box_at(frame))
        out.by_frame[frame] = out.boxes[-1]
    return out


def people(tracks: list[Track], num_frames: int, fps: float = 30.0) -> list[Track]:
    """The people in the video, most prominent first, each one track or several joined.

    Tracks are visited most prominent first; each joins the nearest person found so far that it can be
    (`_join_distance`: a second box on them, or them after leaving and coming back), else it is a new person
    when seen in at least MIN_PERSON_FRACTION of the frames (else dropped). Never empty when `tracks` is not.
    """
    need = max(1, math.ceil(MIN_PERSON_FRACTION * num_frames))
    persons: list[Track] = []
    for tr in sorted(tracks, key=lambda tr: -tr.prominence):
        near = [(d, k) for k, p in enumerate(persons) if (d := _join_distance(tr, p, fps)) is not None]
        if near:
            k = min(near)[1]
            persons[k] = _joined(persons[k], tr)
        elif len(tr.frames) >= need:
            persons.append(tr)
    persons.sort(key=lambda p: -p.prominence)
    return persons or sorted(tracks, key=lambda tr: -tr.prominence)[:1]


def left_to_right(persons: list[Track]) -> list[Track]:
    """People ordered by box centre x on the first frame where all are visible (else by mean centre x)."""
    if not persons:
        return []
    common = set(persons[0].frames).intersection(*(tr.frames for tr in persons[1:]))
    if common:
        first = min(common)
        return sorted(persons, key=lambda tr: box_centre(tr.box_at(first))[0])
    return sorted(persons, key=lambda tr: float(np.mean([box_centre(b)[0] for b in tr.boxes])))


def _chosen_by_place(tracks: list[Track], num_frames: int, choice: PersonChoice) -> Track:
    """The track at a point (smallest box holding it) or box (largest IoU) on the first frame where there is one."""
    for t in range(num_frames):
        candidates = []
        for tr in tracks:
            box = tr.box_at(t)
            if box is None:
                continue
            if choice.kind == "point":
                x, y = choice.coords
                if box[0] <= x <= box[2] and box[1] <= y <= box[3]:
                    candidates.append(((box[2] - box[0]) * (box[3] - box[1]), tr))
            elif (iou := box_iou(np.asarray(choice.coords), box)) >= POINT_BOX_MIN_IOU:
                candidates.append((-iou, tr))
        if candidates:
            return min(candidates, key=lambda c: c[0])[1]
    raise InputError(
        "person_not_found", PERSON_FIELD,
        f"no detected person is at {choice.kind} {','.join(f'{v:g}' for v in choice.coords)} (in pixels of the "
        "driving video) in any frame; give a point on the person (or a box around them) as seen in the video, "
        'or use "auto"',
    )  # fmt: skip


def choose_track(tracks: list[Track], num_frames: int, choice: PersonChoice, fps: float = 30.0) -> Track | None:
    """The performer (`people`) for `choice` (coordinates already in the frames' pixels); None when nobody was found."""
    if not tracks:
        return None
    persons = people(tracks, num_frames, fps)
    if choice.kind == "auto":
        return persons[0]
    if choice.kind == "index":
        ordered = left_to_right(persons)
        if choice.index >= len(ordered):
            found = len(ordered)
            raise InputError(
                "person_not_found", PERSON_FIELD,
                f"asks for person {choice.index} but {found} {'person was' if found == 1 else 'people were'} found "
                f"in the driving video; use an index from 0 to {found - 1} (left to right) or \"auto\"",
            )  # fmt: skip
        return ordered[choice.index]
    return _chosen_by_place(persons, num_frames, choice)


def one_in_view(dets: np.ndarray) -> bool:
    """True when a frame's person boxes (M, 5) can all be one person: at most one, or each pair `same_place`."""
    return all(same_place(a, b) for i, a in enumerate(dets) for b in dets[i + 1 :])


def official_boxes(detections: list[np.ndarray]) -> tuple[np.ndarray, list[FrameStatus]]:
    """The official choice in every frame: the largest person (detection.largest_person), score -1 for nobody."""
    out = np.array([largest_person(d, 1, 1) if len(d) else [0.0, 0.0, 0.0, 0.0, -1.0] for d in detections])
    statuses: list[FrameStatus] = ["detected" if len(d) else "nobody" for d in detections]
    return out.reshape(-1, 5), statuses


def performer_boxes(detections: list[np.ndarray], choice: PersonChoice, fps: float
                    ) -> tuple[np.ndarray, list[FrameStatus]]:  # fmt: skip
    """Per-frame person boxes [(M_t, 5)] at `fps` -> the performer's (T, 5) box per frame and each frame's status.

    When no frame shows two people (`one_in_view` everywhere), this is the official largest-person choice in every
    frame ("detected"; "nobody": nobody detected, score -1: the official whole-image fallback). Otherwise the tracked
    performer: "detected": the detector's own box of them; "interpolated": not detected, inside a gap of at most
    MAX_GAP_SECONDS between two frames where they were: the box interpolated linearly, its score the lower of the
    two; "absent": anything else, score -1 (the caller gives such frames the nearest present frame's pose).
    Coordinates of `choice` are in the frames' pixels.
    """
    num_frames = len(detections)
    tracks = link_tracks(detections, fps)
    chosen = choose_track(tracks, num_frames, choice, fps)  # also checks an index or point against the people found
    if chosen is None or all(one_in_view(d) for d in detections):
        return official_boxes(detections)
    out = np.zeros((num_frames, 5))
    out[:, 4] = -1.0
    statuses: list[FrameStatus] = ["absent"] * num_frames
    found = chosen.by_frame
    max_gap = max_gap_frames(fps)
    seen = np.array(sorted(found))
    for t in range(num_frames):
        if t in found:
            out[t], statuses[t] = found[t], "detected"
            continue
        pos = int(np.searchsorted(seen, t))
        if 0 < pos < len(seen) and seen[pos] - seen[pos - 1] - 1 <= max_gap:
            a, b = int(seen[pos - 1]), int(seen[pos])
            w = (t - a) / (b - a)
            out[t, :4] = (1 - w) * found[a][:4] + w * found[b][:4]
            out[t, 4] = min(found[a][4], found[b][4])
            statuses[t] = "interpolated"
    return out, statuses
