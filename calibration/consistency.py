"""Pair consistency: does each simultaneous view agree with the rig's one relative pose?

Each pair (a view both cameras saw) gives its own relative pose from its two
board poses: with ``X_v = R_v X_b + t_v`` and ``X_l = R_l X_b + t_l``,

    R_i = R_v R_l^T,   t_i = t_v - R_i t_l          (X_visible = R_i X_lwir + t_i)

A rigid, synchronized rig gives the same ``(R_i, t_i)`` for every pair, up to
measurement noise. A pair taken while the rig flexed, or with the cameras not
triggered together while the board moved, does not. The robust rig estimate is
the geodesic L1 mean of the rotations and the geometric median of the
translations (Weiszfeld iterations: a minority of bad pairs cannot move
either much). Each pair's deviation from it is an angle (degrees) and a
distance (mm); a pair is *inconsistent* when either exceeds

    max(median(d) + k * 1.4826 * MAD(d), floor)

over all pairs (or, given each pair's pose covariance, when its Mahalanobis
distance exceeds ``median + k MAD`` of those and it is beyond a floor; see
:func:`check_pairs`). ``k = 3.5`` (the modified z-score rule of Iglewicz and
Hoaglin): for deviations that are norms of Gaussian errors (Maxwell
distributed, even with one axis three times better determined) it flags
0.15-0.3 % of good pairs, about one false alarm in 10 calibrations of 40 pairs,
while a pair 5 noise-sigma off is caught. The floors (0.05 deg, 1 mm) are the
accuracy the extrinsics are specified to (the calibration tolerances): a pair
that agrees with the rig estimate within them is never called inconsistent,
however tightly the other pairs agree (near-perfect data make the MAD tiny).
:func:`pose_covariance` gives a board pose's covariance from its PnP Jacobian
(corner noise, plus the camera's intrinsics uncertainty propagated through the
pose's sensitivity to them, which differs from view to view) and
:func:`relative_covariance` propagates two of them to a pair.
With fewer than :data:`MIN_PAIRS` pairs the median and MAD mean little and
nothing is flagged.

Before any of this, :func:`pairs_to_turn` finds pairs whose two detections
number the board's points in orders a half turn apart (a chessboard's colours
decide its order, and an LWIR image may show them faintly or inverted): such a
pair's relative pose is 180 degrees off about the board's normal, which no
threshold should have to catch.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

K_MAD = 3.5
HALF_TURN_TOLERANCE_DEG = 5.0  # a pair within this of the rig's rotation agrees with it (good pairs: < 1.5 deg)
FLOOR_ROTATION_DEG = 0.05
FLOOR_TRANSLATION_MM = 1.0
MIN_PAIRS = 6
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation


@dataclass(frozen=True)
class PairDeviation:
    """One pair's relative pose against the robust rig estimate.

    ``mahalanobis``: the 6-dof deviation weighed by the pair's own pose
    uncertainty (NaN when no covariance was given).
    """

    view: str
    rotation_deg: float
    translation_mm: float
    inconsistent: bool
    mahalanobis: float = float("nan")


@dataclass(frozen=True)
class Consistency:
    """Per-pair deviations, the thresholds applied and the robust rig estimate ``X_v = R X_l + t``."""

    R: np.ndarray
    t: np.ndarray
    pairs: list[PairDeviation]
    rotation_threshold_deg: float
    translation_threshold_mm: float
    k: float = K_MAD
    checked: bool = True  # False: too few pairs to judge (nothing flagged)
    mahalanobis_threshold: float | None = None  # set when the decision used the pairs' covariances

    @property
    def inconsistent(self) -> list[PairDeviation]:
        return [p for p in self.pairs if p.inconsistent]

    @property
    def consistent_views(self) -> list[str]:
        return [p.view for p in self.pairs if not p.inconsistent]


def relative_pose(R_v: np.ndarray, t_v: np.ndarray, R_l: np.ndarray, t_l: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(R, t)`` with ``X_visible = R X_lwir + t`` from one board's pose in each camera."""
    R = np.asarray(R_v, np.float64) @ np.asarray(R_l, np.float64).T
    return R, np.ravel(t_v) - R @ np.ravel(t_l)


def _log(R: np.ndarray) -> np.ndarray:
    return cv2.Rodrigues(np.asarray(R, np.float64))[0].ravel()


def _exp(w: np.ndarray) -> np.ndarray:
    return cv2.Rodrigues(np.asarray(w, np.float64).reshape(3, 1))[0]


def rotation_l1_mean(Rs: list[np.ndarray], iterations: int = 50) -> np.ndarray:
    """Geodesic L1 mean (median) of rotations: Weiszfeld steps in the tangent space, from the chordal mean."""
    M = np.sum(Rs, axis=0)
    U, _, Vt = np.linalg.svd(M)
    R = U @ np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))]) @ Vt
    for _ in range(iterations):
        v = np.array([_log(Ri @ R.T) for Ri in Rs])
        d = np.maximum(np.linalg.norm(v, axis=1), 1e-12)
        step = (v / d[:, None]).sum(0) / (1.0 / d).sum()
        R = _exp(step) @ R
        if np.linalg.norm(step) < 1e-12:
            break
    return R


def geometric_median(points: np.ndarray, iterations: int = 100) -> np.ndarray:
    """Weiszfeld's geometric median of ``(N, D)`` points."""
    x = np.median(points, axis=0)
    for _ in range(iterations):
        d = np.maximum(np.linalg.norm(points - x, axis=1), 1e-12)
        x_new = (points / d[:, None]).sum(0) / (1.0 / d).sum()
        if np.linalg.norm(x_new - x) < 1e-12:
            return x_new
        x = x_new
    return x


def threshold(d: np.ndarray, k: float, floor: float) -> float:
    """``max(median(d) + k * 1.4826 * MAD(d), floor)``."""
    med = float(np.median(d))
    return max(med + k * MAD_TO_SIGMA * float(np.median(np.abs(d - med))), floor)


def deviation_vector(R_i: np.ndarray, t_i: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``[log(R_i R^T) (rad), t_i - t (m)]``: a pair's 6-dof deviation from the rig pose."""
    return np.r_[_log(np.asarray(R_i) @ np.asarray(R).T), np.ravel(t_i) - np.ravel(t)]


def check_pairs(relative: dict[str, tuple[np.ndarray, np.ndarray]], k: float = K_MAD,
                floor_rotation_deg: float = FLOOR_ROTATION_DEG, floor_translation_mm: float = FLOOR_TRANSLATION_MM,
                covariances: dict[str, np.ndarray] | None = None) -> Consistency:
    """Deviation of every pair's relative pose (view -> ``(R_i, t_i)``) from the robust rig estimate.

    Without ``covariances`` a pair is inconsistent when its angle or its
    distance exceeds ``max(median + k MAD, floor)``. With them (view -> 6x6
    covariance of :func:`deviation_vector`, e.g. from the two board poses' PnP
    Jacobians) the decision is on the Mahalanobis distance, ``median + k MAD``
    of those, and a pair must also exceed a floor in degrees or millimetres:
    single board poses determine the board's tilt poorly (weak perspective),
    so raw angles of good pairs scatter by tenths of a degree, while a camera
    that moved shifts the whole image and stands out once weighed by its
    uncertainty.
    """
    names = list(relative)
    if not names:
        raise ValueError("no pairs to check")
    Rs = [relative[n][0] for n in names]
    ts = np.array([np.ravel(relative[n][1]) for n in names])
    R = rotation_l1_mean(Rs)
    t = geometric_median(ts)
    rot = np.array([np.degrees(np.linalg.norm(_log(Ri @ R.T))) for Ri in Rs])
    tra = 1000.0 * np.linalg.norm(ts - t, axis=1)
    checked = len(names) >= MIN_PAIRS
    m = np.full(len(names), np.nan)
    if covariances is not None and all(n in covariances for n in names):
        for i, n in enumerate(names):
            e = deviation_vector(Rs[i], ts[i], R, t)
            m[i] = float(np.sqrt(max(e @ np.linalg.pinv(covariances[n]) @ e, 0.0)))
    if not checked:
        pairs = [PairDeviation(n, float(a), float(b), False, float(mi)) for n, a, b, mi in zip(names, rot, tra, m)]
        return Consistency(R, t, pairs, float("inf"), float("inf"), k, False)
    if np.isfinite(m).all():
        thr_m = threshold(m, k, 0.0)
        bad = (m > thr_m) & ((rot > floor_rotation_deg) | (tra > floor_translation_mm))
        pairs = [PairDeviation(n, float(a), float(b), bool(x), float(mi)) for n, a, b, x, mi in zip(names, rot, tra, bad, m)]
        return Consistency(R, t, pairs, floor_rotation_deg, floor_translation_mm, k, True, thr_m)
    thr_r = threshold(rot, k, floor_rotation_deg)
    thr_t = threshold(tra, k, floor_translation_mm)
    pairs = [PairDeviation(n, float(a), float(b), bool(a > thr_r or b > thr_t)) for n, a, b in zip(names, rot, tra)]
    return Consistency(R, t, pairs, thr_r, thr_t, k, True)


def half_turned_pose(R: np.ndarray, t: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A board pose after renumbering the board's points by a half turn (``X' = c + diag(-1, -1, 1) X``,
    :meth:`rig.boards.Board.half_turn`): the same physical board, so ``R X + t = R' X' + t'``."""
    RF = np.asarray(R, np.float64) @ np.diag([-1.0, -1.0, 1.0])
    return RF, np.ravel(t) - RF @ np.ravel(c)


def pairs_to_turn(poses_v: dict[str, tuple[np.ndarray, np.ndarray]], poses_l: dict[str, tuple[np.ndarray, np.ndarray]],
                  c: np.ndarray, tolerance_deg: float = HALF_TURN_TOLERANCE_DEG) -> list[str]:
    """Pairs whose LWIR point order must be turned by half to agree with the visible one.

    Each pair gives two candidate relative rotations, as detected and with the
    LWIR board renumbered by a half turn; they are 180 degrees apart. Turned
    candidates of different pairs disagree by twice the angle between their
    boards' normals, so over views at different orientations only the right
    choice lets the pairs agree. Every candidate is tried as the rig's rotation
    and counts the pairs that agree with it within ``tolerance_deg`` (either
    way numbered); the best (most pairs, then fewest turned, then the smallest
    summed angle) is taken only when its pairs outnumber those of the best
    hypothesis with every pair as detected plus the pairs it would turn that
    agree with that one too: boards all facing one way agree as well either
    way (a half turn about their common normal), so such pairs are evidence
    for neither and stay as detected. A pair off the rig by a degree or two
    is left to the consistency check.

    Args:
        poses_v, poses_l: view -> board pose ``(R, t)`` in each camera.
        c: the half turn's offset (:meth:`rig.boards.Board.half_turn`).
    """
    names = [n for n in poses_v if n in poses_l]
    if len(names) < 2:
        return []
    cand = np.empty((len(names), 2, 3, 3))
    for i, n in enumerate(names):
        cand[i, 0] = relative_pose(*poses_v[n], *poses_l[n])[0]
        cand[i, 1] = relative_pose(*poses_v[n], *half_turned_pose(*poses_l[n], c))[0]
    hyp = cand.reshape(-1, 3, 3)
    cos = (np.einsum("hij,nsij->hns", hyp, cand) - 1.0) / 2.0
    ang = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))  # (hypothesis, pair, candidate)
    agree = ang.min(axis=2) < tolerance_deg
    turned = agree & (ang[:, :, 1] < ang[:, :, 0])
    cost = np.minimum(ang.min(axis=2), tolerance_deg).sum(axis=1)
    best = min(range(len(hyp)), key=lambda h: (-agree[h].sum(), turned[h].sum(), cost[h]))
    det = ang[0::2, :, 0] < tolerance_deg
    det_cost = np.minimum(ang[0::2, :, 0], tolerance_deg).sum(axis=1)
    d = min(range(len(det)), key=lambda h: (-det[h].sum(), det_cost[h]))
    if agree[best].sum() <= det[d].sum() + (turned[best] & det[d]).sum():
        return []
    return [n for i, n in enumerate(names) if turned[best, i]]


def describe(p: PairDeviation, c: Consistency, detection_hint: str = "") -> str:
    """One line for a warning: which pair, how far off, the limits and the likely causes.

    ``detection_hint`` (e.g. from :func:`detection_hint`) names a camera whose board detection in this
    view was noisier than in the others: then the view itself, not the rig, may be at fault."""
    if c.mahalanobis_threshold is not None:
        limit = (f"{p.mahalanobis:.1f} sigma-weighted against a limit of {c.mahalanobis_threshold:.1f}, "
                 f"and beyond {c.rotation_threshold_deg:g} deg or {c.translation_threshold_mm:g} mm")
    else:
        limit = f"limits {c.rotation_threshold_deg:.2f} deg / {c.translation_threshold_mm:.1f} mm"
    cause = (f"the rig flexed, the cameras were not triggered together, or this view's detection is off: {detection_hint}"
             if detection_hint else "the rig flexed, or the cameras were not triggered together")
    return (f"pair '{p.view}' inconsistent with the rig: {p.rotation_deg:.2f} deg / {p.translation_mm:.1f} mm from the "
            f"robust rig estimate ({limit}); left out of the extrinsics ({cause})")


def detection_hint(view: str, residuals: dict[str, dict[str, np.ndarray]], dropped: dict[str, int],
                   ratio: float = 1.25) -> str:
    """Which camera saw this view's board worse than its others (median corner residual ``ratio`` times its
    median over views, or corners dropped as outliers): ``""`` when none did.

    Args:
        residuals: camera -> view -> ``(N, 2)`` own-fit residuals.
        dropped: ``"camera/view"`` -> corners dropped as outliers in that view.
    """
    out = []
    for cam, per_view in residuals.items():
        if view not in per_view:
            continue
        med = {v: float(np.median(np.linalg.norm(r, axis=1))) for v, r in per_view.items() if len(r)}
        typical = float(np.median(list(med.values()))) if med else 0.0
        n_drop = dropped.get(f"{cam}/{view}", 0)
        if typical > 0 and (med.get(view, 0.0) > ratio * typical or n_drop):
            extra = f", {n_drop} outlier corner(s) dropped" if n_drop else ""
            out.append(f"its {cam} corners fit worse than the other views' ({med.get(view, 0.0):.2f} vs "
                       f"{typical:.2f} px median residual{extra})")
    return "; ".join(out)


def pose_covariance(obj: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray, dist: np.ndarray,
                    sigma_px: float, intrinsics_std: dict | None = None) -> np.ndarray:
    """6x6 covariance of a board pose ``(rvec, t)`` from its Jacobian: ``sigma^2 (J^T J)^-1``.

    With ``intrinsics_std`` (the camera's ``{"fx", "fy", "cx", "cy", "dist": [...]}`` standard deviations, as
    :class:`~rig.calibration.intrinsics.IntrinsicsResult` reports them) the intrinsics' own uncertainty is
    propagated too: the pose that PnP would find moves with them by ``-(J_p^T J_p)^-1 J_p^T J_k``. How much
    depends on the view (a close, tilted board trades focal length against distance far more than a distant,
    frontal one), so without it such a view's pair looks inconsistent when only its intrinsics sensitivity
    is larger."""
    rvec = _log(R).reshape(3, 1)
    dist = np.asarray(dist, np.float64).ravel()
    _, J = cv2.projectPoints(np.asarray(obj, np.float64), rvec, np.ravel(t).astype(np.float64).reshape(3, 1), K, dist)
    Jp = J[:, :6]
    A = np.linalg.pinv(Jp.T @ Jp)
    cov = sigma_px ** 2 * A
    if intrinsics_std is not None:
        sd = np.r_[[intrinsics_std.get(k, 0.0) for k in ("fx", "fy", "cx", "cy")],
                   list(intrinsics_std.get("dist", []))[:len(dist)]].astype(np.float64)
        sd = np.nan_to_num(np.r_[sd, np.zeros(4 + len(dist) - len(sd))], nan=0.0)
        S = -A @ Jp.T @ J[:, 6:6 + len(sd)]
        cov = cov + S @ np.diag(sd * sd) @ S.T
    return cov


def relative_covariance(pose_v: tuple[np.ndarray, np.ndarray], cov_v: np.ndarray, pose_l: tuple[np.ndarray, np.ndarray],
                        cov_l: np.ndarray, R_ref: np.ndarray) -> np.ndarray:
    """Covariance of :func:`deviation_vector` of the pair's :func:`relative_pose` (first order, numerically)."""
    x0 = np.r_[_log(pose_v[0]), np.ravel(pose_v[1]), _log(pose_l[0]), np.ravel(pose_l[1])]

    def f(x: np.ndarray) -> np.ndarray:
        Ri, ti = relative_pose(_exp(x[:3]), x[3:6], _exp(x[6:9]), x[9:12])
        return deviation_vector(Ri, ti, R_ref, np.zeros(3))

    J = np.empty((6, 12))
    for j in range(12):
        h = 1e-7
        xp, xm = x0.copy(), x0.copy()
        xp[j] += h
        xm[j] -= h
        J[:, j] = (f(xp) - f(xm)) / (2 * h)
    C = np.zeros((12, 12))
    C[:6, :6], C[6:, 6:] = cov_v, cov_l
    return J @ C @ J.T
