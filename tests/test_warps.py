"""Warp models of a refinement's correction (rig.registration.warps): parameters mean what they say, the
Jacobians are the derivatives of the update matrices, and the rotation model is a camera turn."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from rig.registration.warps import MODELS, WarpModel, n_params, rodrigues

SIZE = (400, 300)
C = ((SIZE[0] - 1) / 2, (SIZE[1] - 1) / 2)
R = float(np.hypot(*C))
G = np.array([[360.0, 0, 201.0], [0, 362.0, 148.0], [0, 0, 1]])


def moved(M: np.ndarray, pts: np.ndarray) -> np.ndarray:
    q = np.c_[pts, np.ones(len(pts))] @ M.T
    return q[:, :2] / q[:, 2:] - pts


@pytest.mark.parametrize("model", MODELS)
def test_jacobian_is_the_derivative_of_the_update(model):
    w = WarpModel.at(model, C, R, G if model == "rotation" else None)
    rng = np.random.default_rng(0)
    pts = rng.uniform([0, 0], SIZE, (50, 2))
    Jx, Jy = w.jacobian(pts[:, 0], pts[:, 1])
    assert Jx.shape == Jy.shape == (50, n_params(model))
    assert np.allclose(w.matrix(np.zeros(n_params(model))), np.eye(3))
    eps = 1e-4
    for k in range(n_params(model)):
        if model == "rigid" and k == 2:
            continue  # the scale slot: held at zero, never moved
        p = np.zeros(n_params(model))
        p[k] = eps
        d = moved(w.matrix(p), pts) / eps
        assert np.allclose(d[:, 0], Jx[:, k], atol=1e-3) and np.allclose(d[:, 1], Jy[:, k], atol=1e-3), (model, k)


def test_rotation_parameters_are_px_at_the_centre_and_the_corner_radius():
    w = WarpModel.at("rotation", C, R, G)
    centre, edge = np.array([C]), np.array([[C[0] + R, C[1]]])
    assert np.allclose(moved(w.matrix(np.array([1.0, 0, 0])), centre), [[1.0, 0.0]], atol=1e-3)
    assert np.allclose(moved(w.matrix(np.array([0, 1.0, 0])), centre), [[0.0, 1.0]], atol=1e-3)
    roll = w.matrix(np.array([0, 0, 1.0]))
    assert np.allclose(moved(roll, centre), 0.0, atol=1e-9) and moved(roll, edge)[0, 1] == pytest.approx(1.0, abs=1e-3)


def test_rotation_update_is_a_camera_turn():
    """Any parameters give ``G R G^-1`` with ``R`` a rotation (a camera turning about its centre)."""
    w = WarpModel.at("rotation", C, R, G)
    M = w.matrix(np.array([3.0, -2.0, 1.5]))
    Rm = np.linalg.inv(G) @ M @ G
    Rm /= np.cbrt(np.linalg.det(Rm))
    assert np.allclose(Rm @ Rm.T, np.eye(3), atol=1e-9)
    assert np.allclose(rodrigues(cv2.Rodrigues(Rm)[0].ravel()), Rm, atol=1e-12)  # Rodrigues agrees with OpenCV's


def test_rigid_update_keeps_the_scale():
    M = WarpModel.at("rigid", C, R, None).matrix(np.array([2.0, 1.0, 0.0, 5.0]))
    assert np.linalg.det(M[:2, :2]) == pytest.approx(1.0, abs=1e-12)
