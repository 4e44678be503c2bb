"""Pinhole camera with OpenCV radial-tangential distortion, as pure functions.

Conventions match OpenCV's ``projectPoints``: pixel centres lie at integer
coordinates, ``dist = (k1, k2, p1, p2, k3)``. Tested against OpenCV.

Coordinates:

* *normalised*: ``(x, y)`` on the plane ``z = 1`` of the camera frame;
* *pixels*: ``K @ (x, y, 1)`` (skew ``K[0, 1]`` honoured);
* *raw* pixels are distorted, *undistorted* pixels are ``K`` applied to the
  undistorted normalised coordinates (same camera matrix, distortion removed).

Every function takes the points first and returns arrays of the input's
shape ``(..., 2)``; this module is the single implementation of these maps
(the simulator and registration share it; calibration's OpenCV-based
``undistort_pixels`` adds the fisheye model and a new camera matrix).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def normalise(pixels: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pixels ``(..., 2)`` -> normalised coordinates through ``K^-1`` (no distortion involved)."""
    px = np.asarray(pixels, dtype=np.float64)
    y = (px[..., 1] - K[1, 2]) / K[1, 1]
    x = (px[..., 0] - K[0, 2] - K[0, 1] * y) / K[0, 0]
    return np.stack([x, y], axis=-1)


def to_pixels(xy: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Normalised coordinates ``(..., 2)`` -> pixels through ``K`` (inverse of :func:`normalise`)."""
    u = K[0, 0] * xy[..., 0] + K[0, 1] * xy[..., 1] + K[0, 2]
    v = K[1, 1] * xy[..., 1] + K[1, 2]
    return np.stack([u, v], axis=-1)


def apply_h(H: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply the 3x3 homography ``H`` to points ``(..., 2)`` (shape kept)."""
    p = np.asarray(points, dtype=np.float64)
    q = p[..., 0:1] * H[:, 0] + p[..., 1:2] * H[:, 1] + H[:, 2]
    return q[..., :2] / q[..., 2:3]


def distort(xy: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Apply radial-tangential distortion to normalised coordinates ``(..., 2)``."""
    k1, k2, p1, p2, k3 = (list(np.ravel(dist)) + [0.0] * 5)[:5]
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
    yd = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
    return np.stack([xd, yd], axis=-1)


def undistort(xy_d: np.ndarray, dist: np.ndarray, iterations: int = 20, tol: float = 1e-12) -> np.ndarray:
    """Invert :func:`distort` by Newton's method (converges to ~1e-12 for physical lenses)."""
    k1, k2, p1, p2, k3 = (list(np.ravel(dist)) + [0.0] * 5)[:5]
    xy_d = np.asarray(xy_d, dtype=np.float64)
    p = xy_d.copy()
    for _ in range(iterations):
        x, y = p[..., 0], p[..., 1]
        r2 = x * x + y * y
        radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
        dradial = k1 + r2 * (2.0 * k2 + 3.0 * k3 * r2)  # d radial / d r2
        fx = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x) - xy_d[..., 0]
        fy = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y - xy_d[..., 1]
        j11 = radial + 2.0 * x * x * dradial + 2.0 * p1 * y + 6.0 * p2 * x
        j12 = 2.0 * x * y * dradial + 2.0 * p1 * x + 2.0 * p2 * y
        j21 = 2.0 * x * y * dradial + 2.0 * p1 * x + 2.0 * p2 * y
        j22 = radial + 2.0 * y * y * dradial + 6.0 * p1 * y + 2.0 * p2 * x
        det = j11 * j22 - j12 * j21
        dx = (j22 * fx - j12 * fy) / det
        dy = (j11 * fy - j21 * fx) / det
        p[..., 0] -= dx
        p[..., 1] -= dy
        if max(np.abs(dx).max(initial=0.0), np.abs(dy).max(initial=0.0)) < tol:
            break
    return p


def distort_pixels(pixels: np.ndarray, K: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Undistorted pixels ``(..., 2)`` -> raw (distorted) pixels of the camera ``K``, ``dist``."""
    return to_pixels(distort(normalise(pixels, K), dist), K)


def undistort_pixels(pixels: np.ndarray, K: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Raw pixels ``(..., 2)`` -> undistorted pixels (inverse of :func:`distort_pixels`, Newton's method)."""
    return to_pixels(undistort(normalise(pixels, K), dist), K)


@dataclass(frozen=True, eq=False)
class CameraModel:
    """Intrinsics + distortion + image size of one camera."""

    K: np.ndarray
    dist: np.ndarray
    width: int
    height: int
    _rays: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """Project camera-frame 3D points ``(N, 3)`` to pixels ``(N, 2)``."""
        pts = np.asarray(points_cam, dtype=np.float64)
        xy = pts[..., :2] / pts[..., 2:3]
        return self.to_pixels(distort(xy, self.dist))

    def to_pixels(self, xy_d: np.ndarray) -> np.ndarray:
        """Pixels of (distorted) normalised coordinates ``(..., 2)``: :func:`to_pixels` with this ``K``."""
        return to_pixels(xy_d, self.K)

    def unproject(self, pixels: np.ndarray) -> np.ndarray:
        """Undistorted normalised coordinates ``(..., 2)`` of pixel positions ``(..., 2)``."""
        return undistort(normalise(pixels, self.K), self.dist)

    def pixel_rays(self) -> np.ndarray:
        """Normalised undistorted coordinates of every pixel centre, ``(H, W, 2)`` float64 (cached)."""
        rays = self._rays.get("rays")
        if rays is None:
            u, v = np.meshgrid(np.arange(self.width, dtype=np.float64), np.arange(self.height, dtype=np.float64))
            rays = self.unproject(np.stack([u, v], axis=-1))
            self._rays["rays"] = rays
        return rays
