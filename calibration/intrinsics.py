"""Per-camera intrinsics with iterative, explained outlier rejection.

:func:`calibrate_intrinsics` runs ``cv2.calibrateCameraExtended`` (pinhole +
radial-tangential, optionally rational) or ``cv2.fisheye.calibrate``, then
drops views whose RMS, and corners whose residual, lie beyond a robust
threshold (a multiple of the median), re-calibrating until nothing more is
dropped. Every drop is recorded with its reason in :class:`Dropped`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from rig.calibration.coverage import board_tilt_deg
from rig.camera_model import CameraModel
from rig.errors import RigError

MODELS = ("pinhole", "fisheye")
FOCAL_SIGMA_WARN = 0.02  # focal length sigma / value above which the views are said not to determine it


@dataclass(frozen=True)
class ViewPoints:
    """Board points of one view by one camera: image ``(N, 2)``, board ``(N, 3)``, ``ids`` ``(N,)``."""

    name: str
    image_points: np.ndarray
    object_points: np.ndarray
    ids: np.ndarray

    def subset(self, keep: np.ndarray) -> "ViewPoints":
        return ViewPoints(self.name, self.image_points[keep], self.object_points[keep], self.ids[keep])

    def half_turned(self, perm: np.ndarray, c: np.ndarray) -> "ViewPoints":
        """The same pixels numbered as the board turned by half (``(perm, c)`` of :meth:`rig.boards.Board.half_turn`):
        ids ``perm[ids]``, board points ``c + diag(-1, -1, 1) X``."""
        return ViewPoints(self.name, self.image_points, np.ravel(c) + self.object_points * np.array([-1.0, -1.0, 1.0]),
                          np.asarray(perm)[self.ids])


@dataclass(frozen=True)
class IntrinsicsOptions:
    """How to calibrate one camera.

    ``view_factor``/``corner_factor``: a view (corner) is dropped when its RMS
    (residual) exceeds this many times the median over all views (corners), and
    at least ``view_floor_px``/``corner_floor_px``. ``min_views``: fewer usable
    views is an error.
    """

    model: str = "pinhole"
    rational: bool = False
    fix_aspect_ratio: bool = False
    zero_tangent: bool = False
    fix_k3: bool = False
    reject_outliers: bool = True
    view_factor: float = 3.0
    view_floor_px: float = 0.5
    corner_factor: float = 4.0
    corner_floor_px: float = 0.5
    max_rounds: int = 4
    min_views: int = 4
    fix_unobservable: bool = True  # distortion terms whose sigma exceeds their magnitude are fixed at 0 (one at a time)


@dataclass(frozen=True)
class Dropped:
    """A view, or some corners of a view, left out and why."""

    camera: str
    view: str
    what: str  # "view" | "corners"
    count: int
    reason: str
    threshold_px: float | None = None  # the residual (corners) or view-RMS (views) limit it exceeded

    def __str__(self) -> str:
        if self.what == "view":
            return f"{self.camera}: view '{self.view}' dropped: {self.reason}"
        return f"{self.camera}: {self.count} corner(s) of view '{self.view}' dropped: {self.reason}"


@dataclass
class IntrinsicsResult:
    """Calibrated camera: ``K`` 3x3, ``dist`` (5 / 8 radtan or 4 fisheye), fit quality and uncertainty."""

    camera: str
    model: str
    image_size: tuple[int, int]  # (width, height)
    K: np.ndarray
    dist: np.ndarray
    rms_px: float
    std: dict  # {"fx","fy","cx","cy": float, "dist": [..]}; NaN where unavailable (fisheye)
    per_view_rms: dict[str, float]
    poses: dict[str, tuple[np.ndarray, np.ndarray]]  # view -> (R board->camera, t)
    views: list[ViewPoints]  # as used (after rejection)
    residuals: dict[str, np.ndarray]  # view -> (N, 2) observed - projected
    dropped: list[Dropped] = field(default_factory=list)
    fixed: tuple[str, ...] = ()  # distortion terms held at 0: the views did not determine them
    unobservable: dict[str, tuple[float, float]] = field(default_factory=dict)  # flagged term -> (value, sigma)

    def observability_note(self) -> str:
        """What the model reduction did, for the log and report ('' if nothing)."""
        if not self.fixed:
            return ""
        flagged = ", ".join(f"{k} = {v:.3g} +/- {sd:.2g}" for k, (v, sd) in self.unobservable.items())
        return (f"{self.camera}: distortion not determined by the views ({flagged}: sigma exceeds the value); "
                f"model reduced: {', '.join(self.fixed)} fixed at 0")

    def focal_warning(self, max_relative_sigma: float = FOCAL_SIGMA_WARN) -> str:
        """A warning when the views leave the focal length poorly determined ('' otherwise).

        Without enough board tilt, focal length and board distance trade off: the fit is as good with a focal
        length far off, the board poses' depths scale with it, and so do the extrinsics' translation and every
        registration that uses them. OpenCV's standard deviation of ``fx``/``fy`` says how far; above
        ``max_relative_sigma`` of the value (2 % by default: a good calibration gets 0.1-0.5 %) it is a warning.
        """
        rel = {k: float(self.std.get(k, float("nan"))) / float(self.K[i, i]) for i, k in enumerate(("fx", "fy"))}
        worst = max(rel, key=lambda k: rel[k] if np.isfinite(rel[k]) else -1.0)
        if not np.isfinite(rel[worst]) or rel[worst] <= max_relative_sigma:
            return ""
        i = ("fx", "fy").index(worst)
        tilts = [board_tilt_deg(R) for R, _ in self.poses.values()]
        tilt = f" (board tilt at most {max(tilts):.0f} deg, median {float(np.median(tilts)):.0f})" if tilts else ""
        return (f"{self.camera}: focal length poorly determined by the views: {worst} {self.K[i, i]:.1f} +/- "
                f"{self.std[worst]:.1f} px ({100 * rel[worst]:.1f} %){tilt}; focal length and board distance trade "
                f"off, so the extrinsics' translation is as uncertain: add views with the board tilted 30-50 deg "
                f"about both axes, or calibrate the intrinsics from such views first and solve the extrinsics "
                f"with them (rig calibrate --cameras none)")

    def camera_model(self) -> CameraModel:
        """Pinhole :class:`~rig.camera_model.CameraModel` (radtan only)."""
        if self.model != "pinhole":
            raise ValueError("CameraModel covers the pinhole model only")
        return CameraModel(self.K, self.dist, *self.image_size)


def project(obj: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray, dist: np.ndarray, model: str) -> np.ndarray:
    """Project board points ``(N, 3)`` with pose ``(R, t)`` into pixels ``(N, 2)`` (OpenCV conventions)."""
    rvec, _ = cv2.Rodrigues(np.asarray(R, np.float64))
    if model == "fisheye":
        px, _ = cv2.fisheye.projectPoints(np.asarray(obj, np.float64).reshape(-1, 1, 3), rvec, np.asarray(t, np.float64).reshape(3, 1),
                                          K, np.asarray(dist, np.float64).reshape(-1)[:4])
    else:
        px, _ = cv2.projectPoints(np.asarray(obj, np.float64), rvec, np.asarray(t, np.float64), K, dist)
    return px.reshape(-1, 2)


def undistort_pixels(px: np.ndarray, K: np.ndarray, dist: np.ndarray, model: str = "pinhole",
                     P: np.ndarray | None = None) -> np.ndarray:
    """Undistorted pixel coordinates (camera matrix ``P``, default ``K``) of distorted pixels ``(N, 2)``."""
    P = K if P is None else P
    pts = np.asarray(px, np.float64).reshape(-1, 1, 2)
    if len(pts) == 0:
        return np.zeros((0, 2))
    if model == "fisheye":
        out = cv2.fisheye.undistortPoints(pts, K, np.asarray(dist, np.float64).reshape(-1)[:4], P=P)
    else:
        out = cv2.undistortPoints(pts, K, np.asarray(dist, np.float64), None, None, P,
                                  (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-12))
    return out.reshape(-1, 2)


DIST_NAMES = ("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")  # OpenCV's radial-tangential order
_FIX_FLAG = {"k1": cv2.CALIB_FIX_K1, "k2": cv2.CALIB_FIX_K2, "k3": cv2.CALIB_FIX_K3, "k4": cv2.CALIB_FIX_K4,
             "k5": cv2.CALIB_FIX_K5, "k6": cv2.CALIB_FIX_K6, "p1": cv2.CALIB_ZERO_TANGENT_DIST,
             "p2": cv2.CALIB_ZERO_TANGENT_DIST}


def unobservable_terms(dist: np.ndarray, std: np.ndarray, names: tuple[str, ...] = DIST_NAMES) -> dict[str, float]:
    """Distortion terms whose standard deviation exceeds their magnitude: name -> sigma / |value| (> 1).

    ``std``: sigma of each coefficient (same order as ``dist``); NaN or 0 (fixed) is skipped.
    """
    out = {}
    for name, v, sd in zip(names, np.ravel(dist), np.ravel(std)):
        if np.isfinite(sd) and sd > 0 and sd > abs(v):
            out[name] = float(sd / max(abs(v), 1e-300))
    return out


REDUCTION_ORDER = ("k6", "k5", "k4", "k3", "p1", "k2", "k1")  # fixed first -> last


def reduction_step(flagged: list[str], names: tuple[str, ...], fixed: tuple[str, ...]) -> tuple[str, ...]:
    """The term(s) to fix next when ``flagged`` terms are not determined by the views.

    The highest-order free term that is flagged or is a radial term above a
    flagged one (``p1``/``p2`` go together: OpenCV fixes them as a pair).
    """
    order = [t for t in REDUCTION_ORDER if t in names and t not in fixed]
    rank = {t: i for i, t in enumerate(REDUCTION_ORDER)}
    worst_rank = max(rank["p1" if f in ("p1", "p2") else f] for f in flagged)
    radial_above = [t for t in order if t.startswith("k") and rank[t] <= worst_rank
                    and any(f.startswith("k") and rank[f] >= rank[t] for f in flagged)]
    cands = [t for t in order if t in flagged or (t == "p1" and "p2" in flagged)] + radial_above
    pick = min(cands, key=lambda t: rank[t])
    return ("p1", "p2") if pick in ("p1", "p2") else (pick,)


def _flags(o: IntrinsicsOptions, fixed: tuple[str, ...] = ()) -> int:
    if o.model == "fisheye":
        return cv2.fisheye.CALIB_RECOMPUTE_EXTRINSIC | cv2.fisheye.CALIB_FIX_SKEW
    f = 0
    for name in fixed:
        f |= _FIX_FLAG[name]
    if o.rational:
        f |= cv2.CALIB_RATIONAL_MODEL
    if o.fix_aspect_ratio:
        f |= cv2.CALIB_FIX_ASPECT_RATIO
    if o.zero_tangent:
        f |= cv2.CALIB_ZERO_TANGENT_DIST
    if o.fix_k3:
        f |= cv2.CALIB_FIX_K3
    return f


def _calibrate_once(views: list[ViewPoints], size: tuple[int, int], o: IntrinsicsOptions,
                    K0: np.ndarray | None = None, fixed: tuple[str, ...] = ()):
    obj = [v.object_points.astype(np.float32).reshape(-1, 1, 3) for v in views]
    img = [v.image_points.astype(np.float32).reshape(-1, 1, 2) for v in views]
    crit = (cv2.TERM_CRITERIA_COUNT + cv2.TERM_CRITERIA_EPS, 100, 1e-12)
    if o.model == "fisheye":
        K = np.eye(3) if K0 is None else K0.copy()
        D = np.zeros((4, 1))
        flags = _flags(o)
        if K0 is None:
            K[0, 0] = K[1, 1] = max(size) * 0.6
            K[0, 2], K[1, 2] = (size[0] - 1) / 2, (size[1] - 1) / 2
        flags |= cv2.fisheye.CALIB_USE_INTRINSIC_GUESS
        rms, K, D, rvecs, tvecs = cv2.fisheye.calibrate(obj, img, size, K, D, flags=flags, criteria=crit)
        std = np.full(8, np.nan)
        return rms, K, D.ravel(), rvecs, tvecs, std
    flags = _flags(o, fixed)
    K = None
    if o.fix_aspect_ratio:
        K = np.eye(3)
    rms, K, D, rvecs, tvecs, std_i, _, _ = cv2.calibrateCameraExtended(obj, img, size, K, None, flags=flags, criteria=crit)
    n_dist = 8 if o.rational else 5
    return rms, K, D.ravel()[:n_dist], rvecs, tvecs, std_i.ravel()


def calibrate_intrinsics(camera: str, views: list[ViewPoints], image_size: tuple[int, int],
                         options: IntrinsicsOptions = IntrinsicsOptions()) -> IntrinsicsResult:
    """Calibrate one camera from its board views, rejecting outliers (see module docstring).

    Raises :class:`RigError` when fewer than ``options.min_views`` usable views remain.
    """
    if options.model not in MODELS:
        raise ValueError(f"unknown camera model '{options.model}' (known: {', '.join(MODELS)})")
    views = [v for v in views if len(v.ids) >= 6]
    dropped: list[Dropped] = []
    if len(views) < options.min_views:
        raise RigError(f"too few views with a detected board for '{camera}': {len(views)} (need at least {options.min_views})")
    for _ in range(max(1, options.max_rounds)):
        rms, K, D, rvecs, tvecs, std = _calibrate_once(views, image_size, options)
        res = {}
        for v, rv, tv in zip(views, rvecs, tvecs):
            R, _ = cv2.Rodrigues(rv)
            res[v.name] = v.image_points - project(v.object_points, R, tv.ravel(), K, D, options.model)
        if not options.reject_outliers:
            break
        view_rms = np.array([np.sqrt((res[v.name] ** 2).sum(axis=1).mean()) for v in views])
        norms = np.concatenate([np.linalg.norm(res[v.name], axis=1) for v in views])
        v_thr = max(options.view_factor * float(np.median(view_rms)), options.view_floor_px)
        c_thr = max(options.corner_factor * float(np.median(norms)), options.corner_floor_px)
        changed = False
        kept: list[ViewPoints] = []
        for v, r in zip(views, view_rms):
            if r > v_thr and len(views) - sum(1 for d in dropped if d.what == "view") > options.min_views:
                dropped.append(Dropped(camera, v.name, "view", len(v.ids),
                                       f"RMS {r:.2f} px > {v_thr:.2f} px ({options.view_factor:g}x the median view RMS)",
                                       v_thr))
                changed = True
                continue
            bad = np.linalg.norm(res[v.name], axis=1) > c_thr
            if bad.any():
                if (~bad).sum() < 6:
                    dropped.append(Dropped(camera, v.name, "view", len(v.ids), "fewer than 6 corners left after corner rejection"))
                    changed = True
                    continue
                dropped.append(Dropped(camera, v.name, "corners", int(bad.sum()),
                                       f"residual > {c_thr:.2f} px ({options.corner_factor:g}x the median residual)",
                                       c_thr))
                v = v.subset(~bad)
                changed = True
            kept.append(v)
        views = kept
        if len(views) < options.min_views:
            raise RigError(f"too few views left for '{camera}' after outlier rejection: {len(views)} "
                           f"(need at least {options.min_views})")
        if not changed:
            break
    else:
        rms, K, D, rvecs, tvecs, std = _calibrate_once(views, image_size, options)
    # Observability: a distortion term the views do not determine (sigma > |value|) means the model is too
    # rich for them; it is reduced from the top of the hierarchy (k6 .. k3, then the tangential pair, then
    # k2): a flagged k2 with k3 free fixes k3 first (they trade off), and the camera is re-fitted each time.
    fixed: list[str] = []
    unobservable: dict[str, tuple[float, float]] = {}
    if options.fix_unobservable and options.model == "pinhole":
        n_dist = len(D)
        names = DIST_NAMES[:n_dist]
        for _ in range(n_dist):
            bad = [k for k in unobservable_terms(D, std[4:4 + n_dist], names) if k not in fixed]
            if not bad:
                break
            group = reduction_step(bad, names, tuple(fixed))
            for g in bad:
                i = names.index(g)
                unobservable.setdefault(g, (float(D[i]), float(std[4 + i])))
            fixed.extend(group)
            rms, K, D, rvecs, tvecs, std = _calibrate_once(views, image_size, options, fixed=tuple(fixed))
            for g in fixed:
                std[4 + names.index(g)] = 0.0  # fixed: no uncertainty of its own
    # Final residuals and poses for the kept views.
    poses, res, per_view = {}, {}, {}
    for v, rv, tv in zip(views, rvecs, tvecs):
        R, _ = cv2.Rodrigues(rv)
        poses[v.name] = (R, tv.ravel().copy())
        res[v.name] = v.image_points - project(v.object_points, R, tv.ravel(), K, D, options.model)
        per_view[v.name] = float(np.sqrt((res[v.name] ** 2).sum(axis=1).mean()))
    all_res = np.concatenate(list(res.values()))
    rms = float(np.sqrt((all_res ** 2).sum(axis=1).mean()))
    n_dist = len(D)
    std_d = {"fx": float(std[0]), "fy": float(std[1]), "cx": float(std[2]), "cy": float(std[3]),
             "dist": [float(x) for x in std[4:4 + n_dist]] if len(std) >= 4 + n_dist else [float("nan")] * n_dist}
    return IntrinsicsResult(camera, options.model, tuple(image_size), np.asarray(K, np.float64), np.asarray(D, np.float64),
                            rms, std_d, per_view, poses, views, res, dropped, tuple(fixed), unobservable)


def max_distortion_difference(K_a: np.ndarray, dist_a: np.ndarray, K_b: np.ndarray, dist_b: np.ndarray,
                              size: tuple[int, int], step: int = 20, within: np.ndarray | None = None) -> float:
    """Max over an image grid of the distance (px) between the two models' distorted points.

    Each pixel is unprojected with model ``b`` (the reference) and re-projected
    with ``b``'s camera matrix and ``a``'s distortion: the result isolates the
    distortion difference from K differences. ``within``: restrict the grid to
    the convex hull of these pixels (the observed area; outside it the
    polynomial is extrapolated).
    """
    u, v = np.meshgrid(np.arange(0, size[0], step, dtype=np.float64), np.arange(0, size[1], step, dtype=np.float64))
    px = np.stack([u.ravel(), v.ravel()], axis=1)
    if within is not None:  # only inside the convex hull of these points (where corners were observed)
        hull = cv2.convexHull(np.asarray(within, np.float32).reshape(-1, 1, 2))
        px = px[[cv2.pointPolygonTest(hull, (float(x), float(y)), False) >= 0 for x, y in px]]
    ref = CameraModel(K_b, dist_b, *size)
    xy = ref.unproject(px)
    other = CameraModel(K_b, dist_a, *size)
    from rig.camera_model import distort

    return float(np.linalg.norm(other.to_pixels(distort(xy, dist_a)) - px, axis=1).max())


def max_projection_difference(K_a: np.ndarray, dist_a: np.ndarray, K_b: np.ndarray, dist_b: np.ndarray,
                              size: tuple[int, int], step: int = 20) -> float:
    """Max over an image grid of the distance (px) between where models ``a`` and ``b`` image the same ray.

    Rays are those of model ``b`` (the reference) through the grid pixels; the
    difference includes K and distortion together (their errors partly cancel).
    """
    u, v = np.meshgrid(np.arange(0, size[0], step, dtype=np.float64), np.arange(0, size[1], step, dtype=np.float64))
    px = np.stack([u.ravel(), v.ravel()], axis=1)
    xy = CameraModel(K_b, dist_b, *size).unproject(px)
    from rig.camera_model import distort

    return float(np.linalg.norm(CameraModel(K_a, dist_a, *size).to_pixels(distort(xy, dist_a)) - px, axis=1).max())
