"""Pure geometry of rig.calibration, tested against OpenCV and exact constructions."""

from __future__ import annotations

import cv2
import numpy as np


from rig.calibration import homography as hg
from rig.calibration.coverage import analyse_coverage
from rig.calibration.detect import grid_sanity
from rig.calibration.intrinsics import project, undistort_pixels
from rig.calibration.stereo import epipolar_errors, fundamental_matrix
from rig.rigconfig import rotation_from_vector_deg

K_V = np.array([[1700.0, 0, 962.3], [0, 1702.0, 597.8], [0, 0, 1]])
K_L = np.array([[742.0, 0, 318.6], [0, 741.0, 259.1], [0, 0, 1]])
R = rotation_from_vector_deg([0.6, -0.8, 0.3]).T
T = np.array([-0.12, -0.05, 0.003])


def test_plane_homography_maps_plane_points_exactly():
    d = 7.0
    rng = np.random.default_rng(1)
    Xv = np.c_[rng.uniform(-2, 2, (50, 2)), np.full(50, d)]  # on the plane z = d (visible frame)
    Xl = (Xv - T) @ R  # X_l = R^T (X_v - t)
    pl = Xl @ K_L.T
    pv = Xv @ K_V.T
    H = hg.plane_homography(K_V, K_L, R, T, d)
    assert np.abs(hg.apply_h(H, pl[:, :2] / pl[:, 2:]) - pv[:, :2] / pv[:, 2:]).max() < 1e-9
    # The same H as OpenCV's DLT on these correspondences.
    H_cv, _ = cv2.findHomography(pl[:, :2] / pl[:, 2:], pv[:, :2] / pv[:, 2:])
    assert np.abs(H - H_cv / H_cv[2, 2]).max() < 1e-6 * np.abs(H).max()


def test_infinite_homography_is_rotation_only():
    H = hg.plane_homography(K_V, K_L, R, T, float("inf"))
    H_ref = K_V @ R @ np.linalg.inv(K_L)
    assert np.allclose(H, H_ref / H_ref[2, 2])


def test_undistort_matches_opencv_projection():
    dist = np.array([-0.31, 0.13, 0.0008, -0.0006, -0.03])
    obj = np.c_[np.random.default_rng(2).uniform(-0.5, 0.5, (40, 2)), np.zeros(40)]
    px = project(obj, np.eye(3), np.array([0.0, 0.0, 1.5]), K_L, dist, "pinhole")
    und = undistort_pixels(px, K_L, dist)
    ideal = obj[:, :2] / 1.5 * np.diag(K_L)[:2] + K_L[:2, 2]
    assert np.abs(und - ideal).max() < 1e-6


def test_epipolar_error_zero_for_exact_points():
    rng = np.random.default_rng(3)
    Xl = np.c_[rng.uniform(-1, 1, (30, 2)), rng.uniform(2, 9, 30)]
    Xv = Xl @ R.T + T
    pv, pl = Xv @ K_V.T, Xl @ K_L.T
    F = fundamental_matrix(K_V, K_L, R, T)
    dv, dl = epipolar_errors(F, pv[:, :2] / pv[:, 2:], pl[:, :2] / pl[:, 2:])
    assert dv.max() < 1e-6 and dl.max() < 1e-6
    # Agrees with OpenCV's F up to scale.
    F_cv, _ = cv2.findFundamentalMat(pl[:, :2] / pl[:, 2:], pv[:, :2] / pv[:, 2:], cv2.FM_8POINT)
    # findFundamentalMat(points1=lwir, points2=visible) gives x_v^T F x_l = 0, like ours.
    a, b = F / np.linalg.norm(F), F_cv / np.linalg.norm(F_cv)
    assert np.abs(a - np.sign((a * b).sum()) * b).max() < 1e-3


def test_largest_rectangle():
    mask = np.zeros((100, 200), bool)
    mask[10:70, 20:140] = True
    x, y, w, h = hg.largest_rectangle(mask, 4 / 3)
    assert h == 60 and 80 <= w <= 81 and mask[y:y + h, x:x + w].all()


def test_grid_sanity():
    j, i = np.mgrid[0:6, 0:9]
    grid = np.stack([i.ravel() * 20.0 + 100, j.ravel() * 20.0 + 50], axis=1)
    assert grid_sanity(grid, 9, 6) is None
    swapped = grid.copy()
    swapped[[10, 11]] = swapped[[11, 10]]
    assert "fold" in grid_sanity(swapped, 9, 6) or "uneven" in grid_sanity(swapped, 9, 6)
    uneven = grid.copy()
    uneven[13, 0] += 15
    assert "uneven" in grid_sanity(uneven, 9, 6)
    flipped = grid.copy()
    flipped[0] = [400, 400]
    assert grid_sanity(flipped, 9, 6) is not None


def test_coverage_warnings_name_what_is_missing():
    pts = {f"v{k}": np.array([[x, y] for x in np.linspace(700, 1900, 5) for y in np.linspace(10, 700, 5)]) for k in range(3)}
    poses = {k: (np.eye(3), np.zeros(3)) for k in pts}
    cov = analyse_coverage("visible", (1920, 1200), pts, poses)
    assert "visible: no views in the lower-left third of the image" in cov.warnings
    assert any("all views near fronto-parallel: focal length poorly constrained" in w for w in cov.warnings)
    assert cov.cells[0, 2] == 3 and cov.cells[2, 0] == 0
