"""Colour conversions between RGB and YCrCb (ITU-R BT.601, full range).

The fusion network works on luminance only; colour is restored from the
visible image's chroma. Tensors are ``(B, 3, H, W)`` in [0, 1]; Cr and Cb are
offset by 0.5 so that they are in [0, 1] too.
"""

from __future__ import annotations

import torch

_KR, _KG, _KB = 0.299, 0.587, 0.114
_CR_SCALE = 0.5 / (1.0 - _KR)  # 0.713
_CB_SCALE = 0.5 / (1.0 - _KB)  # 0.564


def rgb_to_ycrcb(rgb: torch.Tensor) -> torch.Tensor:
    """RGB ``(B, 3, H, W)`` in [0, 1] -> YCrCb ``(B, 3, H, W)``, channels Y, Cr, Cb."""
    r, g, b = rgb.unbind(dim=1)
    y = _KR * r + _KG * g + _KB * b
    cr = (r - y) * _CR_SCALE + 0.5
    cb = (b - y) * _CB_SCALE + 0.5
    return torch.stack((y, cr, cb), dim=1)


def ycrcb_to_rgb(ycrcb: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_ycrcb` (not clamped)."""
    y, cr, cb = ycrcb.unbind(dim=1)
    r = y + (cr - 0.5) / _CR_SCALE
    b = y + (cb - 0.5) / _CB_SCALE
    g = (y - _KR * r - _KB * b) / _KG
    return torch.stack((r, g, b), dim=1)


def replace_luminance(rgb: torch.Tensor, luminance: torch.Tensor) -> torch.Tensor:
    """Give ``rgb`` the luminance ``luminance`` ``(B, 1, H, W)``, keeping its chroma; clamped to [0, 1]."""
    ycrcb = rgb_to_ycrcb(rgb)
    return ycrcb_to_rgb(torch.cat((luminance, ycrcb[:, 1:]), dim=1)).clamp(0.0, 1.0)


def guarded_colour(visible: torch.Tensor, luminance: torch.Tensor, guard: float) -> torch.Tensor:
    """Put ``luminance`` under the visible chroma, fading the chroma where the luminance departs from the visible Y.

    The chroma offsets (Cr - 0.5, Cb - 0.5) are scaled by ``k = clamp(1 - |Y_fused - Y_vis| / guard, 0, 1)``:
    unchanged where the fused luminance is the visible one, neutral (grey) where they differ by
    ``guard`` or more. A bright LWIR object on a dark visible background therefore stays grey
    instead of taking the background's (often saturated, noisy) colour, and the "visible chroma
    pasted on a different luminance" fringes disappear. ``guard <= 0`` is :func:`replace_luminance`.
    """
    if guard <= 0:
        return replace_luminance(visible, luminance)
    ycrcb = rgb_to_ycrcb(visible)
    k = (1.0 - (luminance - ycrcb[:, :1]).abs() / guard).clamp(0.0, 1.0)
    chroma = (ycrcb[:, 1:] - 0.5) * k + 0.5
    return ycrcb_to_rgb(torch.cat((luminance, chroma), dim=1)).clamp(0.0, 1.0)
