"""The recorder's GPS thread: NMEA fixes from a :class:`~rig.capture.gps.GpsReader` logged as session events.

Each RMC/GGA fix becomes a ``gps`` event (:func:`gps_event`); the latest fix and
the latest fix with a speed (RMC: GGA carries none) are kept for the dashboard
and the FFC scheduler. A read error is logged (``gps_error``) and retried a
second later; a GPS fault never stops the recording.
"""

from __future__ import annotations

import threading

from rig.capture.gps import GpsFix, GpsReader
from rig.capture.streams import LogEvent


class GpsLogger:
    """Reads ``gps`` on a thread until ``stop`` is set (construction does no I/O; the reader must be open)."""

    def __init__(self, gps: GpsReader, log_event: LogEvent, stop: threading.Event):
        self.gps = gps
        self._log = log_event
        self._stop = stop
        self._thread: threading.Thread | None = None
        self.fix: GpsFix | None = None  # latest fix
        self.speed_fix: GpsFix | None = None  # latest fix with a speed

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="gps", daemon=True)
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                fixes = self.gps.read(timeout_s=0.2)
            except Exception as exc:  # noqa: BLE001 - a GPS fault never stops the recording
                self._log("gps_error", error=str(exc))
                self._stop.wait(1.0)
                continue
            for fix in fixes:
                self.fix = fix
                if fix.speed_mps is not None:
                    self.speed_fix = fix
                self._log("gps", **gps_event(fix))

    def stats(self) -> dict:
        """Sentence counters for the manifest and the ``gps_stats`` event."""
        s = self.gps.stats
        return {"sentences": s.sentences, "fixes": s.fixes, "bad": s.bad, "bad_checksum": s.bad_checksum,
                "malformed": s.malformed, "ignored": s.ignored}

    def describe(self) -> str:
        """The dashboard's GPS field: "no fix" or the latest position."""
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
