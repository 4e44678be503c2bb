"""Targetless refinement (rig.registration.refine): recovery, refusals, robustness, smoothing and drift.

Pairs come from the simulator (perfectly registered visible/LWIR), never from ../shared data.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from rig.registration.parallax import along_baseline_part
from rig.registration.refine import MODELS, RefineResult, correction_px, grid_error_px, refine_alignment
from rig.registration.warps import rodrigues
from rig.registration.temporal import detect_drift, smooth_corrections
from rig.sim import render_registered

SIZE = (400, 300)


def similarity(size, t=(0.0, 0.0), rot_deg=0.0, scale=1.0) -> np.ndarray:
    """Similarity about the image centre."""
    w, h = size
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    a = math.radians(rot_deg)
    L = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    P = np.eye(3)
    P[:2, :2] = L
    P[:2, 2] = c + np.asarray(t) - L @ c
    return P


def warp(img: np.ndarray, P: np.ndarray) -> np.ndarray:
    return cv2.warpPerspective(img, P, (img.shape[1], img.shape[0]), flags=cv2.INTER_LINEAR)


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    s = render_registered(seed=3, variant="day", size=SIZE)
    return cv2.cvtColor(s.visible, cv2.COLOR_RGB2GRAY), s.lwir8


@pytest.fixture(scope="module")
def base(pair) -> RefineResult:
    return refine_alignment(*pair)


def test_untouched_pair_stays_near_identity(pair, base):
    """(b) A registered pair: accepted, correction small (cross-modal content bias only, no shift of the scene)."""
    assert base.accepted, base.reason
    assert base.H.shape == (3, 3) and base.H.dtype == np.float64
    assert abs(base.correction.centre[0]) < 0.3 and abs(base.correction.centre[1]) < 0.3
    assert base.correction.max_px < 1.0
    assert 0.0 < base.confidence <= 1.0
    assert base.reason == ""


def test_identical_images_give_exact_identity(pair):
    """The estimator itself is unbiased: the same image (or its negative) on both sides gives identity."""
    vis, _ = pair
    for other in (vis, 255 - vis):
        r = refine_alignment(vis, other)
        assert r.accepted and r.correction.max_px < 0.01


def test_recovers_known_similarity(pair, base):
    """(a) A known similarity applied to the LWIR image is undone: H1 = H0 @ inv(P) to < 0.3 px over the grid."""
    vis, ir = pair
    P = similarity(SIZE, t=(4.0, -3.0), rot_deg=0.5, scale=1.01)
    r = refine_alignment(vis, warp(ir, P))
    assert r.accepted, r.reason
    err = grid_error_px(r.H, base.estimate @ np.linalg.inv(P), SIZE)
    assert err.max() < 0.3, err.max()
    assert grid_error_px(r.H, np.linalg.inv(P), SIZE).max() < 1.0  # against the truth (includes the content bias)
    assert r.correction.rotation_deg == pytest.approx(-0.5, abs=0.05)
    assert r.correction.scale == pytest.approx(1 / 1.01, abs=0.002)


def test_recovers_known_affine(pair, base):
    vis, ir = pair
    P = similarity(SIZE, t=(-2.0, 2.5))
    P[0, 1] += 0.006  # a little shear
    P[0, 2] -= 0.006 * (SIZE[1] - 1) / 2
    r = refine_alignment(vis, warp(ir, P), model="affine")
    r0 = refine_alignment(vis, ir, model="affine")
    assert r.accepted and r0.accepted, (r.reason, r0.reason)
    assert grid_error_px(r.H, r0.estimate @ np.linalg.inv(P), SIZE).max() < 0.5  # 6 parameters: looser


# The camera of the pair (normalised ray -> px): a 58 deg wide field of view, whose turns show a keystone.
CAMERA = np.array([[360.0, 0, 199.5], [0, 360.0, 149.5], [0, 0, 1]])


def turn(G: np.ndarray, deg) -> np.ndarray:
    """The image warp of a camera turned by the rotation vector ``deg`` (tilt, pan, roll) about its centre."""
    P = G @ rodrigues(np.radians(deg)) @ np.linalg.inv(G)
    return P / P[2, 2]


def test_rotation_model_recovers_a_camera_turn_keystone_included(pair):
    """A turn of the LWIR camera (0.6 deg tilt, -0.7 deg pan, 0.3 deg roll: 8.8 px) is a homography, not a similarity:
    the rotation model recovers it to a few hundredths of a pixel, the similarity leaves its keystone (> 1 px)."""
    vis, ir = pair
    P = turn(CAMERA, (0.6, -0.7, 0.3))
    assert correction_px(P, SIZE).max_px > 8.0
    errors = {}
    for model in ("rotation", "similarity"):
        r0 = refine_alignment(vis, ir, model=model, camera=CAMERA)
        r = refine_alignment(vis, warp(ir, P), model=model, camera=CAMERA)
        assert r.accepted and r0.accepted and r.model == model, (r.reason, r0.reason)
        errors[model] = grid_error_px(r.H, r0.estimate @ np.linalg.inv(P), SIZE).max()
    assert errors["rotation"] < 0.1 and errors["similarity"] > 1.0, errors


def test_rigid_model_holds_the_scale():
    """Rigid: shift and roll are estimated, the scale is not (exactly 1), whatever the content."""
    s = render_registered(seed=3, variant="day", size=SIZE)
    vis, ir = cv2.cvtColor(s.visible, cv2.COLOR_RGB2GRAY), s.lwir8
    P = similarity(SIZE, t=(3.0, -2.0), rot_deg=0.4)
    r = refine_alignment(vis, warp(ir, P), model="rigid")
    assert r.accepted, r.reason
    assert abs(np.linalg.det(r.H[:2, :2]) - 1.0) < 1e-9
    assert grid_error_px(r.H, np.linalg.inv(P), SIZE).max() < 1.0
    assert r.correction.rotation_deg == pytest.approx(-0.4, abs=0.05)


def test_rotation_model_needs_its_camera(pair):
    with pytest.raises(ValueError, match="needs camera"):
        refine_alignment(*pair, model="rotation")
    with pytest.raises(ValueError, match="needs camera"):
        refine_alignment(*pair, model="rotation", camera=np.zeros((3, 3)))
    assert MODELS == ("similarity", "rigid", "rotation", "affine")


def test_along_baseline_part():
    """The part of a correction a pair cannot tell from parallax: its shift along the baseline, nothing across it."""
    d = np.array([-0.92, -0.39])
    d /= np.linalg.norm(d)
    n = np.array([-d[1], d[0]])
    shift = lambda v: similarity(SIZE, t=tuple(v))  # noqa: E731
    assert grid_error_px(along_baseline_part(shift(2.0 * d + 1.5 * n), SIZE, "similarity", tuple(d)),
                         shift(2.0 * d), SIZE).max() < 1e-9
    assert grid_error_px(along_baseline_part(similarity(SIZE, rot_deg=0.5, scale=1.01), SIZE, "similarity", tuple(d)),
                         np.eye(3), SIZE).max() < 1e-9
    # Rotation: a turn is split into the turn that moves the centre along the baseline, and the rest (kept out).
    for deg in ((0.3, -0.4, 0.5), (0.0, 0.0, 0.8), (-0.5, 0.2, 0.0)):
        P = turn(CAMERA, deg)
        part = along_baseline_part(P, SIZE, "rotation", tuple(d), CAMERA)
        c = np.array([(SIZE[0] - 1) / 2, (SIZE[1] - 1) / 2, 1.0])
        moved = lambda H: (H @ c)[:2] / (H @ c)[2] - c[:2]  # noqa: E731
        assert abs(moved(part) @ n) < 1e-6  # it moves the centre along the baseline only ...
        assert abs(moved(part) @ d - moved(P) @ d) < 0.05  # ... by the turn's own amount there
        R = np.linalg.inv(CAMERA) @ part @ CAMERA
        w = cv2.Rodrigues(R / np.cbrt(np.linalg.det(R)))[0].ravel()
        assert abs(np.degrees(w[2])) < 1e-6  # a turn about an axis across the centre's ray: no roll


def test_inverted_lwir_polarity(pair, base):
    """(c) Black-hot LWIR (intensity inverted) gives the same correction."""
    vis, ir = pair
    P = similarity(SIZE, t=(-3.0, 2.0), rot_deg=-0.3, scale=0.995)
    r = refine_alignment(vis, 255 - warp(ir, P))
    assert r.accepted, r.reason
    assert grid_error_px(r.H, base.estimate @ np.linalg.inv(P), SIZE).max() < 0.3


@pytest.mark.parametrize("scene", ["black night", "sky", "fog", "flat"])
def test_refuses_without_shared_structure(pair, scene):
    """(d) No shared structure: refused, identity returned, with a reason."""
    vis, ir = pair
    rng = np.random.default_rng(0)
    h, w = vis.shape
    noise = rng.normal(0, 2.0, vis.shape)
    if scene == "black night":
        v = vis * 0.02 + 3 + noise
    elif scene == "sky":
        yy = np.linspace(0, 1, h)[:, None] * np.ones((1, w))
        v, ir = 180 + 30 * yy + noise, 20 + 10 * yy + rng.normal(0, 2.0, vis.shape)
    elif scene == "fog":
        v = 200 + 0.03 * (vis - vis.mean()) + noise
    else:
        v = np.full(vis.shape, 128.0) + noise
    v = np.clip(v, 0, 255).astype(np.uint8)
    ir = np.clip(ir, 0, 255).astype(np.uint8)
    r = refine_alignment(v, ir)
    assert not r.accepted
    assert np.array_equal(r.H, np.eye(3))
    assert r.reason
    assert r.confidence < 0.2


def test_refuses_aperture_problem():
    """Only horizontal edges: horizontal shift is unconstrained -> refused as ill-conditioned."""
    h, w = SIZE[1], SIZE[0]
    rng = np.random.default_rng(1)
    rows = np.cumsum(rng.integers(6, 20, 40))
    v = np.zeros((h, w), np.float64)
    for i, y in enumerate(rows[rows < h]):
        v[y:, :] += 40 if i % 2 == 0 else -40
    v = np.clip(v + 100 + rng.normal(0, 1, v.shape), 0, 255).astype(np.uint8)
    ir = np.clip(255 - v.astype(np.int16) + rng.normal(0, 1, v.shape), 0, 255).astype(np.uint8)
    r = refine_alignment(v, ir)
    assert not r.accepted
    assert "ill-conditioned" in r.reason or "aperture" in r.reason


def test_parallax_object_is_ignored(pair, base):
    """(e) An object off the working plane (pasted with 8 px of parallax in LWIR) does not move the estimate."""
    vis, ir = pair
    rng = np.random.default_rng(2)
    tex = (rng.random((12, 16)) > 0.5).astype(np.float32)
    tex = cv2.resize(tex, (96, 72), interpolation=cv2.INTER_NEAREST)  # a blocky, high-contrast near object
    v2, i2 = vis.copy(), ir.copy()
    y0, x0 = 150, 60
    v2[y0:y0 + 72, x0:x0 + 96] = (40 + 180 * tex).astype(np.uint8)
    i2[y0:y0 + 72, x0 + 8:x0 + 8 + 96] = (230 - 200 * tex).astype(np.uint8)  # hot where dark, 8 px parallax
    r = refine_alignment(v2, i2)
    assert r.accepted, r.reason
    # The object's 8 px are rejected: the estimate moves by < 10 % of it (the content change alone moves ~0.4 px).
    assert grid_error_px(r.H, base.estimate, SIZE).max() < 0.8
    assert abs(r.correction.centre[0] - base.correction.centre[0]) < 0.3


def test_beyond_max_shift_is_refused_not_clamped(pair):
    """(f) A correction beyond max_shift_px is refused (identity, with a reason), never a clamped guess."""
    vis, ir = pair
    r = refine_alignment(vis, warp(ir, similarity(SIZE, t=(12.0, 0.0))), max_shift_px=8.0)
    assert not r.accepted
    assert np.array_equal(r.H, np.eye(3))
    assert "max_shift_px" in r.reason
    ok = refine_alignment(vis, warp(ir, similarity(SIZE, t=(12.0, 0.0))), max_shift_px=20.0)
    assert ok.accepted and ok.correction.centre[0] == pytest.approx(-12.0, abs=0.5)


def test_input_validation(pair):
    vis, ir = pair
    with pytest.raises(ValueError):
        refine_alignment(vis, ir[:-1])
    with pytest.raises(ValueError):
        refine_alignment(np.dstack([vis] * 3), ir)
    with pytest.raises(ValueError):
        refine_alignment(vis, ir, model="projective")


def test_pure_function(pair):
    vis, ir = pair
    v0, i0 = vis.copy(), ir.copy()
    a, b = refine_alignment(vis, ir), refine_alignment(vis, ir)
    assert np.array_equal(vis, v0) and np.array_equal(ir, i0)
    assert np.array_equal(a.H, b.H) and a.confidence == b.confidence
    d = a.as_dict()
    assert set(d) >= {"accepted", "confidence", "H", "correction", "reason"}


def test_correction_px():
    H = similarity((800, 600), t=(2.0, -1.0), rot_deg=0.5, scale=1.01)
    c = correction_px(H, (800, 600))
    assert c.centre == pytest.approx((2.0, -1.0), abs=1e-9)
    assert c.rotation_deg == pytest.approx(0.5, abs=1e-9)
    assert c.scale == pytest.approx(1.01, abs=1e-9)
    assert c.corners.shape == (4, 2)
    assert c.max_px == pytest.approx(float(np.hypot(*c.corners.T).max()), abs=1e-9)
    assert correction_px(np.eye(3), (800, 600)).max_px == 0.0


# --------------------------------------------------------------------------- over a drive
def shifts_to_H(dx: np.ndarray, dy: np.ndarray | None = None) -> np.ndarray:
    H = np.repeat(np.eye(3)[None], len(dx), axis=0)
    H[:, 0, 2] = dx
    H[:, 1, 2] = 0.0 if dy is None else dy
    return H


def test_smoother_removes_single_frame_jump():
    """(g) A single-frame jump is removed; a refused frame takes its neighbours' value."""
    n = 60
    rng = np.random.default_rng(3)
    dx = 2.0 + rng.normal(0, 0.05, n)
    dx[30] = 10.0  # one bad (but accepted) frame
    acc = np.ones(n, bool)
    acc[40] = False  # a refused frame (its H is identity)
    H = shifts_to_H(dx)
    H[40] = np.eye(3)
    S = smooth_corrections(H, acc, size=(800, 600), sigma=5.0)
    assert S.shape == (n, 3, 3)
    assert abs(S[30, 0, 2] - 2.0) < 0.1
    assert abs(S[40, 0, 2] - 2.0) < 0.1
    assert np.abs(S[:, 0, 2] - 2.0).max() < 0.15
    assert np.abs(np.diff(S[:, 0, 2])).max() < 0.1  # no frame jumps


def test_smoother_follows_slow_drift():
    """(g) A slow drift (0 -> 6 px and 0.5 deg over the drive) is followed without lag."""
    n = 300
    rng = np.random.default_rng(4)
    t = np.arange(n) / 30.0
    drift = np.linspace(0.0, 6.0, n)
    H = np.stack([similarity((800, 600), t=(d + rng.normal(0, 0.2), 0.0), rot_deg=d / 12) for d in drift])
    acc = rng.random(n) > 0.2
    S = smooth_corrections(H, acc, size=(800, 600), times=t, sigma=0.5)
    truth = np.stack([similarity((800, 600), t=(d, 0.0), rot_deg=d / 12) for d in drift])
    err = np.array([grid_error_px(a, b, (800, 600), step=100).max() for a, b in zip(S, truth)])
    assert err.max() < 0.3, err.max()


def test_smoother_keeps_a_camera_turns_keystone():
    """The smoothed correction of a constant camera turn is that turn (a homography through the smoothed centre and
    corner displacements; an affine fit, as before, dropped the keystone: 3.6 px over the image here)."""
    P = turn(np.array([[700.0, 0, 399.5], [0, 700.0, 299.5], [0, 0, 1]]), (0.6, -0.8, 0.4))
    H = np.repeat(P[None], 20, axis=0)
    S = smooth_corrections(H, np.ones(20, bool), size=(800, 600), sigma=5.0)
    assert grid_error_px(S[10], P, (800, 600)).max() < 1e-6


def test_smoother_holds_the_trend_past_the_last_estimate_and_says_how_uncertain_it_is():
    """A static rig estimated 5 times a second up to 3.4 s of a 4 s drive, the last estimate 1.5 px off (as single
    estimates can be): the local line through the last estimates was extrapolated to the end of the drive (1.5 px
    there on a simulated static drive); now it is held from the last estimate on, and the spread says where the
    trend rests on few estimates."""
    t = np.arange(0, 4.0, 1 / 30)
    acc = np.zeros(len(t), bool)
    acc[::6] = True
    acc[t > 3.41] = False
    last = int(np.flatnonzero(acc)[-1])
    dx = np.zeros(len(t))
    dx[last] = 1.5
    S, spread = smooth_corrections(shifts_to_H(dx), acc, size=(800, 600), times=t, sigma=0.5, return_spread=True)
    assert np.allclose(S[last:, 0, 2], S[last, 0, 2])  # held, not extrapolated
    assert abs(S[last, 0, 2]) < 1.0
    middle = spread[len(t) // 2]
    assert 0.2 < middle < 0.45  # ~ 1 / sqrt(the estimates within the kernel)
    assert spread[last] > 1.5 * middle and np.all(spread[last:] == spread[last])


def test_smoother_edge_cases():
    assert np.allclose(smooth_corrections(shifts_to_H(np.ones(5)), np.zeros(5, bool), size=(800, 600)), np.eye(3))
    with pytest.raises(ValueError):
        smooth_corrections(np.eye(3), [True], size=(800, 600))


def _shifts(dx) -> np.ndarray:
    H = np.repeat(np.eye(3)[None], len(dx), axis=0)
    H[:, 0, 2] = dx
    return H


def test_significance_gate_with_hysteresis_applies_a_real_drift_from_where_the_trend_tells_it_from_zero():
    """A drift growing from zero (a linear trend, 0 -> 8 px over 4 s) with a single estimate's gate at tau = 1 px:
    the plain gate leaves up to tau unapplied while the drift passes tau..2 tau; with hysteresis the run that
    reaches 2 tau is gated at the trend's own standard error instead. A run that never reaches 2 tau (a static
    rig's content, 1.5 tau at most) is gated exactly as before, and no frame jumps in either."""
    from rig.registration.correction import significance_gate

    size = (800, 600)
    t = np.linspace(0.0, 4.0, 121)
    drift = 2.0 * t
    plain = significance_gate(_shifts(drift), size, 1.0)[:, 0, 2]
    hyst = significance_gate(_shifts(drift), size, 1.0, tau_low=0.2)[:, 0, 2]
    assert np.abs(plain - drift).max() == pytest.approx(1.0, abs=0.02)
    assert np.abs(hyst - drift).max() == pytest.approx(0.2, abs=0.02)
    assert np.allclose(hyst[drift >= 2.0], drift[drift >= 2.0], atol=1e-9) and np.allclose(hyst[drift <= 0.2], 0.0, atol=1e-9)
    # No jump: the ramp from tau_low to 2 tau_low moves the applied correction at most 3x as fast as the trend,
    # as the plain gate's ramp does.
    step = np.abs(np.diff(drift)).max()
    assert np.abs(np.diff(hyst)).max() <= 3.0 * step + 1e-9 and np.abs(np.diff(plain)).max() <= 3.0 * step + 1e-9
    bump = 1.5 * np.sin(np.pi * t / 4.0)  # never significant
    assert np.allclose(significance_gate(_shifts(bump), size, 1.0, tau_low=0.2),
                       significance_gate(_shifts(bump), size, 1.0))
    # Two runs: only the one reaching 2 tau is extended, the other keeps the plain gate.
    two = np.where(t < 1.5, 1.5 * np.sin(np.pi * t / 1.5), np.maximum(0.0, 3.0 * (t - 2.0)))
    out = significance_gate(_shifts(two), size, 1.0, tau_low=0.2)[:, 0, 2]
    first = t < 1.5
    assert np.allclose(out[first], significance_gate(_shifts(two), size, 1.0)[first, 0, 2])
    assert np.abs(out[~first] - two[~first]).max() <= 0.2 + 1e-9


def test_drift_detector():
    """(h) Fires on a correction that keeps growing, not on a constant one, vibration or an isolated outlier."""
    n = 400
    rng = np.random.default_rng(5)
    acc = np.ones(n, bool)
    growing = shifts_to_H(np.linspace(0.0, 5.0, n) + rng.normal(0, 0.3, n))
    rep = detect_drift(growing, acc, size=(800, 600))
    assert rep.drifting and rep.message == "calibration drift: recalibrate"
    assert rep.growth_px == pytest.approx(5.0, abs=0.5)
    const = shifts_to_H(np.full(n, 6.0) + rng.normal(0, 0.3, n), np.full(n, -2.0))
    const[100] = shifts_to_H(np.array([20.0]))[0]
    rep = detect_drift(const, acc, size=(800, 600))
    assert not rep.drifting and rep.growth_px < 1.0
    assert rep.level_px == pytest.approx(math.hypot(6.0, 2.0), abs=0.5)
    vib = shifts_to_H(1.5 * np.sin(np.arange(n) / 3.0))
    assert not detect_drift(vib, acc, size=(800, 600)).drifting
    assert not detect_drift(growing[:5], acc[:5], size=(800, 600)).drifting  # too few frames: no verdict


def test_sim_pairs_carry_no_systematic_refine_bias():
    """Perfectly registered sim pairs: no systematic scale (radial) bias and corner corrections near zero.

    Before the simulator showed windows, sunlit faces and lane paint in LWIR (as real LWIR does), that structure
    existed in the visible image only and pulled the estimate: median scale +1.3e-3 and 0.56 px at the corners
    of a 400x300 pair."""
    scales, corners = [], []
    for seed in range(6):
        s = render_registered(seed=seed, variant="day", size=SIZE)
        r = refine_alignment(cv2.cvtColor(s.visible, cv2.COLOR_RGB2GRAY), s.lwir8)
        assert r.accepted, r.reason
        scales.append(r.correction.scale - 1.0)
        corners.append(np.hypot(r.correction.corners[:, 0], r.correction.corners[:, 1]).max())
    assert abs(np.median(scales)) < 0.6e-3, scales
    assert np.median(corners) < 0.35, corners


def test_estimates_follow_time_not_the_frame_rate():
    """--refine-rate: the same density of estimates for a 30 fps drive registered in full or every 3rd pair."""
    from rig.registration.correction import RefineSettings, pick_estimates

    full = np.arange(0, 4.0, 1 / 30)  # 4 s at 30 pairs/s
    sparse = full[::3]
    s = RefineSettings(rate_hz=2.5)
    a, b = pick_estimates(full, s), pick_estimates(sparse, s)
    assert len(a) == len(b) == 11  # 0, 0.4, ..., 3.6 s and the last pair
    assert np.allclose(full[a[:-1]], sparse[b[:-1]], atol=0.1) and a[-1] == len(full) - 1
    assert pick_estimates(full, RefineSettings(every=6)) == list(range(0, 120, 6)) + [119]
    assert pick_estimates(np.array([]), s) == []


def test_theil_sen_matches_scipy():
    from scipy.stats import theilslopes

    from rig.registration.robust import theil_sen

    rng = np.random.default_rng(4)
    for n, ties in ((12, False), (60, False), (40, True)):
        x = np.sort(rng.uniform(0, 10, n))
        y = 0.3 * x + rng.normal(0, 0.5, n)
        if ties:
            x[5:8] = x[5]
            y[10:13] = y[10]
        ref = theilslopes(y, x)
        assert np.allclose(theil_sen(y, x), (ref.slope, ref.low_slope, ref.high_slope), rtol=1e-12, atol=1e-12)


def test_weighted_median():
    from rig.registration.robust import weighted_median

    assert weighted_median(np.array([3.0, 1.0, 2.0]), np.ones(3)) == 2.0
    assert weighted_median(np.array([1.0, 2.0]), np.ones(2)) == 1.0  # the cumulative weight first reaches half
    assert weighted_median(np.array([1.0, 2.0, 10.0]), np.array([0.1, 0.1, 5.0])) == 10.0
    assert weighted_median(np.array([5.0, -1.0]), np.array([1e-300, 1e-300])) == -1.0  # tiny weights still rank


def test_one_way_of_finding_the_along_baseline_shift_per_drive():
    """Once some estimates of a drive measured the along-baseline shift along depth, those that could only use the
    farthest blocks are refused (their bias would jump in and out of the trend); without any, nothing changes."""
    from rig.registration.correction import along_measured, consistent_far_method

    def result(method: str, accepted: bool = True) -> RefineResult:
        H = np.array([[1.0, 0, 2.0], [0, 1.0, 0], [0, 0, 1.0]])
        return RefineResult(H, accepted, 0.8, "", H, correction_px(H, (320, 240)), "rotation", far_method=method)

    mixed = {0: result("depth"), 3: result("quantile"), 6: result("depth"), 9: result("quantile", accepted=False)}
    out = consistent_far_method(mixed)
    assert along_measured(mixed) and [k for k, r in out.items() if r.accepted] == [0, 6]
    assert np.array_equal(out[3].H, np.eye(3)) and "along depth" in out[3].reason
    assert out[0] is mixed[0] and out[9] is mixed[9]
    still = {0: result("quantile"), 3: result("quantile")}
    assert not along_measured(still) and consistent_far_method(still) == still


def test_far_layer_estimates_keep_their_across_baseline_part_and_lose_their_offset_along_it():
    """A drive whose estimates mostly could not extrapolate along depth (no block far enough): the far layer's
    estimates read the drift plus their layer's parallax along the baseline. Where depth estimates exist, that
    offset is measured and removed, and everything across the baseline (here a roll) is kept, not refused."""
    from rig.registration.correction import RefineSettings, offset_far_layer
    from rig.registration.parallax import along_baseline_shift, along_baseline_warp

    size, d = (320, 240), (-0.92291622, -0.38500084)
    cam = np.array([[300.0, 0, 159.5], [0, 300.0, 119.5], [0, 0, 1]])
    times = np.arange(20) * 0.2
    truth_along = -0.8 * times  # a drift along the baseline, px
    roll = np.radians(0.1) * times / times[-1]  # and a growing roll across it

    def truth(k: int) -> np.ndarray:
        R = np.array([[math.cos(roll[k]), -math.sin(roll[k]), 0], [math.sin(roll[k]), math.cos(roll[k]), 0], [0, 0, 1]])
        c = np.array([[1, 0, 159.5], [0, 1, 119.5], [0, 0, 1.0]])
        return along_baseline_warp(truth_along[k], size, "rotation", d, cam) @ c @ R @ np.linalg.inv(c)

    def result(k: int, method: str, offset: float = 0.0) -> RefineResult:
        H = along_baseline_warp(offset, size, "rotation", d, cam) @ truth(k)
        return RefineResult(H, True, 0.8, "", H, correction_px(H, size), "rotation", far_method=method,
                            far_shift_px=0.0)

    depth = {6, 9, 12}
    results = {k: result(k, "depth") if k in depth else result(k, "quantile", offset=-2.5) for k in range(0, 20, 1)}
    out = offset_far_layer(results, times, size, RefineSettings(), d, cam)
    for k, r in out.items():
        assert r.accepted
        assert grid_error_px(r.estimate, truth(k), size).max() < 0.05, k  # the offset gone, the roll kept
        assert r.far_method == ("depth" if k in depth else "offset")
        assert along_baseline_shift(r.estimate, size, "rotation", d, cam) == pytest.approx(truth_along[k], abs=0.03)
    assert out[0].far_shift_px == pytest.approx(-2.5, abs=0.03)  # the logged far shift is the one used: less the offset
    # Too few far-layer estimates beside the depth ones to measure an offset: refused as before.
    few = {k: results[k] for k in (0, 6, 9, 12)}
    assert not offset_far_layer(few, times, size, RefineSettings(), d, cam)[0].accepted
    # A far-layer estimate long after every measured offset (the scene has changed): refused, not offset by a
    # value from another street; one a little beyond them takes the nearest ones' offset.
    late_times = np.r_[times, 4.5, 60.0]
    late = {**results, 20: result(19, "quantile", offset=-2.5), 21: result(19, "quantile", offset=-2.5)}
    out = offset_far_layer(late, late_times, size, RefineSettings(), d, cam)
    assert not out[21].accepted and "along depth" in out[21].reason
    assert out[20].accepted and out[20].far_method == "offset"
    assert along_baseline_shift(out[20].estimate, size, "rotation", d, cam) == pytest.approx(truth_along[19], abs=0.03)
    # Without depth estimates nothing changes.
    layer_only = {k: r for k, r in results.items() if k not in depth}
    assert offset_far_layer(layer_only, times, size, RefineSettings(), d, cam) == layer_only


def test_refine_summary_and_report_say_why_estimates_were_refused(tmp_path):
    """A drive where every estimate is refused (the demo's night street: too little shared structure) says so
    in the manifest and on the console, not just '0 % accepted'."""
    from rich.console import Console

    from rig.registration.cli import report
    from rig.registration.correction import CorrectionTrack
    from rig.registration.pipeline import RegisterResult
    from rig.registration.temporal import DriftReport

    def refused(reason: str) -> RefineResult:
        return RefineResult(np.eye(3), False, 0.0, reason, np.eye(3), correction_px(np.eye(3), SIZE), "rotation")

    results = {0: refused("too little shared structure (2.1 % of pixels)"),
               3: refused("too little shared structure (1.3 % of pixels)"),
               6: refused("ill-conditioned: aperture problem (condition 0.01)")}
    track = CorrectionTrack(np.repeat(np.eye(3)[None], 8, axis=0), results,
                            DriftReport(False, 0.0, 0.0, 0.0, 0, "too few accepted frames (0) to judge drift"))
    summary = track.summary(SIZE)
    assert summary["refused"] == {"too little shared structure": 2, "ill-conditioned: aperture problem": 1}
    console = Console(record=True, width=300)
    report(RegisterResult(tmp_path, written=8, refine=summary), console)
    text = console.export_text()
    assert "0 % of 3 estimates accepted, 2 refused: too little shared structure, 1 refused: ill-conditioned" in text


def test_shared_frames_compute_each_frame_once_and_drop_it_after_its_last_use():
    """--refine's estimate and the earlier pick's flow both need a pick's low-resolution visible image: it is
    made once, and not kept past its last use (memory stays bounded over a long drive)."""
    from concurrent.futures import ThreadPoolExecutor

    from rig.errors import RigError
    from rig.registration.correction import SharedFrames

    made = []

    def make(k):
        made.append(k)
        if k == 7:
            raise RigError("frame 7 is corrupt")
        return np.full((2, 2), k, np.uint8)

    uses = {k: 2 for k in range(0, 6)} | {6: 1, 7: 2}
    frames = SharedFrames(make, uses)
    order = [k for k in range(7) for _ in range(uses[k])]
    assert [int(frames.get(k)[0, 0]) for k in order] == order
    assert made == list(range(7)) and frames._cache == {}  # each made once, none kept after its last use
    for _ in range(2):
        with pytest.raises(RigError):
            frames.get(7)  # a corrupt frame raises for every use; read once, dropped after its last use
    assert made.count(7) == 1 and frames._cache == {}
    # From two threads, both uses of each frame at once (what two workers do with consecutive picks): each frame
    # is still made once, the one racing the first waits for its result.
    import threading
    import time

    made.clear()
    started = threading.Barrier(2)

    def slow(k):
        made.append(k)
        time.sleep(0.02)
        return np.full((2, 2), k, np.uint8)

    frames = SharedFrames(slow, {k: 2 for k in range(6)})

    def racing(k):
        started.wait()
        return int(frames.get(k)[0, 0])

    with ThreadPoolExecutor(2) as pool:
        for k in range(6):
            assert list(pool.map(racing, [k, k])) == [k, k]
    assert sorted(made) == list(range(6)) and frames._cache == {}


def test_refine_settings_name_what_is_wrong():
    from rig.errors import RigError
    from rig.registration.correction import RefineSettings

    for bad, word in ((dict(hysteresis=-1.0), "hysteresis"), (dict(significance=float("nan")), "significance"),
                      (dict(reference="middle"), "reference"), (dict(sigma_s=0.0), "sigma_s")):
        with pytest.raises(RigError, match=word):
            RefineSettings(**bad)


def test_a_drive_whose_estimates_were_all_refused_gets_no_correction_and_no_warning():
    """The demo's night street: every estimate refused (too little shared structure). Nothing scatters, so
    there is nothing to gate: identity everywhere, and no NaN from the gate's hysteresis (inf spread x 0 scatter
    printed a RuntimeWarning to the console)."""
    import warnings

    from rig.registration.correction import RefineSettings, track_from_estimates

    size = (800, 600)
    refused = {k: RefineResult(np.eye(3), False, 0.0, "too little shared structure", np.eye(3),
                               correction_px(np.eye(3), size), "rotation") for k in range(0, 12, 3)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        track = track_from_estimates(refused, np.arange(12) / 10.0, size, RefineSettings())
    assert np.allclose(track.H, np.eye(3)) and track.gate_px == 0.0 and not track.drift.drifting
