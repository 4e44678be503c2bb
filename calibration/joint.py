"""The joint solve of both cameras: pair consistency -> stereo start -> robust bundle adjustment -> guard.

Input: each camera's own fit (:func:`rig.calibration.intrinsics.calibrate_intrinsics`
over *all* its views, partnered or not). Then:

0. **Point order**: for boards a detector may number in either of two orders a
   half turn apart (:meth:`rig.boards.Board.half_turn`), LWIR views whose order
   disagrees with their visible partner's are renumbered
   (:func:`rig.calibration.consistency.pairs_to_turn`).

1. **Pair consistency** (:mod:`rig.calibration.consistency`): each view both
   cameras saw gives a relative pose from its two own-fit board poses; pairs
   off the robust rig estimate are left out of the extrinsics.
2. **Stereo start**: ``cv2.stereoCalibrate`` (intrinsics fixed) on the consistent pairs.
3. **Bundle adjustment** (:mod:`rig.calibration.bundle`) over every view of
   each camera, one board pose per view, the extrinsics coupling only the
   consistent pairs, distortion terms the own fit could not determine held at
   0, residuals through a Huber loss at :data:`HUBER_FACTOR` times each
   camera's corner noise (estimated from its own fit).
4. **Guard**: the joint solution must not damage a camera. Each camera's RMS
   on its own views must stay within :data:`RMS_TOLERANCE` of its own fit and
   each intrinsic within :data:`SIGMA_TOLERANCE` standard errors (the own
   fit's) of it. A camera that fails keeps its own fit (the solution its own
   views support), loudly, and the joint solve is repeated with it fixed.
5. **Arbitration** (at least :attr:`JointOptions.min_arbitration_pairs` pairs): a
   camera's residuals cannot say whether the joint solve damaged it or corrected
   an own fit that its views leave uncertain (a focal length trades off with the
   board's distance, and one board pose for both cameras of a pair pins it): the
   joint solve must raise them either way. Held-out pairs can
   (:mod:`rig.calibration.crossval`): both solutions are fitted again without a
   fold of pairs and judged by how well they register them; the joint solve is
   kept, loudly, where its held-out error is at least
   :attr:`JointOptions.arbitration_margin` lower, and only where the camera
   was rejected for moving beyond its sigma, not for fitting its own views
   worse (the RMS limit stays hard). On vimslab rgb_b+lwir_a (5 pairs, own fits
   from 5-7 views, the LWIR focal length uncertain by 2 %) the joint solve
   registers held-out pairs a third better than the own fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from rig.calibration.bundle import bundle_adjust
from rig.calibration.consistency import (Consistency, check_pairs, describe, detection_hint, half_turned_pose,
                                         pairs_to_turn, pose_covariance, relative_covariance, relative_pose,
                                         rotation_l1_mean)
from rig.calibration.crossval import compare_held_out
from rig.calibration.intrinsics import DIST_NAMES, IntrinsicsResult
from rig.calibration.stereo import StereoResult, _pose, common_points, epipolar_summary, stereo_calibrate

HUBER_FACTOR = 2.45  # x sigma: 95 % of Gaussian 2-D residual norms lie inside (Rayleigh), so the bulk stays quadratic
RMS_TOLERANCE = 0.20  # joint RMS on a camera's own views at most 20 % above its own fit
SIGMA_TOLERANCE = 3.0  # each intrinsic within 3 standard errors of its own fit
# Floors under both limits: a change no detector could measure is not damage. On clean renders the
# own-fit RMS is ~0.02 px and sigma(fx) ~0.1 px, so +20 % or 3 sigma would flag moves of 0.004 px RMS
# or 0.3 px of fx (0.02 %, < 0.2 px at the image edge) and keep the weaker own fit, loudly, on a rigid
# rig. The damage the guard exists for (fx 653 -> 709, RMS 0.5 -> 6.7 px) is far above both floors.
RMS_FLOOR_PX = 0.05  # an RMS rise below this is within corner-detection noise
FOCAL_FLOOR = 2e-4  # relative: fx, fy moves below 0.02 % are not counted as sigma-moves
CENTRE_FLOOR_PX = 0.25  # cx, cy moves below a quarter pixel likewise
DISTORTION_FLOOR_PX = 0.25  # a distortion-term move shifting no image point by more than this (as cx, cy) is not counted
RAYLEIGH_MEDIAN = 1.1774  # median of |r| for a 2-D Gaussian with unit sigma per axis
PARAM_NAMES = ("fx", "fy", "cx", "cy", *DIST_NAMES[:5])


@dataclass(frozen=True)
class JointOptions:
    bundle: bool = True
    loss: str = "huber"  # "huber" | "linear"
    huber_factor: float = HUBER_FACTOR
    rms_tolerance: float = RMS_TOLERANCE
    sigma_tolerance: float = SIGMA_TOLERANCE
    min_views: int = 3
    check_pairs: bool = True
    max_pair_scatter: float = 2.0  # median Mahalanobis distance of the pairs over that of pure noise: a note beyond
    # A camera the guard rejects: the joint solve is kept anyway if it registers held-out pairs this much better
    # than the guard's solution (rig.calibration.crossval; 0 pairs or arbitrate=False: the guard decides alone).
    arbitrate: bool = True
    arbitration_margin: float = 0.05
    min_arbitration_pairs: int = 4
    # ... and only where no camera's own-view RMS rises beyond this ratio (None: the guard's own RMS limit, floor
    # included). The RMS limit is the hard one: a camera that fits its own views worse no longer describes its own
    # images, whatever it does for registration (unsynchronized pairs raised mints utdSet0's visible RMS 3-5x).
    # The sigma limit is not: sigma comes from the own fit, and a few views state it too confidently or not at all.
    max_arbitration_rms_ratio: float | None = None


@dataclass(frozen=True)
class CameraCheck:
    """How the joint solve moved one camera relative to its own fit, and which solution is kept."""

    camera: str
    own_rms_px: float
    joint_rms_px: float
    worst_parameter: str
    worst_sigmas: float  # |joint - own| / sigma_own of the worst parameter
    kept: str  # "joint" | "own fit"
    reason: str = ""

    @property
    def rms_ratio(self) -> float:
        return self.joint_rms_px / self.own_rms_px if self.own_rms_px > 0 else float("nan")


@dataclass
class JointOutcome:
    intrinsics: dict[str, IntrinsicsResult]  # as kept: joint (or own fit) values, joint residuals
    stereo: StereoResult
    consistency: Consistency | None
    checks: dict[str, CameraCheck] = field(default_factory=dict)
    bundle: dict | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    turned: list[str] = field(default_factory=list)  # LWIR views renumbered by a half turn (step 0)


def turn_views(res: IntrinsicsResult, names: list[str], perm: np.ndarray, c: np.ndarray) -> IntrinsicsResult:
    """``res`` with the views ``names`` renumbered by a half turn of the board (:meth:`rig.boards.Board.half_turn`):
    same pixels, ids ``perm[ids]``, board points ``c + diag(-1, -1, 1) X``, poses to match."""
    views = [v.half_turned(perm, c) if v.name in names else v for v in res.views]
    poses = {n: (half_turned_pose(*p, c) if n in names else p) for n, p in res.poses.items()}
    return replace(res, views=views, poses=poses)


def paired_views(vis: IntrinsicsResult, lw: IntrinsicsResult, min_points: int = 6) -> list[str]:
    """Names of the views both cameras saw with at least ``min_points`` board points in common."""
    va, la = {v.name: v for v in vis.views}, {v.name: v for v in lw.views}
    return [n for n in va if n in la and len(common_points(va[n], la[n])[0].ids) >= min_points]


def pair_relative_poses(vis: IntrinsicsResult, lw: IntrinsicsResult, names: list[str]) -> dict:
    """View -> ``(R_i, t_i)`` (``X_visible = R_i X_lwir + t_i``) from each camera's own-fit board pose."""
    return {n: relative_pose(*vis.poses[n], *lw.poses[n]) for n in names if n in vis.poses and n in lw.poses}


def pair_covariances(vis: IntrinsicsResult, lw: IntrinsicsResult, rel: dict) -> dict[str, np.ndarray]:
    """Per pair, the covariance of its relative pose, from the two board poses' PnP Jacobians (own fits)."""
    if not rel:
        return {}
    R_ref = rotation_l1_mean([r for r, _ in rel.values()])
    views = {c: {v.name: v for v in r.views} for c, r in (("visible", vis), ("lwir", lw))}
    sig = {"visible": noise_sigma(vis), "lwir": noise_sigma(lw)}
    out = {}
    for n in rel:
        cv = pose_covariance(views["visible"][n].object_points, *vis.poses[n], vis.K, vis.dist, sig["visible"], vis.std)
        cl = pose_covariance(views["lwir"][n].object_points, *lw.poses[n], lw.K, lw.dist, sig["lwir"], lw.std)
        out[n] = relative_covariance(vis.poses[n], cv, lw.poses[n], cl, R_ref)
    return out


CHI6_MEDIAN = 2.35  # median of the chi distribution with 6 degrees of freedom (pure-noise Mahalanobis distance)


def pair_scatter(cons: Consistency | None) -> float:
    """Median Mahalanobis distance of the consistent pairs over that of pure measurement noise (1: rigid)."""
    if cons is None or cons.mahalanobis_threshold is None:
        return 1.0
    m = [p.mahalanobis for p in cons.pairs if not p.inconsistent and np.isfinite(p.mahalanobis)]
    return float(np.median(m) / CHI6_MEDIAN) if m else 1.0


def noise_sigma(res: IntrinsicsResult) -> float:
    """Per-axis corner noise of a camera, robustly from its own-fit residuals (else from its RMS)."""
    if res.residuals:
        norms = np.linalg.norm(np.concatenate(list(res.residuals.values())), axis=1)
        if len(norms):
            return float(np.median(norms) / RAYLEIGH_MEDIAN)
    return float(res.rms_px / np.sqrt(2)) if np.isfinite(res.rms_px) else float("inf")


def fixed_indices(res: IntrinsicsResult) -> tuple[int, ...]:
    """Bundle-parameter indices (``fx fy cx cy k1 k2 p1 p2 k3``) of the terms the own fit fixed."""
    return tuple(4 + DIST_NAMES.index(t) for t in res.fixed if DIST_NAMES.index(t) < 5)


def _own_sigma(res: IntrinsicsResult) -> np.ndarray:
    s = res.std or {}
    d = list(s.get("dist", [])) + [np.nan] * 5
    return np.array([s.get("fx", np.nan), s.get("fy", np.nan), s.get("cx", np.nan), s.get("cy", np.nan), *d[:5]], float)


def rms_exceeded(own_rms: float, joint_rms: float, rms_tolerance: float = RMS_TOLERANCE) -> bool:
    """The guard's RMS limit: the joint own-view RMS more than ``rms_tolerance`` above the own fit's, by more than
    detection noise (:data:`RMS_FLOOR_PX`)."""
    return joint_rms > (1 + rms_tolerance) * own_rms and joint_rms - own_rms > RMS_FLOOR_PX


def check_camera(own: IntrinsicsResult, K: np.ndarray, dist: np.ndarray, joint_rms: float,
                 rms_tolerance: float = RMS_TOLERANCE, sigma_tolerance: float = SIGMA_TOLERANCE) -> CameraCheck:
    """Compare a camera's joint solution to its own fit (see the module docstring, step 4)."""
    a = np.r_[own.K[0, 0], own.K[1, 1], own.K[0, 2], own.K[1, 2], (list(own.dist) + [0.0] * 5)[:5]]
    b = np.r_[K[0, 0], K[1, 1], K[0, 2], K[1, 2], (list(np.ravel(dist)) + [0.0] * 5)[:5]]
    sig = _own_sigma(own)
    floor = np.r_[FOCAL_FLOOR * a[0], FOCAL_FLOOR * a[1], CENTRE_FLOOR_PX, CENTRE_FLOOR_PX, np.zeros(5)]
    sig = np.where(np.isfinite(sig), np.maximum(sig, floor), sig)
    ok = np.isfinite(sig) & (sig > 0)
    z = np.where(ok, np.abs(b - a) / np.where(ok, sig, 1.0), 0.0)
    # Distortion terms: how far the move shifts a point at the image corner (k1 r^3, k2 r^5, p1/p2 ~3 r^2, k3 r^7
    # in normalised units, times fx); a move below DISTORTION_FLOOR_PX there is not damage, whatever its sigma.
    w, h = own.image_size
    r = float(np.hypot(max(a[2], w - a[2]), max(a[3], h - a[3])) / a[0])
    effect = np.abs(b[4:] - a[4:]) * a[0] * np.array([r ** 3, r ** 5, 3 * r ** 2, 3 * r ** 2, r ** 7])
    z[4:] = np.where(effect < DISTORTION_FLOOR_PX, 0.0, z[4:])
    i = int(np.argmax(z))
    reasons = []
    if rms_exceeded(own.rms_px, joint_rms, rms_tolerance):
        reasons.append(f"RMS on its own views {own.rms_px:.3f} -> {joint_rms:.3f} px "
                       f"(+{100 * (joint_rms / own.rms_px - 1):.0f} %, limit +{100 * rms_tolerance:.0f} %)")
    if z[i] > sigma_tolerance:
        reasons.append(f"{PARAM_NAMES[i]} {a[i]:.4g} -> {b[i]:.4g} ({z[i]:.1f} sigma, limit {sigma_tolerance:g})")
    kept = "own fit" if reasons else "joint"
    return CameraCheck(own.camera, float(own.rms_px), float(joint_rms), PARAM_NAMES[i], float(z[i]), kept,
                       "; ".join(reasons))


def _rms_within(chk: CameraCheck, options: JointOptions) -> bool:
    """Whether a camera's joint own-view RMS is within the arbitration's limit (see JointOptions)."""
    if options.max_arbitration_rms_ratio is not None:
        return chk.joint_rms_px <= options.max_arbitration_rms_ratio * chk.own_rms_px
    return not rms_exceeded(chk.own_rms_px, chk.joint_rms_px, options.rms_tolerance)


def solve_joint(vis: IntrinsicsResult, lw: IntrinsicsResult, free: set[str],
                options: JointOptions = JointOptions(),
                half_turn: tuple[np.ndarray, np.ndarray] | None = None) -> JointOutcome:
    """Steps 0-4 of the module docstring. ``free``: cameras whose intrinsics were fitted in this run;
    ``half_turn``: the board's :meth:`~rig.boards.Board.half_turn` (``None``: its detections are unambiguous).

    The pairs are checked twice: with each camera's own fit, then with the
    joint intrinsics (board poses by PnP again): own fits from few views bias
    the poses of views unlike the others (an error in f is one in depth), and a
    pair can look inconsistent only for that. When the second check leaves out
    other pairs, the joint solve is repeated with them.

    Raises :class:`~rig.errors.RigError` when too few consistent pairs remain.
    """
    turned: list[str] = []
    names = paired_views(vis, lw)
    if half_turn is not None:
        turned = pairs_to_turn({n: vis.poses[n] for n in names if n in vis.poses},
                               {n: lw.poses[n] for n in names if n in lw.poses}, half_turn[1])
        if turned:
            lw = turn_views(lw, turned, *half_turn)
    out = _solve_checked(vis, lw, free, options)
    if turned:
        out.turned = turned
        out.notes.insert(0, f"{lw.camera}: the board's point order in {len(turned)} of {len(names)} "
                            f"paired views was a half turn from the visible detection's ({_names(turned)}); "
                            "renumbered to match (the board's colours did not fix its orientation in that image)")
    return out


def _names(views: list[str], at_most: int = 6) -> str:
    return ", ".join(views[:at_most]) + (f" and {len(views) - at_most} more" if len(views) > at_most else "")


def _solve_checked(vis: IntrinsicsResult, lw: IntrinsicsResult, free: set[str], options: JointOptions) -> JointOutcome:
    """Steps 1-4, the pairs checked with the own fits, then with the joint intrinsics (see :func:`solve_joint`)."""
    quick = replace(options, arbitrate=False)  # the arbitration (costly) only for the solution returned
    out = _solve(vis, lw, free, quick)
    check_with = None
    if out.bundle is not None and out.consistency is not None and out.consistency.checked:
        names = [p.view for p in out.consistency.pairs]
        refined = [replace(out.intrinsics[c], poses={**out.intrinsics[c].poses,
                                                     **{v.name: _pose(v, out.intrinsics[c]) for v in r.views
                                                        if v.name in names}})
                   for c, r in (("visible", vis), ("lwir", lw))]
        again = _solve(vis, lw, free, quick, check_with=(refined[0], refined[1]))
        if {p.view for p in again.consistency.inconsistent} != {p.view for p in out.consistency.inconsistent}:
            out, check_with = again, (refined[0], refined[1])
    if options.arbitrate and any(c.kept == "own fit" for c in out.checks.values()):
        out = _solve(vis, lw, free, options, check_with=check_with)
    return out


def _solve(vis: IntrinsicsResult, lw: IntrinsicsResult, free: set[str], options: JointOptions,
           check_with: tuple[IntrinsicsResult, IntrinsicsResult] | None = None) -> JointOutcome:
    warnings: list[str] = []
    notes: list[str] = []
    names = paired_views(vis, lw)
    cons = None
    use = names
    cv, cl = check_with or (vis, lw)
    rel = pair_relative_poses(cv, cl, names)
    if options.check_pairs and rel:
        cons = check_pairs(rel, covariances=pair_covariances(cv, cl, rel))
        bad = {p.view for p in cons.inconsistent}
        use = [n for n in names if n not in bad]
        residuals = {"visible": cv.residuals, "lwir": cl.residuals}
        dropped: dict[str, int] = {}
        for r in (cv, cl):
            for d in r.dropped:
                if d.what == "corners":
                    dropped[f"{d.camera}/{d.view}"] = dropped.get(f"{d.camera}/{d.view}", 0) + d.count
        warnings.extend(describe(p, cons, detection_hint(p.view, residuals, dropped)) for p in cons.inconsistent)
        if not cons.checked:
            notes.append(f"pair consistency not checked: {len(rel)} pairs (a median and MAD need at least 6)")
    vis_views = {v.name: v for v in vis.views if v.name in use}
    lw_views = {v.name: v for v in lw.views if v.name in use}
    st = stereo_calibrate(vis, lw, vis_views, lw_views, min_views=options.min_views)
    out = JointOutcome({"visible": vis, "lwir": lw}, st, cons, warnings=warnings, notes=notes)
    if not (options.bundle and vis.model == lw.model == "pinhole" and len(vis.dist) <= 5 and len(lw.dist) <= 5):
        return out
    own = {"visible": vis, "lwir": lw}
    huber = {c: options.huber_factor * noise_sigma(r) for c, r in own.items()}
    fixed = {c: fixed_indices(r) for c, r in own.items()}
    scatter = pair_scatter(cons)
    if scatter > options.max_pair_scatter:
        out.notes.append(f"consistent pairs scatter {scatter:.1f}x beyond their measurement noise (median "
                         f"Mahalanobis distance {scatter * CHI6_MEDIAN:.1f}; a rigid, synchronized rig gives "
                         f"{CHI6_MEDIAN:.1f}): the rig flexes, the cameras are not triggered together, or the single-view "
                         "board poses are less certain than their covariances say; the guard keeps any camera the "
                         "joint solve would damage")
    free_all = {c for c in ("visible", "lwir") if c in free}
    free_now = set(free_all)
    checks: dict[str, CameraCheck] = {}
    first: dict[str, CameraCheck] = {}  # every fitted camera free: the joint solve the arbitration weighs
    j_all = None
    for _ in range(3):
        j = bundle_adjust(vis, lw, st.R, st.t, free_now, coupled=set(st.views), fixed=fixed, loss=options.loss,
                          huber_px=huber)
        j_all = j_all or j
        failed = []
        for c in sorted(free_now):
            checks[c] = check_camera(own[c], j.K[c], j.dist[c], j.rms_px[c], options.rms_tolerance,
                                     options.sigma_tolerance)
            if checks[c].kept == "own fit":
                failed.append(c)
        first = first or dict(checks)
        if not failed:
            break
        free_now -= set(failed)
    held_out = None
    if (free_now != free_all and options.arbitrate and len(st.views) >= options.min_arbitration_pairs
            and all(_rms_within(ch, options) for ch in first.values())):
        def candidate(v_f: IntrinsicsResult, l_f: IntrinsicsResult, coupled: set[str], which: str):
            r = bundle_adjust(v_f, l_f, st.R, st.t, free_all if which == "joint" else free_now, coupled=coupled,
                              fixed=fixed, loss=options.loss, huber_px=huber)
            return r.K["visible"], r.dist["visible"], r.K["lwir"], r.dist["lwir"], r.R, r.t

        held_out = compare_held_out(vis, lw, list(st.views), candidate, margin=options.arbitration_margin)
        if held_out.keep_joint:
            free_now, j = set(free_all), j_all
            checks = {c: replace(ch, kept="joint") for c, ch in first.items()}
    result = {}
    for c, r in own.items():
        if c in free_now:
            s = j.std_intrinsics[c]
            std = {"fx": float(s[0]), "fy": float(s[1]), "cx": float(s[2]), "cy": float(s[3]),
                   "dist": [float(x) for x in s[4:4 + len(r.dist)]]}
            K, dist = j.K[c], j.dist[c][:len(r.dist)]
        else:
            std, K, dist = r.std, r.K, r.dist
        res = j.residuals[c]
        result[c] = replace(r, K=K, dist=dist, rms_px=j.rms_px[c], std=std, poses={**r.poses, **j.poses[c]},
                            residuals=res, per_view_rms={n: float(np.sqrt((e ** 2).sum(1).mean())) for n, e in res.items()})
    ho = "" if held_out is None else (f"held-out pairs register at {held_out.joint_px:.2f} px with the joint solve, "
                                      f"{held_out.guarded_px:.2f} px with the own fit ({held_out.pairs} pairs, "
                                      f"{held_out.folds} folds)")
    for c, chk in checks.items():
        if chk.kept == "own fit":
            out.warnings.append(f"JOINT SOLVE REJECTED FOR {c.upper()}: it would have moved the camera away from its own "
                                f"fit ({chk.reason}); kept the own-fit intrinsics, which its {len(own[c].views)} views "
                                "support, and re-solved the extrinsics with them fixed" + (f"; {ho}" if ho else ""))
        elif chk.reason:
            out.warnings.append(f"JOINT SOLVE KEPT FOR {c.upper()} BEYOND ITS OWN-FIT LIMITS ({chk.reason}): {ho}, "
                                f"at least {100 * held_out.margin:.0f} % lower, so the pairs support it better than "
                                f"the camera's {len(own[c].views)} views alone")
    st = replace(st, R=j.R, t=j.t, std_rotation_deg=j.std_rotation_deg, std_translation_m=j.std_translation_m,
                 rms_px=float(np.sqrt((j.rms_px["visible"] ** 2 + j.rms_px["lwir"] ** 2) / 2)),
                 epipolar_px=epipolar_summary(result["visible"], result["lwir"], st.pairs, j.R, j.t))
    out.intrinsics, out.stereo, out.checks = result, st, checks
    out.bundle = {"views": j.views, "observations": j.observations, "iterations": j.iterations,
                  "free_intrinsics": sorted(free_now), "rms_px": j.rms_px, "coupled_views": len(j.coupled),
                  "loss": options.loss, "huber_px": {c: float(v) for c, v in huber.items()},
                  "downweighted_fraction": j.downweighted,
                  "kept": {c: chk.kept for c, chk in checks.items()},
                  "held_out": None if held_out is None else held_out.as_dict(),
                  "own_fit_rms_px": {c: float(r.rms_px) for c, r in own.items()}}
    return out
