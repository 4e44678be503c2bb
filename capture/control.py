"""A camera's control channel on its own thread, and the FFC windows it observes.

The grab thread never waits on a serial line: FFC requests, FFC-state polls and
temperature reads of a camera (the Boson's serial port) run on that camera's
:class:`ControlLoop` thread, started and stopped with the camera's streaming.

FFC windows
-----------
What the control thread learns is turned into :class:`FfcWindows`, intervals of
the host clock (the clock of ``Frame.host_ns``) during which frames are not to be
trusted. A window

* **opens** when an FFC is *requested* (at the instant the command is sent), or
  when a poll first *sees* one (state IMMINENT/IN_PROGRESS, or the camera's
  last-FFC frame count changed, or the state could not be read). A window that is
  first seen opens at the send time of the previous good poll: the last instant the
  camera was known idle, so frames between that poll and the sighting are inside;
* **closes** ``settle_s`` after the receive time of the first poll that reads
  COMPLETE (or NO_FFC) again: the shutter has opened and the image settled.

Frames are judged by their own timestamp, not by when the state arrived:
:meth:`FfcWindows.decide` answers True (inside a window), False (known idle: a
good poll was sent after the frame's time and no window covers it) or None (not
known yet). The recorder's writer holds a frame while the answer is None (bounded
by its hold limit, after which the frame is flagged FFC: unknown is not trusted),
so a late state - a poll stalled by the camera during its FFC - still flags every
frame taken in the window before it is written. Closed windows are logged as
``ffc_window`` events (``start_ns``, ``end_ns``, ``reason``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)

KEEP_WINDOWS_S = 120.0  # closed windows older than this (behind the known time) are forgotten


@dataclass(frozen=True)
class FfcWindow:
    """An interval of host time (ns) in which frames are flagged FFC; ``end_ns`` None while open."""

    start_ns: int
    end_ns: int | None
    reason: str  # requested | seen | counter | unknown

    def covers(self, t_ns: int) -> bool:
        return self.start_ns <= t_ns and (self.end_ns is None or t_ns <= self.end_ns)


class FfcWindows:
    """Thread-safe FFC windows on the host clock, fed by a control thread (see module docstring)."""

    def __init__(self, settle_s: float = 0.05, request_timeout_s: float = 2.0):
        self.settle_ns = int(settle_s * 1e9)
        self.request_timeout_ns = int(request_timeout_s * 1e9)
        self._lock = threading.Lock()
        self._closed: list[FfcWindow] = []
        self._new_closed: list[FfcWindow] = []
        self._open: FfcWindow | None = None
        self._open_confirmed = False  # a requested window: busy or a new FFC count seen since the request
        self._request_sent_ns = 0
        self._known_ns: int | None = None  # send time of the latest good poll
        self._count: int | None = None  # the camera's last-FFC frame count at the latest good poll

    @property
    def known_ns(self) -> int | None:
        return self._known_ns

    def reset_counter(self) -> None:
        """Forget the last-FFC count (the camera was reopened: its counters restart)."""
        with self._lock:
            self._count = None

    def request(self, sent_ns: int) -> None:
        """An FFC command is being sent at ``sent_ns``."""
        with self._lock:
            if self._open is None:
                self._open, self._open_confirmed = FfcWindow(sent_ns, None, "requested"), False
            self._request_sent_ns = sent_ns

    def observe(self, send_ns: int, recv_ns: int, busy: bool, ffc_count: int | None = None) -> None:
        """A good poll: sent at ``send_ns``, answered at ``recv_ns``; ``busy`` = FFC imminent or in progress."""
        with self._lock:
            prev = self._known_ns if self._known_ns is not None else send_ns
            changed = self._count is not None and ffc_count is not None and ffc_count != self._count
            if ffc_count is not None:
                self._count = ffc_count
            if busy or changed:
                if self._open is None:
                    self._open, self._open_confirmed = FfcWindow(prev, None, "seen" if busy else "counter"), True
                else:
                    self._open_confirmed = True
            if not busy and self._open is not None:
                requested = self._open.reason == "requested"
                waiting = requested and not self._open_confirmed and (
                    send_ns <= self._request_sent_ns or send_ns - self._request_sent_ns < self.request_timeout_ns)
                if not waiting:
                    self._close(recv_ns + self.settle_ns)
            self._known_ns = max(send_ns, self._known_ns or send_ns)
            self._prune()

    def unknown(self) -> None:
        """A poll failed: the state since the last good poll is unknown (frames are flagged until a good poll)."""
        with self._lock:
            if self._open is None and self._known_ns is not None:
                self._open, self._open_confirmed = FfcWindow(self._known_ns, None, "unknown"), True

    def _close(self, end_ns: int) -> None:
        w = FfcWindow(self._open.start_ns, max(end_ns, self._open.start_ns), self._open.reason)
        self._closed.append(w)
        self._new_closed.append(w)
        self._open = None

    def _prune(self) -> None:
        if self._known_ns is None:
            return
        horizon = self._known_ns - int(KEEP_WINDOWS_S * 1e9)
        while self._closed and self._closed[0].end_ns < horizon:
            self._closed.pop(0)

    def decide(self, t_ns: int) -> bool | None:
        """Whether a frame taken at ``t_ns`` is inside an FFC window; None while that is not known yet."""
        with self._lock:
            if self._open is not None and self._open.covers(t_ns):
                return True
            if any(w.covers(t_ns) for w in self._closed):
                return True
            if self._known_ns is not None and t_ns <= self._known_ns:
                return False
            return None

    def active(self) -> bool:
        """Whether a window is open now."""
        return self._open is not None

    def take_closed(self) -> list[FfcWindow]:
        """Windows closed since the last call (each returned once: for ``ffc_window`` events)."""
        with self._lock:
            out, self._new_closed = self._new_closed, []
        return out

    def open_window(self) -> FfcWindow | None:
        return self._open


@dataclass(frozen=True)
class ControlStatus:
    """What a camera's control thread knows (for the dashboard and the driver)."""

    temperature_c: float | None
    ffc_active: bool
    polls: int
    failures: int
    failures_in_row: int
    lost: str  # "" while the channel works; else why it is considered lost


class ControlLoop:
    """A camera's control thread: requested FFCs, FFC-state polls, temperature reads.

    ``poll_ffc()`` returns ``(busy, last_ffc_count_or_None)``; ``run_ffc()`` starts an FFC;
    ``read_temperature()`` returns degrees C. Any exception from them is a failed
    poll; ``lost_after`` failures in a row mark the channel lost (:attr:`status`
    ``.lost``), which the driver reports as a disconnect. ``on_poll(status)`` runs on
    the control thread after each poll (the emulated video freezes during FFC there).
    Construction does no I/O; :meth:`start` starts the thread, :meth:`stop` joins it.
    """

    def __init__(self, name: str, windows: FfcWindows, poll_ffc: Callable[[], tuple[bool, int | None]],
                 run_ffc: Callable[[], None], read_temperature: Callable[[], float] | None = None, *,
                 poll_s: float = 0.1, busy_poll_s: float = 0.02, temperature_s: float = 1.0, lost_after: int = 3,
                 on_poll: Callable[["ControlStatus"], None] | None = None, clock_ns: Callable[[], int] = time.monotonic_ns):
        self.name = name
        self.windows = windows
        self._poll_ffc, self._run_ffc, self._read_temperature = poll_ffc, run_ffc, read_temperature
        self.poll_s, self.busy_poll_s, self.temperature_s = poll_s, busy_poll_s, temperature_s
        self.lost_after = lost_after
        self._on_poll = on_poll
        self._clock_ns = clock_ns
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._requests = 0
        self._req_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._temperature: float | None = None
        self._next_temperature = 0.0
        self._polls = self._failures = self._in_row = 0
        self._lost = ""
        self.ffc_results: list[tuple[int, str]] = []  # (sent_ns, "" or error) per requested FFC

    # -- lifecycle ----------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._in_row, self._lost = 0, ""
        self._thread = threading.Thread(target=self._loop, name=f"control-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._wake.set()
        self._thread.join()
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def request_ffc(self) -> None:
        """Ask for an FFC (returns at once; the control thread sends it)."""
        with self._req_lock:
            self._requests += 1
        self._wake.set()

    @property
    def status(self) -> ControlStatus:
        return ControlStatus(self._temperature, self.windows.active(), self._polls, self._failures, self._in_row,
                             self._lost)

    # -- the thread ---------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._req_lock:
                requested, self._requests = self._requests > 0, 0
            if requested:
                self._ffc()
            self._poll()
            self._wake.wait(self.busy_poll_s if self.windows.active() else self.poll_s)
            self._wake.clear()

    def _ffc(self) -> None:
        sent = self._clock_ns()
        self.windows.request(sent)
        try:
            self._run_ffc()
            self.ffc_results.append((sent, ""))
        except Exception as exc:  # noqa: BLE001 - reported, and the window stays until a good poll
            self.ffc_results.append((sent, str(exc) or type(exc).__name__))
            self._fail(exc)

    def _poll(self) -> None:
        send = self._clock_ns()
        try:
            busy, count = self._poll_ffc()
            if self._read_temperature is not None and time.monotonic() >= self._next_temperature:
                self._temperature = float(self._read_temperature())
                self._next_temperature = time.monotonic() + self.temperature_s
        except Exception as exc:  # noqa: BLE001 - a failed poll: state unknown
            self.windows.unknown()
            self._fail(exc)
        else:
            self.windows.observe(send, self._clock_ns(), busy, count)
            self._polls += 1
            self._in_row = 0
        if self._on_poll is not None:
            self._on_poll(self.status)

    def _fail(self, exc: BaseException) -> None:
        self._failures += 1
        self._in_row += 1
        log.warning("%s: control poll failed (%d in a row): %s", self.name, self._in_row, exc)
        if self._in_row >= self.lost_after and not self._lost:
            self._lost = f"control channel lost after {self._in_row} failed polls: {exc}"
