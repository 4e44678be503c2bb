"""Held-out pairs: how well a calibration registers pairs it was not fitted on, and what that decides.

A camera's own fit and the joint solve answer different questions: the own fit is what the camera's views
support on their own, the joint solve what the pairs add (one board pose for both cameras of a pair pins the
LWIR camera's distance, and with it its focal length, to the visible camera's). When the joint solve moves
a camera beyond the guard's limits (:mod:`rig.calibration.joint`), which of the two is better supported is
not a question either camera's own residuals can answer: the joint solve must raise them, since it asks
more of the same parameters. What a rig is calibrated for can: registering a pair. So the two candidate
solutions are fitted again on all pairs but a few and judged on the held-out pairs
(:func:`pair_transfer_error`, the mean distance of the held-out LWIR corners mapped through the homography
of their board's plane onto the visible corners).

Everything here is a pure function of the views.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from rig.calibration.homography import apply_h, board_plane, plane_homography
from rig.calibration.intrinsics import IntrinsicsResult, ViewPoints, undistort_pixels
from rig.calibration.stereo import common_points

MAX_FOLDS = 8  # beyond this many pairs, folds of several held-out pairs (the cost is two bundle adjustments a fold)


def pair_transfer_error(vis: ViewPoints, lw: ViewPoints, K_v: np.ndarray, dist_v: np.ndarray, K_l: np.ndarray,
                        dist_l: np.ndarray, R: np.ndarray, t: np.ndarray) -> float:
    """Mean distance (undistorted visible px) from a pair's visible corners to its LWIR corners mapped by the
    homography of the board's own plane (its pose from the visible view) and the extrinsics ``X_v = R X_l + t``.

    NaN when the two views share fewer than 4 corners or the visible pose cannot be found."""
    a, b = common_points(vis, lw)
    if len(a.ids) < 4:
        return float("nan")
    pv = undistort_pixels(a.image_points, K_v, dist_v)
    pl = undistort_pixels(b.image_points, K_l, dist_l)
    ok, rv, tv = cv2.solvePnP(np.asarray(a.object_points, np.float64), pv, np.asarray(K_v, np.float64), None)
    if not ok:
        return float("nan")
    n, d = board_plane(cv2.Rodrigues(rv)[0], tv.ravel())
    H = plane_homography(K_v, K_l, R, t, d, n)
    return float(np.linalg.norm(apply_h(H, pl) - pv, axis=1).mean())


def pair_folds(names: list[str], max_folds: int = MAX_FOLDS) -> list[list[str]]:
    """Held-out sets: one pair each up to ``max_folds`` pairs, else ``max_folds`` interleaved sets (every pair
    held out once, neighbours in capture order in different folds)."""
    k = min(len(names), max_folds)
    return [names[i::k] for i in range(k)]


def without_views(res: IntrinsicsResult, names: set[str]) -> IntrinsicsResult:
    """``res`` without the views ``names`` (their points, poses and residuals)."""
    return replace(res, views=[v for v in res.views if v.name not in names],
                   poses={k: v for k, v in res.poses.items() if k not in names},
                   residuals={k: v for k, v in res.residuals.items() if k not in names},
                   per_view_rms={k: v for k, v in res.per_view_rms.items() if k not in names})


@dataclass(frozen=True)
class HeldOutComparison:
    """Mean held-out registration error of two candidate solutions over the same folds."""

    guarded_px: float  # the guard's solution: the rejected cameras at their own fit
    joint_px: float  # every fitted camera free in the joint solve
    folds: int
    pairs: int
    margin: float  # the joint is kept only if its error is at least this fraction lower

    @property
    def keep_joint(self) -> bool:
        return bool(np.isfinite(self.joint_px) and np.isfinite(self.guarded_px)
                    and self.joint_px < (1.0 - self.margin) * self.guarded_px)

    def as_dict(self) -> dict:
        return {"guarded_px": round(self.guarded_px, 4), "joint_px": round(self.joint_px, 4), "folds": self.folds,
                "pairs": self.pairs, "margin": self.margin, "kept": "joint" if self.keep_joint else "own fit"}


def compare_held_out(vis: IntrinsicsResult, lw: IntrinsicsResult, pairs: list[str], solve, *,
                     margin: float = 0.05, max_folds: int = MAX_FOLDS) -> HeldOutComparison:
    """Fit both candidates on each fold's training pairs and measure them on its held-out pairs.

    ``solve(vis, lw, coupled, candidate)`` -> ``(K_v, dist_v, K_l, dist_l, R, t)`` solves one candidate
    (``"guarded"`` or ``"joint"``) from the two cameras' views and the pair names to couple. The held-out
    pairs' views leave both cameras for the fold. (The guarded candidate's own-fit intrinsics were fitted
    with every view, held-out ones included: the comparison leans towards the own fit, so the joint solve is
    kept only where it registers unseen pairs clearly better.)
    """
    err = {"guarded": [], "joint": []}
    folds = pair_folds(pairs, max_folds)
    by_name = {"visible": {v.name: v for v in vis.views}, "lwir": {v.name: v for v in lw.views}}
    for held in folds:
        out = set(held)
        train = [n for n in pairs if n not in out]
        v_f, l_f = without_views(vis, out), without_views(lw, out)
        for cand in err:
            Kv, dv, Kl, dl, R, t = solve(v_f, l_f, set(train), cand)
            err[cand].extend(pair_transfer_error(by_name["visible"][n], by_name["lwir"][n], Kv, dv, Kl, dl, R, t)
                             for n in held)
    g, j = (np.asarray(err[c], np.float64) for c in ("guarded", "joint"))
    ok = np.isfinite(g) & np.isfinite(j)
    return HeldOutComparison(float(g[ok].mean()) if ok.any() else float("nan"),
                             float(j[ok].mean()) if ok.any() else float("nan"), len(folds), int(ok.sum()), margin)
