"""Board views of the simulated rig: pose plans and multi-camera renders with ground truth.

A pose is given in the rig frame (the visible camera's frame): board points map
as ``X_rig = R @ X_board + t``. Each camera's ground-truth pose in the rig file
then gives the board pose in that camera.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rig.boards import Board
from rig.camera_model import CameraModel
from rig.rigconfig import CameraSpec, RigConfig, rotation_from_vector_deg
from rig.sim.render import (BoardRenderer, ThermalLook, VisibleLook, fpn_seed_for, render_board_lwir,
                                    render_board_visible)


def camera_model(spec: CameraSpec) -> CameraModel:
    """Ground-truth model of a simulated camera."""
    if spec.sim is None:
        raise ValueError(f"camera '{spec.name}' is not simulated")
    return CameraModel(spec.sim.K, spec.sim.dist, spec.width, spec.height)


@dataclass(frozen=True)
class CapturePerturbation:
    """How one camera's view of one simultaneous capture departs from the rigid, synchronized rig.

    The camera's pose for this capture is ``X_cam = dR (R_c X_rig + t_c) + dt``
    (jitter and outlier rotation about the camera centre, in the camera frame);
    the board it sees has moved: ``X_rig' = B_R (X_rig - c) + c + B_t`` about the
    board centre ``c`` (the trigger offset while the board moves).
    """

    dR: np.ndarray = field(default_factory=lambda: np.eye(3))
    dt: np.ndarray = field(default_factory=lambda: np.zeros(3))
    board_R: np.ndarray = field(default_factory=lambda: np.eye(3))
    board_t: np.ndarray = field(default_factory=lambda: np.zeros(3))
    outlier_deg: float = 0.0  # the extra rotation of an outlier pair (0: not an outlier)
    half_turn: bool = False  # the detector numbers this view's board points by a half turn


def _small_rotation(rng: np.random.Generator, sigma_deg: float) -> np.ndarray:
    return rotation_from_vector_deg(rng.normal(0.0, sigma_deg, 3)) if sigma_deg > 0 else np.eye(3)


def _axis_rotation(rng: np.random.Generator, angle_deg: float) -> np.ndarray:
    axis = rng.normal(size=3)
    return rotation_from_vector_deg(axis / np.linalg.norm(axis) * angle_deg)


def capture_perturbations(rig: RigConfig, n_captures: int, seed: int = 0) -> list[dict[str, CapturePerturbation]]:
    """Per capture, the perturbation of every camera whose ``sim.faults`` ask for one (see :class:`SimFaults`).

    Outlier captures: ``round(fraction * n)`` of them, evenly spread from a
    seeded offset, each with an angle drawn uniformly from the range.
    Half-turned captures: each with probability ``half_turn_fraction``, from a
    stream of their own (so adding them leaves the other draws unchanged).
    Deterministic from ``seed``; cameras without faults are left out.
    """
    rng = np.random.default_rng([seed, 7919])
    turns = np.random.default_rng([seed, 7920])
    out: list[dict[str, CapturePerturbation]] = [{} for _ in range(n_captures)]
    for spec in rig.cameras:
        f = spec.sim.faults if spec.sim is not None else None
        if f is None or not f.any:
            continue
        n_out = int(round(f.outlier_fraction * n_captures))
        outliers = set()
        if n_out:
            step = n_captures / n_out
            start = rng.uniform(0, step)
            outliers = {int(start + k * step) % n_captures for k in range(n_out)}
        for i in range(n_captures):
            dR = _small_rotation(rng, f.jitter_rotation_deg)
            dt = rng.normal(0.0, f.jitter_translation_m, 3) if f.jitter_translation_m > 0 else np.zeros(3)
            angle = 0.0
            if i in outliers:
                angle = float(rng.uniform(*f.outlier_rotation_deg))
                dR = _axis_rotation(rng, angle) @ dR
            bR, bt = np.eye(3), np.zeros(3)
            if f.trigger_offset_s:
                bR = _axis_rotation(rng, f.board_rotation_dps * f.trigger_offset_s)
                v = rng.normal(size=3)
                bt = v / np.linalg.norm(v) * f.board_speed_mps * f.trigger_offset_s
            turned = bool(f.half_turn_fraction and turns.uniform() < f.half_turn_fraction)
            out[i][spec.name] = CapturePerturbation(dR, dt, bR, bt, angle, turned)
    return out


def pose_in_camera(spec: CameraSpec, R: np.ndarray, t: np.ndarray,
                   perturbation: CapturePerturbation | None = None,
                   board_centre: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Board pose in a camera's frame, from the board pose in the rig frame.

    ``perturbation``: this capture's departure from the rigid, synchronized rig
    (``board_centre``, board frame, is what a moving board turns about; default the origin).
    """
    if perturbation is None:
        return spec.sim.R @ R, spec.sim.R @ t + spec.sim.t
    p = perturbation
    c = np.zeros(3) if board_centre is None else np.asarray(board_centre, np.float64)
    centre_rig = R @ c + t
    R1 = p.board_R @ R  # the board, moved during the trigger offset, about its centre
    t1 = p.board_R @ (t - centre_rig) + centre_rig + p.board_t
    Rc, tc = spec.sim.R @ R1, spec.sim.R @ t1 + spec.sim.t
    return p.dR @ Rc, p.dR @ tc + p.dt


@dataclass
class BoardView:
    """One simultaneous view of a board by all cameras of the rig."""

    R: np.ndarray  # board -> rig
    t: np.ndarray
    images: dict[str, np.ndarray]  # visible: RGB uint8; lwir: uint16 counts
    corners: dict[str, np.ndarray]  # ground-truth projected object points, (N, 2)
    visible_in: dict[str, bool] = field(default_factory=dict)  # all corners inside that image


@dataclass
class BoardViewRenderer:
    """Renders board views for a simulated rig (holds per-camera caches; no global state)."""

    rig: RigConfig
    board: Board
    visible_look: VisibleLook = VisibleLook()
    thermal_look: ThermalLook = ThermalLook()
    _renderer: BoardRenderer | None = None
    _models: dict = field(default_factory=dict)

    def model(self, spec: CameraSpec) -> CameraModel:
        if spec.name not in self._models:
            self._models[spec.name] = camera_model(spec)
        return self._models[spec.name]

    def render(self, R: np.ndarray, t: np.ndarray, rng: np.random.Generator | None,
               cameras: list[str] | None = None,
               perturbations: dict[str, CapturePerturbation] | None = None) -> BoardView:
        """Render the board at rig-frame pose ``(R, t)``; ``rng=None`` gives noise-free images.

        ``perturbations``: per camera name, this capture's faults (:func:`capture_perturbations`).
        """
        if self._renderer is None:
            self._renderer = BoardRenderer(self.board)
        view = BoardView(R, t, {}, {}, {})
        obj = self.board.object_points()
        for spec in self.rig.cameras:
            if cameras is not None and spec.name not in cameras:
                continue
            model = self.model(spec)
            Rc, tc = pose_in_camera(spec, R, t, (perturbations or {}).get(spec.name), self.board.center())
            if spec.role == "lwir":
                img = render_board_lwir(self._renderer, model, Rc, tc, spec.sim.thermal, rng, self.thermal_look,
                                        fpn_seed=fpn_seed_for(spec.name))
            else:
                img = render_board_visible(self._renderer, model, Rc, tc, rng,
                                           VisibleLook(**{**self.visible_look.__dict__, "noise_std": spec.sim.noise_std}))
            px = model.project(obj @ Rc.T + tc)
            view.images[spec.name] = img
            view.corners[spec.name] = px
            view.visible_in[spec.name] = bool(((px >= 5) & (px <= np.array(model.size) - 6)).all())
        return view


def board_pose_plan(rig: RigConfig, board: Board, n_views: int, seed: int = 0,
                    distance_m: tuple[float, float] | None = None, max_tilt_deg: float = 40.0,
                    cameras: list[str] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Board poses (rig frame) that keep the whole board inside every camera named.

    Poses cover a grid of image positions in the narrowest camera, at varied
    distances and tilts (the variety a calibration needs), deterministic from ``seed``.
    """
    rng = np.random.default_rng(seed)
    specs = [s for s in rig.cameras if cameras is None or s.name in cameras]
    models = [camera_model(s) for s in specs]
    narrow = min(range(len(specs)), key=lambda i: specs[i].width / specs[i].sim.K[0, 0])
    bw, bh = board.size_m()
    if distance_m is None:
        f = min(m.K[0, 0] / m.width for m in models)  # focal length in image widths
        d0 = bw * f / 0.55  # board fills ~55 % of the narrowest image width
        distance_m = (0.8 * d0, 1.6 * d0)
    grid = [(gx, gy) for gy in (0.3, 0.5, 0.7) for gx in (0.3, 0.5, 0.7)]
    corners = np.array([[x, y, 0.0] for x in board.extent()[0::2] for y in board.extent()[1::2]])
    poses: list[tuple[np.ndarray, np.ndarray]] = []
    attempts = 0
    while len(poses) < n_views and attempts < 200 * n_views:
        attempts += 1
        gx, gy = grid[len(poses) % len(grid)]
        gx, gy = gx + rng.uniform(-0.12, 0.12), gy + rng.uniform(-0.12, 0.12)
        d = rng.uniform(*distance_m)
        m = models[narrow]
        ray = m.unproject(np.array([gx * m.width, gy * m.height]))
        spec = specs[narrow]
        # Target point in the narrow camera's frame -> rig frame.
        target_cam = np.array([ray[0], ray[1], 1.0]) * d
        target = spec.sim.R.T @ (target_cam - spec.sim.t)
        tilt = rng.uniform(-max_tilt_deg, max_tilt_deg, 2) * (0.35 if len(poses) % 4 == 0 else 1.0)
        R = rotation_from_vector_deg([tilt[0], tilt[1], rng.uniform(-15, 15)])
        t = target - R @ board.center()
        ok = True
        for s, mm in zip(specs, models):
            Rc, tc = pose_in_camera(s, R, t)
            P = corners @ Rc.T + tc
            if (P[:, 2] < 0.3).any():
                ok = False
                break
            px = mm.project(P)
            if not ((px >= 15) & (px <= np.array(mm.size) - 16)).all():
                ok = False
                break
            normal_cam = Rc[:, 2]
            if abs(normal_cam @ (tc / np.linalg.norm(tc))) < np.cos(np.deg2rad(65)):
                ok = False  # too oblique to detect reliably
                break
        if ok:
            poses.append((R, t))
    if len(poses) < n_views:
        raise RuntimeError(f"could only plan {len(poses)} of {n_views} board poses for this rig")
    return poses
