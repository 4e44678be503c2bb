"""The simulated camera driver (``driver: sim``) behind the common camera interface.

Each frame is the :class:`~rig.sim.worlds.SimWorld` keyframe at its time plus
fresh sensor noise from a noise bank, in the camera's raw pixel format. Frames
are paced in real time by default (``realtime=False`` delivers them as fast as
they are asked for, with simulated timestamps: for tests and benchmarks). Like a
driver's buffer queue, the newest ``buffer_frames`` frames wait for a late
consumer; one that falls further behind loses frames, and the frame counter
shows the gap, as with a real camera.

Host timestamps are arrival times, and arrival is not ideal (:class:`SimTiming`):
each frame reaches the host after a transport latency drawn between
``latency_ms`` (default 0.5-2 ms), and now and then (``late_probability``, default
1 in 200) ``late_ms`` later still (3-8 ms); frames queued behind a late one arrive
after it. ``device_ns`` stays the ideal exposure time (the camera's own clock).
``SimTiming.ideal()`` gives exact timestamps. The clock (:class:`SimClock`:
``now_ns()``, ``sleep(s)``) is injectable, so pacing can be tested on a virtual clock.

The LWIR camera performs a flat-field correction every ``ffc_interval_s``:
for ``ffc_duration_s`` its frames freeze and carry :attr:`FrameFlags.FFC`.

:func:`sim_cameras_for_drive` and :func:`sim_cameras_for_board` build the
simulated rig's cameras looking at a drive or at a board moved through a pose
plan (the keyframes are rendered there, which takes a while).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

import cv2
import numpy as np

from rig.boards import Board
from rig.capture.camera import Camera, CameraError, DeviceInfo, Frame, FrameFlags
from rig.errors import RigError
from rig.pixfmt import to_pixel_format
from rig.rigconfig import CameraSpec, RigConfig
from rig.sim import BoardWorld, DriveWorld, SimWorld
from rig.sim.render import fpn_seed_for, thermal_counts  # sensor model of the raw frames

NOISE_BANK = 6


@dataclass(frozen=True)
class SimTiming:
    """Host-side arrival timing of a simulated camera (see module docstring)."""

    latency_ms: tuple[float, float] = (0.5, 2.0)
    late_probability: float = 0.005
    late_ms: tuple[float, float] = (3.0, 8.0)

    def __post_init__(self) -> None:
        if not 0.0 <= self.late_probability <= 1.0:
            raise ValueError(f"late_probability must be within 0..1, got {self.late_probability}")
        if min(*self.latency_ms, *self.late_ms) < 0 or self.latency_ms[0] > self.latency_ms[1] \
                or self.late_ms[0] > self.late_ms[1]:
            raise ValueError("latency_ms and late_ms must be (low, high) ranges of non-negative milliseconds")

    @classmethod
    def ideal(cls) -> "SimTiming":
        return cls((0.0, 0.0), 0.0, (0.0, 0.0))

    def delay_ns(self, rng: np.random.Generator) -> int:
        """One frame's latency: transport jitter, plus an occasional late delivery."""
        lo, hi = self.latency_ms
        d = rng.uniform(lo, hi) if hi > lo else lo
        if self.late_probability and rng.random() < self.late_probability:
            d += rng.uniform(*self.late_ms)
        return int(d * 1e6)


class SimClock:
    """The host clock a sim camera paces and stamps by (the real monotonic clock; tests inject a virtual one)."""

    def now_ns(self) -> int:
        return time.monotonic_ns()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


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
                 buffer_frames: int = 8, timing: SimTiming | None = None, clock: SimClock | None = None):
        super().__init__(spec)
        if spec.sim is None:
            raise CameraError(f"{spec.name}: a sim camera needs a 'sim' section with its ground truth")
        self.world = world
        self.realtime = realtime
        self.seed = seed
        self.clock_start_ns = clock_start_ns
        self.ffc_interval_s, self.ffc_duration_s = ffc_interval_s, ffc_duration_s
        self.buffer_frames = max(1, buffer_frames)  # frames the "driver" holds for a late consumer
        self.timing = timing if timing is not None else SimTiming()
        self.clock = clock if clock is not None else SimClock()
        self._rng = np.random.default_rng(seed)
        self._timing_rng = np.random.default_rng(seed + 13)  # apart from the image noise: same images either way
        self._last_host_ns = -(1 << 62)
        self._pending_arrival: int | None = None  # arrival time drawn for the next frame (realtime)
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
        self._t0_ns = self.clock_start_ns if self.clock_start_ns is not None else self.clock.now_ns()
        self._wall0_ns = time.time_ns() - (self.clock.now_ns() - self._t0_ns)
        self._next = 0
        self._last_host_ns = -(1 << 62)
        self._pending_arrival = None

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
            now = self.clock.now_ns()
            if self._pending_arrival is None:
                self._pending_arrival = self._arrival_ns(self.frame_time_ns(self._next))
            due = self._pending_arrival  # the frame reaches the host after its transport latency
            if due > now:
                wait = (due - now) * 1e-9
                if wait > timeout_s:
                    self.clock.sleep(timeout_s)
                    return None
                self.clock.sleep(wait)
                now = self.clock.now_ns()
            else:
                # Like a driver's buffer queue: the newest ``buffer_frames`` frames wait for the consumer;
                # older ones were overwritten and are lost (the frame counter shows the gap).
                newest = int((now - self._t0_ns) * self.spec.fps // 1e9)
                oldest_kept = newest - self.buffer_frames + 1
                if oldest_kept > self._next:
                    self._next = oldest_kept
                    flags |= FrameFlags.GAP_BEFORE
                    self._pending_arrival = None
        index = self._next
        self._next += 1
        t = index / self.spec.fps
        image, ffc = self._image(t)
        if ffc:
            flags |= FrameFlags.FFC
        # Host timestamps are taken on arrival (as a driver does), not when the consumer picks the frame up.
        host = self._pending_arrival if self._pending_arrival is not None else self._arrival_ns(self.frame_time_ns(index))
        self._pending_arrival = None
        self._last_host_ns = host
        wall = self._wall0_ns + (host - self._t0_ns) if self.realtime else host
        return Frame(self.name, image, index, host, wall, device_ns=int(t * 1e9), flags=flags,
                     pixel_format=self.spec.pixel_format)

    def _arrival_ns(self, exposure_ns: int) -> int:
        """When a frame exposed at ``exposure_ns`` reaches the host (never before the frame ahead of it)."""
        return max(exposure_ns + self.timing.delay_ns(self._timing_rng), self._last_host_ns + 1000)

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


def sim_cameras_for_drive(rig: RigConfig, *, seed: int = 0, variant: str = "day", realtime: bool = True,
                          world_duration_s: float = 10.0, ffc_interval_s: float | None = None,
                          progress: Callable[[int, int], None] | None = None, fps_scale: float = 1.0,
                          timing: SimTiming | None = None) -> list[Camera]:
    """Simulated cameras of ``rig`` looking at a prepared :class:`DriveWorld` (keyframes rendered here).

    ``fps_scale`` runs the simulated cameras faster than the rig's nominal fps (benchmarks).
    ``ffc_interval_s`` sets the simulated LWIR camera's own FFC period; ``timing`` the arrival
    jitter (default: realistic, :class:`SimTiming`).
    """
    if variant not in ("day", "night", "fog"):
        raise RigError(f"--variant must be day, night or fog, got '{variant}'")
    sim_rig = rig if fps_scale == 1.0 else replace(rig, cameras=tuple(replace(c, fps=c.fps * fps_scale) for c in rig.cameras))
    world = DriveWorld(sim_rig, seed=seed, variant=variant, duration_s=world_duration_s)
    world.prepare(list(sim_rig.cameras), progress)
    kwargs = {} if ffc_interval_s is None else {"ffc_interval_s": ffc_interval_s}
    return make_sim_cameras(sim_rig, world, realtime=realtime, seed=seed, timing=timing, **kwargs)


def sim_cameras_for_board(rig: RigConfig, board: Board, *, seed: int = 0, n_views: int = 30, dwell_s: float = 2.5,
                          realtime: bool = True, progress: Callable[[int, int], None] | None = None,
                          poses: list | None = None) -> list[Camera]:
    """Simulated cameras of ``rig`` looking at a board moved through a pose plan (keyframes rendered here)."""
    world = BoardWorld(rig, board, poses=poses, n_views=n_views, seed=seed, dwell_s=dwell_s)
    world.prepare(list(rig.cameras), progress)
    return make_sim_cameras(rig, world, realtime=realtime, seed=seed)
