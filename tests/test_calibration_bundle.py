"""The joint bundle adjustment against scipy.optimize.least_squares on a small two-camera problem.

Both solvers minimise the same sum of squared reprojection residuals over the
same parameters (per camera fx fy cx cy k1 k2 p1 p2 k3; the LWIR pose
``X_lwir = R_e X_vis + t_e`` as rotation vector + translation; each board pose
in the visible frame). The residuals for scipy are written here independently
with ``cv2.projectPoints``, so the comparison also checks our projection model.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.optimize import least_squares

from rig.calibration.bundle import bundle_adjust
from rig.calibration.intrinsics import IntrinsicsResult, ViewPoints

K_V = np.array([[820.0, 0, 322.0], [0, 818.0, 241.0], [0, 0, 1]])
D_V = np.array([-0.12, 0.06, 0.0008, -0.0006, -0.01])
K_L = np.array([[510.0, 0, 158.0], [0, 509.0, 129.0], [0, 0, 1]])
D_L = np.array([-0.25, 0.12, -0.001, 0.0012, -0.02])
RV_E, T_E = np.array([0.010, -0.020, 0.005]), np.array([-0.10, 0.004, 0.002])  # X_lwir = R_e X_vis + t_e
SIZES = {"visible": (640, 480), "lwir": (320, 256)}
OBJ = np.array([[x * 0.04, y * 0.04, 0.0] for y in range(5) for x in range(7)])


def _board_poses(n: int, rng) -> list[np.ndarray]:
    poses = []
    for i in range(n):
        rv = np.radians([rng.uniform(-30, 30), rng.uniform(-30, 30), rng.uniform(-10, 10)])
        R = cv2.Rodrigues(rv)[0]
        t = np.array([rng.uniform(0.0, 0.1), rng.uniform(-0.04, 0.04), rng.uniform(0.9, 1.1)]) - R @ [0.12, 0.08, 0]
        poses.append(np.r_[cv2.Rodrigues(R)[0].ravel(), t])
    return poses


def _project_all(params: np.ndarray, n_views: int) -> dict[str, np.ndarray]:
    """Pixels of every board point in every view, per camera, from the parameter vector (cv2.projectPoints)."""
    iv, il, ext, P = params[:9], params[9:18], params[18:24], params[24:].reshape(n_views, 6)
    out = {"visible": [], "lwir": []}
    Re = cv2.Rodrigues(ext[:3])[0]
    for p in P:
        Rb = cv2.Rodrigues(p[:3])[0]
        Xv = OBJ @ Rb.T + p[3:]
        for cam, intr, X in (("visible", iv, Xv), ("lwir", il, Xv @ Re.T + ext[3:])):
            K = np.array([[intr[0], 0, intr[2]], [0, intr[1], intr[3]], [0, 0, 1]])
            px, _ = cv2.projectPoints(X, np.zeros(3), np.zeros(3), K, intr[4:9])
            out[cam].append(px.reshape(-1, 2))
    return {c: np.array(v) for c, v in out.items()}


def _intr(K, D):
    return np.r_[K[0, 0], K[1, 1], K[0, 2], K[1, 2], D]


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(3)
    n = 6
    truth = np.concatenate([_intr(K_V, D_V), _intr(K_L, D_L), RV_E, T_E, *_board_poses(n, rng)])
    obs = {c: v + rng.normal(0, 0.1, v.shape) for c, v in _project_all(truth, n).items()}
    for c, v in obs.items():
        assert (v >= 0).all() and (v < SIZES[c]).all()  # every corner inside its image
    # Start: intrinsics and extrinsics perturbed, board poses from PnP with the perturbed intrinsics.
    start_v = _intr(K_V, D_V) * [1.01, 0.99, 1.0, 1.0, 0.8, 0.8, 1, 1, 0] + [0, 0, 2.0, -1.5, 0, 0, 0, 0, 0]
    start_l = _intr(K_L, D_L) * [0.99, 1.01, 1.0, 1.0, 0.8, 0.8, 1, 1, 0] + [0, 0, -1.0, 1.0, 0, 0, 0, 0, 0]
    results = {}
    for cam, s in (("visible", start_v), ("lwir", start_l)):
        K = np.array([[s[0], 0, s[2]], [0, s[1], s[3]], [0, 0, 1]])
        views, poses, res = [], {}, {}
        for i in range(n):
            name = f"v{i}"
            ok, rv, tv = cv2.solvePnP(OBJ, obs[cam][i], K, s[4:9])
            assert ok
            poses[name] = (cv2.Rodrigues(rv)[0], tv.ravel())
            views.append(ViewPoints(name, obs[cam][i], OBJ, np.arange(len(OBJ))))
            res[name] = np.zeros((len(OBJ), 2))
        results[cam] = IntrinsicsResult(cam, "pinhole", SIZES[cam], K, s[4:9].copy(), 0.1, {}, {}, poses, views, res)
    R_e0 = cv2.Rodrigues(RV_E + [0.002, -0.003, 0.001])[0]
    t_e0 = T_E + [0.003, -0.002, 0.001]
    R0, t0 = R_e0.T, -R_e0.T @ t_e0  # bundle_adjust takes X_vis = R X_lwir + t
    return n, obs, results, (R0, t0), truth


def test_bundle_adjustment_matches_scipy_least_squares(problem):
    n, obs, res, (R0, t0), truth = problem
    ours = bundle_adjust(res["visible"], res["lwir"], R0, t0)

    def residuals(x):
        p = _project_all(x, n)
        return np.concatenate([(p[c] - obs[c]).ravel() for c in ("visible", "lwir")])

    x0 = np.concatenate([_intr(res["visible"].K, res["visible"].dist), _intr(res["lwir"].K, res["lwir"].dist),
                         cv2.Rodrigues(R0.T)[0].ravel(), -R0.T @ t0]
                        + [np.r_[cv2.Rodrigues(res["visible"].poses[f"v{i}"][0])[0].ravel(), res["visible"].poses[f"v{i}"][1]]
                           for i in range(n)])
    ref = least_squares(residuals, x0, method="lm", x_scale="jac", xtol=1e-15, ftol=1e-15, gtol=1e-15)
    assert ref.success
    # Our solution as a parameter vector of the same layout.
    Re = ours.R.T
    x_ours = np.concatenate([_intr(ours.K["visible"], ours.dist["visible"]), _intr(ours.K["lwir"], ours.dist["lwir"]),
                             cv2.Rodrigues(Re)[0].ravel(), -Re @ ours.t]
                            + [np.r_[cv2.Rodrigues(ours.poses["visible"][f"v{i}"][0])[0].ravel(), ours.poses["visible"][f"v{i}"][1]]
                               for i in range(n)])
    cost_ours, cost_ref = float(residuals(x_ours) @ residuals(x_ours)), float(ref.fun @ ref.fun)
    assert cost_ref < 0.5 * float(residuals(x0) @ residuals(x0))  # the start was not already optimal
    assert cost_ours == pytest.approx(cost_ref, rel=1e-9)
    n_obs = 2 * n * len(OBJ)
    assert ours.rms_px["visible"] ** 2 * n * len(OBJ) + ours.rms_px["lwir"] ** 2 * n * len(OBJ) == pytest.approx(cost_ours, rel=1e-9)
    assert ours.observations == n_obs and ours.views == n
    # Same minimum, parameter by parameter: the intrinsics and the extrinsics agree to 0.2 % of their standard
    # error (the cost surface is flat along those, so that is the meaningful scale), the board poses closely.
    std = np.r_[ours.std_intrinsics["visible"], ours.std_intrinsics["lwir"], np.radians(ours.std_rotation_deg),
                ours.std_translation_m]
    assert (std > 0).all()
    np.testing.assert_array_less(np.abs(x_ours[:24] - ref.x[:24]), 2e-3 * std)
    np.testing.assert_allclose(x_ours[24:], ref.x[24:], atol=2e-6)
    # And the problem is posed well enough to mean something: focal lengths and principal points within
    # 4 standard errors of the truth, and within 1 %.
    idx = [0, 1, 2, 3, 9, 10, 11, 12]
    np.testing.assert_array_less(np.abs(ref.x[idx] - truth[idx]), 4 * std[idx])
    assert np.abs(ref.x[[0, 1, 9, 10]] / truth[[0, 1, 9, 10]] - 1).max() < 0.01


def test_huber_loss_bounds_bad_corners(problem):
    """A few corners 8 px off: least squares follows them, the Huber loss (issue 10) barely moves."""
    import dataclasses

    n, obs, res, (R0, t0), truth = problem
    lw = res["lwir"]
    views = list(lw.views)
    bad = views[0].image_points.copy()
    bad[:4] += 8.0
    views[0] = ViewPoints(views[0].name, bad, views[0].object_points, views[0].ids)
    lw_bad = dataclasses.replace(lw, views=views)
    errs = {}
    for loss in ("linear", "huber"):
        j = bundle_adjust(res["visible"], lw_bad, R0, t0, loss=loss, huber_px={"visible": 0.25, "lwir": 0.25})
        errs[loss] = abs(j.K["lwir"][0, 2] - K_L[0, 2]) + abs(j.K["lwir"][1, 2] - K_L[1, 2])
        if loss == "huber":
            assert 0 < j.downweighted < 0.1 and j.loss == "huber"
    assert errs["huber"] < 0.5 * errs["linear"], errs
    with pytest.raises(ValueError, match="unknown loss"):
        bundle_adjust(res["visible"], lw, R0, t0, loss="cauchy")
