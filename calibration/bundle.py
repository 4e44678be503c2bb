"""Joint bundle adjustment of both cameras: intrinsics, extrinsics and every board pose at once.

OpenCV's route (each camera alone, then ``stereoCalibrate`` with the
intrinsics fixed) leaves the LWIR principal point and distortion errors frozen,
and the extrinsics absorb them: a 0.7 px principal-point error tilts the
estimated rotation by ~0.05 deg and shifts the translation by millimetres, which
a working plane at 15 m turns into ~1 px of misregistration. Here every
observation of every view, by either camera, constrains one model, as in
Kalibr: board poses live in the visible (rig) frame, the LWIR sees them through
the extrinsics, so board views seen by both cameras tie the two together.

Parameters (pinhole, radial-tangential ``k1 k2 p1 p2 k3``):

* per camera ``fx fy cx cy k1 k2 p1 p2 k3`` (free, or held at a prior);
* LWIR pose ``X_lwir = R_e X_vis + t_e`` (rotation vector + translation);
* per view the board pose in the visible frame.

Only views both cameras saw, and that the caller lets couple (consistent
pairs, :mod:`rig.calibration.consistency`), share one board pose; every other
view of either camera has a pose of its own and constrains that camera's
intrinsics alone. Residuals can go through a Huber loss (per corner, on the
residual norm): convex, so a good start stays a good solution, quadratic for
the Gaussian bulk, linear beyond the threshold so a few bad corners or a
slightly desynchronized pair pull with bounded force. Cauchy would reject
gross outliers harder but is not convex (it can settle on a wrong minimum and
discounts good corners too); gross outliers are removed before (intrinsics
rejection, pair consistency), so the bounded influence is what is needed here.

Solved by Levenberg-Marquardt on the normal equations with the board poses
eliminated through the Schur complement (the classic bundle-adjustment
structure: each pose touches only its own view's residuals), with
finite-difference Jacobians: the global block by central differences, the
pose blocks by perturbing one coordinate of every pose at once.
Uncertainty: the Gauss-Newton covariance ``sigma^2 S^-1`` of the global
parameters at the optimum.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from rig.camera_model import distort
from rig.calibration.intrinsics import IntrinsicsResult

N_INTR = 9  # fx fy cx cy k1 k2 p1 p2 k3


@dataclass(frozen=True)
class JointResult:
    """Refined intrinsics of both cameras and ``X_visible = R X_lwir + t`` with standard errors."""

    K: dict[str, np.ndarray]
    dist: dict[str, np.ndarray]
    R: np.ndarray
    t: np.ndarray
    std_rotation_deg: np.ndarray
    std_translation_m: np.ndarray
    std_intrinsics: dict[str, np.ndarray]  # fx fy cx cy k1 k2 p1 p2 k3
    rms_px: dict[str, float]
    poses: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]  # camera -> view -> board pose in that camera
    views: int
    observations: int
    iterations: int
    residuals: dict[str, dict[str, np.ndarray]]  # camera -> view -> (N, 2) observed - projected
    coupled: list[str]  # views whose two observations shared one board pose (they tie the extrinsics)
    loss: str = "linear"
    downweighted: float = 0.0  # fraction of corners beyond the Huber threshold at the optimum


def rodrigues_batch(rvecs: np.ndarray) -> np.ndarray:
    """Rotation matrices ``(N, 3, 3)`` from rotation vectors ``(N, 3)``."""
    theta = np.linalg.norm(rvecs, axis=1)
    small = theta < 1e-12
    k = rvecs / np.where(small, 1.0, theta)[:, None]
    K = np.zeros((len(rvecs), 3, 3))
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -k[:, 2], k[:, 1], -k[:, 0]
    K[:, 1, 0], K[:, 2, 0], K[:, 2, 1] = k[:, 2], -k[:, 1], k[:, 0]
    s, c = np.sin(theta)[:, None, None], np.cos(theta)[:, None, None]
    R = np.eye(3)[None] + s * K + (1 - c) * (K @ K)
    R[small] = np.eye(3)
    return R


def _intr_vector(K: np.ndarray, dist: np.ndarray) -> np.ndarray:
    d = (list(np.ravel(dist)) + [0.0] * 5)[:5]
    return np.array([K[0, 0], K[1, 1], K[0, 2], K[1, 2], *d], np.float64)


def _project(intr: np.ndarray, X: np.ndarray) -> np.ndarray:
    xy = X[:, :2] / X[:, 2:3]
    d = distort(xy, intr[4:9])
    return np.stack([intr[0] * d[:, 0] + intr[2], intr[1] * d[:, 1] + intr[3]], axis=1)


class _Problem:
    """Observations and the parameter layout.

    Board poses: one per view name seen by both cameras and ``coupled`` (the
    extrinsics tie its two observations together), else one per camera and
    view (that camera's own view: it constrains only that camera's
    intrinsics). All are parametrised in the visible frame; a pose seen only
    by the LWIR camera maps through the extrinsics, which it cannot move (its
    own pose absorbs any change).
    """

    def __init__(self, vis: IntrinsicsResult, lwir: IntrinsicsResult, R: np.ndarray, t: np.ndarray,
                 free: set[str], coupled: set[str] | None = None, fixed: dict[str, tuple[int, ...]] | None = None):
        self.free = [c for c in ("visible", "lwir") if c in free]
        self.prior = {"visible": _intr_vector(vis.K, vis.dist), "lwir": _intr_vector(lwir.K, lwir.dist)}
        fixed = fixed or {}
        self.free_idx = {c: np.array([i for i in range(N_INTR) if i not in set(fixed.get(c, ()))], int) for c in self.free}
        both = {v.name for v in vis.views} & {v.name for v in lwir.views}
        shared = both if coupled is None else both & set(coupled)
        keys: list[tuple[str, str]] = []  # (view, camera or "both")
        for cam, res in (("visible", vis), ("lwir", lwir)):
            for v in res.views:
                k = (v.name, "both" if v.name in shared else cam)
                if k not in keys:
                    keys.append(k)
        self.keys = keys
        self.names = [k[0] if k[1] == "both" else f"{k[0]}@{k[1]}" for k in keys]
        poses = []
        for n, who in keys:
            if who in ("both", "visible"):
                Rb, tb = vis.poses[n]
            else:
                Rl, tl = lwir.poses[n]
                Rb, tb = R @ Rl, R @ np.ravel(tl) + t
            poses.append(np.r_[cv2.Rodrigues(np.asarray(Rb, np.float64))[0].ravel(), np.ravel(tb)])
        self.pose0 = np.array(poses)
        Re = R.T  # X_lwir = R^T X_vis - R^T t
        self.ext0 = np.r_[cv2.Rodrigues(Re)[0].ravel(), -Re @ t]
        index = {k: i for i, k in enumerate(keys)}
        obs: dict[str, list] = {"visible": [], "lwir": []}
        for cam, res in (("visible", vis), ("lwir", lwir)):
            for v in res.views:
                obs[cam].append((index[(v.name, "both" if v.name in shared else cam)], v))
        self.view_names = {c: [v.name for _, v in o] for c, o in obs.items()}
        self.view_sizes = {c: [len(v.ids) for _, v in o] for c, o in obs.items()}
        self.view_idx = {c: np.concatenate([np.full(len(v.ids), i) for i, v in o]) if o else np.zeros(0, int)
                         for c, o in obs.items()}
        self.obj = {c: np.concatenate([v.object_points for _, v in o]) if o else np.zeros((0, 3)) for c, o in obs.items()}
        self.img = {c: np.concatenate([v.image_points for _, v in o]) if o else np.zeros((0, 2)) for c, o in obs.items()}
        self.coupled = sorted(n for n, who in keys if who == "both")
        # Layout: [free intrinsics..., extrinsics (6), poses (6 per view)]
        off, self.off_intr = 0, {}
        for c in self.free:
            self.off_intr[c] = off
            off += len(self.free_idx[c])
        self.off_ext = off
        self.off_pose = self.off_ext + 6

    def x0(self) -> np.ndarray:
        return np.concatenate([self.prior[c][self.free_idx[c]] for c in self.free] + [self.ext0, self.pose0.ravel()])

    def unpack(self, x: np.ndarray):
        intr = {}
        for c in ("visible", "lwir"):
            v = self.prior[c].copy()
            if c in self.off_intr:
                v[self.free_idx[c]] = x[self.off_intr[c]:self.off_intr[c] + len(self.free_idx[c])]
            intr[c] = v
        ext = x[self.off_ext:self.off_ext + 6]
        poses = x[self.off_pose:].reshape(-1, 6)
        return intr, ext, poses

    def residuals(self, x: np.ndarray) -> np.ndarray:
        intr, ext, poses = self.unpack(x)
        Rb = rodrigues_batch(poses[:, :3])
        out = []
        for cam in ("visible", "lwir"):
            vi = self.view_idx[cam]
            if not len(vi):
                continue
            X = np.einsum("nij,nj->ni", Rb[vi], self.obj[cam]) + poses[vi, 3:]
            if cam == "lwir":
                Re = rodrigues_batch(ext[None, :3])[0]
                X = X @ Re.T + ext[3:]
            out.append((_project(intr[cam], X) - self.img[cam]).ravel())
        return np.concatenate(out)

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x[:self.off_pose], x[self.off_pose:].reshape(-1, 6)

    def join(self, g: np.ndarray, P: np.ndarray) -> np.ndarray:
        return np.concatenate([g, P.ravel()])

    def row_views(self) -> np.ndarray:
        """View index of every residual row (x and y rows of each observation)."""
        return np.repeat(np.concatenate([self.view_idx[c] for c in ("visible", "lwir")]), 2)

    def row_camera(self) -> np.ndarray:
        """0 (visible) or 1 (lwir) per observation (corner)."""
        return np.r_[np.zeros(len(self.view_idx["visible"]), int), np.ones(len(self.view_idx["lwir"]), int)]


def huber_weights(norms: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """IRLS weights of the Huber loss on residual norms: 1 inside ``delta``, ``delta / |r|`` beyond."""
    return np.where(norms <= delta, 1.0, delta / np.maximum(norms, 1e-300))


def huber_cost(norms: np.ndarray, delta: np.ndarray) -> float:
    """Sum of the Huber loss ``rho(s) = s^2`` (s <= delta), ``2 delta s - delta^2`` beyond (equals s^2 at delta)."""
    d = np.where(np.isfinite(delta), delta, 0.0)
    return float(np.where(norms <= delta, norms ** 2, 2 * d * norms - d ** 2).sum())


def _jacobians(prob: _Problem, g: np.ndarray, P: np.ndarray, r0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``J_g`` (rows x globals, central differences) and ``J_p`` (rows x 6: each row's own pose)."""
    Jg = np.empty((r0.size, g.size))
    for k in range(g.size):
        h = 1e-6 * max(1.0, abs(g[k]))
        gp, gm = g.copy(), g.copy()
        gp[k] += h
        gm[k] -= h
        Jg[:, k] = (prob.residuals(prob.join(gp, P)) - prob.residuals(prob.join(gm, P))) / (2 * h)
    Jp = np.empty((r0.size, 6))
    for k in range(6):
        h = 1e-7
        Pp, Pm = P.copy(), P.copy()
        Pp[:, k] += h
        Pm[:, k] -= h
        Jp[:, k] = (prob.residuals(prob.join(g, Pp)) - prob.residuals(prob.join(g, Pm))) / (2 * h)
    return Jg, Jp


def _normal_blocks(Jg, Jp, r, rows, n_views):
    U = Jg.T @ Jg
    bg = Jg.T @ r
    V = np.zeros((n_views, 6, 6))
    np.add.at(V, rows, Jp[:, :, None] * Jp[:, None, :])
    W = np.zeros((n_views, Jg.shape[1], 6))
    np.add.at(W, rows, Jg[:, :, None] * Jp[:, None, :])
    bp = np.zeros((n_views, 6))
    np.add.at(bp, rows, Jp * r[:, None])
    return U, bg, V, W, bp


def _solve_damped(U, bg, V, W, bp, lam):
    """Solve the damped normal equations via the Schur complement; returns (dg, dP, S)."""
    Ud = U + lam * np.diag(np.diag(U)) + 1e-12 * np.eye(len(U))
    Vd = V + lam * (V * np.eye(6)[None]) + 1e-12 * np.eye(6)[None]
    Vinv = np.linalg.inv(Vd)
    WVinv = W @ Vinv
    S = Ud - np.einsum("nij,nkj->ik", WVinv, W)
    rhs = bg - np.einsum("nij,nj->i", WVinv, bp)
    dg = np.linalg.solve(S, rhs)
    dP = np.einsum("nij,nj->ni", Vinv, bp - np.einsum("nji,j->ni", W, dg))
    return dg, dP, S


def bundle_adjust(vis: IntrinsicsResult, lwir: IntrinsicsResult, R: np.ndarray, t: np.ndarray,
                  free: set[str] = frozenset({"visible", "lwir"}), max_iterations: int = 50,
                  coupled: set[str] | None = None, fixed: dict[str, tuple[int, ...]] | None = None,
                  loss: str = "linear", huber_px: dict[str, float] | None = None) -> JointResult:
    """Refine everything jointly, starting from per-camera intrinsics and a stereo estimate ``(R, t)``.

    ``free``: cameras whose intrinsics are refined (others stay at their given values).
    ``coupled``: view names whose two observations share one board pose (default:
    every view both cameras saw); the other views of a camera get their own
    pose, so they constrain its intrinsics and not the extrinsics.
    ``fixed``: per camera, indices into ``fx fy cx cy k1 k2 p1 p2 k3`` held at their start value.
    ``loss``: ``"linear"`` (least squares) or ``"huber"``: each corner's residual
    norm ``s`` costs ``s^2`` up to ``huber_px[camera]`` and ``2 delta s - delta^2``
    beyond, solved by iteratively reweighted Levenberg-Marquardt (the weights
    ``min(1, delta / s)`` from the current residuals at each iteration; the
    fixed point is the Huber M-estimate).
    Only pinhole radial-tangential models with at most 5 coefficients are handled.
    """
    if vis.model != "pinhole" or lwir.model != "pinhole" or len(np.ravel(vis.dist)) > 5 or len(np.ravel(lwir.dist)) > 5:
        raise ValueError("bundle adjustment handles the pinhole k1 k2 p1 p2 k3 model only")
    if loss not in ("linear", "huber"):
        raise ValueError(f"unknown loss '{loss}' (linear, huber)")
    prob = _Problem(vis, lwir, np.asarray(R, np.float64), np.ravel(t).astype(np.float64), set(free), coupled, fixed)
    g, P = prob.split(prob.x0())
    rows = prob.row_views()
    n_views = len(prob.names)
    cam_of = prob.row_camera()
    if loss == "huber":
        hp = huber_px or {}
        delta = np.where(cam_of == 0, hp.get("visible", np.inf), hp.get("lwir", np.inf)).astype(np.float64)
    else:
        delta = np.full(len(cam_of), np.inf)

    def weights(r: np.ndarray) -> np.ndarray:
        return huber_weights(np.linalg.norm(r.reshape(-1, 2), axis=1), delta)

    def robust(r: np.ndarray) -> float:
        return huber_cost(np.linalg.norm(r.reshape(-1, 2), axis=1), delta)

    r = prob.residuals(prob.join(g, P))
    cost = robust(r)
    lam = 1e-3
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        sw = np.repeat(np.sqrt(weights(r)), 2)
        Jg, Jp = _jacobians(prob, g, P, r)
        blocks = _normal_blocks(Jg * sw[:, None], Jp * sw[:, None], r * sw, rows, n_views)
        improved = False
        for _ in range(12):
            dg, dP, _ = _solve_damped(*blocks, lam)
            g_new, P_new = g - dg, P - dP
            r_new = prob.residuals(prob.join(g_new, P_new))
            cost_new = robust(r_new)
            if cost_new < cost:
                improved = True
                lam = max(lam / 3.0, 1e-9)
                break
            lam *= 4.0
        if not improved:
            break
        gain = (cost - cost_new) / cost
        g, P, r, cost = g_new, P_new, r_new, cost_new
        if gain < 1e-10:
            break
    # Covariance of the global parameters: sigma^2 S^-1 (undamped, weighted) at the optimum.
    w = weights(r)
    sw = np.repeat(np.sqrt(w), 2)
    Jg, Jp = _jacobians(prob, g, P, r)
    U, bg, V, W, bp = _normal_blocks(Jg * sw[:, None], Jp * sw[:, None], r * sw, rows, n_views)
    _, _, S = _solve_damped(U, bg, V, W, bp, 0.0)
    dof = max(1, r.size - g.size - P.size)
    sigma2 = float((r * sw) @ (r * sw)) / dof
    diag = np.sqrt(np.clip(np.diag(np.linalg.pinv(S)) * sigma2, 0, None))
    intr, ext, _ = prob.unpack(prob.join(g, P))
    Re = rodrigues_batch(ext[None, :3])[0]
    Rb = rodrigues_batch(P[:, :3])
    poses: dict[str, dict] = {"visible": {}, "lwir": {}}
    for cam in ("visible", "lwir"):
        for name, i in zip(prob.view_names[cam], _first_rows(prob.view_idx[cam], prob.view_sizes[cam])):
            if cam == "visible":
                poses[cam][name] = (Rb[i], P[i, 3:].copy())
            else:
                poses[cam][name] = (Re @ Rb[i], Re @ P[i, 3:] + ext[3:])
    R_out, t_out = Re.T, -Re.T @ ext[3:]
    res = r.reshape(-1, 2)
    n_vis = len(prob.view_idx["visible"])
    per_cam = {"visible": res[:n_vis], "lwir": res[n_vis:]}
    rms = {c: float(np.sqrt((v ** 2).sum(1).mean())) if len(v) else float("nan") for c, v in per_cam.items()}
    residuals = {c: dict(zip(prob.view_names[c], np.split(per_cam[c], np.cumsum(prob.view_sizes[c])[:-1])))
                 if prob.view_names[c] else {} for c in per_cam}
    std_r = np.degrees(diag[prob.off_ext:prob.off_ext + 3])
    std_t = np.abs(Re.T) @ diag[prob.off_ext + 3:prob.off_ext + 6]  # t = -Re^T t_e: rotate (conservatively)
    std_intr = {}
    for c in prob.free:
        full = np.zeros(N_INTR)  # a fixed term has no uncertainty of its own: 0
        full[prob.free_idx[c]] = diag[prob.off_intr[c]:prob.off_intr[c] + len(prob.free_idx[c])]
        std_intr[c] = full
    K = {c: np.array([[v[0], 0, v[2]], [0, v[1], v[3]], [0, 0, 1.0]]) for c, v in intr.items()}
    dist = {c: v[4:9].copy() for c, v in intr.items()}
    return JointResult(K, dist, R_out, t_out, std_r, std_t, std_intr, rms, poses, n_views, res.shape[0], iterations,
                       residuals, prob.coupled, loss, float((w < 1).mean()))


def _first_rows(view_idx: np.ndarray, sizes: list[int]) -> list[int]:
    """The pose index of each view, in observation order."""
    starts = np.r_[0, np.cumsum(sizes)[:-1]].astype(int)
    return [int(view_idx[s]) for s in starts]
