"""Joint (stereo) calibration of LWIR relative to visible, with fixed intrinsics.

Convention of :class:`StereoResult`: ``X_visible = R @ X_lwir + t`` (metres):
the transform *from* the LWIR camera frame *to* the visible (= rig) frame.
The rig file's LWIR pose (``X_lwir = R_p X_rig + t_p``) is its inverse:
``R_p = R.T``, ``t_p = -R.T @ t``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from rig.calibration.intrinsics import IntrinsicsResult, ViewPoints, undistort_pixels
from rig.errors import RigError


@dataclass
class StereoResult:
    """Extrinsics lwir -> visible with uncertainty and fit quality.

    ``std_rotation_deg``/``std_translation_m``: standard errors per axis, from
    the spread of the per-view relative poses divided by sqrt(views).
    ``epipolar_px``: distances of undistorted points to their epipolar lines
    (``visible``: in the visible image, ``lwir``: in the LWIR image), mean and RMS.
    """

    R: np.ndarray
    t: np.ndarray
    rms_px: float
    std_rotation_deg: np.ndarray
    std_translation_m: np.ndarray
    epipolar_px: dict
    views: list[str]
    pairs: list[tuple[ViewPoints, ViewPoints]]  # (visible, lwir) with common ids
    per_view_rms: dict[str, float]

    @property
    def baseline_m(self) -> float:
        return float(np.linalg.norm(self.t))


def common_points(a: ViewPoints, b: ViewPoints) -> tuple[ViewPoints, ViewPoints]:
    """Restrict two views of the same board to the board points both saw, in the same order."""
    common, ia, ib = np.intersect1d(a.ids, b.ids, return_indices=True)
    return a.subset(ia), b.subset(ib)


def skew(v: np.ndarray) -> np.ndarray:
    x, y, z = np.ravel(v)
    return np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]], np.float64)


def fundamental_matrix(K_v: np.ndarray, K_l: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``F`` with ``x_v^T F x_l = 0`` for undistorted pixels, given ``X_v = R X_l + t``."""
    E = skew(t) @ R
    return np.linalg.inv(K_v).T @ E @ np.linalg.inv(K_l)


def epipolar_errors(F: np.ndarray, x_v: np.ndarray, x_l: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Point-to-epipolar-line distances ``(in visible, in lwir)`` for undistorted pixels ``(N, 2)``."""
    hv = np.c_[x_v, np.ones(len(x_v))]
    hl = np.c_[x_l, np.ones(len(x_l))]
    lv = hl @ F.T  # lines in the visible image: F x_l
    ll = hv @ F  # lines in the lwir image: F^T x_v
    dv = np.abs((hv * lv).sum(1)) / np.hypot(lv[:, 0], lv[:, 1])
    dl = np.abs((hl * ll).sum(1)) / np.hypot(ll[:, 0], ll[:, 1])
    return dv, dl


def rotation_angle_deg(R: np.ndarray) -> float:
    """Angle of a rotation matrix, degrees."""
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0))))


def stereo_calibrate(vis: IntrinsicsResult, lwir: IntrinsicsResult, vis_views: dict[str, ViewPoints],
                     lwir_views: dict[str, ViewPoints], min_views: int = 3) -> StereoResult:
    """Estimate ``X_visible = R X_lwir + t`` from simultaneous views (same view names), intrinsics fixed.

    ``vis_views``/``lwir_views``: board points per view name (after each
    camera's own rejection). Only views where both saw at least 6 common points are used.
    """
    if vis.model != lwir.model:
        raise RigError(f"joint calibration needs one camera model for both cameras ({vis.model} vs {lwir.model})")
    names = [n for n in vis_views if n in lwir_views]
    pairs = []
    for n in names:
        a, b = common_points(vis_views[n], lwir_views[n])
        if len(a.ids) >= 6:
            pairs.append((a, b))
    if len(pairs) < min_views:
        raise RigError(f"too few simultaneous views with the board in both cameras: {len(pairs)} (need at least {min_views})")
    obj = [a.object_points.astype(np.float32).reshape(-1, 1, 3) for a, _ in pairs]
    iv = [a.image_points.astype(np.float32).reshape(-1, 1, 2) for a, _ in pairs]
    il = [b.image_points.astype(np.float32).reshape(-1, 1, 2) for _, b in pairs]
    crit = (cv2.TERM_CRITERIA_COUNT + cv2.TERM_CRITERIA_EPS, 100, 1e-12)
    if vis.model == "fisheye":
        out = cv2.fisheye.stereoCalibrate(obj, iv, il, vis.K, vis.dist[:4], lwir.K, lwir.dist[:4], vis.image_size,
                                          flags=cv2.fisheye.CALIB_FIX_INTRINSIC, criteria=crit)
        rms, R2, T2 = out[0], out[5], out[6]
        per_view = np.full(len(pairs), np.nan)
    else:
        out = cv2.stereoCalibrateExtended(obj, iv, il, vis.K, vis.dist, lwir.K, lwir.dist, vis.image_size, None, None,
                                          flags=cv2.CALIB_FIX_INTRINSIC, criteria=crit)
        rms, R2, T2, per_view = out[0], out[5], out[6], out[-1]
        per_view = np.sqrt((np.asarray(per_view, np.float64).reshape(len(pairs), -1) ** 2).mean(axis=1))
    # OpenCV: X_lwir = R2 X_vis + T2. Ours: X_vis = R X_lwir + t.
    R = R2.T
    t = -R2.T @ T2.ravel()
    # Uncertainty: spread of the per-view relative poses (each from the two cameras' board poses).
    rel_r, rel_t = [], []
    for a, b in pairs:
        pv = _pose(a, vis)
        pl = _pose(b, lwir)
        Rv, tv = pv
        Rl, tl = pl
        Ri = Rv @ Rl.T
        ti = tv - Ri @ tl
        dr, _ = cv2.Rodrigues(Ri @ R.T)
        rel_r.append(np.degrees(dr.ravel()))
        rel_t.append(ti - t)
    n = len(pairs)
    std_r = np.std(rel_r, axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.full(3, np.nan)
    std_t = np.std(rel_t, axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.full(3, np.nan)
    epi = epipolar_summary(vis, lwir, pairs, R, t)
    return StereoResult(R, t, float(rms), std_r, std_t, epi, [a.name for a, _ in pairs], pairs,
                        {a.name: float(e) for (a, _), e in zip(pairs, per_view)})


def epipolar_summary(vis: IntrinsicsResult, lwir: IntrinsicsResult, pairs: list[tuple[ViewPoints, ViewPoints]],
                     R: np.ndarray, t: np.ndarray) -> dict:
    """Mean and RMS distance (px) of undistorted points to their epipolar lines, in each image."""
    F = fundamental_matrix(vis.K, lwir.K, R, t)
    xv = np.concatenate([undistort_pixels(a.image_points, vis.K, vis.dist, vis.model) for a, _ in pairs])
    xl = np.concatenate([undistort_pixels(b.image_points, lwir.K, lwir.dist, lwir.model) for _, b in pairs])
    dv, dl = epipolar_errors(F, xv, xl)
    return {"visible": {"mean": float(dv.mean()), "rms": float(np.sqrt((dv ** 2).mean()))},
            "lwir": {"mean": float(dl.mean()), "rms": float(np.sqrt((dl ** 2).mean()))}}


def _pose(v: ViewPoints, cam: IntrinsicsResult) -> tuple[np.ndarray, np.ndarray]:
    """Board pose in a camera from its own view (undistorted PnP)."""
    und = undistort_pixels(v.image_points, cam.K, cam.dist, cam.model)
    ok, rvec, tvec = cv2.solvePnP(v.object_points, und, cam.K, None, flags=cv2.SOLVEPNP_ITERATIVE)
    R, _ = cv2.Rodrigues(rvec)
    return R, tvec.ravel()
