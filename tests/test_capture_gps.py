"""GPS: NMEA RMC/GGA parsing, checksums, and a stream fed through a pseudo-terminal."""

from __future__ import annotations

import os
import threading
import time
import tty
from datetime import date, time as dtime

import pytest

from rig.capture.gps import GpsReader, NmeaError, NmeaParser, checksum, parse_sentence
from rig.errors import RigError

# The textbook examples (with their published checksums).
RMC = "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A"
GGA = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"


def sentence(body: str) -> str:
    return f"${body}*{checksum(body):02X}"


def test_textbook_sentences():
    rmc = parse_sentence(RMC)
    assert rmc.kind == "RMC" and rmc.talker == "GP" and rmc.valid
    assert rmc.lat_deg == pytest.approx(48 + 7.038 / 60, abs=1e-9)
    assert rmc.lon_deg == pytest.approx(11 + 31.0 / 60, abs=1e-9)
    assert rmc.speed_mps == pytest.approx(22.4 * 0.514444, rel=1e-5)
    assert rmc.course_deg == 84.4
    assert rmc.date_utc == date(1994, 3, 23) and rmc.time_utc == dtime(12, 35, 19)
    gga = parse_sentence(GGA)
    assert (gga.quality, gga.satellites, gga.hdop, gga.altitude_m) == (1, 8, 0.9, 545.4)
    assert gga.lat_deg == pytest.approx(rmc.lat_deg)


def test_southern_western_hemisphere_and_empty_fields():
    fix = parse_sentence(sentence("GNRMC,235959.50,V,3351.5000,S,15112.7500,W,,,010125,,"))
    assert not fix.valid and fix.talker == "GN"
    assert fix.lat_deg == pytest.approx(-(33 + 51.5 / 60)) and fix.lon_deg == pytest.approx(-(151 + 12.75 / 60))
    assert fix.speed_mps is None and fix.time_utc == dtime(23, 59, 59, 500000)
    gga = parse_sentence(sentence("GPGGA,000001,,,,,0,00,,,M,,M,,"))
    assert not gga.valid and gga.lat_deg is None and gga.satellites == 0


@pytest.mark.parametrize(
    "line,why",
    [
        (RMC[:-2] + "6B", "checksum mismatch"),
        (RMC.replace("4807.038", "4807.039"), "checksum mismatch"),
        (RMC.split("*")[0], "checksum"),
        (sentence("GPRMC,123519,X,4807.038,N,01131.000,E,,,230394,,"), "bad RMC field"),
        (sentence("GPGGA,123519,4899.000,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"), "bad GGA field"),
        (sentence("GPRMC,1"), "bad RMC field"),
    ],
)
def test_corrupt_sentences_raise(line, why):
    with pytest.raises(NmeaError, match=why):
        parse_sentence(line)


def test_parser_counts_bad_sentences_and_never_raises():
    p = NmeaParser()
    stream = "\r\n".join(
        [
            RMC,
            "\x00\xff garbage",
            GGA[:-1] + "0",  # bad checksum
            "noise$" + GGA,  # noise before a good sentence
            sentence("GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00"),  # ignored type
            RMC[:30],  # truncated
            "",
        ]
    ).encode("latin-1")
    fixes = [f for i in range(0, len(stream), 7) for f in p.feed(stream[i : i + 7])]  # split anywhere
    assert [f.kind for f in fixes] == ["RMC", "GGA"]
    s = p.stats
    assert (s.fixes, s.bad_checksum, s.ignored) == (2, 1, 1)
    assert s.malformed == 2  # the garbage line and the truncated sentence
    p.feed(b"x" * 500)  # a line that never ends
    assert p.stats.malformed == 3


def test_reader_over_a_pseudo_terminal():
    master, slave = os.openpty()
    tty.setraw(slave)
    port = os.ttyname(slave)
    lines = []
    for i in range(10):
        lat = f"{4807.038 + i * 0.001:.3f}"
        lines.append(sentence(f"GPRMC,1235{i:02d},A,{lat},N,01131.000,E,010.0,090.0,230394,,"))
        lines.append(sentence(f"GPGGA,1235{i:02d},{lat},N,01131.000,E,1,09,0.8,540.0,M,46.9,M,,"))
    lines.insert(5, RMC[:-2] + "00")  # corrupt
    lines.insert(9, "\x13\x37junk")
    payload = ("\r\n".join(lines) + "\r\n").encode()

    def writer():
        for i in range(0, len(payload), 50):  # a slow 9600-baud-like trickle
            os.write(master, payload[i : i + 50])
            time.sleep(0.005)

    try:
        with GpsReader(port) as gps:
            t = threading.Thread(target=writer)
            t.start()
            fixes = []
            deadline = time.monotonic() + 5
            while len(fixes) < 20 and time.monotonic() < deadline:
                fixes += gps.read(timeout_s=0.5)
            t.join()
        assert len(fixes) == 20
        rmc = [f for f in fixes if f.kind == "RMC"]
        assert [round((f.lat_deg - 48) * 60, 3) for f in rmc] == [round(7.038 + i * 0.001, 3) for i in range(10)]
        assert all(f.speed_mps == pytest.approx(10 * 0.514444, rel=1e-5) for f in rmc)
        assert gps.stats.bad_checksum == 1 and gps.stats.malformed == 1
        assert gps.latest.kind == "GGA" and gps.latest.satellites == 9
        assert all(a.host_ns <= b.host_ns for a, b in zip(fixes, fixes[1:]))
    finally:
        os.close(master)
        os.close(slave)


def test_missing_port_is_a_clear_error():
    with pytest.raises(RigError, match="cannot open GPS serial port /nonexistent/gps"):
        GpsReader("/nonexistent/gps").open()
