"""LWIR (thermal) image preparation for board detection.

Thermal boards are faint: a few kelvin of apparent contrast spread over a narrow
band of 16-bit counts, under vignetting and column/row fixed-pattern noise. A
blind clip or ``/256`` (what generic tools do) leaves the board at 1-2 grey
levels. Here every 16-bit frame is mapped to 8 bits by robust percentiles
(:func:`rig.pixfmt.normalize_16bit`), and detection is retried over a short,
ordered list of preprocessing variants (:func:`variants`): plain percentiles,
flat-fielded + destriped + denoised, the same with CLAHE, and a sharper one.

Polarity (a heated board shows dark squares bright) is not a preprocessing
question for the chessboard detectors, which find either polarity; it decides
the corner *order*, and is resolved in :mod:`rig.calibration.detect` from the
board margin (see :func:`rig.calibration.detect.canonical_order`).
"""

from __future__ import annotations

from typing import Iterator

import cv2
import numpy as np

from rig.pixfmt import normalize_16bit


def to_float(image: np.ndarray) -> np.ndarray:
    """Single-channel float32 view of any 8/16-bit gray or RGB image."""
    img = np.asarray(image)
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_RGB2GRAY) if img.dtype == np.uint8 else img.mean(axis=2)
    return img.astype(np.float32)


def stretch(image: np.ndarray, lo_pct: float = 1.0, hi_pct: float = 99.0) -> np.ndarray:
    """Robust-percentile stretch of a float or integer image to uint8 (never a blind clip)."""
    img = np.asarray(image, dtype=np.float32)
    sample = img[::2, ::2] if img.size > 1 << 16 else img
    lo, hi = np.percentile(sample, [lo_pct, hi_pct])
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((img - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def flatten(image: np.ndarray, sigma_px: float = 15.0, destripe: bool = True) -> np.ndarray:
    """Remove slow shading (vignetting, background) and column/row offsets; float32 result.

    ``sigma_px`` is the Gaussian scale of the removed background; the board's
    squares (larger than a few pixels, smaller than ``sigma_px``) survive.
    """
    img = to_float(image)
    hp = img - cv2.GaussianBlur(img, (0, 0), sigma_px)
    if destripe:
        hp = hp - np.median(hp, axis=0, keepdims=True)
        hp = hp - np.median(hp, axis=1, keepdims=True)
    return hp


def to8(image: np.ndarray) -> np.ndarray:
    """8-bit gray for detection: 16-bit by robust percentiles, RGB to luminance, uint8 as is."""
    img = np.asarray(image)
    if img.dtype == np.uint8:
        return img if img.ndim == 2 else cv2.cvtColor(img[..., :3], cv2.COLOR_RGB2GRAY)
    if img.ndim == 3:
        img = img.mean(axis=2)
    if img.dtype == np.uint16:
        return normalize_16bit(img)
    return stretch(img)


def saturation(image: np.ndarray) -> np.ndarray:
    """HSV saturation of an 8-bit RGB image, contrast-stretched to 8 bits."""
    hsv = cv2.cvtColor(np.ascontiguousarray(np.asarray(image)[..., :3]), cv2.COLOR_RGB2HSV)
    return stretch(hsv[..., 1].astype(np.float32))


def variants(image: np.ndarray, thermal: bool) -> Iterator[tuple[str, np.ndarray]]:
    """Preprocessed 8-bit versions of ``image`` to try in order: ``(name, gray8)``.

    Visible images get the plain conversion, then CLAHE, then (colour images)
    the HSV saturation channel: a coloured board on a grey or metallic ground
    (red squares on foil) has its contrast in chroma, not in brightness. Thermal images (or any
    16-bit image) get: robust percentiles; flat-field + destripe + Gaussian
    denoise; the same with CLAHE; flat-field without denoise. Generated lazily,
    so a board found in the first variant costs nothing more.
    """
    yield "plain", to8(image)
    if not thermal and np.asarray(image).dtype == np.uint8:
        yield "clahe", cv2.createCLAHE(2.0, (8, 8)).apply(to8(image))
        if np.asarray(image).ndim == 3 and np.asarray(image).shape[2] >= 3:
            yield "saturation", saturation(image)
        return
    flat = flatten(image, 15.0)
    den = stretch(cv2.GaussianBlur(flat, (0, 0), 1.5))
    yield "flat+denoise", den
    yield "flat+denoise+clahe", cv2.createCLAHE(2.0, (8, 8)).apply(den)
    yield "flat+light-denoise", stretch(cv2.GaussianBlur(flatten(image, 40.0), (0, 0), 1.0))
    yield "flat", stretch(flat)
