"""Per-camera streams of the drive recorder: a grab thread, a bounded queue, a writer thread.

One *acquisition* thread per camera only grabs (:func:`acquire_loop`): it never
touches the disk. It hands each frame to that camera's bounded queue with
``put_nowait``; a full queue drops the frame, counts it, and flags the next
frame that gets through ``GAP_BEFORE``. A source on its own clock
(``realtime=False`` sim) gets back-pressure instead of drops. One *writer*
thread per camera (:func:`write_loop`) takes the queued frames into a pending
list and hands them to a flush callback (the recorder decides pairing flags and
writes them).

Reconnects
----------
This module is the capture stage's **one** reconnect layer. Drivers only report
trouble: ``grab()`` raises :class:`~rig.capture.camera.CameraError` (a lost
device, a transport error) or returns ``None`` (a timeout). A camera that raises,
or delivers nothing for ``stall_timeout_s``, is logged (``disconnect`` event),
closed and reopened by :func:`reopen_camera` (open, configure, start) with
exponential backoff (``reconnect_backoff_s`` .. ``reconnect_backoff_max_s``);
each success is a ``reconnect`` event (with ``down_s``) and the first frame after
it is flagged ``RECONNECTED``. The time a camera is down is its *outage*
(:attr:`CameraStream.outages`): a run with any outage ends ``degraded``. The
calibration recorder uses the same :func:`reopen_camera`.

The grab thread never runs camera control (FFC, temperature): drivers that have a
control channel run it on their own thread (:mod:`rig.capture.control`).
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from rig.capture.camera import Camera, CameraError, Frame, FrameFlags
from rig.session import FrameRecord

log = logging.getLogger(__name__)

_EMPTY = object()
PENDING_BATCH = 256  # frames a writer takes from its queue without blocking
LogEvent = Callable[..., None]  # log(kind, **data): a session event that never raises


@dataclass(frozen=True)
class StreamOptions:
    """How the grab threads treat a silent or failing camera."""

    stall_timeout_s: float = 3.0
    reconnect_backoff_s: float = 0.25
    reconnect_backoff_max_s: float = 5.0


@dataclass(frozen=True)
class RecordingWindow:
    """Which frames belong to the recording: ``duration_ns`` (None: no end) from ``t0_ns`` (host clock)."""

    t0_ns: int = 0
    duration_ns: int | None = None


@dataclass
class CameraStream:
    """One camera's queue and the state its threads share (counters, pairing history, FFC state)."""

    camera: Camera
    queue: queue.Queue
    fps: float
    index: int
    live: bool = True  # paced by its own clock (a camera); False: delivers as fast as it is read
    acquire: threading.Thread | None = None
    write: threading.Thread | None = None
    # counters
    drops: int = 0
    pending_drops: int = 0  # acquisition side: drops not yet followed by an enqueued frame
    frames: int = 0
    ffc_frames: int = 0
    unpaired: int = 0
    gaps: int = 0
    lost: int = 0  # frames missing by counter among the written frames (the reader's ``lost``)
    last_counter: int | None = None  # of the last written frame
    disconnects: int = 0
    reconnects: int = 0
    # outages: (start, end) host monotonic ns of each time the camera was down; end None while down
    outages: list = field(default_factory=list)
    # state
    reconnected: bool = False
    state: str = "starting"  # starting | streaming | reconnecting | stopped
    in_ffc: bool = False
    ffc_run: int = 0
    last_ffc_request: float = -1e18
    done: bool = False  # acquisition finished
    last_arrival: float = 0.0  # monotonic s of the last enqueued frame
    first_host_ns: int | None = None
    last_error: str = ""
    # what live pairing needs of the frames enqueued so far
    recent_ns: collections.deque = field(default_factory=lambda: collections.deque(maxlen=4096))
    recent_counters: collections.deque = field(default_factory=lambda: collections.deque(maxlen=4096))
    latest_ns: int | None = None
    latest_rel_counter: int | None = None
    first_counter: int | None = None
    # writer side
    records: list[FrameRecord] = field(default_factory=list)
    pending: collections.deque = field(default_factory=collections.deque)  # frames awaiting a pairing decision

    @property
    def name(self) -> str:
        return self.camera.name

    def went_down(self, t_ns: int) -> None:
        if not self.outages or self.outages[-1][1] is not None:
            self.outages.append((t_ns, None))

    def came_back(self, t_ns: int) -> float:
        """Close the current outage; its length in seconds."""
        if self.outages and self.outages[-1][1] is None:
            start = self.outages[-1][0]
            self.outages[-1] = (start, t_ns)
            return (t_ns - start) * 1e-9
        return 0.0

    def down_s(self, now_ns: int) -> float:
        """Seconds down in total (an ongoing outage counted up to ``now_ns``)."""
        return sum(((end if end is not None else now_ns) - start) * 1e-9 for start, end in self.outages)

    @property
    def down(self) -> bool:
        return bool(self.outages) and self.outages[-1][1] is None


def reopen_camera(cam: Camera) -> str | None:
    """Close ``cam`` and open, configure and start it again; ``None`` on success, else the error text."""
    try:
        cam.close()
    except Exception:  # noqa: BLE001 - a dead device may fail to close
        pass
    try:
        cam.open()
        cam.configure()
        cam.start()
    except Exception as exc:  # noqa: BLE001 - any driver failure: try again later
        try:
            cam.close()
        except Exception:  # noqa: BLE001
            pass
        return str(exc) or type(exc).__name__
    return None


def past_end(stream: CameraStream, frame: Frame, window: RecordingWindow) -> bool:
    """Whether ``frame`` lies after the recording window.

    Live cameras stamp frames with the host clock: the window is host time. A
    paced-as-fast-as-read source (``realtime=False`` sim) has its own clock: the
    window is measured from its first frame.
    """
    if window.duration_ns is None:
        return False
    if stream.live:
        return frame.host_ns >= window.t0_ns + window.duration_ns
    if stream.first_host_ns is None:
        stream.first_host_ns = frame.host_ns
    return frame.host_ns - stream.first_host_ns >= window.duration_ns


def acquire_loop(stream: CameraStream, opts: StreamOptions, window: RecordingWindow, stop: threading.Event,
                 log_event: LogEvent) -> None:
    """Body of a grab thread: grab, reconnect, enqueue; ``None`` on the queue when done."""
    cam = stream.camera
    backoff = opts.reconnect_backoff_s
    try:
        while not stop.is_set():
            if stream.state == "reconnecting":
                if _reconnect(stream, log_event):
                    backoff = opts.reconnect_backoff_s
                else:
                    stop.wait(backoff)
                    backoff = min(backoff * 2, opts.reconnect_backoff_max_s)
                continue
            try:
                frame = cam.grab(timeout_s=0.2)
            except Exception as exc:  # noqa: BLE001 - any driver failure is a disconnect
                disconnect(stream, exc, log_event)
                continue
            if frame is None:
                if time.monotonic() - stream.last_arrival > opts.stall_timeout_s:
                    disconnect(stream, CameraError(f"no frame for {opts.stall_timeout_s:g} s"), log_event)
                continue
            if past_end(stream, frame, window):
                break
            enqueue(stream, frame, stop)
    finally:
        stream.done = True
        stream.state = "stopped"
        stream.queue.put(None)  # the writer drains and exits


def enqueue(stream: CameraStream, frame: Frame, stop: threading.Event) -> None:
    """Queue ``frame`` for the writer (or count a drop) and note it for live pairing."""
    flags = frame.flags
    if stream.pending_drops:
        flags |= FrameFlags.GAP_BEFORE
    if stream.reconnected:
        flags |= FrameFlags.RECONNECTED
    if stream.live:
        try:
            stream.queue.put_nowait((frame, flags, stream.pending_drops))
        except queue.Full:
            stream.drops += 1
            stream.pending_drops += 1
            return
    else:  # a source that waits for its reader: back-pressure instead of drops
        while True:
            try:
                stream.queue.put((frame, flags, 0), timeout=0.1)
                break
            except queue.Full:
                if stop.is_set():
                    return
    stream.pending_drops = 0
    stream.reconnected = False
    stream.last_arrival = time.monotonic()
    if stream.first_counter is None:
        stream.first_counter = frame.frame_counter
    rel = frame.frame_counter - stream.first_counter
    stream.recent_ns.append(frame.host_ns)
    stream.recent_counters.append(rel)
    stream.latest_rel_counter = rel
    stream.latest_ns = frame.host_ns


def disconnect(stream: CameraStream, exc: BaseException, log_event: LogEvent) -> None:
    """Mark the camera lost (``disconnect`` event) and close it; the grab thread reopens it with backoff."""
    stream.disconnects += 1
    stream.state = "reconnecting"
    stream.went_down(time.monotonic_ns())
    log.warning("%s: disconnected: %s", stream.name, exc)
    log_event("disconnect", camera=stream.name, error=str(exc) or type(exc).__name__)
    try:
        stream.camera.close()
    except Exception:  # noqa: BLE001
        pass


def _reconnect(stream: CameraStream, log_event: LogEvent) -> bool:
    error = reopen_camera(stream.camera)
    if error is not None:
        stream.last_error = error
        log.info("%s: reconnect failed: %s", stream.name, error)
        return False
    stream.reconnects += 1
    stream.reconnected = True
    stream.state = "streaming"
    stream.last_arrival = time.monotonic()
    down = stream.came_back(time.monotonic_ns())
    log_event("reconnect", camera=stream.name, attempt=stream.reconnects, down_s=round(down, 3))
    return True


def write_loop(stream: CameraStream, flush: Callable[[CameraStream, bool], None], on_end: Callable[[int], None],
               final_wait_s: float = 5.0) -> None:
    """Body of a writer thread: move queued frames to ``stream.pending`` and ``flush(stream, force)`` them.

    ``flush`` writes what it can decide and leaves the rest pending. After the
    end-of-stream marker the writer keeps flushing until nothing is pending (the
    other camera may still deliver partners), forcing after ``final_wait_s``.
    ``on_end(drops)`` gets the drops at the very end that no frame followed.
    """
    finished = False
    while not finished:
        try:
            item = stream.queue.get(timeout=0.05)
        except queue.Empty:
            item = _EMPTY
        if item is None:
            finished = True
        elif item is not _EMPTY:
            stream.pending.append(item)
            while len(stream.pending) < PENDING_BATCH:  # take what is queued without blocking
                try:
                    nxt = stream.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    finished = True
                    break
                stream.pending.append(nxt)
        flush(stream, False)
    deadline = time.monotonic() + final_wait_s
    while stream.pending:
        flush(stream, time.monotonic() > deadline)
        if stream.pending:
            time.sleep(0.01)
    if stream.pending_drops:
        on_end(stream.pending_drops)
