"""Board pose plans for calibrating the simulated rig: views that reach the image corners.

Intrinsics are only as good as the image area the corners cover: distortion
is extrapolated wherever no corner went. :func:`coverage_pose_plan` places the
board, view by view, against the cells of a 4x4 grid over one camera's image
(corners and edges included), at varied distances and tilts, cycling over the
cameras given. Poses are in the rig frame (``X_rig = R X_board + t``), like
:func:`rig.sim.views.board_pose_plan`.
"""

from __future__ import annotations

import numpy as np

from rig.boards import Board
from rig.rigconfig import RigConfig, rotation_from_vector_deg


def _project(spec, model, R, t, pts):
    Rc, tc = spec.sim.R @ R, spec.sim.R @ t + spec.sim.t
    P = pts @ Rc.T + tc
    return P, model.project(P)


def coverage_pose_plan(rig: RigConfig, board: Board, n_views: int, seed: int = 0, cameras: list[str] | None = None,
                       fill: tuple[float, float] = (0.6, 0.9), max_tilt_deg: float = 55.0, min_tilt_deg: float = 0.0,
                       margin_px: float = 12.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_views`` board poses; view ``i`` keeps the whole board inside camera ``cameras[i % len]``.

    ``fill``: range of the board's width as a fraction of that camera's image
    width. Deterministic from ``seed``.
    """
    from rig.sim.views import camera_model

    rng = np.random.default_rng(seed)
    specs = [s for s in rig.cameras if s.sim is not None and (cameras is None or s.name in cameras or s.role in cameras)]
    if not specs:
        raise ValueError("no simulated camera to plan for")
    models = [camera_model(s) for s in specs]
    pad = 0.3 * board.spacing  # keep the pattern and a little white around it inside the image
    x0, y0, x1, y1 = board.pattern_extent()
    x0, y0, x1, y1 = x0 - pad, y0 - pad, x1 + pad, y1 + pad
    outline = np.array([[x, y, 0.0] for x in np.linspace(x0, x1, 5) for y in np.linspace(y0, y1, 5)])
    bw = x1 - x0
    cells = [(gx, gy) for gy in range(4) for gx in range(4)]
    order = rng.permutation(len(cells))
    poses: list[tuple[np.ndarray, np.ndarray]] = []
    attempts = 0
    while len(poses) < n_views:
        attempts += 1
        if attempts > 400 * n_views:
            raise RuntimeError(f"could only plan {len(poses)} of {n_views} board poses")
        k = len(poses)
        spec, model = specs[k % len(specs)], models[k % len(specs)]
        gx, gy = cells[order[(k // len(specs)) % len(cells)]]
        f = model.K[0, 0]
        d = bw * f / (rng.uniform(*fill) * model.width)
        mag = rng.uniform(min_tilt_deg, max_tilt_deg)
        ang = rng.uniform(0, 2 * np.pi)
        tilt = mag * np.array([np.cos(ang), np.sin(ang)])
        if k % 5 == 0:
            tilt *= 0.3
        Rb = rotation_from_vector_deg([tilt[0], tilt[1], rng.uniform(-20, 20)])
        # Board centre on the camera's axis at distance d (camera frame), then shift in the image.
        Rc = Rb
        centre_cam = np.array([0.0, 0.0, d])
        R = spec.sim.R.T @ Rc
        t = spec.sim.R.T @ (centre_cam - spec.sim.t) - R @ board.center()
        ok = True
        for _ in range(3):
            P, px = _project(spec, model, R, t, outline)
            if (P[:, 2] < 0.3).any():
                ok = False
                break
            lo, hi = px.min(axis=0), px.max(axis=0)
            size = np.array(model.size, float)
            span = hi - lo
            if (span > size - 2 * margin_px).any():
                ok = False
                break
            target_lo = margin_px + np.array([gx, gy]) / 3.0 * (size - 2 * margin_px - span)
            shift_px = target_lo - lo
            # Move the board parallel to the image plane by the shift at its depth.
            zc = float(np.median(P[:, 2]))
            shift_cam = np.array([shift_px[0] / model.K[0, 0] * zc, shift_px[1] / model.K[1, 1] * zc, 0.0])
            t = t + spec.sim.R.T @ shift_cam
        if not ok:
            continue
        P, px = _project(spec, model, R, t, outline)
        if (P[:, 2] < 0.3).any() or not ((px >= margin_px * 0.5) & (px <= np.array(model.size) - margin_px * 0.5)).all():
            continue
        Rcam = spec.sim.R @ R
        tcam = spec.sim.R @ t + spec.sim.t
        if abs(Rcam[:, 2] @ (tcam / np.linalg.norm(tcam))) < np.cos(np.deg2rad(65)):
            continue
        poses.append((R, t))
    return poses
