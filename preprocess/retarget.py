"""Pose retargeting: the driving person's motion redrawn with the reference character's proportions.

Follows the official `get_retarget_pose` (wan/modules/animate/preprocess/retarget_pose.py):

1. A body scale `s` = driving person height / reference person height (nose to ankles, else nose to hips,
   else the ratio of image sizes), measured on the driving video's first frame and the reference.
2. Per-bone ratios `reference_length / driving_length` for the 19 bones of the 20-point body, the
   reference measured on its image resized by `s` to int(width * s) x int(height * s) as official (so each
   axis scales by its truncated side over the original, not exactly by `s`). In the FLUX path the lengths
   come from the two FLUX-standardised images, corrected for any rescaling FLUX did. The ratios are then
   symmetrised: left/right pairs take the larger ratio, eye and ear bones the mean.
3. Every driving frame is rebuilt along the joint tree from the neck: each bone keeps its direction in
   that frame and gets its length times the ratio (feet capped at half the shin).
4. Alignment: the rebuilt first frame is placed on the reference (on that same truncated canvas): feet on
   the reference's ground line and hips centred on the reference's (both full body), else neck on the
   reference's neck. Positions are then divided by `s`, i.e. expressed in the reference image's pixels.
5. Hands are scaled about their root point by the shoulder ratio and attached to the moved wrists; the
   output size is the reference image's. Each output hand is labelled by the wrist it is attached to. (The
   official output stores the hand on the right wrist under its "left" label, so it is drawn first: the
   pipeline draws retargeted poses with `right_hand_first=True` to paint overlapping hands in that order.)

Missing joints. In the official code a joint is never missing (every point has a position and a score),
so its missing-joint branches never run and bones are measured even from low-confidence, made-up points.
Here a joint counts as present when its score is >= MIN_SCORE (0.4, the official retargeting threshold),
and the official missing-joint rules then apply as written: a limb chain broken at a missing joint is
measured from the mirror limb, else from the torso (fix_lack_keypoints_use_sym); a bone that still cannot
be measured takes the mean of the two shoulder ratios. Where the official code would then keep a ratio of
-1 (and flip the bone), we use 1.0 (the bone scales with the body). Driving frames keep every joint's own
score: a low-confidence joint is moved along with the others but stays below the drawing threshold, so it
stays missing in the skeleton video.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .pose_meta import NUM_BODY, PoseMeta

MIN_SCORE = 0.4  # a joint counts as present at or above this score (official retarget threshold)
SCALE_MIN_SCORE = 0.5  # the body-height scale needs nose/ankles/hips above this (official: > 0.5)
HAND_MIN_SCORE = 0.4  # hand points below this are dropped (official deal_hand_keypoints)
FOOT_TO_SHIN = 0.5  # a retargeted foot is at most half the retargeted shin (official)

# Body indices (pose_meta.BODY_NAMES order).
NOSE, NECK = 0, 1
R_SHOULDER, R_ELBOW, R_WRIST, L_SHOULDER, L_ELBOW, L_WRIST = 2, 3, 4, 5, 6, 7
R_HIP, R_KNEE, R_ANKLE, L_HIP, L_KNEE, L_ANKLE = 8, 9, 10, 11, 12, 13
R_EYE, L_EYE, R_EAR, L_EAR, L_TOE, R_TOE = 14, 15, 16, 17, 18, 19

# The 19 bones (parent, child) in the official limbSeq order; parents always come before children,
# so one pass in this order rebuilds the tree from the neck.
BONES: tuple[tuple[int, int], ...] = (
    (NECK, R_SHOULDER), (NECK, L_SHOULDER),  # 0, 1
    (R_SHOULDER, R_ELBOW), (R_ELBOW, R_WRIST),  # 2, 3
    (L_SHOULDER, L_ELBOW), (L_ELBOW, L_WRIST),  # 4, 5
    (NECK, R_HIP), (R_HIP, R_KNEE), (R_KNEE, R_ANKLE),  # 6, 7, 8
    (NECK, L_HIP), (L_HIP, L_KNEE), (L_KNEE, L_ANKLE),  # 9, 10, 11
    (NECK, NOSE), (NOSE, R_EYE), (R_EYE, R_EAR), (NOSE, L_EYE), (L_EYE, L_EAR),  # 12 .. 16
    (L_ANKLE, L_TOE), (R_ANKLE, R_TOE),  # 17, 18
)  # fmt: skip
BONE_INDEX = {bone: i for i, bone in enumerate(BONES)}
MAX_PAIRS = ((0, 1), (2, 4), (3, 5), (6, 9), (7, 10), (8, 11), (17, 18))  # right/left: larger ratio wins
MEAN_PAIRS = ((13, 15), (14, 16))  # nose->eye and eye->ear: mean of both sides
FOOT_CAPS = ((18, 8), (17, 11))  # (foot bone, shin bone)
NOSE_TO_EYE = 13  # the bone whose ratio scales the face landmarks

# Limb chains for the missing-joint repair (official fix_lack_keypoints_use_sym). Each entry: the chain's
# joints from its root, its bones, the mirror chain's bones, and the torso-length divisor for each bone.
_CHAINS: tuple[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[float, ...]], ...] = (
    ((R_SHOULDER, R_ELBOW, R_WRIST), (2, 3), (4, 5), (2.0, 2.0)),
    ((L_SHOULDER, L_ELBOW, L_WRIST), (4, 5), (2, 3), (2.0, 2.0)),
    ((R_HIP, R_KNEE, R_ANKLE, R_TOE), (7, 8, 18), (10, 11, 17), (1.0, 1.0, 5.0)),
    ((L_HIP, L_KNEE, L_ANKLE, L_TOE), (10, 11, 17), (7, 8, 18), (1.0, 1.0, 5.0)),
)


# ---------------------------------------------------------------------------------------------------
# measuring


def _present(body: np.ndarray, threshold: float = MIN_SCORE) -> np.ndarray:
    """(20,) bool: joints with score >= threshold."""
    return body[:, 2] >= threshold


def _distance(body: np.ndarray, a: int, b: int) -> float:
    return float(math.hypot(body[a, 0] - body[b, 0], body[a, 1] - body[b, 1]))


def body_scale(driving: PoseMeta, reference: PoseMeta) -> tuple[float, bool]:
    """Driving person height / reference person height in pixels (official `scale_min`).

    Nose-to-mean-ankle height when nose and both ankles score > 0.5 in both poses, else nose-to-mean-hip,
    else sqrt(driving image area / reference image area). The flag says the image-area rule was used
    (the FLUX path then corrects for FLUX's rescaling). A zero height falls through to the next rule
    (the official code would divide by zero).
    """
    for lower in ((R_ANKLE, L_ANKLE), (R_HIP, L_HIP)):
        joints = [NOSE, *lower]
        if all(p.body[j, 2] > SCALE_MIN_SCORE for p in (driving, reference) for j in joints):
            heights = [
                abs((p.body[lower[0], 1] + p.body[lower[1], 1]) / 2 - p.body[NOSE, 1]) for p in (driving, reference)
            ]
            if heights[0] > 0 and heights[1] > 0:
                return float(heights[0] / heights[1]), False
    area_ratio = math.sqrt(driving.height * driving.width) / math.sqrt(reference.height * reference.width)
    return float(area_ratio), True


def flux_rescale(pose: PoseMeta, edited: PoseMeta) -> float:
    """How much smaller FLUX drew the person: max(head width ratio, shoulder width ratio), original/edited.

    Official `calculate_scale_ratio`, used only when body_scale fell back to the image-area rule. Head
    width is the x-extent of nose, eyes and ears (as a fraction of the image width). A zero width in the
    edited image makes that term unusable; with neither term usable the result is 1.
    """
    head = [NOSE, R_EYE, L_EYE, R_EAR, L_EAR]
    terms = []
    head_w = np.ptp(pose.body[head, 0]) / pose.width
    head_w_edit = np.ptp(edited.body[head, 0]) / edited.width
    if head_w_edit > 0:
        terms.append(head_w / head_w_edit)
    shoulder, shoulder_edit = (
        _distance(pose.body, L_SHOULDER, R_SHOULDER),
        _distance(edited.body, L_SHOULDER, R_SHOULDER),
    )
    if shoulder_edit > 0:
        terms.append(shoulder / shoulder_edit)
    return float(max(terms)) if terms else 1.0


def bone_lengths(body: np.ndarray) -> np.ndarray:
    """(19,) bone lengths in pixels, NaN where a bone cannot be measured.

    A bone is measured between two present joints. Arm and leg chains follow the official repair: past
    the first missing joint of a chain (whose root is present), bones take the mirror chain's measured
    length, else a length from the torso (neck-to-hip: /2 for arm bones, /1 for leg bones, /5 for feet).
    """
    present = _present(body)
    lengths = np.full(len(BONES), np.nan)
    for i, (a, b) in enumerate(BONES):
        if present[a] and present[b]:
            lengths[i] = _distance(body, a, b)
    torso = max((_distance(body, NECK, hip) for hip in (R_HIP, L_HIP) if present[NECK] and present[hip]), default=0.0)
    intact = {bones: _intact_lengths(body, present, joints, bones) for joints, bones, _, _ in _CHAINS}
    for joints, bones, mirror_bones, divisors in _CHAINS:
        if not present[joints[0]]:
            continue  # official: a chain whose root is missing stays missing
        for k, bone in enumerate(bones):
            if not np.isnan(intact[bones][k]):
                continue  # measured: the chain is unbroken up to this bone's end
            mirror = intact[mirror_bones][k]
            if not np.isnan(mirror):
                lengths[bone] = mirror
            elif torso > 0:
                lengths[bone] = torso / divisors[k]
            else:
                lengths[bone] = np.nan
    return lengths


def _intact_lengths(body: np.ndarray, present: np.ndarray, joints: tuple[int, ...], bones: tuple[int, ...]
                    ) -> list[float]:  # fmt: skip
    """A chain's bone lengths up to its first missing joint, NaN from there on (all NaN without its root)."""
    out: list[float] = []
    ok = bool(present[joints[0]])
    for k, bone in enumerate(bones):
        ok = ok and bool(present[joints[k + 1]])
        a, b = BONES[bone]
        out.append(_distance(body, a, b) if ok else float("nan"))
    return out


def reference_in_driving_pixels(reference: PoseMeta, scale: float) -> np.ndarray:
    """(20, 3) reference body on its image resized by `scale` to int(width * scale) x int(height * scale).

    The official code truncates the scaled reference canvas to whole pixels before it measures bones and
    the ground line, so each axis scales by its own factor int(side * scale) / side, not by `scale`.
    Scores are unchanged.
    """
    body = reference.body.astype(np.float64).copy()
    body[:, 0] = body[:, 0] / reference.width * int(reference.width * scale)
    body[:, 1] = body[:, 1] / reference.height * int(reference.height * scale)
    return body


def bone_ratios(driving_lengths: np.ndarray, reference_lengths: np.ndarray, scale: float) -> np.ndarray:
    """(19,) ratios `scale * reference / driving` after the official fill and symmetrisation rules.

    `retarget_poses` passes reference lengths already in the driving frame's pixels, with scale 1.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = scale * reference_lengths / driving_lengths
    ratios[~np.isfinite(ratios) | (ratios <= 0)] = np.nan
    if not np.isnan(ratios[0]) and not np.isnan(ratios[1]):  # official: missing bones take the shoulders' mean
        ratios[np.isnan(ratios)] = (ratios[0] + ratios[1]) / 2
    for a, b in MAX_PAIRS:
        ratios[a] = ratios[b] = np.nanmax(ratios[[a, b]]) if not np.isnan(ratios[[a, b]]).all() else np.nan
    for a, b in MEAN_PAIRS:
        ratios[a] = ratios[b] = np.nanmean(ratios[[a, b]]) if not np.isnan(ratios[[a, b]]).all() else np.nan
    ratios[np.isnan(ratios)] = 1.0  # deliberate: the official code keeps -1 here, which flips the bone
    return ratios


# ---------------------------------------------------------------------------------------------------
# rebuilding


def rebuild_body(xy: np.ndarray, ratios: np.ndarray, cap_feet: bool = True) -> np.ndarray:
    """(20, 2) joint positions rebuilt from the neck: every bone keeps its direction, length x ratio.

    With `cap_feet` a foot is at most FOOT_TO_SHIN times the rebuilt shin (official get_scaled_pose; the
    official first-frame alignment pass, rescale_skeleton, does not cap).
    """
    vectors = np.array([xy[b] - xy[a] for a, b in BONES], np.float64)  # (19, 2)
    lengths = np.hypot(vectors[:, 0], vectors[:, 1])
    factors = ratios.astype(np.float64).copy()
    if cap_feet:
        for foot, shin in FOOT_CAPS:
            cap = FOOT_TO_SHIN * factors[shin] * lengths[shin]
            if lengths[foot] > 0 and factors[foot] * lengths[foot] > cap:
                factors[foot] = cap / lengths[foot]
    out = xy.astype(np.float64).copy()
    for i, (a, b) in enumerate(BONES):
        out[b] = out[a] + factors[i] * vectors[i]
    return out


def body_extent(pose: PoseMeta) -> int:
    """2 full body (hips and ankles in the image, score >= 0.4), 1 hips only, 0 upper body (official check_full_body)."""
    body = pose.body

    def ok(joints: tuple[int, ...]) -> bool:
        return all(body[j, 1] <= pose.height and body[j, 2] >= MIN_SCORE for j in joints)

    if ok((R_ANKLE, L_ANKLE, R_HIP, L_HIP)):
        return 2
    if ok((R_HIP, L_HIP)):
        return 1
    return 0


def alignment_offset(first_rebuilt: np.ndarray, reference_body: np.ndarray, full_body: bool) -> np.ndarray:
    """(2,) offset to subtract from rebuilt driving positions so the first frame sits on the reference.

    Works in the driving frame's pixels: `reference_body` is the (20, 3) reference from
    `reference_in_driving_pixels`. Full body: the lower rebuilt ankle on the reference's ground line (the
    lower ankle, or the lower ankle-toe midpoint when both toes are present: official uses the toe midpoints
    only for the reference) and the hip midpoints on each other. Otherwise the necks on each other.
    """
    ref = reference_body
    if full_body:
        ground_y = max(ref[R_ANKLE, 1], ref[L_ANKLE, 1])
        if ref[R_TOE, 2] >= MIN_SCORE and ref[L_TOE, 2] >= MIN_SCORE:
            ground_y = max((ref[R_ANKLE, 1] + ref[R_TOE, 1]) / 2, (ref[L_ANKLE, 1] + ref[L_TOE, 1]) / 2)
        dy = max(first_rebuilt[R_ANKLE, 1], first_rebuilt[L_ANKLE, 1]) - ground_y
        dx = (first_rebuilt[R_HIP, 0] + first_rebuilt[L_HIP, 0]) / 2 - (ref[R_HIP, 0] + ref[L_HIP, 0]) / 2
        return np.array([dx, dy], np.float64)
    return first_rebuilt[NECK] - ref[NECK, :2].astype(np.float64)


def _move_hand(hand: np.ndarray, old_wrist: np.ndarray, new_wrist: np.ndarray, ratio: float) -> np.ndarray:
    """(21, 3) hand scaled by `ratio` about its root point and attached to the moved wrist (official rule).

    With a confident root (score >= 0.4) the root lands on the new wrist. Without one, as official, the
    hand is scaled about its (unsure) root position and shifted by the wrist's displacement. Points below
    HAND_MIN_SCORE get score 0 (official drops them). Coordinates are int()-truncated as official.
    """
    out = hand.astype(np.float32).copy()
    out[hand[:, 2] < HAND_MIN_SCORE, 2] = 0.0
    xy, root = hand[:, :2].astype(np.float64), hand[0, :2].astype(np.float64)
    if hand[0, 2] >= HAND_MIN_SCORE:
        out[:, :2] = np.trunc(new_wrist + ratio * (xy - root))
    else:
        out[:, :2] = np.trunc(root + ratio * (xy - root) + (new_wrist - old_wrist))
    return out


def _retarget_frame(frame: PoseMeta, reference: PoseMeta, ratios: np.ndarray, offset: np.ndarray, scale: float
                    ) -> PoseMeta:  # fmt: skip
    """One driving pose -> retargeted pose in the reference image's pixels."""
    old = frame.body[:, :2].astype(np.float64)
    new = (rebuild_body(old, ratios) - offset) / scale  # (20, 2)
    body = frame.body.astype(np.float32).copy()
    body[:, :2] = new

    hand_ratio = max(ratios[0], ratios[1]) / scale
    right_root = frame.right_hand[0]
    # Official: when the right hand's root is nearer the left wrist, the hands are swapped. Deliberate
    # differences: we test only a confident root (official measures from (-width, -height) when the root is
    # missing, which swaps at random), and a swapped hand is attached to its new wrist by its own root
    # (official mixes the two hands' offsets there).
    swap = False
    if right_root[2] >= HAND_MIN_SCORE:
        swap = np.hypot(*(old[R_WRIST] - right_root[:2])) > np.hypot(*(old[L_WRIST] - right_root[:2]))
    # The output labels each hand by the wrist it is attached to: right_hand is the hand on the right wrist.
    on_right, on_left = (frame.left_hand, frame.right_hand) if swap else (frame.right_hand, frame.left_hand)
    right_hand = _move_hand(on_right, old[R_WRIST], new[R_WRIST], hand_ratio)
    left_hand = _move_hand(on_left, old[L_WRIST], new[L_WRIST], hand_ratio)

    # The official output has no face landmarks; we move them with the nose, scaled like the nose->eye bone.
    face_ratio = ratios[NOSE_TO_EYE] / scale
    face = frame.face.astype(np.float32).copy()
    face[:, :2] = new[NOSE] + face_ratio * (frame.face[:, :2].astype(np.float64) - old[NOSE])
    face_box = None
    if frame.face_box is not None:
        corners = frame.face_box[:4].reshape(2, 2).astype(np.float64)
        face_box = frame.face_box.astype(np.float32).copy()
        face_box[:4] = (new[NOSE] + face_ratio * (corners - old[NOSE])).reshape(4)
    person_box = None
    if frame.person_box is not None:  # the box of the moved joints, keeping the detector's score
        person_box = frame.person_box.astype(np.float32).copy()
        visible = new[_present(frame.body)] if _present(frame.body).any() else new
        person_box[:4] = [*visible.min(axis=0), *visible.max(axis=0)]
    return replace(
        frame, width=reference.width, height=reference.height, body=body, left_hand=left_hand,
        right_hand=right_hand, face=face, face_box=face_box, person_box=person_box,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# public


def retarget_poses(
    driving_first: PoseMeta,
    reference: PoseMeta,
    driving: list[PoseMeta],
    driving_edit: PoseMeta | None = None,
    reference_edit: PoseMeta | None = None,
) -> list[PoseMeta]:
    """Driving poses redrawn with the reference's bone lengths, in the reference image's pixels.

    `driving_first` is the driving video's first frame; `driving_edit`/`reference_edit` are the poses of
    the FLUX-standardised images (both or neither): when given, bone lengths are measured on them.
    Returns one pose per driving pose, of the reference's width and height.
    """
    for pose in (driving_first, reference, *driving):
        if pose.body.shape != (NUM_BODY, 3):
            raise ValueError(f"body must be ({NUM_BODY}, 3), got {pose.body.shape}")
    scale, _ = body_scale(driving_first, reference)
    reference_body = reference_in_driving_pixels(reference, scale)
    if driving_edit is not None and reference_edit is not None:
        edit_scale, area_rule = body_scale(driving_edit, reference_edit)
        # official: FLUX may have drawn a person smaller/larger; when heights could not be compared,
        # head and shoulder widths against the unedited images correct for that
        fix_driving = flux_rescale(driving_first, driving_edit) if area_rule else 1.0
        fix_reference = flux_rescale(reference, reference_edit) if area_rule else 1.0
        reference_edit_body = reference_in_driving_pixels(reference_edit, edit_scale)
        ratios = bone_ratios(
            bone_lengths(driving_edit.body) * fix_driving, bone_lengths(reference_edit_body) * fix_reference, 1.0
        )
    else:
        ratios = bone_ratios(bone_lengths(driving_first.body), bone_lengths(reference_body), 1.0)

    full_body = min(body_extent(driving_first), body_extent(reference)) == 2
    first = rebuild_body(driving_first.body[:, :2].astype(np.float64), ratios, cap_feet=False)
    offset = alignment_offset(first, reference_body, full_body)
    # (The official code also re-centres frame 0 on rescaled_src_ground_x; that correction is exactly zero,
    # since frame 0 is the same skeleton rebuilt with the same ratios, so it is left out.)
    return [_retarget_frame(frame, reference, ratios, offset, scale) for frame in driving]
