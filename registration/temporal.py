"""Corrections over a drive: robust temporal smoothing and the "calibration drift: recalibrate" verdict.

:func:`~rig.registration.refine.refine_alignment` measures one pair; a drive needs
more: :func:`smooth_corrections` (robust local-linear smoothing of the corrections'
centre and corner displacements over time, so a single frame cannot jump and refused
frames take their neighbours' trend) and :func:`detect_drift` (a robust Theil-Sen
trend that fires when the correction keeps growing). Pure functions, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rig.registration.geometry import centre_and_corners
from rig.registration.refine import _TUKEY_C, _tukey
from rig.registration.robust import theil_sen

__all__ = ["DriftReport", "detect_drift", "smooth_corrections"]


@dataclass(frozen=True)
class DriftReport:
    """What :func:`detect_drift` concluded about a drive.

    Attributes:
        drifting: the correction keeps growing: recalibrate.
        growth_px: change of the (robust, linear) trend of the correction from the first to the last accepted frame,
            largest over the centre and corners, px.
        rate_px_per_unit: ``growth_px`` per unit of ``times`` (per frame when no times were given).
        level_px: median magnitude of the correction over the drive (a constant offset, not drift), px.
        n_used: accepted frames the trend was fitted to.
        message: ``"calibration drift: recalibrate"`` when drifting, else a short summary.
    """

    drifting: bool
    growth_px: float
    rate_px_per_unit: float
    level_px: float
    n_used: int
    message: str


def _displacements(H: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(N, 5, 2)`` displacements of the centre and corners under each of ``H (N, 3, 3)``."""
    pts = centre_and_corners(size)
    p = np.einsum("nij,kj->nki", H[:, :2, :2], pts) + H[:, None, :2, 2]
    z = np.einsum("nj,kj->nk", H[:, 2, :2], pts) + H[:, None, 2, 2]
    return p / z[..., None] - pts


def _from_displacements(d: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Homographies ``(N, 3, 3)`` that move the centre and corners by ``d (N, 5, 2)`` (least squares over the
    five points: exact for any homography's own displacements, so a camera turn's keystone is kept)."""
    pts = centre_and_corners(size)
    c = pts[0]
    s = 1.0 / max(float(np.hypot(*(pts[1] - c))), 1e-9)
    N = np.array([[s, 0, -s * c[0]], [0, s, -s * c[1]], [0, 0, 1.0]])  # Hartley's normalisation, both sides
    x, y = ((pts - c) * s).T  # (5,)
    q = (pts[None] + d - c) * s  # (N, 5, 2)
    u, v = q[..., 0], q[..., 1]
    o, z = np.ones_like(u), np.zeros_like(u)
    X, Y = np.broadcast_to(x, u.shape), np.broadcast_to(y, u.shape)
    rows_u = np.stack([X, Y, o, z, z, z, -u * X, -u * Y, -u], -1)
    rows_v = np.stack([z, z, z, X, Y, o, -v * X, -v * Y, -v], -1)
    M = np.concatenate([rows_u, rows_v], axis=1)  # (N, 10, 9)
    h = np.linalg.svd(M)[2][:, -1, :].reshape(-1, 3, 3)
    out = np.linalg.inv(N) @ h @ N
    return out / out[:, 2:3, 2:3]


def _as_stack(H) -> np.ndarray:
    H = np.asarray(H, np.float64)
    if H.ndim != 3 or H.shape[1:] != (3, 3):
        raise ValueError(f"expected a sequence of 3x3 corrections, got shape {H.shape}")
    return H / H[:, 2:3, 2:3]


def _track(H, accepted, times) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated ``(corrections (N, 3, 3), accepted (N,) bool, times (N,))`` of a drive."""
    Hs = _as_stack(H)
    n = len(Hs)
    acc = np.asarray(accepted, bool)
    if acc.shape != (n,):
        raise ValueError(f"accepted has shape {acc.shape}, expected ({n},)")
    return Hs, acc, _times(times, n)


def _times(times, n: int) -> np.ndarray:
    t = np.arange(n, dtype=np.float64) if times is None else np.asarray(times, np.float64)
    if t.shape != (n,):
        raise ValueError(f"times has shape {t.shape}, expected ({n},)")
    if n > 1 and np.any(np.diff(t) < 0):
        raise ValueError("times must be non-decreasing")
    return t


def smooth_corrections(
    H,
    accepted,
    *,
    size: tuple[int, int],
    times=None,
    confidence=None,
    sigma: float = 15.0,
    iterations: int = 3,
    outlier_px: float = 0.5,
    return_spread: bool = False,
):
    """Robust temporal smoothing of per-frame corrections: a single frame cannot jump, refused frames are filled.

    Each correction is represented by the displacements of the image centre and corners (px, so every parameter
    is weighed by what it does to the image). For every frame, a locally linear trend is fitted to the accepted
    frames around it (Gaussian kernel of ``sigma`` in the units of ``times``, weighted by ``confidence``), and
    refitted ``iterations`` times with Tukey weights on each frame's residual (robust LOWESS, Cleveland 1979):
    an isolated jump gets weight zero, a slow drift is followed without lag (the local fit is linear).
    Refused frames take the trend of their accepted neighbours (interpolated across gaps); frames before the
    first or after the last accepted estimate take the trend's value there (a line is not extrapolated past
    its data); with no accepted frame at all, identity.

    Args:
        H: ``(N, 3, 3)`` per-frame corrections (LWIR px -> visible px), e.g. ``RefineResult.H`` or ``.estimate``.
        accepted: ``(N,)`` bool, which of them to trust.
        size: ``(w, h)`` of the images the corrections act on.
        times: ``(N,)`` non-decreasing frame times (default: frame index).
        confidence: ``(N,)`` optional weights 0..1 (e.g. ``RefineResult.confidence``).
        sigma: kernel width, in the units of ``times``.
        iterations: robust refits.
        outlier_px: floor of the robust residual scale, px (residuals below ~4.7x this always count).
        return_spread: also return each smoothed value's standard error per unit of a single estimate's noise
            (``sqrt(sum l_j^2)`` of the local fit's weights ``l_j`` on the estimates): ~0.3 in the middle of a
            drive estimated 2.5 times a second with ``sigma`` 1 s, larger where the trend is extrapolated (the
            ends of a drive, before and after gaps), 1 for a single estimate.

    Returns:
        ``(N, 3, 3)`` smoothed corrections (the homographies through the smoothed displacements); with
        ``return_spread``, ``(corrections, (N,) spread)``.

    Example:
        >>> Hs = smooth_corrections([r.H for r in results], [r.accepted for r in results], size=(800, 600),
        ...                         confidence=[r.confidence for r in results])
    """
    Hs, acc, t = _track(H, accepted, times)
    n = len(Hs)
    conf = np.ones(n) if confidence is None else np.clip(np.asarray(confidence, np.float64), 0.0, 1.0)
    if conf.shape != (n,):
        raise ValueError(f"confidence has shape {conf.shape}, expected ({n},)")
    if sigma <= 0:
        raise ValueError("sigma must be > 0")

    def done(out: np.ndarray, spread: np.ndarray):
        return (out, spread) if return_spread else out

    if n == 0:
        return done(Hs.copy(), np.zeros(0))
    use = acc & (conf > 0)
    if not use.any():
        return done(np.repeat(np.eye(3)[None], n, axis=0), np.full(n, np.inf))
    d_all = _displacements(Hs, size).reshape(n, -1)  # (N, 10)
    ti, di, ci = t[use], d_all[use], conf[use]
    rob = np.ones(len(ti))
    half = 4.0 * sigma

    def fit(at: np.ndarray, rob: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = np.zeros((len(at), di.shape[1]))
        have = np.zeros(len(at), bool)
        spread = np.full(len(at), np.inf)
        lo = np.searchsorted(ti, at - half, "left")
        hi = np.searchsorted(ti, at + half, "right")
        for k, (a, b) in enumerate(zip(lo, hi)):
            if b <= a:
                continue
            dt = ti[a:b] - at[k]
            w = np.exp(-0.5 * (dt / sigma) ** 2) * ci[a:b] * rob[a:b]
            sw = w.sum()
            if sw <= 1e-12:
                continue
            m = (w @ dt) / sw
            var = (w @ ((dt - m) ** 2)) / sw
            mean = (w @ di[a:b]) / sw
            if var > 1e-3 * sigma * sigma and np.count_nonzero(w > 1e-6 * w.max()) >= 3:
                slope = (w * (dt - m)) @ (di[a:b] - mean) / (sw * var)
                out[k] = mean - slope * m  # the local line at dt = 0
                lw = (w / sw) * (1.0 - m * (dt - m) / var)  # its weights on the estimates
            else:
                out[k] = mean
                lw = w / sw
            spread[k] = float(np.sqrt(lw @ lw))
            have[k] = True
        return out, have, spread

    for _ in range(max(0, iterations)):
        fitted, have, _ = fit(ti, rob)
        r = (di - fitted).reshape(len(ti), -1, 2)
        res = np.sqrt((r * r).sum(-1)).max(-1)  # worst point of the image, px
        res[~have] = 0.0
        scale = max(outlier_px, 1.4826 * float(np.median(res)))
        rob = _tukey(res, _TUKEY_C * scale)
        if not rob.any():
            rob = np.ones(len(ti))
            break
    # Beyond the first and last accepted estimates the trend is held, not extrapolated along its local slope.
    out, have, spread = fit(np.clip(t, ti[0], ti[-1]), rob)
    if not have.all():  # far from any accepted frame: the nearest smoothed value
        idx = np.flatnonzero(have)
        if idx.size == 0:
            return done(np.repeat(np.eye(3)[None], n, axis=0), np.full(n, np.inf))
        for k in np.flatnonzero(~have):
            j = idx[np.argmin(np.abs(t[idx] - t[k]))]
            out[k], spread[k] = out[j], spread[j]
    return done(_from_displacements(out.reshape(n, -1, 2), size), spread)


def detect_drift(
    H,
    accepted,
    *,
    size: tuple[int, int],
    times=None,
    min_growth_px: float = 2.0,
    min_frames: int = 8,
    max_samples: int = 400,
) -> DriftReport:
    """Does the correction keep growing over a drive? ("calibration drift: recalibrate").

    A robust straight line (Theil-Sen, median of pairwise slopes) is fitted over time to each coordinate of the
    centre and corner displacements of the accepted corrections; the drive drifts when the line's change from
    the first to the last accepted frame reaches ``min_growth_px`` somewhere in the image and the slope's 95 %
    interval excludes zero. A constant offset (the calibration is off but stable), vibration about a constant
    and isolated outliers do not count.

    Args:
        H: ``(N, 3, 3)`` per-frame corrections (raw estimates or :func:`smooth_corrections` output).
        accepted: ``(N,)`` bool, which of them to use.
        size: ``(w, h)`` of the images the corrections act on.
        times: ``(N,)`` frame times (default: frame index); ``rate_px_per_unit`` is in their unit.
        min_growth_px: growth that counts as drift, px.
        min_frames: fewer accepted frames than this: no verdict (not drifting; with 8, the 95 % interval of the
            slope excludes zero only for a clear trend: 28 pairwise slopes).
        max_samples: the fit uses at most this many frames (evenly spaced), to bound its cost.

    Returns:
        :class:`DriftReport`.
    """
    Hs, acc, t = _track(H, accepted, times)
    n = len(Hs)
    idx = np.flatnonzero(acc)
    if idx.size < min_frames:
        return DriftReport(False, 0.0, 0.0, 0.0, int(idx.size), f"too few accepted frames ({idx.size}) to judge drift")
    if idx.size > max_samples:
        idx = idx[np.round(np.linspace(0, idx.size - 1, max_samples)).astype(np.int64)]
    d = _displacements(Hs[idx], size)  # (M, 5, 2)
    tt = t[idx]
    span = float(tt[-1] - tt[0])
    level = float(np.median(np.hypot(d[..., 0], d[..., 1]).max(axis=1)))
    if span <= 0:
        return DriftReport(False, 0.0, 0.0, level, int(idx.size), "no time span to judge drift")
    slopes = np.zeros((5, 2))
    significant = np.zeros((5, 2), bool)
    for p in range(5):
        for c in range(2):
            y = d[:, p, c]
            if np.ptp(y) < 1e-9:
                continue
            slope, low, high = theil_sen(y, tt)
            slopes[p, c] = slope
            significant[p, c] = low > 0 or high < 0
    growth_pt = np.hypot(slopes[:, 0], slopes[:, 1]) * span
    p = int(np.argmax(growth_pt))
    growth = float(growth_pt[p])
    drifting = bool(growth >= min_growth_px and significant[p].any())
    msg = ("calibration drift: recalibrate" if drifting else
           f"stable: correction {level:.1f} px (median), trend {growth:.1f} px over the drive")
    return DriftReport(drifting, growth, growth / span, level, int(idx.size), msg)
