"""Rendering a calibration board seen by a simulated camera, per modality.

Geometry is exact: every pixel centre is unprojected with the camera's
ground-truth model (Newton-inverted distortion), intersected with the board
plane, and the board's reflectance texture is sampled there. The texture is
generated at several texels per pixel and pre-filtered, which approximates
integration over the pixel area (anti-aliasing) without biasing corner positions.

Poses map board coordinates into the camera frame: ``X_cam = R @ X_board + t``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from rig.boards import Board
from rig.camera_model import CameraModel
from rig.rigconfig import ThermalSpec

TEXELS_PER_PIXEL = 4.0


def board_coordinates(model: CameraModel, R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Board-plane coordinates ``(H, W, 2)`` seen by each pixel, and where the plane is in front."""
    rays = model.pixel_rays()
    n = R[:, 2]
    d = n[0] * rays[..., 0] + n[1] * rays[..., 1] + n[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = float(n @ t) / d
    valid = lam > 1e-6
    lam = np.where(valid, lam, np.nan)
    # X_board = R^T (lam * ray - t); only x and y are needed.
    px = lam * rays[..., 0] - t[0]
    py = lam * rays[..., 1] - t[1]
    pz = lam - t[2]
    bx = R[0, 0] * px + R[1, 0] * py + R[2, 0] * pz
    by = R[0, 1] * px + R[1, 1] * py + R[2, 1] * pz
    return np.stack([bx, by], axis=-1), valid


@dataclass
class BoardRenderer:
    """Samples a board's reflectance and coverage for a camera; caches textures per scale."""

    board: Board
    max_cached: int = 8  # textures kept (one per scale and blur)
    _textures: dict = field(default_factory=dict, repr=False)

    def sample(self, model: CameraModel, R: np.ndarray, t: np.ndarray, blur_px: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """``(reflectance, coverage)`` as float32 ``(H, W)`` images in [0, 1].

        ``blur_px`` adds an isotropic optical blur (Gaussian sigma, in pixels).
        """
        xy, valid = board_coordinates(model, R, t)
        x0, y0, x1, y1 = self.board.extent()
        inside = valid & (xy[..., 0] > x0 - 0.05) & (xy[..., 0] < x1 + 0.05) & (xy[..., 1] > y0 - 0.05) & (xy[..., 1] < y1 + 0.05)
        refl = np.ones(model.pixel_rays().shape[:2], np.float32)
        cover = np.zeros_like(refl)
        if not inside.any():
            return refl, cover
        ys, xs = np.nonzero(inside)
        r0, r1, c0, c1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        sub = xy[r0:r1, c0:c1]
        sub_in = inside[r0:r1, c0:c1]
        # Metres of board per pixel: median over the board of the pixel footprint.
        gx = np.abs(np.diff(sub[..., 0], axis=1))[sub_in[:, 1:] & sub_in[:, :-1]]
        gy = np.abs(np.diff(sub[..., 1], axis=0))[sub_in[1:, :] & sub_in[:-1, :]]
        footprint = float(np.median(np.concatenate([gx, gy]))) if gx.size + gy.size else 1e-3
        ppm = float(np.clip(TEXELS_PER_PIXEL / footprint, 200.0, 20000.0))
        ppm = 2.0 ** (np.round(np.log2(ppm) * 4) / 4)  # quantise so textures are reused
        sigma_px = float(np.hypot(0.4, blur_px))  # pixel-area integration (~box of 1 px) + optics
        tex, tx0, ty0, scale = self._texture(ppm, sigma_px * TEXELS_PER_PIXEL)
        mx = ((sub[..., 0] - tx0) * scale - 0.5).astype(np.float32)
        my = ((sub[..., 1] - ty0) * scale - 0.5).astype(np.float32)
        mx[~np.isfinite(mx)] = -1e6
        my[~np.isfinite(my)] = -1e6
        refl[r0:r1, c0:c1] = cv2.remap(tex, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=1.0)
        # Coverage of the board's outline: signed distance to the edge in pixels, blurred like the texture.
        with np.errstate(invalid="ignore"):
            dist_m = np.minimum.reduce([sub[..., 0] - x0, x1 - sub[..., 0], sub[..., 1] - y0, y1 - sub[..., 1]])
            edge = np.clip(dist_m / (footprint * 2.5 * sigma_px) + 0.5, 0.0, 1.0)
        cover[r0:r1, c0:c1] = np.where(sub_in, edge, 0.0)
        return refl, cover

    def _texture(self, ppm: float, sigma_texels: float):
        key = (ppm, round(sigma_texels, 1))
        if key not in self._textures:
            img, x0, y0 = self.board.texture(ppm)
            scale = max(4, int(round(self.board.spacing * ppm))) / self.board.spacing
            pad = int(np.ceil(3 * sigma_texels)) + 2
            tex = cv2.copyMakeBorder(img.astype(np.float32) * np.float32(1 / 255.0), pad, pad, pad, pad,
                                     cv2.BORDER_CONSTANT, value=1.0)
            if sigma_texels > 0:
                tex = cv2.GaussianBlur(tex, (0, 0), sigma_texels)
            while len(self._textures) >= self.max_cached:
                self._textures.pop(next(iter(self._textures)))
            self._textures[key] = (tex, x0 - pad / scale, y0 - pad / scale, scale)
        return self._textures[key]


@dataclass(frozen=True)
class VisibleLook:
    """Appearance of a board in the visible camera."""

    black: float = 28.0
    white: float = 215.0
    illumination_gradient: float = 0.25  # relative brightness change across the image
    noise_std: float = 1.5
    blur_px: float = 0.9  # lens + sensor point spread (Gaussian sigma, pixels)


@dataclass(frozen=True)
class ThermalLook:
    """Appearance of a board in LWIR: apparent temperatures in degC."""

    background_c: float = 21.0
    board_c: float = 24.0
    contrast_k: float = 2.0  # apparent difference between dark and light squares
    polarity: str = "normal"  # normal: dark squares dark; inverted: dark squares bright (heated board)


def render_board_visible(renderer: BoardRenderer, model: CameraModel, R: np.ndarray, t: np.ndarray,
                         rng: np.random.Generator | None, look: VisibleLook = VisibleLook()) -> np.ndarray:
    """8-bit RGB image of the board in front of a textured background; ``rng=None`` renders noise-free."""
    refl, cover = renderer.sample(model, R, t, blur_px=look.blur_px)
    h, w = refl.shape
    seed_rng = rng if rng is not None else np.random.default_rng(0)
    bg = _smooth_field(seed_rng, (h, w), cells=8) * 60.0 + 110.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    illum = 1.0 + look.illumination_gradient * ((xx / w - 0.5) * 0.8 + (yy / h - 0.5) * 0.4)
    board = (look.black + (look.white - look.black) * refl) * illum
    img = bg * (1.0 - cover) + board * cover
    rgb = np.stack([img * 0.97, img, img * 1.04], axis=-1)
    if rng is not None and look.noise_std > 0:
        rgb = rgb + rng.normal(0.0, 1.0, rgb.shape).astype(np.float32) * (look.noise_std * np.sqrt(np.maximum(rgb, 1.0) / 128.0))
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def render_board_lwir(renderer: BoardRenderer, model: CameraModel, R: np.ndarray, t: np.ndarray,
                      thermal: ThermalSpec, rng: np.random.Generator | None, look: ThermalLook = ThermalLook(),
                      fpn_seed: int = 1234) -> np.ndarray:
    """16-bit LWIR counts: blur, vignetting, fixed-pattern and temporal noise; ``rng=None`` is noise-free."""
    refl, cover = renderer.sample(model, R, t, blur_px=thermal.blur_sigma_px)
    h, w = refl.shape
    sign = 1.0 if look.polarity == "normal" else -1.0
    board_t = look.board_c + sign * look.contrast_k * (refl - 0.5)
    seed_rng = rng if rng is not None else np.random.default_rng(0)
    bg_t = look.background_c + _smooth_field(seed_rng, (h, w), cells=6) * 1.5
    temp = bg_t * (1.0 - cover) + board_t * cover
    return thermal_counts(temp, thermal, rng, fpn_seed if rng is not None else None)


def thermal_counts(temp_c: np.ndarray, thermal: ThermalSpec, rng: np.random.Generator | None,
                   fpn_seed: int | None = 1234) -> np.ndarray:
    """Sensor model: apparent temperature (degC) -> 16-bit counts with vignetting and noise.

    ``rng`` draws temporal noise (``None``: none). The fixed pattern (column/row
    offsets, per-pixel offsets) depends only on ``fpn_seed`` (``None``: none): it
    is the same in every frame of a camera, as in a real microbolometer between
    flat-field corrections. Both ``None`` gives the ideal, noise-free image.
    """
    h, w = temp_c.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / ((w / 2) ** 2 + (h / 2) ** 2)
    vignette = 1.0 - thermal.vignetting * r2
    # The lens vignettes the scene's flux relative to the camera interior, so the
    # image darkens towards the corners only in proportion to (scene - housing).
    signal = thermal.counts_per_kelvin * (thermal.housing_c + (temp_c - thermal.housing_c) * vignette)
    counts = thermal.offset_counts + signal
    if fpn_seed is not None:
        counts = counts + fixed_pattern(thermal, (h, w), fpn_seed)
    if rng is not None:
        counts = counts + rng.normal(0, thermal.temporal_noise_counts, (h, w))
    return np.clip(counts + 0.5, 0, 65535).astype(np.uint16)


def fpn_seed_for(camera_name: str) -> int:
    """Stable fixed-pattern seed of a simulated camera (same in every run and process)."""
    return sum((i + 1) * ord(c) for i, c in enumerate(camera_name)) + 1234


def fixed_pattern(thermal: ThermalSpec, shape: tuple[int, int], seed: int) -> np.ndarray:
    """A microbolometer's fixed-pattern offsets: column stripes, row stripes and per-pixel offsets."""
    h, w = shape
    fpn = np.random.default_rng(seed)
    s = thermal.fixed_pattern_counts
    return fpn.normal(0, s * 0.6, (1, w)) + fpn.normal(0, s * 0.3, (h, 1)) + fpn.normal(0, s * 0.5, (h, w))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth random field in [-1, 1] (bicubic upsampling of a coarse grid)."""
    h, w = shape
    coarse = rng.uniform(-1.0, 1.0, (cells, max(2, int(cells * w / h)))).astype(np.float32)
    return np.clip(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC), -1.0, 1.0)
