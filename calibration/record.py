"""Calibration recording (``rig record --calibration``): keep only still board views that add coverage.

::

    with CalibrationRecorder(rig, load_board("ir_board"), "calib01", cameras) as rec:
        result = rec.run(duration_s=120)
    # then: rig calibrate --session calib01 --board ir_board

It lives in the calibration stage, not in capture: it needs the calibration's
board detector (:func:`rig.calibration.detect.detect`) and its definition of
coverage (:mod:`rig.calibration.coverage`), and uses capture's cameras as any
later stage may (data flows capture -> session -> calibration).

Every camera streams into a small ring of recent frames (one grab thread per
camera, so the cameras are drained at their own rate). About every
``analyse_every_s`` the newest frame of the slowest camera is taken with, from
each other camera, the frame nearest in host time (within half the slower frame
period, so :meth:`SessionReader.pairs` pairs them again), and the board is
looked for in each. A view is **kept** only when

* the board is detected in every required camera (default: all of the rig's);
* the board is **still**: each camera's frame matches its frame from
  ``still_window_s`` earlier, by the camera's own timestamps where it has them
  (99th percentile of the absolute difference of small normalised copies below
  ``still_level`` grey levels: a cheap test run before the costly detection), and the last ``still_frames`` analysed
  detections agree within ``still_px`` (median corner displacement; 1 = only
  the image test). A view taken while the board moves (motion blur, rolling
  shutter, visible/LWIR time offset) is never kept; and
* it is **new**: it reaches grid cells of some camera no kept view reached, or
  its normalised corner layout differs from every kept view's by more than
  ``novelty`` (a fraction of the image size) in some camera — a new position,
  distance or tilt. A board held still at one pose is kept once.

Only kept views are written: the frames of each camera, raw, plus a ``view``
event (frame seqs, corner count, estimated tilt, coverage after it). Coverage is
*sufficient* (:class:`~rig.calibration.coverage.CoverageGoal`) when every required
camera has corners in ``min_cells`` of the 3x3 cells (default all), the union of
board outlines covers ``min_area`` of each image, at least ``min_tilted`` views
are tilted by :data:`~rig.calibration.coverage.MIN_TILT_DEG` or more, and
``min_views`` views are kept: the same cells, area, tilt and thresholds that
``rig calibrate`` checks afterwards.

A camera whose ``grab()`` raises is reopened with backoff by
:func:`rig.capture.streams.reopen_camera` (the capture stage's one reconnect
layer), with ``disconnect`` / ``reconnect`` events.
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
from rig.calibration.coverage import CoverageGoal, CoverageTracker, coverage_sufficient
from rig.calibration.detect import detect
from rig.capture.camera import Camera, Frame, make_camera, open_cameras
from rig.capture.streams import reopen_camera
from rig.errors import RigError
from rig.pixfmt import pixel_format, to_gray8
from rig.rigconfig import RigConfig
from rig.session import DiskFullError, SessionWriter

__all__ = ["CalibrationRecorder", "CalibrationResult", "CalibrationStatus", "CoverageGoal", "detect_board",
           "status_line"]


@dataclass(frozen=True)
class CalibrationStatus:
    elapsed_s: float
    analysed: int
    kept: int
    rejected: dict[str, int]
    coverage: dict[str, float]  # camera -> share of grid cells reached
    area: dict[str, float]
    tilted: int  # views tilted by goal.min_tilt_deg or more (the fewest of the required cameras)
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
    tilts_deg: dict[str, list[float]] = field(default_factory=dict)  # per camera, per kept view (final estimate)


def detect_board(image: np.ndarray, fmt: str, board: Board, lwir: bool,
                 detector: Callable | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Board ``(image points (N, 2), object points (N, 3))`` in a raw frame, or None.

    ``detector``: :func:`rig.calibration.detect.detect` (the default) or one with its signature.
    """
    detector = detector or detect
    img = image if pixel_format(fmt).dtype != np.uint8 else to_gray8(image, fmt)
    out = detector(img, board, thermal=lwir)
    if out.detection is None:
        return None
    return np.asarray(out.detection.image_points, np.float64), np.asarray(out.detection.object_points(board), np.float64)


def _thumb(frame: Frame, width: int = 96) -> np.ndarray:
    g = to_gray8(frame.image, frame.pixel_format)
    h = max(1, round(g.shape[0] * width / g.shape[1]))
    return cv2.resize(g, (width, h), interpolation=cv2.INTER_AREA)


def capture_time_ns(frame: Frame, other: Frame) -> tuple[int, int]:
    """Capture times of two frames of one camera on one clock: the camera's own timestamps where both have
    one (when the image was taken), else arrival times (which a busy host delays by a varying amount)."""
    if frame.device_ns is not None and other.device_ns is not None:
        return frame.device_ns, other.device_ns
    return frame.host_ns, other.host_ns


def image_still(ring: Sequence[Frame], frame: Frame, window_s: float, level: float) -> bool:
    """Whether ``frame`` matches the newest frame of ``ring`` taken at least ``window_s`` before it (99th
    percentile of the absolute difference of small copies at most ``level`` grey levels); False without one."""
    older = []
    for f in ring:
        now, then = capture_time_ns(frame, f)
        if then <= now - window_s * 1e9:
            older.append(f)
    if not older:
        return False  # not enough history yet
    a, b = (_thumb(f) for f in (older[-1], frame))
    return float(np.percentile(cv2.absdiff(a, b), 99)) <= level


class CalibrationRecorder:
    """Records calibration views of ``board`` with the cameras of ``rig`` (construction does no I/O)."""

    def __init__(self, rig: RigConfig, board: Board, out_dir: str | Path, cameras: Sequence[Camera] | None = None, *,
                 goal: CoverageGoal = CoverageGoal(), require: Sequence[str] | None = None, still_frames: int = 1,
                 still_px: float = 1.5, still_window_s: float = 0.3, still_level: float = 8.0, novelty: float = 0.06, analyse_every_s: float = 0.2,
                 min_free_bytes: int = 1 << 30, overwrite: bool = False, detector: Callable | None = None,
                 reconnect_backoff_s: float = 0.25, reconnect_backoff_max_s: float = 5.0):
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
        self._detector = detector
        self.reconnect_backoff_s, self.reconnect_backoff_max_s = reconnect_backoff_s, reconnect_backoff_max_s
        self._cams: list[Camera] = []
        self._writer: SessionWriter | None = None
        self._rings: dict[str, collections.deque] = {}
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._stop_reason = ""
        self._history: dict[str, collections.deque] = {}
        self._cov: dict[str, CoverageTracker] = {}
        self._rejected = {"not-detected": 0, "moving": 0, "not-new": 0}
        self._views: list[dict] = []
        self._analysed = 0
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
            self._cov[cam.name] = CoverageTracker((cam.spec.width, cam.spec.height))
        self._writer.log_event("calibration_start", board={"type": self.board.type, "cols": self.board.cols,
                                                           "rows": self.board.rows},
                               require=self.require, goal=self.goal.__dict__, still_frames=self.still_frames,
                               still_px=self.still_px, novelty=self.novelty_min,
                               detector="rig.calibration.detect" if self._detector is None else "custom")

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
                                    self._coverage(), self._areas(), self._tilted(), self._sufficient(), reason,
                                    duration, list(self._views),
                                    {n: [round(t, 2) for t in self._cov[n].tilts_deg()] for n in self.require})
            self._writer.log_event("calibration_stop", reason=reason, kept=res.kept, analysed=res.analysed,
                                   rejected=res.rejected, coverage=res.coverage, area=res.area,
                                   sufficient=res.sufficient)
            self._writer.close(status, calibration_views=res.kept, analysed=res.analysed, rejected=res.rejected,
                               coverage=res.coverage, area=res.area, tilted=res.tilted, tilts_deg=res.tilts_deg,
                               sufficient=res.sufficient,
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
        backoff = self.reconnect_backoff_s
        lost = False
        while not self._stop.is_set():
            if lost:
                error = reopen_camera(cam)
                if error is None:
                    lost, backoff = False, self.reconnect_backoff_s
                    self._log("reconnect", camera=cam.name)
                else:
                    self._stop.wait(backoff)
                    backoff = min(2 * backoff, self.reconnect_backoff_max_s)
                continue
            try:
                f = cam.grab(timeout_s=0.2)
            except Exception as exc:  # noqa: BLE001 - any driver failure: reopen with backoff
                lost = True
                ring.clear()  # frames from before the loss are no reference for stillness
                self._log("disconnect", camera=cam.name, error=str(exc) or type(exc).__name__)
                continue
            if f is not None:
                ring.append(f)

    def _log(self, kind: str, **data) -> None:
        w = self._writer
        if w is not None:
            try:
                w.log_event(kind, **data)
            except (OSError, ValueError):  # a closed or failing event log never stops the recording
                pass

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
        objs: dict[str, np.ndarray] = {}
        for cam in self._cams:
            if cam.name not in self.require:
                continue
            f = frames[cam.name]
            found = detect_board(f.image, f.pixel_format, self.board, cam.role == "lwir", self._detector)
            if found is None:
                self._reject("not-detected", f"board not found in {cam.name}")
                for h in self._history.values():
                    h.clear()
                return
            pts[cam.name], objs[cam.name] = found
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
        new_cells = any(self._cov[n].new_cells(p) for n, p in pts.items())
        novelty = max(self._cov[n].novelty(p) for n, p in pts.items())
        if not new_cells and novelty <= self.novelty_min:
            self._reject("not-new", "still, but not a new view")
            return
        self._keep(frames, pts, objs, new_cells, novelty)

    def _image_still(self, cam: Camera, frame: Frame) -> bool:
        """Whether ``frame`` matches the camera's frame from ``still_window_s`` earlier (:func:`image_still`)."""
        return image_still(list(self._rings[cam.name]), frame, self.still_window_s, self.still_level)

    def _reject(self, reason: str, text: str) -> None:
        self._rejected[reason] += 1
        self._last = text

    def _keep(self, frames: dict[str, Frame], pts: dict[str, np.ndarray], objs: dict[str, np.ndarray], new_cells: bool,
              novelty: float) -> None:
        seqs = {}
        try:
            for name, f in frames.items():
                seqs[name] = self._writer.write_frame(f).seq
        except DiskFullError as exc:
            self._last = str(exc)
            self.request_stop("disk-full")
            return
        for name, p in pts.items():
            self._cov[name].add(p, objs[name])
        tilts = {name: round(self._cov[name].tilts_deg()[-1], 1) for name in pts}
        self._views.append(seqs)
        self._changed = True
        self._last = f"kept view {len(self._views)} ({'new cells' if new_cells else f'new pose {novelty:.2f}'})"
        self._writer.log_event("view", index=len(self._views) - 1, frames=seqs,
                               corners={n: len(p) for n, p in pts.items()}, tilt_deg=tilts,
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

    def _tilted(self) -> int:
        return min((self._cov[n].tilted(self.goal.min_tilt_deg) for n in self.require if n in self._cov), default=0)

    def _sufficient(self) -> bool:
        return coverage_sufficient(self.goal, {n: self._cov[n] for n in self.require if n in self._cov},
                                   len(self._views))

    def status(self) -> CalibrationStatus:
        return CalibrationStatus(time.monotonic() - self._t_start, self._analysed, len(self._views),
                                 dict(self._rejected), self._coverage(), self._areas(), self._tilted(),
                                 self._sufficient(), self._last, self._changed)


def status_line(s: CalibrationStatus) -> str:
    """Plain status: three short lines (each fits 80 columns with the usual two cameras)."""
    r = s.rejected
    cov = "; ".join(f"{n}: cells {c:.0%}, area {s.area.get(n, 0):.0%}" for n, c in s.coverage.items())
    return (f"[{s.elapsed_s:6.1f} s] kept {s.kept} of {s.analysed} analysed (no board {r['not-detected']}, "
            f"moving {r['moving']}, not new {r['not-new']})\n"
            f"  {cov}; tilted {s.tilted}{'; SUFFICIENT' if s.sufficient else ''}\n"
            f"  last: {s.last or '-'}")
