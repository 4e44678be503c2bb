"""GPS position from an NMEA 0183 serial receiver: RMC and GGA sentences.

Every sentence's checksum is checked. A sentence that is corrupt (bad or missing
checksum, malformed field, line noise) is counted in :class:`NmeaStats` and
skipped; it is never fatal. Other sentence types (GSV, VTG, ...) are counted as
ignored.

::

    with GpsReader("/dev/ttyUSB0") as gps:
        for fix in gps.read(timeout_s=1.0):
            print(fix.lat_deg, fix.lon_deg)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import date, datetime, time as dtime, timezone

log = logging.getLogger(__name__)

KNOTS_TO_MPS = 1852.0 / 3600.0
MAX_LINE = 120  # NMEA allows 82 characters; longer lines are noise


class NmeaError(ValueError):
    """A sentence that cannot be trusted."""


@dataclass(frozen=True)
class GpsFix:
    """One RMC or GGA sentence. Fields a sentence does not carry (or leaves empty) are None."""

    kind: str  # "RMC" or "GGA"
    talker: str  # "GP", "GN", "GL", ...
    time_utc: dtime | None
    lat_deg: float | None
    lon_deg: float | None
    valid: bool  # RMC status A / GGA quality > 0
    host_ns: int = 0  # time.monotonic_ns() when the line was read
    date_utc: date | None = None  # RMC
    speed_mps: float | None = None  # RMC
    course_deg: float | None = None  # RMC
    quality: int | None = None  # GGA fix quality (0 none, 1 GPS, 2 DGPS, 4 RTK fixed, ...)
    satellites: int | None = None  # GGA
    hdop: float | None = None  # GGA
    altitude_m: float | None = None  # GGA, above mean sea level

    @property
    def datetime_utc(self) -> datetime | None:
        if self.date_utc is None or self.time_utc is None:
            return None
        return datetime.combine(self.date_utc, self.time_utc, tzinfo=timezone.utc)


@dataclass
class NmeaStats:
    sentences: int = 0  # lines that looked like sentences
    fixes: int = 0  # RMC/GGA parsed
    bad_checksum: int = 0
    malformed: int = 0  # no/garbled checksum, bad field, too long
    ignored: int = 0  # valid sentences of other types
    bad_by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def bad(self) -> int:
        return self.bad_checksum + self.malformed


def checksum(body: str) -> int:
    """XOR of the characters between ``$`` and ``*``."""
    value = 0
    for ch in body.encode("ascii", "replace"):
        value ^= ch
    return value


def parse_sentence(line: str, host_ns: int = 0) -> GpsFix | None:
    """Parse one sentence. Returns None for valid sentences that are not RMC/GGA; raises NmeaError if corrupt."""
    line = line.strip()
    if not line.startswith("$") or "*" not in line:
        raise NmeaError("no '$' start or '*' checksum")
    body, _, given = line[1:].rpartition("*")
    try:
        want = int(given[:2], 16)
    except ValueError:
        raise NmeaError(f"unreadable checksum '{given}'") from None
    if len(given) != 2:
        raise NmeaError(f"unreadable checksum '{given}'")
    if checksum(body) != want:
        raise NmeaError(f"checksum mismatch (given {want:02X}, computed {checksum(body):02X})")
    fields = body.split(",")
    tag = fields[0]
    if len(tag) != 5:
        raise NmeaError(f"bad sentence tag '{tag}'")
    talker, kind = tag[:2], tag[2:]
    try:
        if kind == "RMC":
            return _rmc(fields, talker, host_ns)
        if kind == "GGA":
            return _gga(fields, talker, host_ns)
    except (IndexError, ValueError) as exc:
        raise NmeaError(f"bad {kind} field: {exc}") from None
    return None


def _opt(s: str, conv=float):
    return conv(s) if s else None


def _time(s: str) -> dtime | None:
    if not s:
        return None
    hh, mm, ss = int(s[0:2]), int(s[2:4]), float(s[4:])
    sec = int(ss)
    return dtime(hh, mm, sec, round((ss - sec) * 1e6) % 1_000_000)


def _angle(value: str, hemi: str, deg_digits: int) -> float | None:
    if not value:
        return None
    deg = int(value[:deg_digits])
    minutes = float(value[deg_digits:])
    if minutes >= 60.0 or hemi not in ("N", "S", "E", "W"):
        raise ValueError(f"angle {value}{hemi}")
    out = deg + minutes / 60.0
    return -out if hemi in ("S", "W") else out


def _rmc(f: list[str], talker: str, host_ns: int) -> GpsFix:
    if len(f) < 10:
        raise ValueError("too few fields")
    if f[2] not in ("A", "V"):
        raise ValueError(f"status '{f[2]}'")
    d = None
    if f[9]:
        yy = int(f[9][4:6])  # two-digit year: 80..99 -> 1980s/90s, else 2000s
        d = date((1900 if yy >= 80 else 2000) + yy, int(f[9][2:4]), int(f[9][0:2]))
    speed = _opt(f[7])
    return GpsFix(
        kind="RMC",
        talker=talker,
        time_utc=_time(f[1]),
        lat_deg=_angle(f[3], f[4], 2),
        lon_deg=_angle(f[5], f[6], 3),
        valid=f[2] == "A",
        host_ns=host_ns,
        date_utc=d,
        speed_mps=None if speed is None else speed * KNOTS_TO_MPS,
        course_deg=_opt(f[8]),
    )


def _gga(f: list[str], talker: str, host_ns: int) -> GpsFix:
    if len(f) < 10:
        raise ValueError("too few fields")
    quality = _opt(f[6], int)
    return GpsFix(
        kind="GGA",
        talker=talker,
        time_utc=_time(f[1]),
        lat_deg=_angle(f[2], f[3], 2),
        lon_deg=_angle(f[4], f[5], 3),
        valid=bool(quality),
        host_ns=host_ns,
        quality=quality,
        satellites=_opt(f[7], int),
        hdop=_opt(f[8]),
        altitude_m=_opt(f[9]),
    )


class NmeaParser:
    """Turns a byte stream into fixes; corrupt input is counted in :attr:`stats`, never raised."""

    def __init__(self, keep_raw: bool = False):
        self.stats = NmeaStats()
        self._buf = bytearray()
        self.keep_raw = keep_raw
        self.raw: list[tuple[int, str]] = []  # (host_ns the line ended, line as received) when keep_raw

    def feed(self, data: bytes, host_ns: int | None = None) -> list[GpsFix]:
        host_ns = time.monotonic_ns() if host_ns is None else host_ns
        self._buf += data
        out: list[GpsFix] = []
        while (nl := self._buf.find(b"\n")) >= 0:
            raw = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if self.keep_raw and raw.strip():
                self.raw.append((host_ns, raw[: 2 * MAX_LINE].decode("ascii", "replace").rstrip("\r")))
            if (fix := self._line(raw, host_ns)) is not None:
                out.append(fix)
        if len(self._buf) > MAX_LINE:  # no newline in sight: noise
            self._bad("malformed", "overlong line")
            self._buf.clear()
        return out

    def _line(self, raw: bytes, host_ns: int) -> GpsFix | None:
        start = raw.rfind(b"$")  # noise before a sentence is dropped
        if start < 0:
            if raw.strip():
                self._bad("malformed", "line without '$'")
            return None
        self.stats.sentences += 1
        text = raw[start:].decode("ascii", "replace")
        try:
            fix = parse_sentence(text, host_ns)
        except NmeaError as exc:
            self._bad("bad_checksum" if "checksum mismatch" in str(exc) else "malformed", str(exc))
            return None
        if fix is None:
            self.stats.ignored += 1
            return None
        self.stats.fixes += 1
        return fix

    def _bad(self, counter: str, why: str) -> None:
        setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        self.stats.bad_by_kind[why.split(" (")[0]] = self.stats.bad_by_kind.get(why.split(" (")[0], 0) + 1
        log.debug("gps: skipped sentence: %s", why)


class GpsReader:
    """An NMEA receiver on a serial port (pyserial). Construction does no I/O."""

    def __init__(self, port: str, baudrate: int = 9600, *, keep_raw: bool = False):
        self.port = port
        self.baudrate = baudrate
        self.parser = NmeaParser(keep_raw)
        self._serial = None
        self.latest: GpsFix | None = None

    @property
    def stats(self) -> NmeaStats:
        return self.parser.stats

    def open(self) -> None:
        import serial

        if self._serial is not None:
            return
        try:
            self._serial = serial.Serial(self.port, self.baudrate, timeout=0.1)
        except (OSError, ValueError) as exc:
            from rig.errors import RigError

            raise RigError(f"cannot open GPS serial port {self.port}: {exc}") from None

    def close(self) -> None:
        if self._serial is not None:
            self._serial.close()
            self._serial = None

    def __enter__(self) -> "GpsReader":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, timeout_s: float = 1.0) -> list[GpsFix]:
        """Fixes completed within ``timeout_s`` (returns as soon as at least one is complete)."""
        if self._serial is None:
            raise RuntimeError("GpsReader.read() before open()")
        deadline = time.monotonic() + timeout_s
        out: list[GpsFix] = []
        while not out:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._serial.timeout = min(remaining, 0.1)
            chunk = self._serial.read(1)
            if chunk:
                chunk += self._serial.read(self._serial.in_waiting)
                out += self.parser.feed(chunk, time.monotonic_ns())  # each line: when its end arrived
        if out:
            self.latest = out[-1]
        return out

    def take_raw(self) -> list[tuple[int, str]]:
        """Raw lines read since the last call, each with the host time its end arrived (``keep_raw``)."""
        out, self.parser.raw = self.parser.raw, []
        return out
