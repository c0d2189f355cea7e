"""Retargeting: exact values on hand-built skeletons (every expectation derived by hand from the rules)."""

from __future__ import annotations

import numpy as np
import pytest
from wan_animate.preprocess import retarget as rt
from wan_animate.preprocess.pose_meta import PoseMeta

# A standing driving person (x, y) in a 200x300 frame, BODY_NAMES order. Arms are left/right symmetric,
# feet are short (no foot cap at ratio 1).
DRIVING_XY = np.array(
    [
        [100, 40], [100, 70],  # nose, neck
        [80, 70], [70, 100], [65, 130],  # right shoulder, elbow, wrist
        [120, 70], [130, 100], [135, 130],  # left shoulder, elbow, wrist
        [90, 150], [90, 200], [90, 250],  # right hip, knee, ankle
        [110, 150], [110, 200], [110, 250],  # left hip, knee, ankle
        [95, 35], [105, 35], [90, 38], [110, 38],  # right eye, left eye, right ear, left ear
        [115, 260], [85, 260],  # left toe, right toe
    ],
    np.float64,
)  # fmt: skip
SHIFT = np.array([30.0, 10.0])


def make_pose(xy: np.ndarray, width: int, height: int, scores: np.ndarray | None = None) -> PoseMeta:
    pose = PoseMeta.empty(width, height)
    pose.body[:, :2] = xy
    pose.body[:, 2] = 1.0 if scores is None else scores
    return pose


def driving_pose(xy: np.ndarray = DRIVING_XY, toes: bool = False) -> PoseMeta:
    """The driving skeleton in a 200x300 frame; toes missing (score 0) unless asked for."""
    pose = make_pose(xy, 200, 300)
    if not toes:
        pose.body[[rt.L_TOE, rt.R_TOE], 2] = 0.0
    return pose


def reference_pose(xy: np.ndarray | None = None, toes: bool = False) -> PoseMeta:
    """By default the driving skeleton scaled 2x and shifted by SHIFT, in a 500x700 image."""
    pose = make_pose(2 * DRIVING_XY + SHIFT if xy is None else xy, 500, 700)
    if not toes:
        pose.body[[rt.L_TOE, rt.R_TOE], 2] = 0.0
    return pose


def test_reference_twice_as_large_gives_driving_scaled_2x_about_the_anchor():
    drv, ref = driving_pose(), reference_pose()
    moved = DRIVING_XY.copy()
    moved[[rt.R_WRIST, rt.L_WRIST]] += [[0, -60], [0, -60]]  # arms raised in a later frame
    moved += [12, -4]  # and the person stepped right / up
    out = rt.retarget_poses(drv, ref, [drv, driving_pose(moved)])
    assert (out[0].width, out[0].height) == (500, 700)
    # Frame 0 lands exactly on the reference (ground: lower ankle; x: hip centre).
    np.testing.assert_allclose(out[0].body[:, :2], ref.body[:, :2], atol=1e-4)
    # Every frame is the driving frame scaled 2x: motion is scaled too, the mapping is x -> 2x + SHIFT.
    np.testing.assert_allclose(out[1].body[:, :2], 2 * moved + SHIFT, atol=1e-4)
    np.testing.assert_array_equal(out[1].body[:, 2], driving_pose(moved).body[:, 2])  # driving scores are kept


def test_reference_toes_put_the_ground_line_at_the_ankle_toe_midpoint():
    # Official: the reference ground is the lower ankle-toe midpoint, the driving one the lower ankle.
    # Reference ankles y = 510, toes y = 530 -> ground 520; the driving ankles land there: +10 px.
    drv, ref = driving_pose(toes=True), reference_pose(toes=True)
    out = rt.retarget_poses(drv, ref, [drv])
    np.testing.assert_allclose(out[0].body[:, :2], ref.body[:, :2] + [0, 10], atol=1e-4)


def test_left_right_symmetrisation_takes_the_larger_ratio():
    ref_xy = 2 * DRIVING_XY + SHIFT
    # The reference's LEFT upper arm is 3x the driving's (1.5x the uniform 2x); forearm keeps its vector.
    upper = ref_xy[rt.L_ELBOW] - ref_xy[rt.L_SHOULDER]
    ref_xy[rt.L_ELBOW] = ref_xy[rt.L_SHOULDER] + 1.5 * upper
    ref_xy[rt.L_WRIST] += 0.5 * upper
    drv = driving_pose()
    out = rt.retarget_poses(drv, reference_pose(ref_xy), [drv])[0].body[:, :2]
    # Both upper arms get ratio 1.5 (in the 2x frame): elbow = shoulder + 1.5 * 2 * (driving upper arm).
    for shoulder, elbow, wrist in ((rt.R_SHOULDER, rt.R_ELBOW, rt.R_WRIST), (rt.L_SHOULDER, rt.L_ELBOW, rt.L_WRIST)):
        d_upper = DRIVING_XY[elbow] - DRIVING_XY[shoulder]
        d_fore = DRIVING_XY[wrist] - DRIVING_XY[elbow]
        expected_elbow = 2 * DRIVING_XY[shoulder] + SHIFT + 3 * d_upper
        np.testing.assert_allclose(out[elbow], expected_elbow, atol=1e-4)
        np.testing.assert_allclose(out[wrist], expected_elbow + 2 * d_fore, atol=1e-4)
    # Nothing else moved.
    others = [j for j in range(20) if j not in (rt.R_ELBOW, rt.R_WRIST, rt.L_ELBOW, rt.L_WRIST)]
    np.testing.assert_allclose(out[others], (2 * DRIVING_XY + SHIFT)[others], atol=1e-4)


def test_eye_and_ear_bones_take_the_mean_ratio():
    ratios = rt.bone_ratios(np.full(19, 10.0), np.array([10.0] * 13 + [30, 10, 10, 10, 10, 10]), 1.0)
    assert ratios[13] == ratios[15] == 2.0  # (3 + 1) / 2
    assert ratios[14] == ratios[16] == 1.0


def test_bone_ratio_fill_rules():
    drv = np.full(19, 10.0)
    ref = np.full(19, 20.0)
    ref[0], ref[1] = 20.0, 40.0  # shoulder ratios 2 and 4
    ref[12] = np.nan  # neck->nose unmeasurable on the reference
    ratios = rt.bone_ratios(drv, ref, 0.5)
    assert ratios[12] == pytest.approx((1.0 + 2.0) / 2)  # the mean of the raw shoulder ratios (official)
    assert ratios[0] == ratios[1] == 2.0  # then the shoulders are symmetrised (max)
    no_shoulders = ref.copy()
    no_shoulders[[0, 1]] = np.nan
    assert rt.bone_ratios(drv, no_shoulders, 0.5)[12] == 1.0  # official would keep -1: we use 1.0


def test_missing_reference_joint_is_measured_from_the_mirror_limb():
    body = np.zeros((20, 3))
    body[:, :2] = DRIVING_XY
    body[:, 2] = 1.0
    body[rt.R_ELBOW, 0] = 60  # make the right arm distinguishable: upper arm hypot(20, 30)
    body[rt.L_ELBOW, 2] = 0.1  # left elbow missing -> left arm chain broken from the elbow on
    lengths = rt.bone_lengths(body)
    assert lengths[4] == pytest.approx(np.hypot(20, 30))  # left upper arm := right upper arm
    assert lengths[5] == pytest.approx(np.hypot(5, 30))  # left forearm := right forearm
    body[rt.R_ELBOW, 2] = 0.1  # both elbows missing -> half the neck-hip length (official)
    lengths = rt.bone_lengths(body)
    torso = np.hypot(10, 80)
    assert lengths[2] == lengths[3] == lengths[4] == lengths[5] == pytest.approx(torso / 2)
    body[rt.L_KNEE, 2] = body[rt.R_KNEE, 2] = 0.1  # both knees missing -> legs torso, feet torso / 5
    lengths = rt.bone_lengths(body)
    assert lengths[7] == lengths[8] == lengths[10] == lengths[11] == pytest.approx(torso)
    assert lengths[17] == lengths[18] == pytest.approx(torso / 5)
    body[rt.R_SHOULDER, 2] = 0.1  # a chain without its root stays unmeasured
    assert np.isnan(rt.bone_lengths(body)[[0, 2, 3]]).all()


def test_low_confidence_driving_joint_stays_missing():
    drv, ref = driving_pose(), reference_pose()
    frame = driving_pose()
    frame.body[rt.L_WRIST, 2] = 0.1
    out = rt.retarget_poses(drv, ref, [frame])[0]
    assert out.body[rt.L_WRIST, 2] == pytest.approx(0.1)  # below the 0.5 drawing threshold
    np.testing.assert_allclose(out.body[rt.L_WRIST, :2], 2 * DRIVING_XY[rt.L_WRIST] + SHIFT, atol=1e-4)


def test_upper_body_reference_aligns_necks_and_scales_by_nose_to_hip():
    ref_xy = 2 * DRIVING_XY + SHIFT
    scores = np.ones(20)
    scores[[rt.R_KNEE, rt.L_KNEE, rt.R_ANKLE, rt.L_ANKLE, rt.L_TOE, rt.R_TOE]] = 0.05  # legs out of frame
    ref = make_pose(ref_xy, 500, 700, scores)
    drv = driving_pose()
    assert rt.body_extent(ref) == 1 and rt.body_extent(drv) == 2
    assert rt.body_scale(drv, ref) == (pytest.approx(0.5), False)  # nose-to-hip: 110 / 220
    out = rt.retarget_poses(drv, ref, [drv])[0]
    np.testing.assert_allclose(out.body[rt.NECK, :2], ref_xy[rt.NECK], atol=1e-4)
    # Upper body as the reference; the legs were measured from the torso on the reference only:
    # thigh ratio = 0.5 * |neck-hip|_ref / |hip-knee|_drv = 0.5 * 2 * hypot(10, 80) / 50.
    np.testing.assert_allclose(out.body[: rt.R_HIP + 1, :2], ref_xy[: rt.R_HIP + 1], atol=1e-4)
    thigh = np.hypot(10, 80) / 50
    np.testing.assert_allclose(out.body[rt.R_KNEE, :2], ref_xy[rt.R_HIP] + 2 * thigh * np.array([0, 50]), atol=1e-4)


def test_reference_canvas_is_truncated_to_whole_pixels_before_bones_are_measured():
    # Official rule: the reference is measured on its image resized to int(W * s) x int(H * s). Reference 2x the
    # driving person in a 501x700 image: s = 0.5, so x scales by int(250.5) / 501 = 250 / 501 (not 0.5) and y by
    # 350 / 700 = 0.5. Horizontal bones get ratio 2 * 250 / 501 = 500 / 501, vertical bones ratio 1.
    drv = driving_pose()
    ref = make_pose(2 * DRIVING_XY + SHIFT, 501, 700)
    ref.body[[rt.L_TOE, rt.R_TOE], 2] = 0.0
    out = rt.retarget_poses(drv, ref, [drv])[0].body[:, :2].astype(np.float64)
    fx = 500 / 501  # x factor of the truncated canvas, in reference pixels (250 / 501 divided by s)
    # neck -> shoulders are horizontal (20 px in the driving frame): span 2 * 20 * (500 / 501) / s
    assert out[rt.L_SHOULDER, 0] - out[rt.R_SHOULDER, 0] == pytest.approx(80 * fx, abs=1e-4)
    assert out[rt.L_SHOULDER, 1] == pytest.approx(out[rt.NECK, 1], abs=1e-4)
    # knee -> ankle is vertical (50 px): ratio 1, (0, 100) in reference pixels
    np.testing.assert_allclose(out[rt.R_ANKLE] - out[rt.R_KNEE], [0, 100], atol=1e-4)
    # neck -> hip (-10, 80): ratio hypot(10 * fx, 80) / hypot(10, 80), the same on both sides
    neck_hip = np.hypot(10 * fx, 80) / np.hypot(10, 80)
    np.testing.assert_allclose(out[rt.R_HIP] - out[rt.NECK], neck_hip * np.array([-20, 160]), atol=1e-4)
    # alignment on the truncated canvas: ground y 510 * 0.5 / s = 510; hip centre x 230 * (250 / 501) / s
    assert max(out[rt.R_ANKLE, 1], out[rt.L_ANKLE, 1]) == pytest.approx(510, abs=1e-4)
    assert (out[rt.R_HIP, 0] + out[rt.L_HIP, 0]) / 2 == pytest.approx(230 * fx, abs=1e-4)
    # without the int() (a 500x700 image, exact) the same person lands on the reference: 80 px span, hips at 230
    exact = rt.retarget_poses(drv, reference_pose(), [drv])[0].body[:, :2]
    assert exact[rt.L_SHOULDER, 0] - exact[rt.R_SHOULDER, 0] == pytest.approx(80, abs=1e-4)
    assert abs((out[rt.R_HIP, 0] + out[rt.L_HIP, 0]) / 2 - 230) > 0.4  # the int() moves the hips by 0.46 px


def test_reference_in_driving_pixels_scales_each_axis_by_its_truncated_side():
    ref = make_pose(2 * DRIVING_XY + SHIFT, 501, 703)
    body = rt.reference_in_driving_pixels(ref, 0.37)  # int(185.37) = 185, int(260.11) = 260
    np.testing.assert_allclose(body[:, 0], ref.body[:, 0] * 185 / 501)
    np.testing.assert_allclose(body[:, 1], ref.body[:, 1] * 260 / 703)
    np.testing.assert_array_equal(body[:, 2], ref.body[:, 2])


def test_flux_reference_edit_is_measured_on_its_truncated_canvas():
    # The edited reference (2x, 501x700) gives horizontal bones 500 / 501 and vertical bones 1, as the plain path.
    drv, ref = driving_pose(), reference_pose()
    ref_edit = make_pose(2 * DRIVING_XY + SHIFT, 501, 700)
    ref_edit.body[[rt.L_TOE, rt.R_TOE], 2] = 0.0
    out = rt.retarget_poses(drv, ref, [drv], driving_pose(), ref_edit)[0].body[:, :2]
    assert out[rt.L_SHOULDER, 0] - out[rt.R_SHOULDER, 0] == pytest.approx(80 * 500 / 501, abs=1e-4)
    np.testing.assert_allclose(out[rt.R_ANKLE] - out[rt.R_KNEE], [0, 100], atol=1e-4)


def test_body_scale_rules():
    drv, ref = driving_pose(), reference_pose()
    assert rt.body_scale(drv, ref) == (0.5, False)  # nose-ankle 210 vs 420
    drv.body[rt.R_ANKLE, 2] = 0.5  # not > 0.5 -> nose-hip rule
    assert rt.body_scale(drv, ref) == (0.5, False)
    drv.body[rt.L_HIP, 2] = 0.2  # -> image areas: sqrt(200*300 / (500*700))
    value, area_rule = rt.body_scale(drv, ref)
    assert area_rule and value == pytest.approx(np.sqrt(200 * 300 / (500 * 700)))


def test_flux_rescale_compares_head_and_shoulder_widths():
    pose = driving_pose()  # head x-extent 20 px of 200, shoulders 40 px
    edited = driving_pose()
    edited.body[[rt.R_EAR, rt.L_EAR], 0] = [95, 105]  # head now 10 px wide -> ratio 2
    assert rt.flux_rescale(pose, edited) == pytest.approx(2.0)
    edited.body[rt.L_SHOULDER, 0] = 90  # shoulders now 10 px -> ratio 4 wins
    assert rt.flux_rescale(pose, edited) == pytest.approx(4.0)


def test_flux_edit_poses_are_used_for_bone_lengths():
    drv, ref = driving_pose(), reference_pose()
    # The FLUX-standardised reference has 1.5x longer forearms than the plain reference.
    ref_edit_xy = 2 * DRIVING_XY + SHIFT
    for elbow, wrist in ((rt.R_ELBOW, rt.R_WRIST), (rt.L_ELBOW, rt.L_WRIST)):
        ref_edit_xy[wrist] = ref_edit_xy[elbow] + 1.5 * (ref_edit_xy[wrist] - ref_edit_xy[elbow])
    ref_edit = reference_pose(ref_edit_xy)
    out = rt.retarget_poses(drv, ref, [drv], driving_pose(), ref_edit)[0].body[:, :2]
    np.testing.assert_allclose(
        out[rt.R_WRIST], ref.body[rt.R_ELBOW, :2] + 3 * (DRIVING_XY[rt.R_WRIST] - DRIVING_XY[rt.R_ELBOW]), atol=1e-4
    )
    np.testing.assert_allclose(out[rt.NECK], ref.body[rt.NECK, :2], atol=1e-4)
    # Unchanged edits give the plain result.
    plain = rt.retarget_poses(drv, ref, [drv])[0].body
    same = rt.retarget_poses(drv, ref, [drv], driving_pose(), reference_pose())[0].body
    np.testing.assert_allclose(same, plain)


def test_hands_scale_about_their_root_and_follow_the_wrist():
    drv, ref = driving_pose(), reference_pose()
    frame = driving_pose()
    hand = np.zeros((21, 3), np.float32)
    hand[:, :2] = DRIVING_XY[rt.R_WRIST] + np.arange(21)[:, None] * [0.5, 1.25]  # root on the wrist
    hand[:, 2] = 0.9
    hand[3, 2] = 0.3  # dropped (official threshold 0.4)
    frame.right_hand = hand
    out = rt.retarget_poses(drv, ref, [frame])[0]
    new_wrist = 2 * DRIVING_XY[rt.R_WRIST] + SHIFT
    expected = np.trunc(new_wrist + 2 * (hand[:, :2] - hand[0, :2]))  # shoulder ratio / s = 2, int() as official
    np.testing.assert_array_equal(out.right_hand[:, :2], expected)
    assert out.right_hand[3, 2] == 0.0 and out.right_hand[4, 2] == pytest.approx(0.9)
    assert (out.left_hand[:, 2] == 0).all()


def test_hand_without_a_confident_root_is_scaled_about_it_and_moved_with_the_wrist():
    drv, ref = driving_pose(), reference_pose()
    frame = driving_pose()
    hand = np.zeros((21, 3), np.float32)
    hand[:, :2] = DRIVING_XY[rt.L_WRIST] + [4.0, 6.0] + np.arange(21)[:, None] * [1.0, 0.5]
    hand[:, 2] = 0.9
    hand[0, 2] = 0.2  # root unsure
    frame.left_hand = hand
    out = rt.retarget_poses(drv, ref, [frame])[0]
    root = hand[0, :2].astype(np.float64)
    wrist_shift = (2 * DRIVING_XY[rt.L_WRIST] + SHIFT) - DRIVING_XY[rt.L_WRIST]
    expected = np.trunc(root + 2 * (hand[:, :2] - root) + wrist_shift)
    np.testing.assert_array_equal(out.left_hand[:, :2], expected)
    assert out.left_hand[0, 2] == 0.0


def test_hand_nearer_the_other_wrist_is_swapped():
    drv, ref = driving_pose(), reference_pose()
    frame = driving_pose()
    frame.right_hand[:, :2] = DRIVING_XY[rt.L_WRIST] + [1.0, 2.0]  # the "right" hand sits at the left wrist
    frame.right_hand[:, 2] = 0.9
    out = rt.retarget_poses(drv, ref, [frame])[0]
    # labelled by the wrist it is attached to: the hand on the left wrist is the output's left hand
    np.testing.assert_array_equal(out.left_hand[:, :2], np.broadcast_to(2 * DRIVING_XY[rt.L_WRIST] + SHIFT, (21, 2)))
    np.testing.assert_allclose(out.left_hand[:, 2], 0.9)
    assert (out.right_hand[:, 2] == 0).all()


def test_overlapping_retargeted_hands_are_painted_in_the_official_order():
    # Official: the retargeted hand on the right wrist is stored under the "left" label, so it is drawn
    # first and the hand on the left wrist is painted over it where they cross.
    from wan_animate.preprocess.skeleton import render_pose

    drv, ref = driving_pose(), reference_pose()
    frame = driving_pose()
    frame.right_hand[0] = (*DRIVING_XY[rt.R_WRIST], 0.9)  # root (65, 130), bone 0 horizontal to (105, 130)
    frame.right_hand[1] = (105, 130, 0.9)
    frame.left_hand[0] = (*DRIVING_XY[rt.L_WRIST], 0.9)  # root (135, 130); bone 5 vertical at x = 95
    frame.left_hand[5], frame.left_hand[6] = (95, 120, 0.9), (95, 140, 0.9)
    out = rt.retarget_poses(drv, ref, [frame])[0]
    np.testing.assert_array_equal(out.right_hand[0, :2], 2 * DRIVING_XY[rt.R_WRIST] + SHIFT)
    np.testing.assert_array_equal(out.left_hand[0, :2], 2 * DRIVING_XY[rt.L_WRIST] + SHIFT)
    crossing = (2 * 130 + 10, 2 * 95 + 30)  # (row, col) where the two bones cross in the 500x700 image
    only_left, only_right = out.copy(), out.copy()
    only_left.right_hand[:, 2] = 0
    only_right.left_hand[:, 2] = 0
    left_colour = render_pose(only_left)[crossing].tolist()
    assert left_colour != render_pose(only_right)[crossing].tolist()
    assert render_pose(out, right_hand_first=True)[crossing].tolist() == left_colour


def test_face_moves_with_the_nose():
    drv, ref = driving_pose(), reference_pose()
    frame = driving_pose()
    frame.face[:, :2] = DRIVING_XY[rt.NOSE] + np.linspace(-5, 5, 68)[:, None]
    frame.face[:, 2] = 0.8
    out = rt.retarget_poses(drv, ref, [frame])[0]
    np.testing.assert_allclose(out.face[:, :2], 2 * frame.face[:, :2] + SHIFT, atol=1e-4)
    np.testing.assert_allclose(out.face[:, 2], 0.8)


def test_empty_poses_do_not_crash():
    drv, ref = driving_pose(), reference_pose()
    out = rt.retarget_poses(drv, ref, [PoseMeta.empty(200, 300), drv])
    assert len(out) == 2 and np.isfinite(out[0].body).all() and (out[0].body[:, 2] == 0).all()
    # A reference with no confident joint at all: image-area scale, ratios 1, neck alignment.
    blank_ref = PoseMeta.empty(500, 700)
    out = rt.retarget_poses(drv, blank_ref, [drv])
    assert np.isfinite(out[0].body).all()
    scale = np.sqrt(200 * 300 / (500 * 700))
    np.testing.assert_allclose(out[0].body[:, :2], (DRIVING_XY - DRIVING_XY[rt.NECK]) / scale, atol=1e-4)


def test_foot_is_capped_at_half_the_shin():
    xy = DRIVING_XY.copy()
    xy[rt.R_TOE] = [90, 290]  # right foot 40 px straight down, shin 50 -> capped to 25
    rebuilt = rt.rebuild_body(xy, np.ones(19))
    np.testing.assert_allclose(rebuilt[rt.R_TOE], [90, 275])
    np.testing.assert_allclose(rt.rebuild_body(xy, np.ones(19), cap_feet=False)[rt.R_TOE], [90, 290])
