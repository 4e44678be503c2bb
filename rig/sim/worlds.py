"""Simulated worlds: what the simulated rig looks at.

A :class:`SimWorld` is a road scene the vehicle drives through (:class:`DriveWorld`)
or a calibration board moved through a pose plan (:class:`BoardWorld`). All
cameras of a rig share one world and one clock, so their frames are consistent
and pairable.

Real-time rendering of 1920x1200 frames is out of reach in Python on 2 cores,
so worlds render *keyframes* (``keyframe_hz``, ahead of time in
:meth:`SimWorld.prepare`); the simulated camera driver
(:mod:`rig.capture.sim_camera`) delivers each frame as the keyframe at its time
plus fresh sensor noise.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

from rig.boards import Board
from rig.camera_model import CameraModel
from rig.rigconfig import CameraSpec, RigConfig
from rig.sim.render import BoardRenderer, ThermalLook, VisibleLook, render_board_visible
from rig.sim.scene import drive_pose, make_scene, render_scene
from rig.sim.views import board_pose_plan, camera_model, pose_in_camera


class SimWorld:
    """Base of simulated worlds: renders a camera's noise-free keyframe for world time ``t``."""

    keyframe_hz: float = 2.0
    duration_s: float = 10.0  # the world loops after this

    def __init__(self, rig: RigConfig):
        self.rig = rig
        self._keyframes: dict[tuple[str, int], np.ndarray] = {}
        self._lock = threading.Lock()

    def n_keyframes(self) -> int:
        return max(1, int(round(self.duration_s * self.keyframe_hz)))

    def keyframe_index(self, t: float) -> int:
        return int(t * self.keyframe_hz) % self.n_keyframes()

    def keyframe(self, spec: CameraSpec, index: int) -> np.ndarray:
        key = (spec.name, index)
        with self._lock:
            img = self._keyframes.get(key)
        if img is None:
            img = self.render_keyframe(spec, index / self.keyframe_hz)
            with self._lock:
                self._keyframes[key] = img
        return img

    def prepare(self, cameras: list[CameraSpec], progress=None) -> None:
        """Render every keyframe ahead (``progress(done, total)`` is called as it goes)."""
        total = self.n_keyframes() * len(cameras)
        done = 0
        for i in range(self.n_keyframes()):
            for spec in cameras:
                self.keyframe(spec, i)
                done += 1
                if progress:
                    progress(done, total)

    def render_keyframe(self, spec: CameraSpec, t: float) -> np.ndarray:
        """Noise-free image: RGB float32 (visible) or apparent temperature float32 (LWIR)."""
        raise NotImplementedError


class DriveWorld(SimWorld):
    """A street driven at ``speed_mps`` in the ego lane, in ``variant`` conditions."""

    def __init__(self, rig: RigConfig, seed: int = 0, speed_mps: float = 8.0, variant: str = "day",
                 duration_s: float = 10.0, keyframe_hz: float = 2.0, max_render_width: int = 960):
        super().__init__(rig)
        self.seed, self.speed_mps, self.variant = seed, speed_mps, variant
        self.duration_s, self.keyframe_hz = duration_s, keyframe_hz
        self.max_render_width = max_render_width  # wider cameras render at a lower scale and are upsampled
        self._scene = None
        self._models: dict[str, object] = {}

    def rig_pose(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """World -> rig pose at time ``t`` (gentle weave and pitch from the road)."""
        return drive_pose(5.0 + self.speed_mps * t, yaw_deg=1.5 * np.sin(0.4 * t), pitch_deg=3.0 + 0.3 * np.sin(1.3 * t))

    def render_keyframe(self, spec: CameraSpec, t: float) -> np.ndarray:
        if self._scene is None:
            self._scene = make_scene(self.seed, length=40.0 + self.speed_mps * self.duration_s + 120.0)
        if spec.name not in self._models:
            self._models[spec.name] = scaled_model(camera_model(spec), min(1.0, self.max_render_width / spec.width))
        model = self._models[spec.name]
        Rr, tr = self.rig_pose(t)
        R, tt = spec.sim.R @ Rr, spec.sim.R @ tr + spec.sim.t  # world -> camera
        r = render_scene(self._scene, model, R, tt, self.variant)
        if spec.role == "lwir":
            img = cv2.GaussianBlur(r.temperature, (0, 0), spec.sim.thermal.blur_sigma_px)
        else:
            img = r.rgb.astype(np.float32)
        if model.width != spec.width:
            img = cv2.resize(img, (spec.width, spec.height), interpolation=cv2.INTER_LINEAR)
        return img


def scaled_model(model, scale: float):
    """The same camera at ``scale`` times the resolution (pixel-centre convention kept)."""
    if scale == 1.0:
        return model
    w, h = int(round(model.width * scale)), int(round(model.height * scale))
    sx, sy = w / model.width, h / model.height
    K = model.K.copy()
    K[0, 0] *= sx
    K[1, 1] *= sy
    K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return CameraModel(K, model.dist, w, h)


class BoardWorld(SimWorld):
    """A board held still at each pose of a plan for ``dwell_s`` seconds, then moved on."""

    def __init__(self, rig: RigConfig, board: Board, poses: list | None = None, n_views: int = 30, seed: int = 0,
                 dwell_s: float = 1.0, thermal_look: ThermalLook = ThermalLook(), visible_look: VisibleLook = VisibleLook()):
        super().__init__(rig)
        self.board = board
        self.poses = poses if poses is not None else board_pose_plan(rig, board, n_views, seed)
        self.keyframe_hz = 1.0 / dwell_s
        self.duration_s = len(self.poses) * dwell_s
        self.thermal_look, self.visible_look = thermal_look, visible_look
        self._renderer = BoardRenderer(board)

    def pose_at(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        return self.poses[self.keyframe_index(t)]

    def render_keyframe(self, spec: CameraSpec, t: float) -> np.ndarray:
        R, tt = pose_in_camera(spec, *self.pose_at(t))
        model = camera_model(spec)
        if spec.role == "lwir":
            refl, cover = self._renderer.sample(model, R, tt, blur_px=spec.sim.thermal.blur_sigma_px)
            look = self.thermal_look
            sign = 1.0 if look.polarity == "normal" else -1.0
            board_t = look.board_c + sign * look.contrast_k * (refl - 0.5)
            return (look.background_c * (1 - cover) + board_t * cover).astype(np.float32)
        img = render_board_visible(self._renderer, model, R, tt, None,
                                   VisibleLook(**{**self.visible_look.__dict__, "noise_std": 0.0}))
        return img.astype(np.float32)
