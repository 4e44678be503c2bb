"""Calibration capture: keep only still board views that add coverage, until coverage is sufficient.

::

    with CalibrationRecorder(rig, load_board("ir_board"), "calib01", cameras) as rec:
        result = rec.run(duration_s=120)
    # then: rig calibrate --session calib01

Every camera streams into a small ring of recent frames (one grab thread per
camera, so the cameras are drained at their own rate). About every
``analyse_every_s`` the newest frame of the slowest camera is taken with, from
each other camera, the frame nearest in host time (within half the slower frame
period, so :meth:`SessionReader.pairs` pairs them again), and the board is
looked for in each. A view is **kept** only when

* the board is detected in every required camera (default: all of the rig's);
* the board is **still**: each camera's frame matches its frame from
  ``still_window_s`` earlier (99th percentile of the absolute difference of
  small normalised copies below ``still_level`` grey levels: a cheap test run
  before the costly detection), and the last ``still_frames`` analysed
  detections agree within ``still_px`` (median corner displacement; 1 = only
  the image test). A view taken while the board moves (motion blur, rolling
  shutter, visible/LWIR time offset) is never kept; and
* it is **new**: it reaches grid cells of some camera no kept view reached, or
  its normalised corner layout differs from every kept view's by more than
  ``novelty`` (a fraction of the image size) in some camera — a new position,
  distance or tilt. A board held still at one pose is kept once.

Only kept views are written: the frames of each camera, raw, plus a ``view``
event (frame seqs, corner count, coverage after it). Coverage is *sufficient*
when every required camera has corners in ``min_cells`` of the ``grid x grid`` cells (default all), the union
of board outlines covers ``min_area`` of each image, at least ``min_tilted``
views show clear perspective (tilt), and ``min_views`` views are kept.

Board detection uses :func:`rig.calibration.detect.detect` when the calibration
package is importable (same detector as ``rig calibrate``), else OpenCV directly
(``findChessboardCornersSB``; LWIR through :func:`rig.pixfmt.normalize_16bit`,
both polarities). Capture never needs calibration to import.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from rig.boards import Board
from rig.capture.camera import Camera, CameraError, Frame, make_camera, open_cameras
from rig.errors import RigError
from rig.pixfmt import normalize_16bit, pixel_format, to_gray8
from rig.rigconfig import RigConfig
from rig.session import DiskFullError, SessionWriter


@dataclass(frozen=True)
class CoverageGoal:
    """When calibration coverage is sufficient (and the hard stop at ``max_views``)."""

    min_views: int = 15
    max_views: int = 40
    grid: int = 3
    min_cells: float = 1.0  # share of grid cells every required camera must reach
    min_area: float = 0.5
    min_tilted: int = 3
    tilt_ratio: float = 1.08  # opposite board edges differ by this factor: the board is visibly tilted


@dataclass(frozen=True)
class CalibrationStatus:
    elapsed_s: float
    analysed: int
    kept: int
    rejected: dict[str, int]
    coverage: dict[str, float]  # camera -> share of grid cells reached
    area: dict[str, float]
    tilted: int
    sufficient: bool
    last: str  # what happened to the last analysed view
    changed: bool  # a view was kept since the previous status


@dataclass(frozen=True)
class CalibrationResult:
    path: Path
    kept: int
    analysed: int
    rejected: dict[str, int]  # reason -> count: not-detected, moving, not-new
    coverage: dict[str, float]
    area: dict[str, float]
    tilted: int
    sufficient: bool
    stop_reason: str  # coverage | max-views | duration | interrupted | disk-full | stopped
    duration_s: float
    views: list[dict] = field(default_factory=list)  # per kept view: {cam: seq}


def _detector():
    """The calibration package's detector if it is importable, else ``None`` (OpenCV fallback)."""
    try:
        from rig.calibration.detect import detect
    except Exception:  # noqa: BLE001 - optional, one-way dependency
        return None
    return detect


def detect_board(image: np.ndarray, fmt: str, board: Board, lwir: bool, detector=None) -> np.ndarray | None:
    """Board points ``(N, 2)`` in a raw frame, or None."""
    if detector is not None:
        img = image if pixel_format(fmt).dtype != np.uint8 else to_gray8(image, fmt)
        out = detector(img, board, thermal=lwir)
        return None if out.detection is None else np.asarray(out.detection.image_points, np.float64)
    if board.type != "chessboard":
        raise RigError(f"board type '{board.type}' needs the calibration package's detector (rig.calibration)")
    gray = normalize_16bit(image) if pixel_format(fmt).dtype != np.uint8 else to_gray8(image, fmt)
    for g in ((gray, 255 - gray) if lwir else (gray,)):
        ok, pts = cv2.findChessboardCornersSB(g, board.pattern_size, flags=cv2.CALIB_CB_NORMALIZE_IMAGE)
        if ok:
            return pts.reshape(-1, 2).astype(np.float64)
    return None


class _CameraCoverage:
    """What the kept views of one camera reached."""

    def __init__(self, size: tuple[int, int], grid: int):
        self.w, self.h = size
        self.grid = grid
        self.cells = np.zeros((grid, grid), bool)
        scale = 96.0 / self.w
        self._mask = np.zeros((max(1, int(self.h * scale)), 96), np.uint8)
        self._scale = scale
        self.layouts: list[np.ndarray] = []

    def cells_of(self, pts: np.ndarray) -> np.ndarray:
        c = np.zeros_like(self.cells)
        ix = np.clip((pts[:, 0] / self.w * self.grid).astype(int), 0, self.grid - 1)
        iy = np.clip((pts[:, 1] / self.h * self.grid).astype(int), 0, self.grid - 1)
        c[iy, ix] = True
        return c

    def novelty(self, pts: np.ndarray) -> float:
        """Smallest mean normalised corner distance to a kept view (either corner order)."""
        if not self.layouts:
            return np.inf
        n = pts / [self.w, self.h]
        return min(min(np.abs(n - k).sum(1).mean(), np.abs(n[::-1] - k).sum(1).mean()) for k in self.layouts)

    def add(self, pts: np.ndarray) -> None:
        self.cells |= self.cells_of(pts)
        self.layouts.append(pts / [self.w, self.h])
        hull = cv2.convexHull((pts * self._scale).astype(np.int32))
        cv2.fillConvexPoly(self._mask, hull, 1)

    @property
    def cell_share(self) -> float:
        return float(self.cells.mean())

    @property
    def area(self) -> float:
        return float(self._mask.mean())


def _thumb(frame: Frame, width: int = 96) -> np.ndarray:
    g = to_gray8(frame.image, frame.pixel_format)
    h = max(1, round(g.shape[0] * width / g.shape[1]))
    return cv2.resize(g, (width, h), interpolation=cv2.INTER_AREA)


def tilt_ratio(pts: np.ndarray, board: Board) -> float:
    """Perspective of the board's outer corners: the larger ratio of opposite edge lengths (1 = fronto-parallel)."""
    cols, rows = board.pattern_size
    if len(pts) != cols * rows:
        return 1.0
    g = pts.reshape(rows, cols, 2)
    top, bottom = np.linalg.norm(g[0, -1] - g[0, 0]), np.linalg.norm(g[-1, -1] - g[-1, 0])
    left, right = np.linalg.norm(g[-1, 0] - g[0, 0]), np.linalg.norm(g[-1, -1] - g[0, -1])
    r = [max(a, b) / max(min(a, b), 1e-9) for a, b in ((top, bottom), (left, right))]
    return float(max(r))


class CalibrationRecorder:
    """Records calibration views of ``board`` with the cameras of ``rig`` (construction does no I/O)."""

    def __init__(self, rig: RigConfig, board: Board, out_dir: str | Path, cameras: Sequence[Camera] | None = None, *,
                 goal: CoverageGoal = CoverageGoal(), require: Sequence[str] | None = None, still_frames: int = 1,
                 still_px: float = 1.5, still_window_s: float = 0.3, still_level: float = 8.0, novelty: float = 0.06, analyse_every_s: float = 0.2,
                 min_free_bytes: int = 1 << 30, overwrite: bool = False, detector: Callable | None | str = "auto"):
        if goal.min_views < 1 or goal.max_views < goal.min_views:
            raise RigError(f"need 1 <= --min-views <= --max-views (got {goal.min_views}, {goal.max_views})")
        if still_frames < 1:
            raise RigError("still_frames must be at least 1")
        self.rig, self.board, self.path = rig, board, Path(out_dir)
        self._given = list(cameras) if cameras is not None else None
        self.goal = goal
        self.require = list(require) if require is not None else [c.name for c in rig.cameras]
        self.still_frames, self.still_px, self.novelty_min = still_frames, still_px, novelty
        self.analyse_every_s = analyse_every_s
        self.still_window_s, self.still_level = still_window_s, still_level
        self.min_free_bytes, self.overwrite = min_free_bytes, overwrite
        self._detector = _detector() if detector == "auto" else detector
        self._cams: list[Camera] = []
        self._writer: SessionWriter | None = None
        self._rings: dict[str, collections.deque] = {}
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._stop_reason = ""
        self._history: dict[str, collections.deque] = {}
        self._cov: dict[str, _CameraCoverage] = {}
        self._rejected = {"not-detected": 0, "moving": 0, "not-new": 0}
        self._views: list[dict] = []
        self._analysed = 0
        self._tilted = 0
        self._last = ""
        self._changed = False
        self._t_start = 0.0
        self._result: CalibrationResult | None = None

    # -- lifecycle ----------------------------------------------------------------
    def open(self) -> None:
        if self._writer is not None:
            return
        cams = self._given if self._given is not None else [make_camera(s) for s in self.rig.cameras]
        missing = [n for n in self.require if n not in {c.name for c in cams}]
        if missing:
            raise RigError(f"required camera(s) {', '.join(missing)} not among the cameras given")
        open_cameras(cams)
        try:
            self._writer = SessionWriter.create(self.path, self.rig, cameras=[c.name for c in cams],
                                                min_free_bytes=self.min_free_bytes, overwrite=self.overwrite)
        except BaseException:
            for cam in cams:
                cam.close()
            raise
        self._cams = list(cams)
        for cam in cams:
            self._rings[cam.name] = collections.deque(maxlen=int(cam.spec.fps * (self.still_window_s + 0.5)) + 4)
            self._history[cam.name] = collections.deque(maxlen=self.still_frames)
            self._cov[cam.name] = _CameraCoverage((cam.spec.width, cam.spec.height), self.goal.grid)
        self._writer.log_event("calibration_start", board={"type": self.board.type, "cols": self.board.cols,
                                                           "rows": self.board.rows},
                               require=self.require, goal=self.goal.__dict__, still_frames=self.still_frames,
                               still_px=self.still_px, novelty=self.novelty_min,
                               detector="rig.calibration.detect" if self._detector else "opencv")

    def close(self, status: str = "complete") -> CalibrationResult | None:
        self._stop.set()
        for t in self._threads:
            t.join()
        self._threads = []
        if self._writer is None:
            return self._result
        try:
            duration = time.monotonic() - self._t_start if self._t_start else 0.0
            reason = self._stop_reason or "stopped"
            res = CalibrationResult(self.path, len(self._views), self._analysed, dict(self._rejected),
                                    self._coverage(), self._areas(), self._tilted, self._sufficient(), reason,
                                    duration, list(self._views))
            self._writer.log_event("calibration_stop", reason=reason, kept=res.kept, analysed=res.analysed,
                                   rejected=res.rejected, coverage=res.coverage, area=res.area,
                                   sufficient=res.sufficient)
            self._writer.close(status, calibration_views=res.kept, analysed=res.analysed, rejected=res.rejected,
                               coverage=res.coverage, area=res.area, tilted=res.tilted, sufficient=res.sufficient,
                               stop_reason=reason)
            self._result = res
        finally:
            self._writer = None
            for cam in self._cams:
                cam.close()
        return self._result

    def __enter__(self) -> "CalibrationRecorder":
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("complete" if exc_type is None or exc_type is KeyboardInterrupt else "aborted")

    def request_stop(self, reason: str = "stopped") -> None:
        if not self._stop_reason:
            self._stop_reason = reason
        self._stop.set()

    # -- run ----------------------------------------------------------------------
    def run(self, duration_s: float | None = None, *,
            on_status: Callable[[CalibrationStatus], None] | None = None) -> CalibrationResult:
        """Capture until coverage is sufficient, ``max_views``, ``duration_s`` or Ctrl-C; then finalise."""
        self.open()
        self._t_start = time.monotonic()
        for cam in self._cams:
            cam.start()
            t = threading.Thread(target=self._grab_loop, args=(cam,), name=f"grab-{cam.name}", daemon=True)
            t.start()
            self._threads.append(t)
        status = "complete"
        try:
            next_t = time.monotonic()
            while not self._stop.is_set():
                now = time.monotonic()
                if duration_s is not None and now - self._t_start >= duration_s:
                    self.request_stop("duration")
                    break
                if now < next_t:
                    self._stop.wait(next_t - now)
                    continue
                next_t = now + self.analyse_every_s
                self._analyse()
                if on_status is not None:
                    on_status(self.status())
                    self._changed = False
        except KeyboardInterrupt:
            self.request_stop("interrupted")
        except BaseException:
            status = "aborted"
            raise
        finally:
            result = self.close(status)
        return result

    def _grab_loop(self, cam: Camera) -> None:
        ring = self._rings[cam.name]
        while not self._stop.is_set():
            try:
                f = cam.grab(timeout_s=0.2)
            except CameraError:
                self._stop.wait(0.2)
                continue
            if f is not None:
                ring.append(f)

    # -- analysis -----------------------------------------------------------------
    def _select(self) -> dict[str, Frame] | None:
        """Newest frame of the slowest camera and the nearest frame of each other camera (within the pair window)."""
        slow = min(self._cams, key=lambda c: c.spec.fps)
        window = int(0.5e9 / slow.spec.fps)
        ring = self._rings[slow.name]
        if not ring:
            return None
        ref = ring[-1]
        out = {slow.name: ref}
        for cam in self._cams:
            if cam is slow:
                continue
            frames = list(self._rings[cam.name])
            if not frames:
                return None
            best = min(frames, key=lambda f: abs(f.host_ns - ref.host_ns))
            if abs(best.host_ns - ref.host_ns) > window:
                return None
            out[cam.name] = best
        return out

    def _analyse(self) -> None:
        frames = self._select()
        if frames is None:
            return
        self._analysed += 1
        for cam in self._cams:
            if cam.name in self.require and not self._image_still(cam, frames[cam.name]):
                self._reject("moving", f"board moving in {cam.name}")
                for h in self._history.values():
                    h.clear()
                return
        pts: dict[str, np.ndarray] = {}
        for cam in self._cams:
            if cam.name not in self.require:
                continue
            f = frames[cam.name]
            p = detect_board(f.image, f.pixel_format, self.board, cam.role == "lwir", self._detector)
            if p is None:
                self._reject("not-detected", f"board not found in {cam.name}")
                for h in self._history.values():
                    h.clear()
                return
            pts[cam.name] = p
        moving = False
        for name, p in pts.items():
            h = self._history[name]
            if h and (len(h[-1]) != len(p) or np.median(np.linalg.norm(h[-1] - p, axis=1)) > self.still_px):
                h.clear()  # the board moved: start counting still detections again
            h.append(p)
            moving |= len(h) < self.still_frames
        if moving:
            self._reject("moving", "board moving (waiting for still detections)")
            return
        new_cells = any((self._cov[n].cells_of(p) & ~self._cov[n].cells).any() for n, p in pts.items())
        novelty = max(self._cov[n].novelty(p) for n, p in pts.items())
        if not new_cells and novelty <= self.novelty_min:
            self._reject("not-new", "still, but not a new view")
            return
        self._keep(frames, pts, new_cells, novelty)

    def _image_still(self, cam: Camera, frame: Frame) -> bool:
        """Whether ``frame`` matches the camera's frame from ``still_window_s`` earlier."""
        older = [f for f in list(self._rings[cam.name]) if f.host_ns <= frame.host_ns - self.still_window_s * 1e9]
        if not older:
            return False  # not enough history yet
        a, b = (_thumb(f) for f in (older[-1], frame))
        return float(np.percentile(cv2.absdiff(a, b), 99)) <= self.still_level

    def _reject(self, reason: str, text: str) -> None:
        self._rejected[reason] += 1
        self._last = text

    def _keep(self, frames: dict[str, Frame], pts: dict[str, np.ndarray], new_cells: bool, novelty: float) -> None:
        seqs = {}
        try:
            for name, f in frames.items():
                seqs[name] = self._writer.write_frame(f).seq
        except DiskFullError as exc:
            self._last = str(exc)
            self.request_stop("disk-full")
            return
        for name, p in pts.items():
            self._cov[name].add(p)
        ref = next(iter(pts.values()))
        tilt = tilt_ratio(ref, self.board)
        self._tilted += tilt >= self.goal.tilt_ratio
        self._views.append(seqs)
        self._changed = True
        self._last = f"kept view {len(self._views)} ({'new cells' if new_cells else f'new pose {novelty:.2f}'})"
        self._writer.log_event("view", index=len(self._views) - 1, frames=seqs,
                               corners={n: len(p) for n, p in pts.items()}, tilt_ratio=round(tilt, 3),
                               novelty=None if not np.isfinite(novelty) else round(float(novelty), 4),
                               coverage=self._coverage(), area=self._areas())
        for h in self._history.values():
            h.clear()  # the next view needs its own still detections
        if self._sufficient():
            self.request_stop("coverage")
        elif len(self._views) >= self.goal.max_views:
            self.request_stop("max-views")

    def _coverage(self) -> dict[str, float]:
        return {n: round(self._cov[n].cell_share, 3) for n in self.require if n in self._cov}

    def _areas(self) -> dict[str, float]:
        return {n: round(self._cov[n].area, 3) for n in self.require if n in self._cov}

    def _sufficient(self) -> bool:
        g = self.goal
        return (len(self._views) >= g.min_views and self._tilted >= g.min_tilted
                and all(self._cov[n].cell_share >= g.min_cells and self._cov[n].area >= g.min_area for n in self.require))

    def status(self) -> CalibrationStatus:
        return CalibrationStatus(time.monotonic() - self._t_start, self._analysed, len(self._views),
                                 dict(self._rejected), self._coverage(), self._areas(), self._tilted,
                                 self._sufficient(), self._last, self._changed)


def status_line(s: CalibrationStatus) -> str:
    cov = "  ".join(f"{n} cells {c:.0%} area {s.area.get(n, 0):.0%}" for n, c in s.coverage.items())
    return (f"[{s.elapsed_s:6.1f} s] views kept {s.kept} / analysed {s.analysed} "
            f"(no board {s.rejected['not-detected']}, moving {s.rejected['moving']}, not new {s.rejected['not-new']})"
            f"  {cov}  tilted {s.tilted}  {'SUFFICIENT' if s.sufficient else ''}  {s.last}")


def sim_cameras_for_board(rig: RigConfig, board: Board, *, seed: int = 0, n_views: int = 30, dwell_s: float = 2.5,
                          realtime: bool = True, progress: Callable[[int, int], None] | None = None,
                          poses: list | None = None) -> list[Camera]:
    """Simulated cameras of ``rig`` looking at a board moved through a pose plan (keyframes rendered here)."""
    from rig.capture.sim_camera import make_sim_cameras
    from rig.sim import BoardWorld

    world = BoardWorld(rig, board, poses=poses, n_views=n_views, seed=seed, dwell_s=dwell_s)
    world.prepare(list(rig.cameras), progress)
    return make_sim_cameras(rig, world, realtime=realtime, seed=seed)
