"""Plane + parallax (rig.registration.parallax) and the baseline-aware refinement.

The property that matters: a change of the scene's depths moves registered LWIR content only along the
epipolar direction, and that must not move the estimate; a real misalignment must still be recovered.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np
import pytest

from regfixtures import lwir_to_visible, truth_calibration
from rig.calibration.homography import parallax_table
from rig.calibration.results import load_calibration
from rig.registration.geometry import RegistrationGeometry
from rig.registration.parallax import (_translated, baseline_parallax, block_flow, eliminate_along, far_shift,
                                      motion_inverse_depth, observable_basis)
from rig.registration.refine import _features, grid_error_px, refine_alignment
from rig.sim import render_registered

SIZE = (400, 300)
DIR = (-0.92292, -0.38500)  # the simulated rig's epipolar direction (12 x 5 cm baseline)


def _shift(img: np.ndarray, s: float, d=DIR) -> np.ndarray:
    """Content moved by ``s`` px along ``d``."""
    M = np.float32([[1, 0, s * d[0]], [0, 1, s * d[1]]])
    return cv2.warpAffine(img, M, (img.shape[1], img.shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _similarity(t=(0.0, 0.0), rot_deg=0.0, size=SIZE) -> np.ndarray:
    w, h = size
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    a = math.radians(rot_deg)
    L = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    P = np.eye(3)
    P[:2, :2] = L
    P[:2, 2] = c + np.asarray(t) - L @ c
    return P


@pytest.fixture(scope="module")
def pair():
    s = render_registered(seed=5, variant="day", size=SIZE)
    return cv2.cvtColor(s.visible, cv2.COLOR_RGB2GRAY), s.lwir8


def _with_near_layer(vis, ir, parallax_px: float, box=(40, 120, 200, 150)):
    """LWIR whose lower-left region (a near layer: cars, kerb, people) shows ``parallax_px`` along DIR."""
    x, y, w, h = box
    out = ir.copy()
    moved = _shift(ir, parallax_px)
    out[y:y + h, x:x + w] = moved[y:y + h, x:x + w]
    return vis, out


def test_baseline_parallax_of_the_sim_rig(sim_rig, tmp_path):
    """Direction: along -(K t) (the image of the baseline, nearer content moves away from the LWIR camera's side);
    infinity parallax: what calibration.homography.parallax_table reports at infinity."""
    cal = load_calibration(truth_calibration(sim_rig, tmp_path / "calibration.yaml"))
    geom = RegistrationGeometry.from_calibration(cal)
    p = baseline_parallax(geom, cal.extrinsics.R, cal.extrinsics.t)
    R, t = lwir_to_visible(sim_rig)
    expect = -(geom.K_v @ t)[:2]
    expect /= np.linalg.norm(expect)
    assert np.allclose(p.direction, expect, atol=2e-3), (p.direction, expect)
    table = parallax_table(geom.K_v, geom.K_l, R, t, geom.H, geom.crop, geom.output_size, distances=(math.inf,))
    assert p.infinity_px < 0 and abs(-p.infinity_px - table[math.inf]["mean"]) < 0.05 * table[math.inf]["mean"]
    assert p.spread_deg < 1.0  # side-by-side cameras: the epipole is far away
    assert baseline_parallax(geom, cal.extrinsics.R, np.zeros(3)) is None


def test_observable_basis():
    for model, hidden in (("similarity", 1), ("affine", 3)):
        Q, Qs = observable_basis(model, DIR)
        n = Q.shape[0]
        assert Q.shape == (n, n - hidden) and np.allclose(Q.T @ Q, np.eye(n - hidden))
        assert abs(Q[:2].T @ np.array(DIR)).max() < 1e-9  # no translation along the baseline is measured
        assert Qs.shape == (n, 1) and abs(Qs[:2, 0] @ np.array(DIR)) < 1e-9
    Q, Qs = observable_basis("similarity", None)
    assert np.array_equal(Q, np.eye(4)) and np.array_equal(Qs, np.eye(4)[:, :2])
    # rigid: the similarity's parameters with the scale held; rotation: tx, ty, roll (the shift along is hidden)
    Q, Qs = observable_basis("rigid", None)
    assert Q.shape == (4, 3) and not Q[2].any()
    Q, Qs = observable_basis("rigid", DIR)
    assert Q.shape == (4, 2) and np.allclose(Q.T @ Q, np.eye(2)) and abs(Q[2]).max() < 1e-9
    assert abs(Q[:2].T @ np.array(DIR)).max() < 1e-9
    Q, Qs = observable_basis("rotation", DIR)
    assert Q.shape == (3, 2) and np.allclose(Q.T @ Q, np.eye(2)) and abs(Q[:2].T @ np.array(DIR)).max() < 1e-9
    assert Qs.shape == (3, 1) and abs(Qs[:2, 0] @ np.array(DIR)) < 1e-9


def test_eliminate_along_removes_only_the_along_component():
    rng = np.random.default_rng(0)
    gx, gy = rng.normal(size=(50, 2)).astype(np.float32), rng.normal(size=(50, 2)).astype(np.float32)
    v = gx * DIR[0] + gy * DIR[1]
    n = (-DIR[1], DIR[0])
    w = gx * n[0] + gy * n[1]
    SD = rng.normal(size=(50, 2, 4)).astype(np.float32)
    r_along, _ = eliminate_along(v * 3.0, SD, gx, gy, DIR)
    assert np.linalg.norm(r_along) < 0.01 * np.linalg.norm(v * 3.0)  # a pure shift along the baseline: ~nothing left
    r_across, _ = eliminate_along(w * 3.0, SD, gx, gy, DIR)
    assert np.linalg.norm(r_across) > 0.3 * np.linalg.norm(w * 3.0)  # one across it survives


def test_translated_is_the_inverse_map_warp_it_replaces():
    """far_shift's row-wise translation equals cv2.warpAffine's (inverse map, zero border) on its 1/32 px grid,
    borders included, for whole, fractional and negative shifts and a crop of the image."""
    rng = np.random.default_rng(3)
    img = rng.normal(0, 1, (61, 83)).astype(np.float32)
    pad = 8
    padded = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    for tx, ty in [(0, 0), (3, -2), (0.40625, 0), (0, -1.96875), (-5.53125, 4.09375), (6.96875, -6.5)]:
        want = cv2.warpAffine(img, np.float32([[1, 0, tx], [0, 1, ty]]), (83, 61),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT)
        got = _translated(padded, pad, tx, ty, (48, 80))
        assert got.shape == (48, 80) and got.dtype == np.float32
        np.testing.assert_allclose(got, want[:48, :80], atol=2e-6)


def test_far_shift_finds_the_farthest_layer(pair):
    """Two layers: far content moved by -2 px along the baseline, the near left half by +6 px: the far end is -2,
    not the noise tail below it and not the median."""
    vis, _ = pair
    F, _ = _features(vis.astype(np.float32), 1.0)
    warped = _shift(F, -2.0)
    warped[:, :200] = _shift(F, 6.0)[:, :200]
    fs = far_shift(F, warped, DIR, max_shift=10.0)
    assert fs.shift is not None and fs.blocks >= 12
    assert abs(fs.shift + 2.0) < 0.1, fs
    assert fs.median > fs.shift + 1.0
    alone = far_shift(F, _shift(F, -2.0), DIR, max_shift=10.0)
    assert abs(alone.shift + 2.0) < 0.1, alone  # one depth: the far layer is all of it (no tail bias)
    assert far_shift(F, np.zeros_like(F), DIR, max_shift=10.0).shift is None  # nothing matches: no guess


def _forward_flow(shape, rho_of_xy, e=(212.0, 131.0), r=(0.7, -0.3)) -> np.ndarray:
    """Dense flow of a camera moving towards ``e`` and turning slightly: ``r + rho(x, y) (x - e)``."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    rho = rho_of_xy(x, y)
    return np.stack([r[0] + rho * (x - e[0]), r[1] + rho * (y - e[1])], axis=-1).astype(np.float32)


RHO_BANDS = np.array([0.05, 0.1, 0.15, 0.22, 0.3])  # inverse depth of five horizontal bands, top to bottom


def _depth_bands(F: np.ndarray) -> tuple[np.ndarray, Callable]:
    """``F`` with each of five horizontal bands shifted along the baseline by ``-2 + 20 rho`` (the shift at
    infinity is -2; the farthest band says -1), and ``rho(x, y)`` of the bands."""
    h = F.shape[0]
    bands = np.minimum((np.arange(h) * 5) // h, 4)
    warped = np.empty_like(F)
    for b in range(5):
        rows = bands == b
        warped[rows] = _shift(F, -2.0 + 20.0 * RHO_BANDS[b])[rows]
    return warped, lambda x, y: RHO_BANDS[np.minimum((y.astype(int) * 5) // h, 4)]


def test_motion_inverse_depth_recovers_rho_with_the_focus_of_expansion_and_turn_unknown():
    rng = np.random.default_rng(2)
    x = np.stack(np.meshgrid(np.arange(8, 400, 16.0), np.arange(8, 300, 16.0)), axis=-1).reshape(-1, 2)
    rho = 0.02 + 0.2 * (x[:, 1] / 300.0) ** 2  # nearer towards the bottom (the road)
    e, r = np.array([212.0, 131.0]), np.array([0.7, -0.3])
    f = r + rho[:, None] * (x - e) + rng.normal(0, 0.02, x.shape)
    movers = rng.choice(len(x), 8, replace=False)
    f[movers] += rng.normal(0, 3.0, (8, 2))  # other cars: not the static scene
    est = motion_inverse_depth(x, f)
    good = np.isfinite(est)
    assert not good[movers].any()  # left out, not given a wrong depth
    assert np.count_nonzero(good) > 0.8 * len(x)
    assert np.abs(est[good] - rho[good]).max() < 0.005
    assert not good[np.linalg.norm(x - e, axis=1) < 20].any()  # at the focus of expansion: undetermined
    assert np.isnan(motion_inverse_depth(x, np.zeros_like(f))).all()  # at rest: nothing
    assert np.isnan(motion_inverse_depth(x, -(rho[:, None] * (x - e)))).all()  # contraction (reversing): nothing


def test_far_shift_does_not_read_a_car_moving_with_us_as_infinity(pair):
    """The depth bands of the test below, and in the left third a car ahead moving with us: its flow is the turn
    alone (no expansion: an inverse depth of zero, "infinity"), its shift that of a near object. Those blocks sit
    where the line is read and lifted its intercept above the far layer, which nothing static can be beyond
    (4-5 px at the output on a simulated drive); such a line is not taken."""
    vis, _ = pair
    F, _ = _features(vis.astype(np.float32), 1.0)
    w = F.shape[1]
    warped, rho = _depth_bands(F)
    car = np.zeros(F.shape[:2], bool)
    car[:, : w // 3] = True
    warped[car] = _shift(F, 1.5)[car]
    flow = _forward_flow(F.shape[:2], lambda x, y: np.where(x < w // 3, 0.0, rho(x, y)))
    got = far_shift(F, warped, DIR, max_shift=10.0, flow=flow)
    assert got.shift is not None and got.shift <= -0.9, got  # the far layer (-1), not a line lifted above it


def test_motion_inverse_depth_gives_nothing_for_flow_that_is_only_noise():
    """A car at rest (or two frames of one instant): the flow is noise, whose component along the rays of a fitted
    focus of expansion is positive as often as not. Before the expansion had to stand out from the noise, every
    one of these gave "depths" (and the drive's shift along the baseline a 5-7 px error on the simulator)."""
    x = np.stack(np.meshgrid(np.arange(8, 400, 16.0), np.arange(8, 300, 16.0)), axis=-1).reshape(-1, 2)
    e = np.array([212.0, 131.0])
    for seed in range(10):
        rng = np.random.default_rng(seed)
        f = 0.0005 * (x - e) + rng.normal(0, 0.02, x.shape)  # 0.05 px of expansion at 100 px, in 0.02 px of noise
        assert np.isnan(motion_inverse_depth(x, f)).all(), seed
    slow = 0.01 * (x - e) + np.random.default_rng(0).normal(0, 0.02, x.shape)  # ~1 px at 100 px: a slow car
    assert np.count_nonzero(np.isfinite(motion_inverse_depth(x, slow))) > 0.8 * len(x)


def test_far_shift_extrapolates_to_infinity_along_depth(pair):
    """Five depth bands (inverse depth 0.05-0.3, the farthest 20 m for 0.2 s at 5 m/s... any scale) shifted along
    the baseline by -2 + 20 rho: the farthest blocks say -1 (their own parallax); the line through
    (inverse depth, shift) says -2, the shift at infinity. Without forward motion: the farthest blocks."""
    vis, _ = pair
    F, _ = _features(vis.astype(np.float32), 1.0)
    h = F.shape[0]
    warped, rho = _depth_bands(F)
    flow = _forward_flow(F.shape[:2], rho)
    plain = far_shift(F, warped, DIR, max_shift=10.0)
    assert plain.method == "quantile" and abs(plain.shift + 1.0) < 0.2, plain
    deep = far_shift(F, warped, DIR, max_shift=10.0, flow=flow)
    assert deep.method == "depth" and abs(deep.shift + 2.0) < 0.15, deep
    at_rest = far_shift(F, warped, DIR, max_shift=10.0, flow=np.zeros_like(flow))
    assert at_rest.method == "quantile" and at_rest.shift == plain.shift
    centres, fb = block_flow(flow, 16)
    assert centres.shape == fb.shape == (h // 16, F.shape[1] // 16, 2)


def test_depth_change_does_not_move_the_baseline_aware_estimate(pair):
    """The same pair with its near layer at 3 px and at 11 px of parallax: the baseline-aware estimate stays put
    (< 0.15 px over the image); the plain one, which cannot tell parallax from misalignment, moves."""
    vis, ir = pair
    a = _with_near_layer(vis, ir, 3.0)
    b = _with_near_layer(vis, ir, 11.0)
    ra, rb = (refine_alignment(*x, parallax_dir=DIR) for x in (a, b))
    assert ra.accepted and rb.accepted, (ra.reason, rb.reason)
    assert grid_error_px(ra.estimate, rb.estimate, SIZE).max() < 0.15
    pa, pb = (refine_alignment(*x) for x in (a, b))
    assert grid_error_px(pa.estimate, pb.estimate, SIZE).max() > 2 * grid_error_px(ra.estimate, rb.estimate, SIZE).max()


def test_baseline_aware_estimate_recovers_a_real_misalignment(pair):
    """A turned LWIR camera (shift across and along the baseline plus a roll) over a scene with a near layer:
    the across part and the roll come from every structure, the along part from the far structure."""
    vis, ir = pair
    _, layered = _with_near_layer(vis, ir, 7.0)
    P = _similarity(t=(1.6, -1.2), rot_deg=0.35)  # content displacement of the misalignment
    moved = cv2.warpPerspective(layered, P, (SIZE[0], SIZE[1]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    r = refine_alignment(vis, moved, parallax_dir=DIR)
    assert r.accepted, r.reason
    assert r.far_shift_px is not None and r.far_blocks >= 12
    err = grid_error_px(r.estimate, np.linalg.inv(P), SIZE, step=20.0)
    assert np.median(err) < 0.3 and err.max() < 0.5, (np.median(err), err.max())
    plain = grid_error_px(refine_alignment(vis, moved).estimate, np.linalg.inv(P), SIZE, step=20.0)
    assert np.median(plain) > 2 * np.median(err)  # the near layer pulls the plain estimate


@pytest.mark.parametrize("parallax_px", [8.0, 12.0])
def test_a_near_building_beyond_the_linear_range_does_not_tilt_the_estimate(pair, parallax_px):
    """A tall near layer on the right (a building beside the car) displaced by 8-12 px along the baseline: beyond
    the features' linear range, so the per-pixel elimination alone leaves part of it to pull roll and tilt (grid
    error about 1 px median); the parallax-compensated pass takes each block's own shift out first."""
    vis, ir = pair
    _, layered = _with_near_layer(vis, ir, parallax_px, box=(260, 20, 130, 260))
    P = _similarity(t=(1.0, -0.8), rot_deg=0.3)
    moved = cv2.warpPerspective(layered, P, SIZE, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    errs = {}
    for compensate in (False, True):
        r = refine_alignment(vis, moved, parallax_dir=DIR, compensate_parallax=compensate)
        assert r.accepted, r.reason
        errs[compensate] = grid_error_px(r.estimate, np.linalg.inv(P), SIZE)
    assert np.median(errs[True]) < 0.7 and errs[True].max() < 1.5, (np.median(errs[True]), errs[True].max())
    assert np.median(errs[True]) < 0.75 * np.median(errs[False]), (np.median(errs[True]), np.median(errs[False]))
