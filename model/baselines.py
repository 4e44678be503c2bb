"""Classical visible/LWIR fusion baselines: averaging, max-selection and a Laplacian pyramid.

They are what a user without the SegMiF weights (or the time) would run, and what
``rig eval`` compares the model against. All three fuse the visible *luminance*
with the LWIR image and take colour from the visible chroma, exactly as the
model does (:func:`rig.model.color.replace_luminance`), so a comparison measures
the fusion rule and nothing else.

- ``average``: ``(Y_vis + T) / 2`` per pixel.
- ``max``: ``max(Y_vis, T)`` per pixel (max-selection).
- ``laplacian``: Burt & Adelson's Laplacian pyramid (``levels`` levels, 5-tap
  Gaussian of :func:`cv2.pyrDown`); each detail level keeps the coefficient of
  larger magnitude, the coarsest (base) level is the average of the two, and the
  pyramid is collapsed back.

``stretch=True`` min-max stretches the fused luminance to [0, 1] before colour is
put back; metrics such as SD and SF reward the stretch alone, so comparisons
should credit every method with the same post-processing
(:func:`fuse_baseline` with and without it).
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

METHODS = ("average", "max", "laplacian")


def average(y: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-pixel mean of two float images in [0, 1]."""
    return 0.5 * (y + t)


def max_selection(y: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-pixel maximum of two float images in [0, 1]."""
    return np.maximum(y, t)


def laplacian_pyramid(img: np.ndarray, levels: int) -> list[np.ndarray]:
    """``levels`` detail images (finest first) followed by the base; ``img`` float32 (H, W)."""
    pyramid, current = [], img
    for _ in range(levels - 1):
        down = cv2.pyrDown(current)
        up = cv2.pyrUp(down, dstsize=(current.shape[1], current.shape[0]))
        pyramid.append(current - up)
        current = down
    pyramid.append(current)
    return pyramid


def collapse_pyramid(pyramid: list[np.ndarray]) -> np.ndarray:
    """Inverse of :func:`laplacian_pyramid` (exact up to float rounding)."""
    current = pyramid[-1]
    for detail in reversed(pyramid[:-1]):
        current = cv2.pyrUp(current, dstsize=(detail.shape[1], detail.shape[0])) + detail
    return current


def laplacian(y: np.ndarray, t: np.ndarray, levels: int = 5) -> np.ndarray:
    """Laplacian-pyramid fusion: max-abs detail at every level, averaged base; clipped to [0, 1]."""
    levels = max(1, min(levels, int(np.log2(max(2, min(y.shape[:2]))))))  # no level below 1x1
    py = laplacian_pyramid(y.astype(np.float32), levels)
    pt = laplacian_pyramid(t.astype(np.float32), levels)
    fused = [np.where(np.abs(a) >= np.abs(b), a, b) for a, b in zip(py[:-1], pt[:-1])]
    fused.append(0.5 * (py[-1] + pt[-1]))
    return np.clip(collapse_pyramid(fused), 0.0, 1.0)


RULES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "average": average,
    "max": max_selection,
    "laplacian": laplacian,
}


def stretch_minmax(img: np.ndarray) -> np.ndarray:
    """Min-max stretch to [0, 1] (a constant image is returned unchanged)."""
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo) if hi > lo else img


def fuse_luminance(y: np.ndarray, t: np.ndarray, method: str, *, stretch: bool = False) -> np.ndarray:
    """Fuse visible luminance ``y`` and LWIR ``t`` (float, [0, 1], same shape) with a baseline rule."""
    try:
        rule = RULES[method]
    except KeyError:
        raise ValueError(f"unknown fusion baseline {method!r}; known: {', '.join(METHODS)}") from None
    fused = rule(y, t)
    return stretch_minmax(fused) if stretch else fused


def fuse_baseline(visible: np.ndarray, lwir: np.ndarray, method: str, *, stretch: bool = False) -> np.ndarray:
    """Fuse an RGB uint8 ``(H, W, 3)`` visible image with an 8-bit LWIR ``(H, W)`` image; RGB uint8 out.

    Colour comes from the visible chroma, as in the model
    (:func:`rig.model.color.replace_luminance`).
    """
    import torch

    from rig.model.color import replace_luminance, rgb_to_ycrcb

    if visible.ndim != 3 or visible.shape[2] != 3 or lwir.shape != visible.shape[:2]:
        raise ValueError(f"need RGB (H, W, 3) and LWIR (H, W) of one size, got {visible.shape} and {lwir.shape}")
    v = torch.from_numpy(np.ascontiguousarray(visible)).permute(2, 0, 1)[None].double() / 255.0
    y = rgb_to_ycrcb(v)[0, 0].numpy()
    fused = fuse_luminance(y, lwir.astype(np.float64) / 255.0, method, stretch=stretch)
    out = replace_luminance(v, torch.from_numpy(np.asarray(fused, dtype=np.float64))[None, None])
    return (out * 255.0).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
