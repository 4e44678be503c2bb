"""Boson: protocol, emulator on a pty, flirpy's real Boson code against it, and the driver."""

from __future__ import annotations

import struct
from importlib import metadata as importlib_metadata
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
from flirpy.camera.boson import Boson

from rig.capture import boson_protocol as bp
from rig.capture.boson import BosonCamera
from rig.capture.boson_control import FFC_MODES, FLIRPY_INIT_ATTRIBUTES, FLIRPY_TESTED, BosonControl, flirpy_problems
from rig.capture.boson_emulator import BosonEmulator, Fault, FaultPlan
from rig.capture.boson_video import as_y16
from rig.capture.camera import CameraError, FrameFlags, make_camera
from rig.rigconfig import load_rig

TIMEOUT = 0.15  # per-attempt reply timeout in these tests (the emulator answers in ~1 ms)


@pytest.fixture
def emu():
    with BosonEmulator(ffc_mode=bp.FfcMode.MANUAL, ffc_duration_s=0.3, auto_ffc_period_s=1e9) as e:
        yield e


@pytest.fixture
def ctl(emu):
    with BosonControl(emu.port, reply_timeout_s=TIMEOUT, attempts=4) as c:
        yield c


def _framing() -> Boson:
    """flirpy's Boson without a port: only its pure framing helpers are used."""
    b = Boson.__new__(Boson)
    b.conn = b.cap = None
    return b


def _flirpy_command(seq: int, fn: int, data: bytes | None) -> bytes:
    """A command exactly as flirpy's Boson._send_packet frames it."""
    b = _framing()
    header = bytearray(struct.pack(">BBIII", 0x8E, 0, seq, fn, 0xFFFFFFFF))
    crc = b._crc(header, data)
    out = header + (b._bitstuff(data) if data is not None else b"") + struct.pack(">HB", crc, 0xAE)
    return bytes(out)


# -- flirpy's private surface ---------------------------------------------------------


def test_installed_flirpy_has_the_private_surface_boson_control_relies_on():
    problems = flirpy_problems()
    assert not problems, "BosonControl relies on flirpy internals that changed:\n" + "\n".join(problems)


def test_flirpy_changes_are_named_with_the_version_and_the_method():
    class Changed(Boson):
        def __init__(self, port=None):
            self.command_count = 0
            self.conn = self.cap = self.logger = None
            self.sequence = 0  # a new attribute _CheckedBoson would not set

        def _send_packet(self, function_id, payload=None, receive_size=0, timeout=1.0):
            return self.receive()

    Changed.get_ffc_mode = None  # gone
    problems = flirpy_problems(Changed)
    version = importlib_metadata.version("flirpy")
    assert all(p.startswith(f"flirpy {version} (tested: {FLIRPY_TESTED}): ") for p in problems)
    text = "\n".join(problems)
    assert "Boson._send_packet(self, function_id, payload=None, receive_size=0, timeout=1.0) changed; BosonControl " \
           "was written for _send_packet(self, function_id, data=None, receive_size=0)" in text
    assert "Boson.__init__ sets ['cap', 'command_count', 'conn', 'logger', 'sequence']" in text
    assert "Boson._send_packet no longer uses command_count, send;" in text
    assert "Boson.get_ffc_mode is missing (BosonControl needs get_ffc_mode(self))" in text
    assert len(problems) == 4


def test_checked_boson_sets_what_flirpy_init_would(ctl):
    assert FLIRPY_INIT_ATTRIBUTES <= set(vars(ctl._cam))


# -- protocol ------------------------------------------------------------------


def test_crc_and_escaping_match_flirpy():
    b = _framing()
    payload = bytes([0x8E, 0x9E, 0xAE, 0x01, 0x00])
    assert bp.stuff(payload) == bytes(b._bitstuff(payload))
    assert bp.unstuff(bp.stuff(payload)) == payload
    header = bytearray(struct.pack(">BBIII", 0x8E, 0, 7, bp.Function.SET_FFC_MODE, 0xFFFFFFFF))
    assert bp.crc16(bytes(header[1:]) + payload) == b._crc(header, payload)
    # The reply encoding decodes with flirpy's own decoder to the same payload.
    pkt = bp.Packet(5, bp.Function.CAMERA_SERIAL, 0, struct.pack(">I", 0x8E9EAE01))
    assert bytes(b._decode_packet(bytearray(bp.encode(pkt)), 4)) == pkt.payload
    assert bp.decode(bp.encode(pkt)) == pkt


def test_reader_accepts_flirpy_commands_even_with_raw_special_bytes_in_crc():
    # flirpy escapes neither header nor CRC: find commands whose CRC holds 0xAE / 0x8E / 0x9E.
    found = 0
    for seq in range(1, 3000):
        cmd = _flirpy_command(seq, bp.Function.SET_EXT_SYNC, struct.pack(">I", seq % 3))
        if not bp.SPECIAL.intersection(cmd[-3:-1]):
            continue
        found += 1
        reader = bp.FrameReader()
        (pkt,) = reader.feed(b"\x00\xae\x13" + cmd)  # leading junk too
        assert (pkt.sequence, pkt.function, pkt.payload) == (seq, bp.Function.SET_EXT_SYNC, struct.pack(">I", seq % 3))
    assert found > 10


def test_strict_reader_rejects_corruption_and_skips_garbage():
    good = bp.encode(bp.Packet(9, bp.Function.FRAME_COUNT, 0, struct.pack(">I", 1234)))
    bad = bytearray(good)
    bad[12] ^= 0x04  # a header bit: CRC no longer matches
    reader = bp.FrameReader(strict=True)
    pkts = reader.feed(b"\x8e\x01\x02\xae" + bytes(bad) + b"\x55\x8e" + good)
    assert [p.sequence for p in pkts] == [9]
    assert reader.bad_frames >= 2
    with pytest.raises(bp.ProtocolError, match="CRC"):
        bp.decode(bytes(bad))


def test_fault_plan_parse():
    plan = FaultPlan.parse("garbage=0.2, drop, ffc-stall")
    assert plan.rates == {Fault.GARBAGE: 0.2, Fault.DROP: 0.1}
    assert plan.stall_during_ffc
    with pytest.raises(ValueError, match="unknown fault 'nope'"):
        FaultPlan.parse("nope=0.1")
    with pytest.raises(ValueError, match="within 0..1"):
        FaultPlan.parse("drop=2")


# -- flirpy against the emulator -------------------------------------------------


def test_unmodified_flirpy_talks_to_emulator(emu):
    cam = Boson(port=emu.port)
    try:
        assert cam.get_camera_serial() == emu.camera_serial
        assert cam.get_sensor_serial() == emu.sensor_serial
        assert cam.get_part_number().rstrip("\0") == emu.part_number
        assert cam.get_firmware_revision() == emu.firmware
        cam.set_ffc_auto()
        assert cam.get_ffc_mode() == bp.FfcMode.AUTO
    finally:
        cam.close()


def test_round_trip_every_command(emu, ctl):
    assert ctl.part_number() == "20640A050-6PAAX"
    assert ctl.camera_serial() == 151515
    assert ctl.sensor_serial() == 262626
    assert ctl.firmware() == (3, 3, 26)
    assert ctl.fpa_temperature_c() == pytest.approx(emu.fpa_temperature_c(), abs=0.11)

    f0, t0 = ctl.frame_count(), time.monotonic()
    time.sleep(0.5)
    f1, t1 = ctl.frame_count(), time.monotonic()
    assert f1 - f0 == pytest.approx(60 * (t1 - t0), abs=4)

    for mode in ("auto", "manual"):
        ctl.set_ffc_mode(mode)
        assert ctl.ffc_mode() == mode
        assert emu.ffc_mode == FFC_MODES[mode]

    assert ctl.ffc_state() == bp.FfcState.NO_FFC_PERFORMED
    ctl.run_ffc()
    assert ctl.ffc_state() == bp.FfcState.IN_PROGRESS
    assert abs(ctl.last_ffc_frame_count() - ctl.frame_count()) <= 3
    time.sleep(0.35)
    assert ctl.ffc_state() == bp.FfcState.COMPLETE

    for mode, value in (("master", 1), ("slave", 2), ("disabled", 0)):
        ctl.set_external_sync_mode(mode)
        assert ctl.external_sync_mode() == mode
        assert emu.external_sync == value
    assert ctl.stats.retries == 0 and not ctl.stats.rejected


def test_camera_refusal_is_a_clear_error(ctl):
    with pytest.raises(CameraError, match="refused set_ext_sync: range error"):
        ctl._cam.set_external_sync_mode(7)  # flirpy's own setter, an out-of-range value
    with pytest.raises(CameraError, match="unknown FFC mode"):
        ctl.set_ffc_mode("sometimes")


# -- fault injection ----------------------------------------------------------------


@pytest.mark.parametrize("fault", list(Fault))
@pytest.mark.parametrize("count", [1, 3])
def test_injected_fault_is_retried_never_wrong(emu, ctl, fault, count):
    ctl.camera_serial()  # a previous reply exists, so a stale reply would be a serial number
    emu.inject(fault, count)
    while emu.faults.queued:  # one call takes all injected faults through retries, except garbage
        assert ctl.part_number() == emu.part_number
    assert emu.stats.faults[fault.value] == count
    if fault != Fault.GARBAGE:  # garbage before a good reply needs no retry
        assert ctl.stats.retries >= (1 if fault == Fault.STALE else count)
    assert ctl.fpa_temperature_c() == pytest.approx(emu.fpa_temperature_c(), abs=0.11)


@pytest.mark.parametrize("fault", [Fault.DROP, Fault.BAD_CRC, Fault.STALE])
def test_persistent_fault_gives_clear_error(emu, ctl, fault):
    ctl.camera_serial()
    emu.inject(fault, 4)
    with pytest.raises(CameraError, match=r"no valid reply to part_number after 4 attempts"):
        ctl.part_number()
    # the line recovers once the fault is gone
    assert ctl.camera_serial() == emu.camera_serial


def test_random_faults_never_give_a_wrong_value(emu, ctl):
    emu.faults.rates = {Fault.GARBAGE: 0.15, Fault.DROP: 0.05, Fault.BAD_CRC: 0.15, Fault.STALE: 0.05}
    values, errors = [], 0
    for _ in range(40):
        try:
            values.append((ctl.camera_serial(), ctl.sensor_serial(), ctl.part_number()))
        except CameraError:
            errors += 1
    assert values and set(values) == {(151515, 262626, emu.part_number)}
    assert errors <= 2
    assert sum(emu.stats.faults.values()) > 10


def test_stall_during_ffc_is_retried_or_reported():
    with BosonEmulator(ffc_mode=bp.FfcMode.MANUAL, ffc_duration_s=0.3, stall_during_ffc=True) as emu:
        with BosonControl(emu.port, reply_timeout_s=TIMEOUT, attempts=4) as ctl:
            ctl.run_ffc()
            t = time.monotonic()
            assert ctl.camera_serial() == emu.camera_serial  # stalled ~0.3 s, then answered
            assert 0.2 < time.monotonic() - t < 4 * TIMEOUT + 0.2
            assert ctl.stats.retries >= 1
        with BosonControl(emu.port, reply_timeout_s=0.05, attempts=2) as ctl:
            ctl.run_ffc()
            with pytest.raises(CameraError, match="no valid reply"):
                ctl.camera_serial()


# -- the driver ---------------------------------------------------------------------


def _spec(port: str, **boson):
    spec = load_rig("fmb_roof").camera("lwir")
    return replace(spec, boson=replace(spec.boson, serial_port=port, video_device=None, **boson))


def test_boson_camera_dry_run_delivers_16bit_frames_and_flags_ffc():
    with BosonEmulator(ffc_mode=bp.FfcMode.AUTO, ffc_duration_s=0.3, auto_ffc_period_s=1e9) as emu:
        spec = _spec(emu.port, ffc_mode="manual", external_sync="slave")
        cam = make_camera(spec, reply_timeout_s=TIMEOUT)
        assert isinstance(cam, BosonCamera) and not cam.is_open  # no I/O in the constructor
        with cam:
            info = cam.info()
            assert (info.vendor, info.serial, info.firmware) == ("FLIR", "151515", "3.3.26")
            assert emu.ffc_mode == bp.FfcMode.MANUAL and emu.external_sync == bp.ExtSyncMode.SLAVE
            cam.start()
            frames = [cam.grab(1.0) for _ in range(30)]
            assert all(f.image.dtype == np.uint16 and f.image.shape == (512, 640) for f in frames)
            assert not any(f.flags & FrameFlags.FFC for f in frames)
            span = (frames[-1].host_ns - frames[0].host_ns) / 1e9
            assert 29 / span == pytest.approx(60, rel=0.15)
            counters = [f.frame_counter for f in frames]
            assert counters == list(range(counters[0], counters[0] + 30))

            cam.run_ffc()
            t = time.monotonic()
            flagged = []
            while time.monotonic() - t < 0.6:
                f = cam.grab(1.0)
                flagged.append(bool(f.flags & FrameFlags.FFC))
                if flagged[-1]:
                    frozen = f.image
            n_ffc = sum(flagged)
            assert n_ffc == pytest.approx(0.3 * 60, abs=6)
            assert flagged[0] and not flagged[-1]
            assert f.image.max() > 8000 and not np.array_equal(f.image, frozen)
        assert not cam.is_open


def test_boson_camera_clear_errors(tmp_path):
    with pytest.raises(CameraError, match="lwir: cannot open Boson serial port /nonexistent/tty"):
        with make_camera(_spec("/nonexistent/tty")):
            pass
    with BosonEmulator() as emu:
        spec = _spec(emu.port)
        spec = replace(spec, boson=replace(spec.boson, video_device=str(tmp_path / "video9")))
        with pytest.raises(CameraError, match="cannot open video device"):
            with make_camera(spec, reply_timeout_s=TIMEOUT):
                pass
        with pytest.raises(CameraError, match="no boson.video_device"):
            with make_camera(_spec(emu.port), emulated_video=False, reply_timeout_s=TIMEOUT):
                pass


def test_y16_buffer_conversion_keeps_16_bits():
    values = np.array([[0, 1, 256, 65535], [4096, 8000, 12345, 300]], dtype=np.uint16)
    raw = values.astype("<u2").view(np.uint8).reshape(1, -1)  # how some OpenCV builds hand out Y16
    assert np.array_equal(as_y16(raw, 4, 2), values)
    assert np.array_equal(as_y16(values, 4, 2), values)
    with pytest.raises(CameraError, match="expected 16-bit Y16"):
        as_y16(np.zeros((2, 4, 3), np.uint8), 4, 2)


def test_cli_emulate_boson_prints_a_port_flirpy_can_use():
    proc = subprocess.Popen(
        [sys.executable, "-m", "rig.cli", "emulate", "boson", "--duration", "3", "--faults", "garbage=0.3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = proc.stdout.readline().strip()
        assert port.startswith("/dev/pts/")
        with BosonControl(port, reply_timeout_s=0.3) as ctl:
            assert [ctl.camera_serial() for _ in range(5)] == [151515] * 5
        assert proc.wait(10) == 0
        assert "faults {'garbage'" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


def test_unknown_ffc_state_is_a_camera_error_and_flags_frames_without_a_disconnect(monkeypatch):
    with BosonEmulator(ffc_mode=bp.FfcMode.MANUAL, auto_ffc_period_s=1e9) as emu:
        with BosonControl(emu.port, reply_timeout_s=TIMEOUT) as ctl:
            monkeypatch.setattr(emu, "_ffc_state_locked", lambda: 7)
            with pytest.raises(CameraError, match="unknown FFC state 7 .known: 0 no_ffc_performed"):
                ctl.ffc_state()
            assert ctl.camera_serial() == emu.camera_serial  # the channel is fine
        cam = make_camera(_spec(emu.port), reply_timeout_s=TIMEOUT, ffc_poll_s=0.02)
        with cam:
            cam.start()
            frames = [cam.grab(1.0) for _ in range(30)]  # never raises: not a disconnect
            assert cam.control_status.lost == "" and cam.control_status.failures == 0
        assert sum(bool(f.flags & FrameFlags.FFC) for f in frames) >= 25  # unknown state: not trusted


def test_grab_never_waits_on_the_serial_line():
    # Every reply stalls 0.5 s (the camera is in a long FFC, replies held back); frames keep coming at 60 fps.
    with BosonEmulator(ffc_mode=bp.FfcMode.MANUAL, ffc_duration_s=1.5, auto_ffc_period_s=1e9,
                       stall_during_ffc=True) as emu:
        cam = make_camera(_spec(emu.port), reply_timeout_s=TIMEOUT)
        with cam:
            cam.start()
            cam.grab(1.0)
            emu.run_ffc()
            t = time.monotonic()
            frames = [cam.grab(1.0) for _ in range(45)]
            took = time.monotonic() - t
        counters = [f.frame_counter for f in frames]
    assert took < 1.2 and counters == list(range(counters[0], counters[0] + 45))  # no frame lost, none waited
