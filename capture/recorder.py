"""The drive recorder: every camera of a rig into one session, with GPS, FFC and fault handling.

::

    rig = load_rig("sim")
    with Recorder(rig, "drive01", cameras=my_cameras) as rec:   # opens cameras, creates the session
        result = rec.run(duration_s=30)                           # Ctrl-C also ends it cleanly
    print(result.frames, result.drops)

:class:`Recorder` orchestrates; each job lives in its own module:

* :mod:`rig.capture.streams`: per camera, a grab thread and a writer thread with a bounded
  queue between (drops are counted, logged as ``drop`` events and flag the next frame
  ``GAP_BEFORE``), and the one reconnect layer (backoff reopen);
* :mod:`rig.capture.pairing_live`: live ``UNPAIRED`` flags and the manifest's pairing summary;
* :mod:`rig.capture.ffc`: ``ffc`` events and FFC scheduling (interval, vehicle stopped);
* :mod:`rig.capture.gps_log`: the GPS thread (``gps`` events);
* :mod:`rig.capture.dashboard`: status snapshots and rates for the live dashboard;
* :mod:`rig.capture.sim_camera`: the simulated rig's cameras (:func:`record_drive` uses them).

The calling thread runs :meth:`Recorder.run`: deadline, FFC scheduling, status for the dashboard.

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
  Drivers do not reconnect on their own (see :mod:`rig.capture.streams`).
* A bad GPS sentence is counted (``gps_stats`` event and manifest stats), never fatal.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from rig.capture.camera import Camera, CameraError, FrameFlags, make_camera, open_cameras
from rig.capture.dashboard import CameraStatus, RateWindow, RecorderStatus
from rig.capture.ffc import FfcPolicy, FfcScheduler, observe_ffc
from rig.capture.gps_log import GpsLogger
from rig.capture.pairing_live import LivePairing
from rig.capture.streams import CameraStream, RecordingWindow, StreamOptions, acquire_loop, write_loop
from rig.errors import RigError
from rig.rigconfig import RigConfig
from rig.session import HEADER_SIZE, DiskFullError, SessionWriter

log = logging.getLogger(__name__)

__all__ = ["CameraResult", "CameraStatus", "Recorder", "RecorderStatus", "RecordingResult", "record_drive",
           "result_dict"]


# --------------------------------------------------------------------------- results
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
        self.rig = rig
        self.path = Path(out_dir)
        self._given_cameras = list(cameras) if cameras is not None else None
        self.queue_frames = queue_frames
        self.min_free_bytes = min_free_bytes
        self.ffc = FfcPolicy(ffc_interval_s, ffc_when_stopped, stopped_speed_mps, stopped_for_s, ffc_min_gap_s)
        self.gps_port, self.gps_baudrate = gps_port, gps_baudrate
        self.streams_options = StreamOptions(stall_timeout_s, reconnect_backoff_s, reconnect_backoff_max_s)
        self.pair_grace_s = pair_grace_s
        self.overwrite = overwrite
        self.calibration = calibration

        self._writer: SessionWriter | None = None
        self._streams: list[CameraStream] = []
        self._stop = threading.Event()
        self._stop_reason = ""
        self._message = ""
        self._fault_lock = threading.Lock()
        self._t_start = 0.0
        self._gps: GpsLogger | None = None
        self._ffc_scheduler: FfcScheduler | None = None
        self._ffc_events = 0
        self._pairing: LivePairing | None = None
        self._started = False
        self._window = RecordingWindow()
        self._duration_s: float | None = None
        self._rates: dict[str, RateWindow] = {}
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
        gps = None
        try:
            if self.gps_port:
                from rig.capture.gps import GpsReader

                gps = GpsReader(self.gps_port, self.gps_baudrate)
                gps.open()
            self._writer = SessionWriter.create(self.path, self.rig, cameras=[c.name for c in cams],
                                                calibration=self.calibration, min_free_bytes=self.min_free_bytes,
                                                overwrite=self.overwrite)
        except BaseException:
            for cam in cams:
                cam.close()
            if gps is not None:
                gps.close()
            raise
        if gps is not None:
            self._gps = GpsLogger(gps, self._log, self._stop)
        self._streams = [CameraStream(cam, queue.Queue(self.queue_frames), cam.spec.fps, i,
                                      live=bool(getattr(cam, "realtime", True)))
                         for i, cam in enumerate(cams)]
        self._rates = {s.name: RateWindow() for s in self._streams}
        self._pairing = LivePairing.for_streams(self.rig, self._streams, self.pair_grace_s)
        self._writer.log_event("recording_start", cameras=[c.name for c in cams], queue_frames=self.queue_frames,
                               min_free_bytes=self.min_free_bytes, ffc_interval_s=self.ffc.interval_s,
                               ffc_when_stopped=self.ffc.when_stopped, gps_port=self.gps_port,
                               pairing={"mode": self._pairing.mode if self._pairing else None,
                                        "window_ns": self._pairing.window_ns if self._pairing else 0})

    def start(self) -> None:
        """Start streaming and the recording threads."""
        self.open()
        if self._started:
            return
        self._started = True
        self._t_start = time.monotonic()
        t0_ns = time.monotonic_ns()
        self._ffc_scheduler = FfcScheduler(self.ffc, self._t_start)
        for s in self._streams:
            try:
                s.camera.start()
                s.state = "streaming"
            except CameraError as exc:
                self._writer.log_event("disconnect", camera=s.name, error=str(exc))
                s.disconnects += 1
                s.state = "reconnecting"
            s.last_arrival = time.monotonic()
            self._rates[s.name].add(time.monotonic(), 0, 0)
        self._window = RecordingWindow(t0_ns, self._window.duration_ns)
        for s in self._streams:
            s.write = threading.Thread(target=write_loop, args=(s, self._flush_pending, self._log_end_drops(s)),
                                       name=f"write-{s.name}", daemon=True)
            s.acquire = threading.Thread(target=acquire_loop,
                                         args=(s, self.streams_options, self._window, self._stop, self._log),
                                         name=f"grab-{s.name}", daemon=True)
            s.write.start()
            s.acquire.start()
        if self._gps is not None:
            self._gps.start()

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
        for s in self._streams:
            if s.acquire is not None:
                s.acquire.join()
        for s in self._streams:
            if s.write is not None:
                s.write.join()
            try:
                s.camera.stop()
            except Exception as exc:  # noqa: BLE001 - a dying camera must not lose the session
                log.warning("%s: stop failed: %s", s.name, exc)
        if self._gps is not None:
            self._gps.join()
        self._started = False

    def close(self, status: str = "complete") -> RecordingResult | None:
        """Finalise the session (``status`` goes into the manifest) and release cameras and GPS."""
        self.stop()
        if self._writer is None:
            return self._result
        try:
            pairing = self._pairing.summary(self._streams) if self._pairing is not None else {}
            gps = self._gps.stats() if self._gps is not None else None
            if gps is not None:
                self._writer.log_event("gps_stats", **gps)
            if pairing:
                self._writer.log_event("pairing", **pairing)
            duration = time.monotonic() - self._t_start if self._t_start else 0.0
            reason = self._stop_reason or ("stopped" if status == "complete" else "error")
            self._writer.log_event("recording_stop", reason=reason, message=self._message, duration_s=duration)
            cams = self._camera_results()
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
            for s in self._streams:
                try:
                    s.camera.close()
                except Exception as exc:  # noqa: BLE001
                    log.warning("%s: close failed: %s", s.name, exc)
            if self._gps is not None:
                self._gps.gps.close()
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
            self._window = RecordingWindow(self._window.t0_ns, int(duration_s * 1e9))
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
                speed_fix = self._gps.speed_fix if self._gps is not None else None
                self._ffc_scheduler.tick(now, self._streams, speed_fix, self._log)
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
        if all(s.done for s in self._streams):
            return True
        if any(not s.live and not s.done for s in self._streams):
            return False  # sources on their own clock end themselves at the window's end
        return now - self._t_start >= duration_s + 0.05  # live: the grab threads cut at the window's end

    # -- writing (called by each stream's writer thread) --------------------------
    def _flush_pending(self, stream: CameraStream, force: bool) -> None:
        """Write the pending frames whose pairing is decided (all of them with ``force``)."""
        while stream.pending:
            frame, flags, drops = stream.pending[0]
            unpaired = False
            if self._pairing is not None:
                unpaired = self._pairing.unpaired(frame, stream, self._streams[1 - stream.index], force)
                if unpaired is None:
                    return  # wait for the other camera's stream to pass this frame's window
            stream.pending.popleft()
            if unpaired:
                flags |= FrameFlags.UNPAIRED
            if drops:
                self._log("drop", camera=stream.name, count=int(drops))
            self._ffc_events += observe_ffc(stream, frame, flags, self._log)
            if self._writer is None or self._stop_reason == "disk-full":
                continue  # the disk is full: what is still queued cannot be kept
            try:
                rec = self._writer.write_image(stream.name, frame.image, frame.frame_counter, frame.host_ns,
                                               frame.wall_ns, frame.device_ns, int(flags))
            except DiskFullError as exc:
                self._disk_full(exc)
                continue
            except Exception as exc:  # noqa: BLE001 - an unexpected write failure ends the recording
                log.exception("%s: write failed", stream.name)
                self.request_stop("error", f"{stream.name}: write failed: {exc}")
                continue
            stream.records.append(rec)
            stream.frames += 1
            stream.ffc_frames += bool(flags & FrameFlags.FFC)
            stream.unpaired += bool(flags & FrameFlags.UNPAIRED)
            stream.gaps += bool(flags & FrameFlags.GAP_BEFORE)

    def _log_end_drops(self, stream: CameraStream) -> Callable[[int], None]:
        return lambda count: self._log("drop", camera=stream.name, count=int(count))

    def _disk_full(self, exc: DiskFullError) -> None:
        with self._fault_lock:
            first = self._stop_reason != "disk-full"
            if first:
                self._stop_reason, self._message = "disk-full", str(exc)
        self._stop.set()
        if first:
            self._log("disk_full", message=str(exc), min_free_bytes=self.min_free_bytes)

    def _log(self, kind: str, **data) -> None:
        w = self._writer
        if w is None:
            return
        try:
            w.log_event(kind, **data)
        except (OSError, ValueError) as exc:  # closed or failing event log: never stops recording
            log.warning("event %s not logged: %s", kind, exc)

    # -- status and results --------------------------------------------------------
    def status(self) -> RecorderStatus:
        """A snapshot of the recording (thread-safe enough for a dashboard)."""
        now = time.monotonic()
        cams = []
        written = self._writer.bytes_written() if self._writer is not None else {}
        for s in self._streams:
            fps, mbps = self._rates[s.name].rates(now, s.frames, written.get(s.name, 0))
            ffc = "" if s.camera.role != "lwir" else ("in FFC" if s.in_ffc else "idle")
            cams.append(CameraStatus(s.name, s.camera.role, s.fps, fps, s.frames, s.drops,
                                     s.queue.qsize() + len(s.pending), self.queue_frames, mbps, s.state, ffc))
        try:
            self._disk_free = shutil.disk_usage(self.path).free
        except OSError:
            pass
        gps = "off" if self._gps is None else self._gps.describe()
        return RecorderStatus(self.path, now - self._t_start if self._t_start else 0.0, self._duration_s, cams,
                              self._disk_free, self.min_free_bytes, gps,
                              self._gps.gps.stats.bad if self._gps is not None else 0, self._ffc_events)

    def _camera_results(self) -> dict[str, CameraResult]:
        out = {}
        for s in self._streams:
            recs = s.records
            span = (recs[-1].host_ns - recs[0].host_ns) * 1e-9 if len(recs) > 1 else 0.0
            out[s.name] = CameraResult(
                s.name, s.camera.role, s.fps, s.frames, s.drops, s.ffc_frames, s.unpaired,
                s.gaps, s.disconnects, s.reconnects, sum(r.length for r in recs) + HEADER_SIZE * len(recs),
                (len(recs) - 1) / span if span > 0 else 0.0)
        return out


# --------------------------------------------------------------------------- entry points
def record_drive(rig: RigConfig | str, out: str | Path, duration_s: float = 10.0, seed: int = 0, variant: str = "day",
                 realtime: bool = True, *, progress: Callable[[int, int], None] | None = None,
                 on_status: Callable[[RecorderStatus], None] | None = None, **recorder_kwargs) -> RecordingResult:
    """Record ``duration_s`` of a simulated drive with the simulated rig (the demo's entry point)."""
    from rig.capture.sim_camera import sim_cameras_for_drive
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
    """The result as plain data (JSON-ready)."""
    d = asdict(result)
    d["path"] = str(result.path)
    return d
