"""Robust estimates shared by the refinement's stages: pairwise slopes, Theil-Sen, a weighted median.

Pure functions of their arguments.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pairwise_slopes", "theil_sen", "weighted_median"]


def pairwise_slopes(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Slopes ``(y_i - y_j) / (x_i - x_j)`` of every pair with ``x_i > x_j`` (their median is the Theil-Sen slope)."""
    y, x = np.asarray(y, np.float64), np.asarray(x, np.float64)
    dx = x[:, None] - x[None, :]
    dy = y[:, None] - y[None, :]
    pos = dx > 0
    return dy[pos] / dx[pos]


_Z95 = 1.959963984540054  # two-sided 95 % normal quantile


def _ties(v: np.ndarray) -> np.ndarray:
    counts = np.unique(v, return_counts=True)[1]
    return counts[counts > 1].astype(np.float64)


def theil_sen(y: np.ndarray, x: np.ndarray) -> tuple[float, float, float]:
    """Theil-Sen slope (median of pairwise slopes) and its 95 % interval (Sen 1968, eq. 2.6, with tie
    corrections): ``(slope, low, high)``. The same numbers as ``scipy.stats.theilslopes`` (tested), without
    importing scipy.stats (about a second, once per process, on every ``rig register --refine``)."""
    y, x = np.asarray(y, np.float64), np.asarray(x, np.float64)
    slopes = np.sort(pairwise_slopes(y, x))
    if slopes.size == 0:
        return float("nan"), float("nan"), float("nan")
    med = float(np.median(slopes))
    n, nt = len(y), len(slopes)
    tie = lambda k: float(np.sum(k * (k - 1) * (2 * k + 5)))  # noqa: E731
    sigma = np.sqrt(max((n * (n - 1) * (2 * n + 5) - tie(_ties(x)) - tie(_ties(y))) / 18.0, 0.0))
    ru = min(int(np.round((nt + _Z95 * sigma) / 2.0)), nt - 1)
    rl = max(int(np.round((nt - _Z95 * sigma) / 2.0)) - 1, 0)
    return med, float(slopes[rl]), float(slopes[ru])


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value at which the cumulative weight (values in ascending order) first reaches half the total."""
    order = np.argsort(values)
    c = np.cumsum(np.asarray(weights, np.float64)[order])
    return float(np.asarray(values, np.float64)[order][int(np.searchsorted(c, 0.5 * c[-1]))])
