"""Simulated cameras behind the common camera interface.

A :class:`SimWorld` is what the simulated rig looks at: a road scene the
vehicle drives through (:class:`DriveWorld`) or a calibration board moved
through a pose plan (:class:`BoardWorld`). All cameras of a rig share one world
and one clock, so their frames are consistent and pairable.

Real-time rendering of 1920x1200 frames is out of reach in Python on 2 cores,
so worlds render *keyframes* (``keyframe_hz``, ahead of time in
:meth:`SimWorld.prepare`) and each delivered frame is the keyframe at its
time plus fresh sensor noise from a noise bank. Frames are paced in real
time by default (``realtime=False`` delivers them as fast as they are asked
for, with simulated timestamps: for tests and benchmarks). Like a driver's
buffer queue, the newest ``buffer_frames`` frames wait for a late consumer;
one that falls further behind loses frames, and the frame counter shows the
gap, as with a real camera. Host timestamps are arrival times.

The LWIR camera performs a flat-field correction every ``ffc_interval_s``:
for ``ffc_duration_s`` its frames freeze and carry :attr:`FrameFlags.FFC`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from rig.boards import Board
from rig.rigconfig import CameraSpec, RigConfig
from rig.capture.camera import Camera, CameraError, DeviceInfo, Frame, FrameFlags
from rig.capture.sim.render import (BoardRenderer, ThermalLook, VisibleLook, fpn_seed_for, render_board_visible,
                                    thermal_counts)
from rig.capture.sim.scene import drive_pose, make_scene, render_scene
from rig.capture.sim.views import board_pose_plan, camera_model, pose_in_camera

NOISE_BANK = 6


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
    from rig.camera_model import CameraModel

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


@dataclass
class _NoiseBank:
    """Pre-drawn sensor noise, cycled with random offsets (drawing fresh noise per frame is too slow)."""

    frames: list[np.ndarray] = field(default_factory=list)

    def pick(self, rng: np.random.Generator) -> np.ndarray:
        return self.frames[int(rng.integers(len(self.frames)))]


class SimCamera(Camera):
    """A simulated camera of the rig (``driver: sim``), delivering frames in its pixel format."""

    def __init__(self, spec: CameraSpec, world: SimWorld | None = None, *, realtime: bool = True, seed: int = 0,
                 clock_start_ns: int | None = None, ffc_interval_s: float = 180.0, ffc_duration_s: float = 0.4,
                 buffer_frames: int = 8):
        super().__init__(spec)
        if spec.sim is None:
            raise CameraError(f"{spec.name}: a sim camera needs a 'sim' section with its ground truth")
        self.world = world
        self.realtime = realtime
        self.seed = seed
        self.clock_start_ns = clock_start_ns
        self.ffc_interval_s, self.ffc_duration_s = ffc_interval_s, ffc_duration_s
        self.buffer_frames = max(1, buffer_frames)  # frames the "driver" holds for a late consumer
        self._rng = np.random.default_rng(seed)
        self._noise = _NoiseBank()
        self._converted: dict[int, np.ndarray] = {}  # keyframe index -> raw frame
        self._t0_ns = 0
        self._next = 0  # index of the next frame to deliver

    # -- lifecycle -----------------------------------------------------------
    def _open(self) -> None:
        if self.world is None:
            self.world = DriveWorld(_single_camera_rig(self.spec))

    def _configure(self) -> None:
        h, w = self.spec.height, self.spec.width
        rng = np.random.default_rng(self.seed + 7)
        if self.spec.role == "lwir":
            s = self.spec.sim.thermal.temporal_noise_counts
            self._noise.frames = [np.round(rng.normal(0, s, (h, w))).astype(np.int16) for _ in range(NOISE_BANK)]
        else:
            s = self.spec.sim.noise_std
            self._noise.frames = [np.round(rng.normal(0, s, (h, w))).astype(np.int16) for _ in range(NOISE_BANK)]

    def _start(self) -> None:
        self._t0_ns = self.clock_start_ns if self.clock_start_ns is not None else time.monotonic_ns()
        self._wall0_ns = time.time_ns() - (time.monotonic_ns() - self._t0_ns)
        self._next = 0

    def _stop(self) -> None:
        return None

    def _info(self) -> DeviceInfo:
        kind = "LWIR microbolometer" if self.spec.role == "lwir" else "visible"
        return DeviceInfo("rig", f"simulated {kind} camera", f"SIM-{self.spec.name}", "sim",
                          {"world": type(self.world).__name__})

    # -- frames --------------------------------------------------------------
    def frame_time_ns(self, index: int) -> int:
        return self._t0_ns + int(round(index * 1e9 / self.spec.fps))

    def _grab(self, timeout_s: float) -> Frame | None:
        flags = FrameFlags.NONE
        if self.realtime:
            now = time.monotonic_ns()
            due = self.frame_time_ns(self._next)
            if due > now:
                wait = (due - now) * 1e-9
                if wait > timeout_s:
                    time.sleep(timeout_s)
                    return None
                time.sleep(wait)
            else:
                # Like a driver's buffer queue: the newest ``buffer_frames`` frames wait for the consumer;
                # older ones were overwritten and are lost (the frame counter shows the gap).
                newest = int((now - self._t0_ns) * self.spec.fps // 1e9)
                oldest_kept = newest - self.buffer_frames + 1
                if oldest_kept > self._next:
                    self._next = oldest_kept
                    flags |= FrameFlags.GAP_BEFORE
        index = self._next
        self._next += 1
        t = index / self.spec.fps
        image, ffc = self._image(t)
        if ffc:
            flags |= FrameFlags.FFC
        # Host timestamps are taken on arrival (as a driver does), not when the consumer picks the frame up.
        host = self.frame_time_ns(index)
        wall = self._wall0_ns + (host - self._t0_ns) if self.realtime else host
        return Frame(self.name, image, index, host, wall, device_ns=int(t * 1e9), flags=flags,
                     pixel_format=self.spec.pixel_format)

    def in_ffc(self, t: float) -> bool:
        return self.spec.role == "lwir" and self.ffc_interval_s > 0 and (t % self.ffc_interval_s) > self.ffc_interval_s - self.ffc_duration_s

    def _image(self, t: float) -> tuple[np.ndarray, bool]:
        ffc = self.in_ffc(t)
        if ffc:  # the shutter is closed: the image freezes on the frame before the FFC
            t = (t // self.ffc_interval_s + 1) * self.ffc_interval_s - self.ffc_duration_s
        index = self.world.keyframe_index(t)
        base = self._converted.get(index)
        if base is None:
            base = self._converted[index] = self._convert(self.world.keyframe(self.spec, index))
        noise = self._noise.pick(self._rng)
        if self.spec.role == "lwir":
            return np.clip(base.astype(np.int32) + noise, 0, 65535).astype(np.uint16), ffc
        if base.ndim == 3:
            noise = cv2.merge([noise, noise, noise])
        return cv2.add(base, noise, dtype=cv2.CV_8U), ffc

    def _convert(self, keyframe: np.ndarray) -> np.ndarray:
        """Noise-free keyframe -> raw frame in the camera's format (with the LWIR fixed pattern)."""
        if self.spec.role == "lwir":
            return thermal_counts(keyframe, self.spec.sim.thermal, None, fpn_seed_for(self.name))
        return to_pixel_format(np.clip(keyframe + 0.5, 0, 255).astype(np.uint8), self.spec.pixel_format)


def to_pixel_format(rgb: np.ndarray, fmt: str) -> np.ndarray:
    """Convert an RGB uint8 image to a camera's raw pixel format (Bayer mosaics, mono, BGR)."""
    if fmt == "RGB8":
        return rgb
    if fmt == "BGR8":
        return np.ascontiguousarray(rgb[..., ::-1])
    if fmt == "Mono8":
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    offsets = {"BayerRG8": ((0, 0), (0, 1), (1, 0), (1, 1)), "BayerGR8": ((0, 1), (0, 0), (1, 1), (1, 0)),
               "BayerBG8": ((1, 1), (0, 1), (1, 0), (0, 0)), "BayerGB8": ((1, 0), (0, 0), (1, 1), (0, 1))}
    if fmt not in offsets:
        raise ValueError(f"sim visible camera cannot produce pixel format {fmt}")
    (ry, rx), (g1y, g1x), (g2y, g2x), (by, bx) = offsets[fmt]
    out = np.empty(rgb.shape[:2], np.uint8)
    out[ry::2, rx::2] = rgb[ry::2, rx::2, 0]
    out[g1y::2, g1x::2] = rgb[g1y::2, g1x::2, 1]
    out[g2y::2, g2x::2] = rgb[g2y::2, g2x::2, 1]
    out[by::2, bx::2] = rgb[by::2, bx::2, 2]
    return out


def _single_camera_rig(spec: CameraSpec) -> RigConfig:
    return RigConfig(name="sim-single", cameras=(spec,))


def make_sim_cameras(rig: RigConfig, world: SimWorld, **kwargs) -> list[SimCamera]:
    """One :class:`SimCamera` per simulated camera of the rig, sharing ``world`` and a clock."""
    seed = kwargs.pop("seed", 0)
    if not kwargs.get("realtime", True):
        kwargs.setdefault("clock_start_ns", 0)  # simulated clock shared by all cameras
    cams = []
    for i, spec in enumerate(rig.cameras):
        if spec.driver != "sim":
            raise CameraError(f"camera '{spec.name}' uses driver '{spec.driver}', not sim")
        cams.append(SimCamera(spec, world, seed=seed + 101 * i, **kwargs))
    return cams
