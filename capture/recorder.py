"""The drive recorder: every camera of a rig into one session, with GPS, FFC and fault handling.

::

    rig = load_rig("sim")
    with Recorder(rig, "drive01", cameras=my_cameras) as rec:   # opens cameras, creates the session
        result = rec.run(duration_s=30)                           # Ctrl-C also ends it cleanly
    print(result.frames, result.lost, result.status)              # status: complete | degraded | aborted

:class:`Recorder` orchestrates; each job lives in its own module:

* :mod:`rig.capture.streams`: per camera, a grab thread and a writer thread with a bounded
  queue between (drops are counted, logged as ``drop`` events and flag the next frame
  ``GAP_BEFORE``), and the one reconnect layer (backoff reopen);
* :mod:`rig.capture.pairing_live`: live ``UNPAIRED`` flags and the manifest's pairing summary;
* :mod:`rig.capture.ffc`: ``ffc`` events and FFC scheduling (interval, vehicle stopped);
* :mod:`rig.capture.control`: FFC windows of cameras with a control thread (the Boson); the
  writer holds a frame until its camera knows the FFC state for the frame's time (at most
  ``ffc_hold_s``, then it is flagged ``FFC``: unknown is not trusted);
* :mod:`rig.capture.gps_log`: the GPS thread (``gps`` events);
* :mod:`rig.capture.dashboard`: status snapshots and rates for the live dashboard;
* :mod:`rig.capture.results`: :class:`RecordingResult`, read back from the finished session;
* :mod:`rig.capture.sim_camera`: the simulated rig's cameras (:func:`record_drive` uses them).

The calling thread runs :meth:`Recorder.run`: deadline, FFC scheduling, status for the dashboard.

One loss model
--------------
A camera's ``lost`` is the number of frames missing by frame counter among the
frames written (counters are assigned by the device or at grab, so frames dropped
in our queues are included; ``dropped_in_queue`` says how many of them were ours).
Timing gaps are counted apart (``gaps``). The dashboard counts ``lost`` the same
way as frames are written, the manifest's ``stats.lost`` is that count, and
:class:`RecordingResult` is built from the finished session's
:meth:`~rig.session.SessionReader.summary` - the numbers ``rig session info`` shows.

Degraded runs
-------------
A camera that was down for part of the run (disconnected until reconnected, or
until the end) or a GPS that failed (read errors, or silent for ``gps_silence_s``)
makes the run ``degraded``: manifest status ``degraded``, ``stats.outages`` and
``stats.degraded`` (one line per outage), and :attr:`RecordingResult.degraded`.

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
* A bad GPS sentence is counted (``gps_stats`` event and manifest stats), never fatal;
  a failing GPS port is reopened with backoff (:mod:`rig.capture.gps_log`).
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from rig.capture.camera import Camera, CameraError, FrameFlags, make_camera, open_cameras
from rig.capture.dashboard import CameraStatus, RateWindow, RecorderStatus
from rig.capture.ffc import FfcPolicy, FfcScheduler, observe_ffc
from rig.capture.gps_log import GpsLogger
from rig.capture.pairing_live import LivePairing
from rig.capture.results import CameraResult, RecordingResult, result_dict
from rig.capture.streams import CameraStream, RecordingWindow, StreamOptions, acquire_loop, write_loop
from rig.errors import RigError
from rig.rigconfig import RigConfig
from rig.session import HEADER_SIZE as HEADER_BYTES
from rig.session import DiskFullError, SessionReader, SessionWriter

log = logging.getLogger(__name__)

__all__ = ["CameraResult", "CameraStatus", "Recorder", "RecorderStatus", "RecordingResult", "record_drive",
           "result_dict"]


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
        gps_silence_s: float = 5.0,
        stall_timeout_s: float = 3.0,
        reconnect_backoff_s: float = 0.25,
        reconnect_backoff_max_s: float = 5.0,
        pair_grace_s: float = 0.5,
        ffc_hold_s: float = 2.0,
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
        self.gps_port, self.gps_baudrate, self.gps_silence_s = gps_port, gps_baudrate, gps_silence_s
        self.ffc_hold_ns = int(ffc_hold_s * 1e9)
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
            self._gps = GpsLogger(gps, self._log, self._stop, silence_s=self.gps_silence_s)
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
                s.went_down(time.monotonic_ns())
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
        """Finalise the session and release cameras and GPS.

        ``status`` (``complete`` or ``aborted``) goes into the manifest; a complete run with
        an outage (a camera down, the GPS failing) becomes ``degraded``.
        """
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
            for s in self._streams:
                self._log_ffc_windows(s)
            duration = time.monotonic() - self._t_start if self._t_start else 0.0
            reason = self._stop_reason or ("stopped" if status == "complete" else "error")
            end_ns = time.monotonic_ns()
            outages = {s.name: {"down_s": round(s.down_s(end_ns), 3), "disconnects": s.disconnects,
                                "reconnects": s.reconnects, "down_at_end": s.down,
                                "periods_ns": [[a, b] for a, b in s.outages]} for s in self._streams if s.outages}
            degraded = [f"{n} down {o['down_s']:.1f} s" + (" (to the end)" if o["down_at_end"] else "")
                        for n, o in outages.items()]
            if gps is not None and gps["outages"]:
                degraded.append(f"GPS down {gps['down_s']:.1f} s ({gps['outages']} outage"
                                f"{'s' if gps['outages'] != 1 else ''})")
            if status == "complete" and degraded:
                status = "degraded"
            self._writer.log_event("recording_stop", reason=reason, message=self._message, duration_s=duration,
                                   status=status, degraded=degraded)
            self._writer.close(
                status, stop_reason=reason, duration_s=round(duration, 3),
                lost={s.name: s.lost for s in self._streams},
                dropped_in_queue={s.name: s.drops for s in self._streams},
                flagged={s.name: {"ffc": s.ffc_frames, "unpaired": s.unpaired, "gap_before": s.gaps}
                         for s in self._streams},
                reconnects={s.name: s.reconnects for s in self._streams},
                outages=outages, degraded=degraded,
                pairing=pairing, gps=gps, ffc_events=self._ffc_events,
            )
            cams = self._camera_results(end_ns)
            self._result = RecordingResult(self.path, status, reason, self._message, duration, cams, pairing, gps,
                                           self._ffc_events, tuple(degraded))
        finally:
            self._writer = None
            for s in self._streams:
                try:
                    s.camera.close()
                except Exception as exc:  # noqa: BLE001
                    log.warning("%s: close failed: %s", s.name, exc)
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
        """Write the pending frames whose FFC state and pairing are decided (all of them with ``force``)."""
        windows = getattr(stream.camera, "ffc_windows", None)
        while stream.pending:
            frame, flags, drops = stream.pending[0]
            if windows is not None:
                inside = windows.decide(frame.host_ns)
                if inside is None:  # the camera does not know the FFC state at this frame's time yet
                    if not force and time.monotonic_ns() - frame.host_ns < self.ffc_hold_ns:
                        break
                    inside = True  # never became known: flagged, not trusted
                flags = (flags | FrameFlags.FFC) if inside else (flags & ~FrameFlags.FFC)
            unpaired = False
            if self._pairing is not None:
                unpaired = self._pairing.unpaired(frame, stream, self._streams[1 - stream.index], force)
                if unpaired is None:
                    break  # wait for the other camera's stream to pass this frame's window
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
            # The reader's loss: counter steps beyond one (a counter going back is a restart, not loss).
            if stream.last_counter is not None:
                stream.lost += max(0, rec.frame_counter - stream.last_counter - 1)
            stream.last_counter = rec.frame_counter
        if windows is not None:
            self._log_ffc_windows(stream)

    def _log_ffc_windows(self, stream: CameraStream) -> None:
        windows = getattr(stream.camera, "ffc_windows", None)
        if windows is None:
            return
        for w in windows.take_closed():
            self._log("ffc_window", camera=stream.name, start_ns=w.start_ns, end_ns=w.end_ns, reason=w.reason,
                      duration_s=round((w.end_ns - w.start_ns) * 1e-9, 3))

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
            cams.append(CameraStatus(s.name, s.camera.role, s.fps, fps, s.frames, s.lost, s.drops,
                                     s.queue.qsize() + len(s.pending), self.queue_frames, mbps, s.state, ffc,
                                     s.down_s(time.monotonic_ns())))
        try:
            self._disk_free = shutil.disk_usage(self.path).free
        except OSError:
            pass
        gps = "off" if self._gps is None else self._gps.describe()
        return RecorderStatus(self.path, now - self._t_start if self._t_start else 0.0, self._duration_s, cams,
                              self._disk_free, self.min_free_bytes, gps,
                              self._gps.gps.stats.bad if self._gps is not None else 0, self._ffc_events)

    def _camera_results(self, end_ns: int) -> dict[str, CameraResult]:
        """Per camera, what the finished session says (its reader's summary), plus outages."""
        try:
            with SessionReader(self.path) as r:
                summary = r.summary()["cameras"]
        except RigError as exc:  # an unreadable session is reported, and the live counts stand in
            log.warning("cannot read back the session: %s", exc)
            summary = {}
        out = {}
        for s in self._streams:
            c = summary.get(s.name)
            recs = s.records
            nbytes = sum(r.length for r in recs) + HEADER_BYTES * len(recs)
            if c is None:
                span = (recs[-1].host_ns - recs[0].host_ns) * 1e-9 if len(recs) > 1 else 0.0
                c = {"frames": s.frames, "lost": s.lost, "dropped_in_queue": s.drops, "gaps": 0, "ffc": s.ffc_frames,
                     "unpaired": s.unpaired, "fps_measured": (len(recs) - 1) / span if span > 0 else 0.0}
            out[s.name] = CameraResult(
                s.name, s.camera.role, s.fps, c["frames"], c["lost"], c["dropped_in_queue"], c["gaps"], c["ffc"],
                c["unpaired"], s.disconnects, s.reconnects, s.down_s(end_ns), s.down, nbytes, c["fps_measured"])
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
