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

A :class:`DriveWorld` can move the LWIR camera relative to the visible one
(:class:`RigMotion`: slow drift plus vibration, a rotation about the LWIR
camera's own centre, as a flexing mount or a warming camera does). The motion is
rendered exactly (the LWIR keyframe is ray-cast at the moved pose, so parallax
stays right) and is sampled at keyframe times: every frame shows the motion of
its keyframe, which :meth:`DriveWorld.lwir_rotation` returns as ground truth.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import cv2
import numpy as np

from rig.boards import Board
from rig.camera_model import CameraModel
from rig.rigconfig import CameraSpec, RigConfig, rotation_from_vector_deg
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


@dataclass(frozen=True)
class RigMotion:
    """The LWIR camera's rotation relative to its calibrated pose over time: slow drift plus vibration.

    Rotations are rotation vectors in degrees about the LWIR camera's axes (x right, y down, z forward:
    ``[tilt, pan, roll]``), applied about the camera centre (``X_cam' = dR @ X_cam``).

    Attributes:
        drift_deg: rotation reached at ``drift_end_s``; it grows linearly from zero at ``drift_start_s``.
        drift_start_s, drift_end_s: the drift's time span (constant before and after).
        vibration_deg: amplitude per axis of the vibration (a sum of two sines, at ``vibration_hz`` and
            1.7 times it, with seeded phases; peak amplitude at most ``vibration_deg``).
        vibration_hz: its base frequency.
        seed: vibration phases.
    """

    drift_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    drift_start_s: float = 0.0
    drift_end_s: float = 10.0
    vibration_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    vibration_hz: float = 1.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.drift_end_s <= self.drift_start_s:
            raise ValueError("drift_end_s must be after drift_start_s")
        if self.vibration_hz < 0:
            raise ValueError("vibration_hz must be >= 0")

    @property
    def static(self) -> bool:
        return not (any(self.drift_deg) or any(self.vibration_deg))

    def rotation_deg(self, t: float) -> np.ndarray:
        """Rotation vector (deg, LWIR camera axes) at world time ``t``."""
        f = min(1.0, max(0.0, (t - self.drift_start_s) / (self.drift_end_s - self.drift_start_s)))
        phases = np.random.default_rng(self.seed).uniform(0, 2 * math.pi, (3, 2))
        w = 2 * math.pi * self.vibration_hz * t
        vib = np.array([0.6 * math.sin(w + phases[k, 0]) + 0.4 * math.sin(1.7 * w + phases[k, 1]) for k in range(3)])
        return f * np.asarray(self.drift_deg, np.float64) + np.asarray(self.vibration_deg, np.float64) * vib

    def rotation(self, t: float) -> np.ndarray:
        """``(3, 3)`` rotation ``dR`` at ``t`` (LWIR camera frame: ``X' = dR @ X``)."""
        return rotation_from_vector_deg(self.rotation_deg(t))


class DriveWorld(SimWorld):
    """A street driven at ``speed_mps`` in the ego lane, in ``variant`` conditions.

    ``motion`` (a :class:`RigMotion`) moves the LWIR camera relative to the visible one over the drive.
    """

    def __init__(self, rig: RigConfig, seed: int = 0, speed_mps: float = 8.0, variant: str = "day",
                 duration_s: float = 10.0, keyframe_hz: float = 2.0, max_render_width: int = 960,
                 motion: RigMotion | None = None):
        super().__init__(rig)
        self.motion = motion if motion is not None and not motion.static else None
        self.seed, self.speed_mps, self.variant = seed, speed_mps, variant
        self.duration_s, self.keyframe_hz = duration_s, keyframe_hz
        self.max_render_width = max_render_width  # wider cameras render at a lower scale and are upsampled
        self._scene = None
        self._models: dict[str, object] = {}

    def rig_pose(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """World -> rig pose at time ``t`` (gentle weave and pitch from the road)."""
        return drive_pose(5.0 + self.speed_mps * t, yaw_deg=1.5 * np.sin(0.4 * t), pitch_deg=3.0 + 0.3 * np.sin(1.3 * t))

    def lwir_rotation(self, t: float) -> np.ndarray:
        """Ground truth: the LWIR camera's rotation ``dR`` in the frame shown at world time ``t`` (identity: static).

        Frames show their keyframe, so this is the motion at the keyframe's time (``X_lwir = dR @ X_calibrated``).
        """
        if self.motion is None:
            return np.eye(3)
        return self.motion.rotation(self.keyframe_index(t) / self.keyframe_hz)

    def render_keyframe(self, spec: CameraSpec, t: float) -> np.ndarray:
        if self._scene is None:
            self._scene = make_scene(self.seed, length=40.0 + self.speed_mps * self.duration_s + 120.0)
        if spec.name not in self._models:
            self._models[spec.name] = scaled_model(camera_model(spec), min(1.0, self.max_render_width / spec.width))
        model = self._models[spec.name]
        Rr, tr = self.rig_pose(t)
        R, tt = spec.sim.R @ Rr, spec.sim.R @ tr + spec.sim.t  # world -> camera
        if spec.role == "lwir" and self.motion is not None:  # turned about its own centre
            dR = self.motion.rotation(t)
            R, tt = dR @ R, dR @ tt
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
