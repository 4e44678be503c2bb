"""Registration geometry as pure functions: output pixel <-> visible <-> LWIR.

Pixel conventions (OpenCV): pixel centres at integer coordinates.

* *undistorted visible px*: ``K_v @ normalised`` (the visible camera with its
  distortion removed, same camera matrix);
* the calibration's homography ``H`` maps undistorted LWIR px (``K_l @
  normalised``) to undistorted visible px;
* the output image (``W_out x H_out``, 800x600 by default) shows the crop
  ``(x, y, w, h)`` of undistorted visible px: output pixel centre ``u`` sits
  at ``x + (u + 0.5) * w / W_out - 0.5`` (likewise for ``v``).

Registering is then a single ``cv2.remap`` per image: every output pixel is
traced back to a raw (distorted) visible pixel and to a raw LWIR pixel, so
undistortion, warping, cropping and resizing happen in one interpolation.

The camera maths (homography, (un)distortion in pixels) is
:mod:`rig.camera_model`'s; this module only adds the output crop and tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rig.camera_model import apply_h, distort_pixels, undistort_pixels
from rig.errors import RigError


@dataclass(frozen=True)
class RegistrationGeometry:
    """Everything that places an output pixel in both raw images."""

    output_size: tuple[int, int]  # (W_out, H_out)
    crop: tuple[float, float, float, float]  # (x, y, w, h), undistorted visible px
    K_v: np.ndarray
    dist_v: np.ndarray
    size_v: tuple[int, int]
    K_l: np.ndarray
    dist_l: np.ndarray
    size_l: tuple[int, int]
    H: np.ndarray  # undistorted LWIR px -> undistorted visible px

    @property
    def scale(self) -> float:
        """Output px per undistorted visible px."""
        return self.output_size[0] / self.crop[2]

    @classmethod
    def from_calibration(cls, cal, output_size: tuple[int, int] | None = None) -> "RegistrationGeometry":
        """Build from a :class:`rig.calibration.Calibration` (needs both cameras, H and a crop)."""
        missing = [what for what, ok in (("cameras.visible", "visible" in cal.cameras), ("cameras.lwir", "lwir" in cal.cameras),
                                         ("homography", cal.homography is not None),
                                         ("registration", cal.registration is not None)) if not ok]
        if missing:
            raise RigError(f"calibration lacks {', '.join(missing)}: run a joint calibration "
                           "(rig calibrate --board ir_board.yaml)", path=cal.source)
        v, l = cal.cameras["visible"], cal.cameras["lwir"]
        for c in (v, l):
            if c.model != "pinhole":
                raise RigError(f"camera '{c.name}' uses the {c.model} model; registration supports pinhole",
                               path=cal.source, key=f"cameras.{c.name}.model")
        crop = cal.registration.crop
        size = tuple(output_size) if output_size else tuple(cal.registration.output_size)
        if output_size and abs(output_size[0] / output_size[1] - crop[2] / crop[3]) > 0.01:
            # Keep the calibrated crop's centre and width; adapt its height to the requested aspect.
            cy = crop[1] + crop[3] / 2
            h = crop[2] * output_size[1] / output_size[0]
            crop = (crop[0], cy - h / 2, crop[2], h)
        return cls(size, tuple(map(float, crop)), v.K, np.ravel(v.dist), tuple(v.image_size), l.K, np.ravel(l.dist),
                   tuple(l.image_size), cal.homography.H)


def centre_and_corners(size: tuple[int, int]) -> np.ndarray:
    """``(5, 2)`` pixel centres of a ``size = (w, h)`` image: its centre, then the corners top-left, top-right,
    bottom-right, bottom-left (where corrections and parallax are reported)."""
    w, h = size
    return np.array([[(w - 1) / 2, (h - 1) / 2], [0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)


def output_to_visible(geom: RegistrationGeometry, uv: np.ndarray) -> np.ndarray:
    """Output px ``(..., 2)`` -> undistorted visible px."""
    x, y, w, h = geom.crop
    W, Hh = geom.output_size
    uv = np.asarray(uv, dtype=np.float64)
    return np.stack([x + (uv[..., 0] + 0.5) * w / W - 0.5, y + (uv[..., 1] + 0.5) * h / Hh - 0.5], axis=-1)


def visible_to_output(geom: RegistrationGeometry, p: np.ndarray) -> np.ndarray:
    """Undistorted visible px -> output px (inverse of :func:`output_to_visible`)."""
    x, y, w, h = geom.crop
    W, Hh = geom.output_size
    p = np.asarray(p, dtype=np.float64)
    return np.stack([(p[..., 0] + 0.5 - x) * W / w - 0.5, (p[..., 1] + 0.5 - y) * Hh / h - 0.5], axis=-1)


def visible_to_output_matrix(geom: RegistrationGeometry) -> np.ndarray:
    """:func:`visible_to_output` as a 3x3 matrix (undistorted visible px -> output px)."""
    x, y, w, h = geom.crop
    sx, sy = geom.output_size[0] / w, geom.output_size[1] / h
    return np.array([[sx, 0, (0.5 - x) * sx - 0.5], [0, sy, (0.5 - y) * sy - 0.5], [0, 0, 1.0]])


def lwir_camera_in_output(geom: RegistrationGeometry) -> np.ndarray:
    """The LWIR camera as the output shows it: ``3x3`` from a normalised LWIR ray ``(x/z, y/z, 1)`` to output px.

    A turn ``dR`` of the LWIR camera about its centre moves its registered image by ``G dR G^-1`` with this ``G``,
    exactly (undistortion and the homography are in the registration's tables)."""
    return visible_to_output_matrix(geom) @ np.asarray(geom.H, np.float64) @ np.asarray(geom.K_l, np.float64)


def output_to_raw_visible(geom: RegistrationGeometry, uv: np.ndarray) -> np.ndarray:
    """Output px ``(..., 2)`` -> raw (distorted) visible px."""
    return distort_pixels(output_to_visible(geom, uv), geom.K_v, geom.dist_v)


def output_to_raw_lwir(geom: RegistrationGeometry, uv: np.ndarray) -> np.ndarray:
    """Output px ``(..., 2)`` -> raw (distorted) LWIR px, through ``H^-1``."""
    p_l = apply_h(np.linalg.inv(geom.H), output_to_visible(geom, uv))
    return distort_pixels(p_l, geom.K_l, geom.dist_l)


def raw_lwir_to_output(geom: RegistrationGeometry, p: np.ndarray) -> np.ndarray:
    """Where registration puts a raw LWIR pixel in the output (forward map; for checks and overlays)."""
    return visible_to_output(geom, apply_h(geom.H, undistort_pixels(p, geom.K_l, geom.dist_l)))


@dataclass(frozen=True)
class RemapTables:
    """``cv2.remap`` tables (float32, output-sized) into the raw visible and raw LWIR images."""

    visible_x: np.ndarray
    visible_y: np.ndarray
    lwir_x: np.ndarray
    lwir_y: np.ndarray


def remap_tables(geom: RegistrationGeometry) -> RemapTables:
    """Trace every output pixel centre into both raw images (float64 maths, float32 tables)."""
    W, Hh = geom.output_size
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(Hh, dtype=np.float64))
    uv = np.stack([u, v], axis=-1)
    pv = output_to_raw_visible(geom, uv).astype(np.float32)
    pl = output_to_raw_lwir(geom, uv).astype(np.float32)
    return RemapTables(pv[..., 0].copy(), pv[..., 1].copy(), pl[..., 0].copy(), pl[..., 1].copy())


def coverage(tables: RemapTables, geom: RegistrationGeometry) -> tuple[float, float]:
    """Fraction of output pixels that fall inside the raw visible and raw LWIR images (1.0: no borders)."""
    (wv, hv), (wl, hl) = geom.size_v, geom.size_l
    inv = (tables.visible_x >= -0.5) & (tables.visible_x <= wv - 0.5) & (tables.visible_y >= -0.5) & (tables.visible_y <= hv - 0.5)
    inl = (tables.lwir_x >= -0.5) & (tables.lwir_x <= wl - 0.5) & (tables.lwir_y >= -0.5) & (tables.lwir_y <= hl - 0.5)
    return float(inv.mean()), float(inl.mean())
