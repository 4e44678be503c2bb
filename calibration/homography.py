"""LWIR -> visible homographies, their honest limits, and the registration crop.

All homographies here map **undistorted LWIR pixels** (camera matrix ``K_lwir``)
to **undistorted visible pixels** (camera matrix ``K_visible``).

* :func:`plane_homography`: the homography induced by a plane at distance ``d``
  in front of the rig (normal ``n``, visible frame: ``n . X_v = d``). With
  ``X_v = R X_l + t`` and the plane written in the LWIR frame as
  ``n_l . X_l = d_l`` (``n_l = R^T n``, ``d_l = d - n . t``):
  ``H = K_v (R + t n_l^T / d_l) K_l^-1``. This is the issue's
  ``K_v (R - t n^T / d) K_ir^-1`` with the normal pointing towards the camera.
* :func:`ransac_homography`: ``cv2.findHomography(..., cv2.USAC_MAGSAC)`` over
  joint-view correspondences.
* :func:`fit_plane_distance`: the working-plane distance from data: a plane
  fitted with open3d's RANSAC to the boards' 3D corner points.
* :func:`parallax_table`: misregistration at the output for objects off the plane.
* :func:`registration_crop`: the largest output-aspect rectangle valid in both images.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from rig.calibration.intrinsics import undistort_pixels

PARALLAX_DISTANCES_M = (2.0, 5.0, 10.0, 20.0, 50.0, float("inf"))


def plane_homography(K_v: np.ndarray, K_l: np.ndarray, R: np.ndarray, t: np.ndarray, d: float,
                     n: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """Plane-induced homography (undistorted LWIR px -> undistorted visible px), normalised ``H[2,2] = 1``.

    ``X_v = R X_l + t``; the plane is ``n . X_v = d`` in the visible frame
    (``d = inf`` gives the infinite homography ``K_v R K_l^-1``).
    """
    n = np.asarray(n, np.float64) / np.linalg.norm(n)
    if np.isinf(d):
        H = K_v @ R @ np.linalg.inv(K_l)
    else:
        n_l = R.T @ n
        d_l = d - n @ np.ravel(t)
        H = K_v @ (R + np.outer(np.ravel(t), n_l) / d_l) @ np.linalg.inv(K_l)
    return H / H[2, 2]


def board_plane(R_board: np.ndarray, t_board: np.ndarray) -> tuple[np.ndarray, float]:
    """``(n, d)`` of a board's plane ``n . X = d`` in the camera frame, from its pose ``X = R X_board + t``."""
    n = np.asarray(R_board, np.float64)[:, 2]
    d = float(n @ np.ravel(t_board))
    if d < 0:  # keep the normal pointing away from the camera (d > 0), as the working plane's
        n, d = -n, -d
    return n, d


def apply_h(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a homography to ``(N, 2)`` points."""
    p = np.c_[np.asarray(pts, np.float64).reshape(-1, 2), np.ones(len(np.asarray(pts).reshape(-1, 2)))] @ H.T
    return p[:, :2] / p[:, 2:3]


def ransac_homography(src: np.ndarray, dst: np.ndarray, threshold_px: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """USAC_MAGSAC homography ``src -> dst`` (``(N, 2)`` each); returns ``(H, inlier mask)``."""
    H, mask = cv2.findHomography(src.astype(np.float64), dst.astype(np.float64), cv2.USAC_MAGSAC, threshold_px,
                                 maxIters=10000, confidence=0.999)
    if H is None:
        raise ValueError("no homography found")
    return H / H[2, 2], mask.ravel().astype(bool)


def fit_plane_distance(points: np.ndarray, threshold_m: float = 0.02, seed: int = 0) -> tuple[float, np.ndarray, float]:
    """Fit a plane to 3D points (visible frame) with open3d's RANSAC.

    Returns ``(d, n, inlier_fraction)`` with ``n`` the unit normal oriented
    along +z (away from the camera) and ``n . X = d``.
    """
    import open3d as o3d

    o3d.utility.random.seed(seed)
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(points, np.float64)))
    (a, b, c, dd), inliers = pc.segment_plane(distance_threshold=threshold_m, ransac_n=3, num_iterations=2000)
    n = np.array([a, b, c], np.float64)
    s = np.linalg.norm(n)
    n, dd = n / s, dd / s  # n . X + dd = 0
    if n[2] < 0:
        n, dd = -n, -dd
    return float(-dd), n, len(inliers) / max(1, len(points))


@dataclass
class HeldOut:
    """Registration error of held-out board points (visible undistorted px, and at the output)."""

    mean_px: float
    rms_px: float
    max_px: float
    mean_out_px: float
    n_points: int


def registration_error(H: np.ndarray, src: np.ndarray, dst: np.ndarray, out_scale: float) -> HeldOut:
    e = np.linalg.norm(apply_h(H, src) - dst, axis=1)
    return HeldOut(float(e.mean()), float(np.sqrt((e ** 2).mean())), float(e.max()), float(e.mean() * out_scale), len(e))


def parallax_displacement(K_v: np.ndarray, K_l: np.ndarray, R: np.ndarray, t: np.ndarray, H: np.ndarray,
                          pv: np.ndarray, z: float) -> np.ndarray:
    """Where registering with ``H`` puts an object at distance ``z`` (visible frame, metres; ``inf`` allowed)
    seen at undistorted visible px ``pv (N, 2)``, minus ``pv``: its misregistration vector (visible px)."""
    pv = np.asarray(pv, np.float64)
    rays = np.c_[pv, np.ones(len(pv))] @ np.linalg.inv(K_v).T
    Xl = rays @ R if np.isinf(z) else (rays * z - np.ravel(t)) @ R  # R^T (X_v - t); at infinity the direction only
    pl = Xl @ np.asarray(K_l, np.float64).T
    return apply_h(H, pl[:, :2] / pl[:, 2:3]) - pv


def parallax_table(K_v: np.ndarray, K_l: np.ndarray, R: np.ndarray, t: np.ndarray, H: np.ndarray,
                   crop: tuple[float, float, float, float], output_size: tuple[int, int],
                   distances: tuple[float, ...] = PARALLAX_DISTANCES_M, grid: int = 9) -> dict[float, dict]:
    """Misregistration (output px) of objects at each distance when registering with ``H``.

    For a grid of output pixels, a fronto-parallel object at distance ``z``
    (visible frame) is seen by the LWIR camera, mapped by ``H`` and compared
    with where the visible camera sees it. Returns ``{z: {"mean": ..., "max": ...}}``.
    """
    x0, y0, w, h = crop
    scale = output_size[0] / w
    u, v = np.meshgrid(np.linspace(x0, x0 + w, grid), np.linspace(y0, y0 + h, grid))
    pv = np.stack([u.ravel(), v.ravel()], axis=1)
    out = {}
    for z in distances:
        e = np.linalg.norm(parallax_displacement(K_v, K_l, R, t, H, pv, z), axis=1) * scale
        out[z] = {"mean": float(e.mean()), "max": float(e.max())}
    return out


def valid_polygon_visible(K: np.ndarray, dist: np.ndarray, size: tuple[int, int], model: str = "pinhole",
                          samples: int = 64) -> np.ndarray:
    """Outline ``(M, 2)`` of the undistorted visible image (camera matrix ``K``): where it has pixels."""
    return undistort_pixels(_border(size, samples), K, dist, model)


def valid_polygon_lwir(K_l: np.ndarray, dist_l: np.ndarray, size_l: tuple[int, int], H: np.ndarray,
                       model: str = "pinhole", samples: int = 64) -> np.ndarray:
    """Outline of the LWIR image undistorted and warped by ``H`` into visible undistorted pixels."""
    return apply_h(H, undistort_pixels(_border(size_l, samples), K_l, dist_l, model))


def support_hull(points: np.ndarray) -> np.ndarray:
    """Convex hull ``(M, 2)`` of observed points: the image area a calibration has data for."""
    return cv2.convexHull(np.asarray(points, np.float32).reshape(-1, 1, 2)).reshape(-1, 2).astype(np.float64)


def _border(size: tuple[int, int], n: int) -> np.ndarray:
    w, h = size[0] - 1, size[1] - 1
    s = np.linspace(0, 1, n, endpoint=False)
    return np.concatenate([np.c_[s * w, np.zeros(n)], np.c_[np.full(n, w), s * h],
                           np.c_[w - s * w, np.full(n, h)], np.c_[np.zeros(n), h - s * h]])


def largest_rectangle(mask: np.ndarray, aspect: float) -> tuple[int, int, int, int]:
    """Largest axis-aligned ``(x, y, w, h)`` with ``w/h ~= aspect`` and all mask pixels true.

    Binary search on the width; for each width an integral image tests every position.
    """
    bad = (~mask.astype(bool)).astype(np.int64)
    ii = np.zeros((bad.shape[0] + 1, bad.shape[1] + 1), np.int64)
    ii[1:, 1:] = bad.cumsum(0).cumsum(1)

    def fits(w: int) -> tuple[int, int] | None:
        h = int(np.floor(w / aspect))
        if w < 1 or h < 1 or h > mask.shape[0] or w > mask.shape[1]:
            return None
        s = ii[h:, w:] - ii[:-h, w:] - ii[h:, :-w] + ii[:-h, :-w]
        ys, xs = np.nonzero(s == 0)
        if len(ys) == 0:
            return None
        # Prefer the position closest to the centre of the valid region.
        cy, cx = np.mean(np.nonzero(mask), axis=1)
        k = np.argmin((ys + h / 2 - cy) ** 2 + (xs + w / 2 - cx) ** 2)
        return int(xs[k]), int(ys[k])

    lo, hi = 0, mask.shape[1]
    best = (0, 0, 0, 0)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        pos = fits(mid)
        if pos is not None:
            lo = mid
            best = (pos[0], pos[1], mid, int(np.floor(mid / aspect)))
        else:
            hi = mid - 1
    return best


def registration_crop(K_v: np.ndarray, dist_v: np.ndarray, size_v: tuple[int, int], K_l: np.ndarray, dist_l: np.ndarray,
                      size_l: tuple[int, int], H: np.ndarray, output_size: tuple[int, int], model: str = "pinhole",
                      step: int = 2, support: list[np.ndarray] | None = None) -> tuple[float, float, float, float]:
    """Largest ``output_size``-aspect rectangle ``(x, y, w, h)`` (visible undistorted px) valid in both images.

    Valid: inside the undistorted visible image and inside the undistorted
    LWIR image warped by ``H`` (no black borders in either), and inside every
    ``support`` polygon (visible undistorted px): e.g. the hulls of the
    calibration's observed corners, where the distortion model is backed by data. Searched on a
    ``step``-pixel raster, then shrunk by one raster cell for safety.
    """
    W, Hh = size_v
    mw, mh = W // step + 1, Hh // step + 1
    m1 = np.zeros((mh, mw), np.uint8)
    m2 = np.zeros((mh, mw), np.uint8)
    cv2.fillPoly(m1, [np.round(valid_polygon_visible(K_v, dist_v, size_v, model) / step).astype(np.int32)], 1)
    cv2.fillPoly(m2, [np.round(valid_polygon_lwir(K_l, dist_l, size_l, H, model) / step).astype(np.int32)], 1)
    mask = (m1 & m2).astype(bool)
    for poly in support or []:
        m = np.zeros((mh, mw), np.uint8)
        cv2.fillPoly(m, [np.round(np.asarray(poly) / step).astype(np.int32)], 1)
        mask &= m.astype(bool)
    mask = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    aspect = output_size[0] / output_size[1]
    x, y, w, h = largest_rectangle(mask, aspect)
    if w == 0:
        return (0.0, 0.0, 0.0, 0.0)
    x, y, w = x * step, y * step, w * step
    return (float(x), float(y), float(w), float(w / aspect))
