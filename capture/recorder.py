"""The drive recorder: every camera of a rig into one session, with GPS, FFC and fault handling.

::

    rig = load_rig("sim")
    with Recorder(rig, "drive01", cameras=my_cameras) as rec:   # opens cameras, creates the session
        result = rec.run(duration_s=30)                           # Ctrl-C also ends it cleanly
    print(result.frames, result.drops)

Threads
-------
One *acquisition* thread per camera only grabs: it never touches the disk. It
hands each frame to that camera's bounded queue with ``put_nowait``; a full
queue drops the frame, counts it, and flags the next frame that gets through
``GAP_BEFORE``. One *writer* thread per camera appends to the session (the raw
append costs ~1 ms per 1920x1200 frame) and logs each run of drops as a session
event ``{"kind": "drop", "camera": NAME, "count": N}``. The calling thread runs
:meth:`Recorder.run`: deadline, FFC scheduling, status for the dashboard. An
optional GPS thread logs NMEA fixes.

Pairing
-------
Pairs themselves are made at read time by :meth:`rig.session.SessionReader.pairs`
(by frame/trigger counter on hardware-synced rigs, else nearest host timestamp
within half the slower frame period, one-to-one). The recorder records what that
needs (host, wall and device timestamps, counters) and, for a rig with one
visible and one LWIR camera:

* flags a frame ``UNPAIRED`` when *no* frame of the other camera falls inside
  its pairing window (timestamp mode) or the other camera has no frame with its
  relative counter (counter mode). That is decidable while recording: a writer
  holds a frame until the other camera's stream has passed the window (or that
  camera has been silent for ``pair_grace_s``). A frame of the faster camera
  that has a candidate but loses the one-to-one match (every other LWIR frame
  on a 30/60 fps rig) is *not* flagged: that is the reader's decision.
* writes a pairing summary (mode, window, pairs, unpaired per camera, computed
  with the reader's own pairing functions) into the manifest ``stats.pairing``
  and a ``pairing`` event at close.

FFC
---
Frames the drivers flag ``FFC`` are kept (later stages skip them); each FFC
becomes an ``ffc`` event with ``state: start`` / ``state: end`` (and the number
of flagged frames). Cameras that can run one on request (``run_ffc()``, the
Boson) get one every ``ffc_interval_s`` and, with ``ffc_when_stopped``, when GPS
says the vehicle has stood still for ``stopped_for_s`` (at most once per
``ffc_min_gap_s``). The request is executed by the camera's own acquisition
thread, between two grabs, so the control channel is never used by two threads.

Faults
------
* Ctrl-C (KeyboardInterrupt in :meth:`run`): stop, drain the queues, manifest ``complete``.
* SIGKILL: nothing to do; the session format leaves a recoverable session.
* Disk nearly full: the session writer raises :class:`~rig.session.DiskFullError`
  before a write would cross ``min_free_bytes``; the recorder stops, logs a
  ``disk_full`` event, finalises the manifest (``complete``, ``stop_reason:
  disk-full``) and reports it in :attr:`RecordingResult.stop_reason`.
* A camera that raises, or delivers nothing for ``stall_timeout_s``, is logged
  (``disconnect``), closed and reopened with exponential backoff
  (``reconnect_backoff_s`` .. ``reconnect_backoff_max_s``); the other cameras
  keep recording. The first frame after a reconnect is flagged ``RECONNECTED``.
* A bad GPS sentence is counted (``gps_stats`` event and manifest stats), never fatal.
"""

from __future__ import annotations

import collections
import logging
import queue
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from rig.capture.camera import Camera, CameraError, Frame, FrameFlags, make_camera, open_cameras
from rig.errors import RigError
from rig.rigconfig import RigConfig
from rig.session import HEADER_SIZE, DiskFullError, FrameRecord, SessionWriter, pair_by_counter, pair_by_timestamp

log = logging.getLogger(__name__)

_EMPTY = object()


# --------------------------------------------------------------------------- results and status
@dataclass(frozen=True)
class CameraResult:
    """What one camera delivered and what was written."""

    name: str
    role: str
    fps_target: float
    frames: int  # written to the session
    drops: int  # lost to a full queue (each logged as a drop event)
    ffc_frames: int  # written frames flagged FFC
    unpaired: int  # written frames flagged UNPAIRED
    gaps: int  # written frames flagged GAP_BEFORE (driver counter jumps or queue drops)
    disconnects: int
    reconnects: int
    bytes: int
    fps_measured: float


@dataclass(frozen=True)
class RecordingResult:
    """Outcome of :meth:`Recorder.run`."""

    path: Path
    status: str  # manifest status: complete | aborted
    stop_reason: str  # duration | interrupted | stopped | disk-full | error
    message: str
    duration_s: float
    cameras: dict[str, CameraResult]
    pairing: dict
    gps: dict | None
    ffc_events: int

    @property
    def frames(self) -> dict[str, int]:
        return {n: c.frames for n, c in self.cameras.items()}

    @property
    def drops(self) -> dict[str, int]:
        return {n: c.drops for n, c in self.cameras.items()}

    @property
    def total_bytes(self) -> int:
        return sum(c.bytes for c in self.cameras.values())


@dataclass(frozen=True)
class CameraStatus:
    name: str
    role: str
    fps_target: float
    fps_actual: float
    frames: int
    drops: int
    queue_depth: int
    queue_capacity: int
    mb_per_s: float
    state: str  # streaming | reconnecting | stopped
    ffc: str  # "" (not an LWIR camera), "idle", "in FFC"


@dataclass(frozen=True)
class RecorderStatus:
    """A snapshot for the dashboard (see :mod:`rig.capture.dashboard`)."""

    path: Path
    elapsed_s: float
    duration_s: float | None
    cameras: list[CameraStatus]
    disk_free_bytes: int
    min_free_bytes: int
    gps: str  # "off", "no fix", "52.12345 N 4.56789 E 12.3 m/s 9 sats", ...
    gps_bad: int
    ffc_events: int


# --------------------------------------------------------------------------- per-camera lane
@dataclass
class _Lane:
    camera: Camera
    queue: queue.Queue
    fps: float
    index: int
    acquire: threading.Thread | None = None
    write: threading.Thread | None = None
    drops: int = 0
    pending_drops: int = 0  # acquisition side: drops not yet followed by an enqueued frame
    unlogged_drops: int = 0  # writer side
    frames: int = 0
    ffc_frames: int = 0
    unpaired: int = 0
    gaps: int = 0
    disconnects: int = 0
    reconnects: int = 0
    reconnected: bool = False
    state: str = "starting"
    in_ffc: bool = False
    ffc_run: int = 0
    ffc_requested: bool = False
    last_ffc_request: float = -1e18
    done: bool = False  # acquisition finished
    last_arrival: float = 0.0  # monotonic s of the last enqueued frame
    recent_ns: collections.deque = field(default_factory=lambda: collections.deque(maxlen=4096))
    recent_counters: collections.deque = field(default_factory=lambda: collections.deque(maxlen=4096))
    live: bool = True  # paced by its own clock (a camera); False: delivers as fast as it is read
    first_host_ns: int | None = None
    last_error: str = ""
    latest_ns: int | None = None
    latest_rel_counter: int | None = None
    first_counter: int | None = None
    records: list[FrameRecord] = field(default_factory=list)
    rate_window: collections.deque = field(default_factory=lambda: collections.deque(maxlen=64))  # (t, frames, bytes)
    pending: collections.deque = field(default_factory=collections.deque)  # writer: frames awaiting a pairing decision

    @property
    def name(self) -> str:
        return self.camera.name


# --------------------------------------------------------------------------- recorder
class Recorder:
    """Records every camera of ``rig`` into a session at ``out_dir``.

    ``cameras``: camera objects to record (default: built from the rig with
    :func:`~rig.capture.camera.make_camera`); they may be unopened. The recorder
    owns their lifecycle from :meth:`open` to :meth:`close`. Construction does no I/O.
    """

    def __init__(
        self,
        rig: RigConfig,
        out_dir: str | Path,
        cameras: Sequence[Camera] | None = None,
        *,
        queue_frames: int = 32,
        min_free_bytes: int = 1 << 30,
        ffc_interval_s: float | None = None,
        ffc_when_stopped: bool = False,
        stopped_speed_mps: float = 0.5,
        stopped_for_s: float = 2.0,
        ffc_min_gap_s: float = 60.0,
        gps_port: str | None = None,
        gps_baudrate: int = 9600,
        stall_timeout_s: float = 3.0,
        reconnect_backoff_s: float = 0.25,
        reconnect_backoff_max_s: float = 5.0,
        pair_grace_s: float = 0.5,
        overwrite: bool = False,
        calibration: str | None = None,
    ):
        if queue_frames < 1:
            raise RigError(f"queue size must be at least 1 frame, got {queue_frames}")
        if min_free_bytes < 0:
            raise RigError("disk reserve must not be negative")
        if ffc_interval_s is not None and ffc_interval_s <= 0:
            raise RigError(f"--ffc-interval must be positive, got {ffc_interval_s:g}")
        self.rig = rig
        self.path = Path(out_dir)
        self._given_cameras = list(cameras) if cameras is not None else None
        self.queue_frames = queue_frames
        self.min_free_bytes = min_free_bytes
        self.ffc_interval_s = ffc_interval_s
        self.ffc_when_stopped = ffc_when_stopped
        self.stopped_speed_mps, self.stopped_for_s, self.ffc_min_gap_s = stopped_speed_mps, stopped_for_s, ffc_min_gap_s
        self.gps_port, self.gps_baudrate = gps_port, gps_baudrate
        self.stall_timeout_s = stall_timeout_s
        self.reconnect_backoff_s, self.reconnect_backoff_max_s = reconnect_backoff_s, reconnect_backoff_max_s
        self.pair_grace_s = pair_grace_s
        self.overwrite = overwrite
        self.calibration = calibration

        self._writer: SessionWriter | None = None
        self._lanes: list[_Lane] = []
        self._stop = threading.Event()
        self._stop_reason = ""
        self._message = ""
        self._fault_lock = threading.Lock()
        self._t_start = 0.0
        self._gps = None
        self._gps_thread: threading.Thread | None = None
        self._gps_fix = None
        self._gps_speed_fix = None
        self._gps_still_since: float | None = None
        self._ffc_events = 0
        self._pair_mode: str | None = None
        self._pair_window_ns = 0
        self._started = False
        self._duration_ns: int | None = None
        self._t0_ns = 0
        self._result: RecordingResult | None = None
        self._disk_free = 0

    # -- lifecycle ------------------------------------------------------------
    def open(self) -> None:
        """Open and configure the cameras, open the GPS, create the session."""
        if self._writer is not None:
            return
        cams = self._given_cameras if self._given_cameras is not None else [make_camera(s) for s in self.rig.cameras]
        names = {s.name for s in self.rig.cameras}
        for cam in cams:
            if cam.name not in names:
                raise RigError(f"camera '{cam.name}' is not part of rig '{self.rig.name}'", path=self.rig.source)
        open_cameras(cams)
        try:
            if self.gps_port:
                from rig.capture.gps import GpsReader

                self._gps = GpsReader(self.gps_port, self.gps_baudrate)
                self._gps.open()
            self._writer = SessionWriter.create(self.path, self.rig, cameras=[c.name for c in cams],
                                                calibration=self.calibration, min_free_bytes=self.min_free_bytes,
                                                overwrite=self.overwrite)
        except BaseException:
            for cam in cams:
                cam.close()
            if self._gps is not None:
                self._gps.close()
            raise
        self._lanes = [_Lane(cam, queue.Queue(self.queue_frames), cam.spec.fps, i, live=bool(getattr(cam, "realtime", True)))
                       for i, cam in enumerate(cams)]
        self._setup_pairing()
        self._writer.log_event("recording_start", cameras=[c.name for c in cams], queue_frames=self.queue_frames,
                               min_free_bytes=self.min_free_bytes, ffc_interval_s=self.ffc_interval_s,
                               ffc_when_stopped=self.ffc_when_stopped, gps_port=self.gps_port,
                               pairing={"mode": self._pair_mode, "window_ns": self._pair_window_ns})

    def _setup_pairing(self) -> None:
        roles = {lane.camera.role: lane for lane in self._lanes}
        if len(self._lanes) == 2 and set(roles) == {"visible", "lwir"}:
            if self.rig.is_hardware_synced:
                self._pair_mode = "counter"
            else:
                self._pair_mode = "timestamp"
                self._pair_window_ns = int(0.5e9 / min(lane.fps for lane in self._lanes))

    def start(self) -> None:
        """Start streaming and the recording threads."""
        self.open()
        if self._started:
            return
        self._started = True
        self._t_start = time.monotonic()
        t0_ns = time.monotonic_ns()
        for lane in self._lanes:
            try:
                lane.camera.start()
                lane.state = "streaming"
            except CameraError as exc:
                self._writer.log_event("disconnect", camera=lane.name, error=str(exc))
                lane.disconnects += 1
                lane.state = "reconnecting"
            lane.last_arrival = time.monotonic()
            lane.rate_window.append((time.monotonic(), 0, 0))
        self._t0_ns = t0_ns
        for lane in self._lanes:
            lane.write = threading.Thread(target=self._write_loop, args=(lane,), name=f"write-{lane.name}", daemon=True)
            lane.acquire = threading.Thread(target=self._acquire_loop, args=(lane,), name=f"grab-{lane.name}", daemon=True)
            lane.write.start()
            lane.acquire.start()
        if self._gps is not None:
            self._gps_thread = threading.Thread(target=self._gps_loop, name="gps", daemon=True)
            self._gps_thread.start()

    def request_stop(self, reason: str = "stopped", message: str = "") -> None:
        """Ask the recording to end (thread-safe); :meth:`run` returns soon after."""
        with self._fault_lock:
            if not self._stop_reason:
                self._stop_reason, self._message = reason, message
        self._stop.set()

    def stop(self) -> None:
        """Stop acquisition, drain the queues to disk, stop the cameras and the GPS."""
        if not self._started:
            return
        self._stop.set()
        for lane in self._lanes:
            if lane.acquire is not None:
                lane.acquire.join()
        for lane in self._lanes:
            if lane.write is not None:
                lane.write.join()
            try:
                lane.camera.stop()
            except Exception as exc:  # noqa: BLE001 - a dying camera must not lose the session
                log.warning("%s: stop failed: %s", lane.name, exc)
        if self._gps_thread is not None:
            self._gps_thread.join()
            self._gps_thread = None
        self._started = False

    def close(self, status: str = "complete") -> RecordingResult | None:
        """Finalise the session (``status`` goes into the manifest) and release cameras and GPS."""
        self.stop()
        if self._writer is None:
            return self._result
        try:
            pairing = self._pairing_summary()
            gps = self._gps_stats()
            if gps is not None:
                self._writer.log_event("gps_stats", **gps)
            if pairing:
                self._writer.log_event("pairing", **pairing)
            duration = time.monotonic() - self._t_start if self._t_start else 0.0
            reason = self._stop_reason or ("stopped" if status == "complete" else "error")
            self._writer.log_event("recording_stop", reason=reason, message=self._message, duration_s=duration)
            cams = self._camera_results(duration)
            self._writer.close(
                status, stop_reason=reason, duration_s=round(duration, 3),
                drops={n: c.drops for n, c in cams.items()},
                flagged={n: {"ffc": c.ffc_frames, "unpaired": c.unpaired, "gap_before": c.gaps} for n, c in cams.items()},
                reconnects={n: c.reconnects for n, c in cams.items()},
                pairing=pairing, gps=gps, ffc_events=self._ffc_events,
            )
            self._result = RecordingResult(self.path, status, reason, self._message, duration, cams, pairing, gps,
                                           self._ffc_events)
        finally:
            self._writer = None
            for lane in self._lanes:
                try:
                    lane.camera.close()
                except Exception as exc:  # noqa: BLE001
                    log.warning("%s: close failed: %s", lane.name, exc)
            if self._gps is not None:
                self._gps.close()
        return self._result

    def __enter__(self) -> "Recorder":
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        ok = exc_type is None or exc_type is KeyboardInterrupt
        if not ok:
            self.request_stop("error", str(exc))
        self.close("complete" if ok else "aborted")

    # -- the run loop -----------------------------------------------------------
    def run(self, duration_s: float | None = None, *, on_status: Callable[[RecorderStatus], None] | None = None,
            status_interval_s: float = 0.5) -> RecordingResult:
        """Record until ``duration_s`` (None: until Ctrl-C or :meth:`request_stop`), then finalise.

        ``on_status`` is called every ``status_interval_s`` with a :class:`RecorderStatus`.
        A KeyboardInterrupt ends the recording cleanly (manifest ``complete``).
        """
        if duration_s is not None and duration_s <= 0:
            raise RigError(f"--duration must be positive, got {duration_s:g}")
        if duration_s is not None:
            self._duration_ns = int(duration_s * 1e9)
        self._duration_s = duration_s
        self.start()
        next_status = 0.0
        status = "complete"
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if duration_s is not None and self._reached_end(now, duration_s):
                    self.request_stop("duration")
                    break
                self._schedule_ffc(now)
                if on_status is not None and now >= next_status:
                    on_status(self.status())
                    next_status = now + status_interval_s
                self._stop.wait(0.05)
        except KeyboardInterrupt:
            self.request_stop("interrupted", "stopped by Ctrl-C")
        except BaseException as exc:
            self.request_stop("error", str(exc))
            status = "aborted"
            raise
        finally:
            try:
                self.stop()
            except KeyboardInterrupt:  # a second Ctrl-C while draining: still finalise
                self.stop()
            result = self.close(status)
        return result

    def _reached_end(self, now: float, duration_s: float) -> bool:
        if all(lane.done for lane in self._lanes):
            return True
        if any(not lane.live and not lane.done for lane in self._lanes):
            return False  # sources on their own clock end themselves at the window's end
        return now - self._t_start >= duration_s + 0.05  # live: the grab threads cut at the window's end

    # -- acquisition ------------------------------------------------------------
    def _acquire_loop(self, lane: _Lane) -> None:
        cam = lane.camera
        backoff = self.reconnect_backoff_s
        try:
            while not self._stop.is_set():
                if lane.state == "reconnecting":
                    if self._reconnect(lane):
                        backoff = self.reconnect_backoff_s
                    else:
                        self._stop.wait(backoff)
                        backoff = min(backoff * 2, self.reconnect_backoff_max_s)
                    continue
                if lane.ffc_requested:
                    lane.ffc_requested = False
                    self._run_ffc(lane)
                try:
                    frame = cam.grab(timeout_s=0.2)
                except Exception as exc:  # noqa: BLE001 - any driver failure is a disconnect
                    self._disconnect(lane, exc)
                    continue
                if frame is None:
                    if time.monotonic() - lane.last_arrival > self.stall_timeout_s:
                        self._disconnect(lane, CameraError(f"no frame for {self.stall_timeout_s:g} s"))
                    continue
                if self._past_end(lane, frame):
                    break
                self._enqueue(lane, frame)
        finally:
            lane.done = True
            lane.state = "stopped"
            lane.queue.put(None)  # the writer drains and exits

    def _past_end(self, lane: _Lane, frame: Frame) -> bool:
        """Whether ``frame`` lies after the recording window (``duration_s`` from the start).

        Live cameras stamp frames with the host clock: the window is host time.
        A paced-as-fast-as-read source (``realtime=False`` sim) has its own
        clock: the window is measured from its first frame.
        """
        if self._duration_ns is None:
            return False
        if lane.live:
            return frame.host_ns >= self._t0_ns + self._duration_ns
        if lane.first_host_ns is None:
            lane.first_host_ns = frame.host_ns
        return frame.host_ns - lane.first_host_ns >= self._duration_ns

    def _enqueue(self, lane: _Lane, frame: Frame) -> None:
        flags = frame.flags
        if lane.pending_drops:
            flags |= FrameFlags.GAP_BEFORE
        if lane.reconnected:
            flags |= FrameFlags.RECONNECTED
        if lane.live:
            try:
                lane.queue.put_nowait((frame, flags, lane.pending_drops))
            except queue.Full:
                lane.drops += 1
                lane.pending_drops += 1
                return
        else:  # a source that waits for its reader: back-pressure instead of drops
            while True:
                try:
                    lane.queue.put((frame, flags, 0), timeout=0.1)
                    break
                except queue.Full:
                    if self._stop.is_set():
                        return
        lane.pending_drops = 0
        lane.reconnected = False
        lane.last_arrival = time.monotonic()
        if lane.first_counter is None:
            lane.first_counter = frame.frame_counter
        rel = frame.frame_counter - lane.first_counter
        lane.recent_ns.append(frame.host_ns)
        lane.recent_counters.append(rel)
        lane.latest_rel_counter = rel
        lane.latest_ns = frame.host_ns

    def _disconnect(self, lane: _Lane, exc: BaseException) -> None:
        lane.disconnects += 1
        lane.state = "reconnecting"
        log.warning("%s: disconnected: %s", lane.name, exc)
        self._log("disconnect", camera=lane.name, error=str(exc) or type(exc).__name__)
        try:
            lane.camera.close()
        except Exception:  # noqa: BLE001
            pass

    def _reconnect(self, lane: _Lane) -> bool:
        cam = lane.camera
        try:
            cam.open()
            cam.configure()
            cam.start()
        except Exception as exc:  # noqa: BLE001
            try:
                cam.close()
            except Exception:  # noqa: BLE001
                pass
            lane.last_error = str(exc)
            log.info("%s: reconnect failed: %s", lane.name, exc)
            return False
        lane.reconnects += 1
        lane.reconnected = True
        lane.state = "streaming"
        lane.last_arrival = time.monotonic()
        self._log("reconnect", camera=lane.name, attempt=lane.reconnects)
        return True

    def _run_ffc(self, lane: _Lane) -> None:
        try:
            lane.camera.run_ffc()
            self._log("ffc_request", camera=lane.name, ok=True)
        except Exception as exc:  # noqa: BLE001
            self._log("ffc_request", camera=lane.name, ok=False, error=str(exc))

    # -- writing ----------------------------------------------------------------
    def _write_loop(self, lane: _Lane) -> None:
        finished = False
        while not finished:
            try:
                item = lane.queue.get(timeout=0.05)
            except queue.Empty:
                item = _EMPTY
            if item is None:
                finished = True
            elif item is not _EMPTY:
                lane.pending.append(item)
                while len(lane.pending) < 256:  # take what is queued without blocking
                    try:
                        nxt = lane.queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        finished = True
                        break
                    lane.pending.append(nxt)
            self._flush_pending(lane, force=False)
        deadline = time.monotonic() + 5.0
        while lane.pending:  # the other camera may still deliver partners: wait until it is done or silent
            self._flush_pending(lane, force=time.monotonic() > deadline)
            if lane.pending:
                time.sleep(0.01)
        if lane.pending_drops:  # drops at the very end, never followed by a frame
            self._log_drops(lane, lane.pending_drops)

    def _flush_pending(self, lane: _Lane, force: bool) -> None:
        while lane.pending:
            frame, flags, drops = lane.pending[0]
            unpaired = self._unpaired(lane, frame, force)
            if unpaired is None:
                return  # wait for the other camera's stream to pass this frame's window
            lane.pending.popleft()
            if unpaired:
                flags |= FrameFlags.UNPAIRED
            if drops:
                self._log_drops(lane, drops)
            self._observe_ffc(lane, frame, flags)
            if self._writer is None or self._stop_reason == "disk-full":
                continue  # the disk is full: what is still queued cannot be kept
            try:
                rec = self._writer.write_image(lane.name, frame.image, frame.frame_counter, frame.host_ns,
                                               frame.wall_ns, frame.device_ns, int(flags))
            except DiskFullError as exc:
                self._disk_full(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - an unexpected write failure ends the recording
                log.exception("%s: write failed", lane.name)
                self.request_stop("error", f"{lane.name}: write failed: {exc}")
                continue
            lane.records.append(rec)
            lane.frames += 1
            lane.ffc_frames += bool(flags & FrameFlags.FFC)
            lane.unpaired += bool(flags & FrameFlags.UNPAIRED)
            lane.gaps += bool(flags & FrameFlags.GAP_BEFORE)

    def _log_drops(self, lane: _Lane, count: int) -> None:
        self._log("drop", camera=lane.name, count=int(count))

    def _disk_full(self, exc: DiskFullError) -> None:
        with self._fault_lock:
            first = self._stop_reason != "disk-full"
            if first:
                self._stop_reason, self._message = "disk-full", str(exc)
        self._stop.set()
        if first:
            self._log("disk_full", message=str(exc), min_free_bytes=self.min_free_bytes)

    def _observe_ffc(self, lane: _Lane, frame: Frame, flags: FrameFlags) -> None:
        ffc = bool(flags & FrameFlags.FFC)
        if ffc and not lane.in_ffc:
            lane.in_ffc, lane.ffc_run = True, 0
            self._ffc_events += 1
            self._log("ffc", camera=lane.name, state="start", frame_counter=frame.frame_counter, frame_host_ns=frame.host_ns)
        if ffc:
            lane.ffc_run += 1
        elif lane.in_ffc:
            lane.in_ffc = False
            self._log("ffc", camera=lane.name, state="end", frame_counter=frame.frame_counter,
                      frame_host_ns=frame.host_ns, frames=lane.ffc_run)

    def _unpaired(self, lane: _Lane, frame: Frame, force: bool) -> bool | None:
        """True/False once decidable; None while the other camera may still deliver a partner."""
        if self._pair_mode is None:
            return False
        other = self._lanes[1 - lane.index]
        silent = other.done or other.state != "streaming" or time.monotonic() - other.last_arrival > self.pair_grace_s
        if self._pair_mode == "timestamp":
            lo, hi = frame.host_ns - self._pair_window_ns, frame.host_ns + self._pair_window_ns
            latest = other.latest_ns
            if not force and not silent and (latest is None or latest < hi):
                return None
            ts = np.fromiter(tuple(other.recent_ns), dtype=np.int64)
            return not bool(((ts >= lo) & (ts <= hi)).any())
        rel = frame.frame_counter - (lane.first_counter or 0)
        latest = other.latest_rel_counter
        if not force and not silent and (latest is None or latest < rel):
            return None
        return rel not in set(other.recent_counters)

    def _log(self, kind: str, **data) -> None:
        w = self._writer
        if w is None:
            return
        try:
            w.log_event(kind, **data)
        except (OSError, ValueError) as exc:  # closed or failing event log: never stops recording
            log.warning("event %s not logged: %s", kind, exc)

    # -- FFC scheduling -------------------------------------------------------------
    def _schedule_ffc(self, now: float) -> None:
        capable = [lane for lane in self._lanes if lane.camera.role == "lwir" and hasattr(lane.camera, "run_ffc")]
        if not capable:
            return
        why = None
        if self.ffc_interval_s is not None:
            due = [lane for lane in capable if now - max(lane.last_ffc_request, self._t_start) >= self.ffc_interval_s]
            if due:
                why = "interval"
                capable = due
        if why is None and self.ffc_when_stopped and self._vehicle_stopped(now):
            due = [lane for lane in capable if now - lane.last_ffc_request >= self.ffc_min_gap_s]
            if due:
                why = "stopped"
                capable = due
        if why is None:
            return
        for lane in capable:
            if lane.state == "streaming" and not lane.in_ffc:
                lane.last_ffc_request = now
                lane.ffc_requested = True
                self._log("ffc_schedule", camera=lane.name, reason=why)

    def _vehicle_stopped(self, now: float) -> bool:
        fix = self._gps_speed_fix
        if fix is None or not fix.valid or now - fix.host_ns * 1e-9 > 3.0:
            self._gps_still_since = None
            return False
        if fix.speed_mps > self.stopped_speed_mps:
            self._gps_still_since = None
            return False
        if self._gps_still_since is None:
            self._gps_still_since = now
        return now - self._gps_still_since >= self.stopped_for_s

    # -- GPS ----------------------------------------------------------------------
    def _gps_loop(self) -> None:
        gps = self._gps
        while not self._stop.is_set():
            try:
                fixes = gps.read(timeout_s=0.2)
            except Exception as exc:  # noqa: BLE001 - a GPS fault never stops the recording
                self._log("gps_error", error=str(exc))
                self._stop.wait(1.0)
                continue
            for fix in fixes:
                self._gps_fix = fix
                if fix.speed_mps is not None:
                    self._gps_speed_fix = fix  # RMC: GGA carries no speed
                self._log("gps", **gps_event(fix))

    def _gps_stats(self) -> dict | None:
        if self._gps is None:
            return None
        s = self._gps.stats
        return {"sentences": s.sentences, "fixes": s.fixes, "bad": s.bad, "bad_checksum": s.bad_checksum,
                "malformed": s.malformed, "ignored": s.ignored}

    # -- status and results --------------------------------------------------------
    def status(self) -> RecorderStatus:
        """A snapshot of the recording (thread-safe enough for a dashboard)."""
        now = time.monotonic()
        cams = []
        written = self._writer.bytes_written() if self._writer is not None else {}
        for lane in self._lanes:
            b = written.get(lane.name, 0)
            lane.rate_window.append((now, lane.frames, b))
            while len(lane.rate_window) > 2 and now - lane.rate_window[0][0] > 2.0:
                lane.rate_window.popleft()
            t0, f0, b0 = lane.rate_window[0]
            dt = now - t0
            fps = (lane.frames - f0) / dt if dt > 0 else 0.0
            mbps = (b - b0) / dt / 1e6 if dt > 0 else 0.0
            ffc = "" if lane.camera.role != "lwir" else ("in FFC" if lane.in_ffc else "idle")
            cams.append(CameraStatus(lane.name, lane.camera.role, lane.fps, fps, lane.frames, lane.drops,
                                     lane.queue.qsize() + len(lane.pending), self.queue_frames, mbps, lane.state, ffc))
        try:
            self._disk_free = shutil.disk_usage(self.path).free
        except OSError:
            pass
        gps = "off"
        if self._gps is not None:
            fix = self._gps_fix
            gps = "no fix" if fix is None or not fix.valid else describe_fix(fix)
        return RecorderStatus(self.path, now - self._t_start if self._t_start else 0.0,
                              getattr(self, "_duration_s", None), cams, self._disk_free, self.min_free_bytes, gps,
                              self._gps.stats.bad if self._gps is not None else 0, self._ffc_events)

    def _camera_results(self, duration: float) -> dict[str, CameraResult]:
        out = {}
        for lane in self._lanes:
            recs = lane.records
            span = (recs[-1].host_ns - recs[0].host_ns) * 1e-9 if len(recs) > 1 else 0.0
            out[lane.name] = CameraResult(
                lane.name, lane.camera.role, lane.fps, lane.frames, lane.drops, lane.ffc_frames, lane.unpaired,
                lane.gaps, lane.disconnects, lane.reconnects, sum(r.length for r in recs) + HEADER_SIZE * len(recs),
                (len(recs) - 1) / span if span > 0 else 0.0)
        return out

    def _pairing_summary(self) -> dict:
        if self._pair_mode is None:
            return {}
        a, b = self._lanes
        if a.camera.role != "visible":
            a, b = b, a
        if self._pair_mode == "counter":
            pairs = pair_by_counter(a.records, b.records)
        else:
            pairs = pair_by_timestamp(a.records, b.records, self._pair_window_ns)
        used_a = {p.a.seq for p in pairs}
        used_b = {p.b.seq for p in pairs}
        dts = np.array([abs(p.dt_ns) for p in pairs], dtype=np.int64)
        return {
            "mode": self._pair_mode, "window_ns": self._pair_window_ns, "cameras": [a.name, b.name],
            "pairs": len(pairs),
            "unpaired": {a.name: len(a.records) - len(used_a), b.name: len(b.records) - len(used_b)},
            "flagged_unpaired": {a.name: a.unpaired, b.name: b.unpaired},
            "max_dt_ns": int(dts.max()) if len(dts) else 0,
            "median_dt_ns": int(np.median(dts)) if len(dts) else 0,
        }


# --------------------------------------------------------------------------- helpers
def gps_event(fix) -> dict:
    """Fields of a ``gps`` event; ``host_ns`` is when the sentence was read (the time tag frames are matched by)."""
    d = {"host_ns": fix.host_ns, "sentence": fix.kind, "talker": fix.talker, "valid": fix.valid,
         "lat_deg": fix.lat_deg, "lon_deg": fix.lon_deg,
         "time_utc": fix.time_utc.isoformat() if fix.time_utc else None}
    if fix.kind == "RMC":
        d.update(date_utc=fix.date_utc.isoformat() if fix.date_utc else None, speed_mps=fix.speed_mps,
                 course_deg=fix.course_deg)
    else:
        d.update(quality=fix.quality, satellites=fix.satellites, hdop=fix.hdop, altitude_m=fix.altitude_m)
    return d


def describe_fix(fix) -> str:
    if fix.lat_deg is None or fix.lon_deg is None:
        return "fix without position"
    ns = "N" if fix.lat_deg >= 0 else "S"
    ew = "E" if fix.lon_deg >= 0 else "W"
    text = f"{abs(fix.lat_deg):.5f} {ns} {abs(fix.lon_deg):.5f} {ew}"
    if fix.speed_mps is not None:
        text += f" {fix.speed_mps:.1f} m/s"
    if fix.satellites is not None:
        text += f" {fix.satellites} sats"
    return text


def sim_cameras_for_drive(rig: RigConfig, *, seed: int = 0, variant: str = "day", realtime: bool = True,
                          world_duration_s: float = 10.0, ffc_interval_s: float | None = None,
                          progress: Callable[[int, int], None] | None = None, fps_scale: float = 1.0) -> list[Camera]:
    """Simulated cameras of ``rig`` looking at a prepared :class:`DriveWorld` (keyframes rendered here).

    ``fps_scale`` runs the simulated cameras faster than the rig's nominal fps (benchmarks).
    ``ffc_interval_s`` sets the simulated LWIR camera's own FFC period.
    """
    from dataclasses import replace

    from rig.capture.sim_camera import make_sim_cameras
    from rig.sim import DriveWorld

    if variant not in ("day", "night", "fog"):
        raise RigError(f"--variant must be day, night or fog, got '{variant}'")
    sim_rig = rig if fps_scale == 1.0 else replace(rig, cameras=tuple(replace(c, fps=c.fps * fps_scale) for c in rig.cameras))
    world = DriveWorld(sim_rig, seed=seed, variant=variant, duration_s=world_duration_s)
    world.prepare(list(sim_rig.cameras), progress)
    kwargs = {} if ffc_interval_s is None else {"ffc_interval_s": ffc_interval_s}
    return make_sim_cameras(sim_rig, world, realtime=realtime, seed=seed, **kwargs)


def record_drive(rig: RigConfig | str, out: str | Path, duration_s: float = 10.0, seed: int = 0, variant: str = "day",
                 realtime: bool = True, *, progress: Callable[[int, int], None] | None = None,
                 on_status: Callable[[RecorderStatus], None] | None = None, **recorder_kwargs) -> RecordingResult:
    """Record ``duration_s`` of a simulated drive with the simulated rig (the demo's entry point)."""
    from rig.rigconfig import load_rig

    if isinstance(rig, (str, Path)):
        rig = load_rig(rig)
    if any(c.driver != "sim" for c in rig.cameras):
        raise RigError(f"record_drive needs a simulated rig; '{rig.name}' has real cameras (use Recorder)",
                       path=rig.source)
    cams = sim_cameras_for_drive(rig, seed=seed, variant=variant, realtime=realtime, progress=progress)
    with Recorder(rig, out, cams, **recorder_kwargs) as rec:
        return rec.run(duration_s, on_status=on_status)


def result_dict(result: RecordingResult) -> dict:
    d = asdict(result)
    d["path"] = str(result.path)
    return d
