"""The recorder's GPS thread: NMEA fixes from a :class:`~rig.capture.gps.GpsReader` logged as session events.

Each RMC/GGA fix becomes a ``gps`` event (:func:`gps_event`); every raw line read
(good or bad) is kept as an ``nmea`` event with the host time its end arrived
(``host_ns``), so a fix can be re-parsed later. The latest fix and the latest fix
with a speed (RMC: GGA carries none) are kept for the dashboard and the FFC scheduler.

Outages: a read error (the port died) or ``silence_s`` without a single byte
making a line is an outage: ``gps_error`` event, the port is closed and reopened
with exponential backoff (``backoff_s`` .. ``backoff_max_s``), ``gps_reopen`` when
it is back (with ``down_s``). A GPS fault never stops the recording, but any
outage makes the run ``degraded`` (see :mod:`rig.capture.recorder`).
"""

from __future__ import annotations

import threading
import time

from rig.capture.gps import GpsFix, GpsReader
from rig.capture.streams import LogEvent


class GpsLogger:
    """Reads ``gps`` on a thread until ``stop`` is set (construction does no I/O; the reader must be open)."""

    def __init__(self, gps: GpsReader, log_event: LogEvent, stop: threading.Event, *, silence_s: float = 5.0,
                 backoff_s: float = 0.5, backoff_max_s: float = 8.0):
        self.gps = gps
        self.gps.parser.keep_raw = True
        self._log = log_event
        self._stop = stop
        self.silence_s, self.backoff_s, self.backoff_max_s = silence_s, backoff_s, backoff_max_s
        self._thread: threading.Thread | None = None
        self.fix: GpsFix | None = None  # latest fix
        self.speed_fix: GpsFix | None = None  # latest fix with a speed
        self.outages: list[tuple[int, int | None]] = []  # (start, end) monotonic ns; end None while down
        self.reopens = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="gps", daemon=True)
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        self.gps.close()

    @property
    def down(self) -> bool:
        return bool(self.outages) and self.outages[-1][1] is None

    def down_s(self, now_ns: int | None = None) -> float:
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        return sum(((b if b is not None else now_ns) - a) * 1e-9 for a, b in self.outages)

    def _loop(self) -> None:
        last_data = time.monotonic()
        while not self._stop.is_set():
            if self.down:
                self._reopen()
                last_data = time.monotonic()
                continue
            lines_before = self.gps.stats.sentences + self.gps.stats.malformed
            try:
                fixes = self.gps.read(timeout_s=0.2)
            except Exception as exc:  # noqa: BLE001 - a GPS fault never stops the recording
                self._went_down(str(exc) or type(exc).__name__)
                continue
            for host_ns, line in self.gps.take_raw():
                self._log("nmea", host_ns=host_ns, line=line)
            for fix in fixes:
                self.fix = fix
                if fix.speed_mps is not None:
                    self.speed_fix = fix
                self._log("gps", **gps_event(fix))
            now = time.monotonic()
            if self.gps.stats.sentences + self.gps.stats.malformed != lines_before:
                last_data = now
            elif now - last_data > self.silence_s:
                self._went_down(f"no data for {self.silence_s:g} s")

    def _went_down(self, why: str) -> None:
        self.outages.append((time.monotonic_ns(), None))
        self._log("gps_error", error=why, port=self.gps.port)
        try:
            self.gps.close()
        except Exception:  # noqa: BLE001
            pass

    def _reopen(self) -> None:
        backoff = self.backoff_s
        while not self._stop.is_set():
            try:
                self.gps.open()
            except Exception as exc:  # noqa: BLE001 - RigError from a missing port: try again later
                self._log("gps_reopen_failed", error=str(exc), retry_in_s=backoff)
                self._stop.wait(backoff)
                backoff = min(2 * backoff, self.backoff_max_s)
                continue
            start = self.outages[-1][0]
            now = time.monotonic_ns()
            self.outages[-1] = (start, now)
            self.reopens += 1
            self._log("gps_reopen", port=self.gps.port, down_s=round((now - start) * 1e-9, 3))
            return

    def stats(self) -> dict:
        """Sentence counters and outages for the manifest and the ``gps_stats`` event."""
        s = self.gps.stats
        return {"sentences": s.sentences, "fixes": s.fixes, "bad": s.bad, "bad_checksum": s.bad_checksum,
                "malformed": s.malformed, "ignored": s.ignored, "outages": len(self.outages),
                "down_s": round(self.down_s(), 3), "down_at_end": self.down, "reopens": self.reopens}

    def describe(self) -> str:
        """The dashboard's GPS field: "down", "no fix" or the latest position."""
        if self.down:
            return f"down {self.down_s():.0f} s, reopening"
        fix = self.fix
        return "no fix" if fix is None or not fix.valid else describe_fix(fix)


def gps_event(fix: GpsFix) -> dict:
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


def describe_fix(fix: GpsFix) -> str:
    """``52.12345 N 4.56789 E 12.3 m/s 9 sats`` (the parts the fix has)."""
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
