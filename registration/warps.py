"""The warp models of a refinement's correction: their parameters, Jacobians and update matrices.

A correction maps LWIR px to visible px of a registered pair. Its models (:data:`MODELS`):

* ``similarity``: shift, rotation and scale (4 parameters);
* ``rigid``: shift and rotation, the scale held (3 free of the similarity's 4);
* ``rotation``: a turn of one camera about its centre, ``G R(w) G^-1`` with ``G`` that camera as the
  pair shows it (3 parameters; exact for a rig that flexes, vibrates or is bumped, keystone included);
* ``affine``: 6 parameters.

Parameters are displacements in px (of the shift at the centre, of the linear part at the corners),
which keeps the normal equations well scaled. Everything here is a pure function of its arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["MODELS", "WarpModel", "displacement_field", "n_params", "param_matrix", "rodrigues", "skew"]

MODELS = ("similarity", "rigid", "rotation", "affine")


def n_params(model: str) -> int:
    """Parameters of a model's warp (rigid is the similarity's with the scale held at zero)."""
    return {"affine": 6, "rotation": 3}.get(model, 4)


def skew(a: np.ndarray) -> np.ndarray:
    """``[a]_x``: the cross-product matrix of a 3-vector."""
    return np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]], np.float64)


def rodrigues(w: np.ndarray) -> np.ndarray:
    """Rotation matrix of the rotation vector ``w`` (radians)."""
    th = float(np.linalg.norm(w))
    K = skew(w)
    if th < 1e-12:
        return np.eye(3) + K
    return np.eye(3) + math.sin(th) / th * K + (1 - math.cos(th)) / (th * th) * (K @ K)


def displacement_field(E: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First-order displacement of the homography ``I + e E`` at ``(x, y)``, per unit ``e``."""
    w = E[2, 0] * x + E[2, 1] * y + E[2, 2]
    return E[0, 0] * x + E[0, 1] * y + E[0, 2] - x * w, E[1, 0] * x + E[1, 1] * y + E[1, 2] - y * w


@dataclass(frozen=True)
class WarpModel:
    """A model's warp update on one image (a pyramid level): ``x -> D(p) x``, parameters in px at radius ``R``
    from ``c``.

    Similarity and affine: ``x + t + L (x - c) / R``; rigid: the same with ``L`` an exact rotation by ``b / R``.
    Rotation: ``G R(W p) G^-1``, the image of a turn of the camera ``G`` (normalised ray -> px) about its
    centre; ``W`` maps the parameters to a rotation vector such that ``tx, ty`` move the image's centre by that
    many px and ``b`` rolls about the centre's ray by ``b`` px at radius ``R`` (the similarity's ``b``). Exact
    for a camera that turns, keystone included.
    """

    model: str
    c: tuple[float, float]
    R: float
    G: np.ndarray | None = None
    W: np.ndarray | None = None

    @classmethod
    def at(cls, model: str, c: tuple[float, float], R: float, G: np.ndarray | None) -> "WarpModel":
        """``model`` on an image whose centre is ``c`` and corner radius ``R``; ``G`` (rotation only): the camera."""
        if model != "rotation":
            return cls(model, c, R)
        Gi = np.linalg.inv(G)
        ray = Gi @ np.array([c[0], c[1], 1.0])
        ray /= np.linalg.norm(ray) * np.sign(ray[2] if ray[2] != 0 else 1.0)
        a1 = np.cross(ray, [0.0, 1.0, 0.0] if abs(ray[1]) < 0.9 else [1.0, 0.0, 0.0])
        a1 /= np.linalg.norm(a1)
        a2 = np.cross(ray, a1)
        cx, cy = np.array([c[0]]), np.array([c[1]])
        # (2, 2): turns about the two axes across the centre's ray -> the centre's shift
        M = np.array([np.r_[displacement_field(G @ skew(a) @ Gi, cx, cy)] for a in (a1, a2)]).T
        W = np.empty((3, 3))
        W[:, :2] = np.stack([a1, a2], 1) @ np.linalg.inv(M)
        # Roll: about the centre's ray, b px at radius R (measured along x, where the similarity's b moves y by b).
        roll = displacement_field(G @ skew(ray) @ Gi, np.array([c[0] + R]), cy)[1][0]
        W[:, 2] = ray / roll
        return cls(model, c, R, G, W)

    def jacobian(self, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(Jx, Jy)``, each ``(N, P)`` float32: the displacement's derivatives by the parameters at identity."""
        if self.model == "rotation":
            Gi = np.linalg.inv(self.G)
            cols = [displacement_field(self.G @ skew(self.W[:, k]) @ Gi, px.astype(np.float64), py.astype(np.float64))
                    for k in range(3)]
            return (np.stack([c[0] for c in cols], 1).astype(np.float32),
                    np.stack([c[1] for c in cols], 1).astype(np.float32))
        xn, yn = (px - self.c[0]) / self.R, (py - self.c[1]) / self.R
        z, o = np.zeros_like(xn), np.ones_like(xn)
        if self.model == "affine":
            return np.stack([o, z, xn, yn, z, z], 1), np.stack([z, o, z, z, xn, yn], 1)
        return np.stack([o, z, xn, -yn], 1), np.stack([z, o, yn, xn], 1)

    def matrix(self, p: np.ndarray) -> np.ndarray:
        """The 3x3 update ``D(p)``."""
        if self.model == "rotation":
            D = self.G @ rodrigues(self.W @ np.asarray(p, np.float64)) @ np.linalg.inv(self.G)
            return D / D[2, 2]
        if self.model == "rigid":  # an exact rotation by b / R (the first-order I + L would scale by 1 + (b/R)^2)
            tx, ty, _, b = p
            a = float(b) / self.R
            return _about(np.array([[math.cos(a) - 1.0, -math.sin(a)], [math.sin(a), math.cos(a) - 1.0]]),
                          (tx, ty), self.c)
        return param_matrix(p, self.c, self.R)


def param_matrix(p: np.ndarray, c: tuple[float, float], R: float) -> np.ndarray:
    """3x3 of ``x' = x + t + L (x - c) / R`` with the parameters in px at radius ``R`` from ``c``."""
    if len(p) == 4:
        tx, ty, a, b = p
        L = np.array([[a, -b], [b, a]]) / R
    else:
        tx, ty, a11, a12, a21, a22 = p
        L = np.array([[a11, a12], [a21, a22]]) / R
    return _about(L, (tx, ty), c)


def _about(L: np.ndarray, t, c: tuple[float, float]) -> np.ndarray:
    """3x3 of ``x' = x + t + L (x - c)``."""
    M = np.eye(3)
    M[:2, :2] += L
    M[:2, 2] = np.asarray(t, np.float64) - L @ np.asarray(c)
    return M
