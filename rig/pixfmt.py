"""Pixel formats: storage layout of raw frames and conversion to viewable images."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class PixelFormat:
    name: str
    code: int  # stable id stored in session frame headers
    dtype: np.dtype
    channels: int
    bayer_to_rgb: int | None = None  # OpenCV demosaicing code (to RGB)

    def shape(self, width: int, height: int) -> tuple[int, ...]:
        return (height, width) if self.channels == 1 else (height, width, self.channels)

    def nbytes(self, width: int, height: int) -> int:
        return width * height * self.channels * self.dtype.itemsize


_FORMATS = (
    PixelFormat("Mono8", 1, np.dtype(np.uint8), 1),
    PixelFormat("BayerRG8", 2, np.dtype(np.uint8), 1, cv2.COLOR_BayerRGGB2RGB),
    PixelFormat("BayerGR8", 3, np.dtype(np.uint8), 1, cv2.COLOR_BayerGRBG2RGB),
    PixelFormat("BayerBG8", 4, np.dtype(np.uint8), 1, cv2.COLOR_BayerBGGR2RGB),
    PixelFormat("BayerGB8", 5, np.dtype(np.uint8), 1, cv2.COLOR_BayerGBRG2RGB),
    PixelFormat("RGB8", 6, np.dtype(np.uint8), 3),
    PixelFormat("BGR8", 7, np.dtype(np.uint8), 3),
    PixelFormat("Mono16", 8, np.dtype("<u2"), 1),
    PixelFormat("Y16", 9, np.dtype("<u2"), 1),
)
BY_NAME = {f.name: f for f in _FORMATS}
BY_CODE = {f.code: f for f in _FORMATS}


def pixel_format(name: str) -> PixelFormat:
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown pixel format '{name}' (known: {', '.join(BY_NAME)})") from None


def to_rgb(image: np.ndarray, fmt: str) -> np.ndarray:
    """Convert a raw frame to 8-bit RGB for viewing or registration (16-bit is normalised robustly)."""
    pf = pixel_format(fmt)
    if pf.bayer_to_rgb is not None:
        return cv2.cvtColor(image, pf.bayer_to_rgb)
    if pf.name == "RGB8":
        return image
    if pf.name == "BGR8":
        return image[..., ::-1].copy()
    gray = image if pf.dtype == np.uint8 else normalize_16bit(image)
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)


def to_gray8(image: np.ndarray, fmt: str) -> np.ndarray:
    """8-bit single-channel view of a raw frame (demosaiced luminance, or robust 16->8 bit)."""
    pf = pixel_format(fmt)
    if pf.dtype != np.uint8:
        return normalize_16bit(image)
    if pf.channels == 1 and pf.bayer_to_rgb is None:
        return image
    return cv2.cvtColor(to_rgb(image, fmt), cv2.COLOR_RGB2GRAY)


def normalize_16bit(image: np.ndarray, lo_pct: float = 1.0, hi_pct: float = 99.0) -> np.ndarray:
    """Map 16-bit counts to 8 bits by robust percentiles (never a blind clip or /256).

    Thermal images occupy a narrow band of the 16-bit range; the ``lo_pct`` and
    ``hi_pct`` percentiles are mapped to 0 and 255, so a faint board keeps its contrast.
    """
    img = np.asarray(image)
    sample = img[::4, ::4] if img.size > 1 << 16 else img
    lo, hi = np.percentile(sample, [lo_pct, hi_pct])
    if hi <= lo:
        hi = lo + 1.0
    out = (img.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def to_pixel_format(rgb: np.ndarray, fmt: str) -> np.ndarray:
    """Convert an RGB uint8 image to a camera's raw pixel format (Bayer mosaics, mono, BGR)."""
    if fmt == "RGB8":
        return rgb
    if fmt == "BGR8":
        return np.ascontiguousarray(rgb[..., ::-1])
    if fmt == "Mono8":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    offsets = {"BayerRG8": ((0, 0), (0, 1), (1, 0), (1, 1)), "BayerGR8": ((0, 1), (0, 0), (1, 1), (1, 0)),
               "BayerBG8": ((1, 1), (0, 1), (1, 0), (0, 0)), "BayerGB8": ((1, 0), (0, 0), (1, 1), (0, 1))}
    if fmt not in offsets:
        raise ValueError(f"sim visible camera cannot produce pixel format {fmt}")
    (ry, rx), (g1y, g1x), (g2y, g2x), (by, bx) = offsets[fmt]
    out = np.empty(rgb.shape[:2], np.uint8)
    out[ry::2, rx::2] = rgb[ry::2, rx::2, 0]
    out[g1y::2, g1x::2] = rgb[g1y::2, g1x::2, 1]
    out[g2y::2, g2x::2] = rgb[g2y::2, g2x::2, 1]
    out[by::2, bx::2] = rgb[by::2, bx::2, 2]
    return out
