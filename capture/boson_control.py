"""Validated control of a FLIR Boson over its serial port, through flirpy.

flirpy's :class:`flirpy.camera.boson.Boson` builds and decodes the packets, but
it never changes its sequence number, reads "until a byte 0xAE", and only logs a
CRC mismatch ("data may be OK"). :class:`BosonControl` keeps flirpy's framing
and getters, and hooks its transaction (``_send_packet`` / ``receive``) so that
every reply is checked before flirpy decodes it:

* each command gets a fresh sequence number (skipping numbers whose bytes would
  need escaping, which flirpy's header encoder does not do);
* the reply must be one complete packet with a valid CRC and escapes, on
  channel 0, with the command's sequence number and function id, and the
  payload size the command returns; garbage, stale replies (from an earlier
  attempt) and corrupt packets are discarded;
* no valid reply within ``reply_timeout_s``: the command is sent again, up to
  ``attempts`` times, then :class:`~rig.capture.camera.CameraError` is raised;
* a valid reply with a non-zero return code raises at once (the camera refused).

Usage::

    with BosonControl("/dev/ttyACM0") as ctl:
        ctl.set_ffc_mode("manual")
        ctl.run_ffc()

flirpy's private surface
------------------------
``_CheckedBoson`` skips ``Boson.__init__`` (it calls ``logging.basicConfig()``
and may scan for ports) and overrides ``_send_packet`` and ``receive``. That ties
it to flirpy internals, so pyproject pins the range tested (``flirpy>=0.6.2,<0.7``)
and :func:`flirpy_problems` (run by the test suite) names any of these that a
flirpy version changed: the signatures in :data:`FLIRPY_SIGNATURES`, the
attributes ``Boson.__init__`` sets (:data:`FLIRPY_INIT_ATTRIBUTES`, which
``_CheckedBoson.__init__`` sets instead) and what ``Boson._send_packet`` uses
(:data:`FLIRPY_SEND_PACKET_USES`: the sequence number it encodes, and the
``send``/``receive`` it calls).
"""

from __future__ import annotations

import dis
import inspect
import logging
import time
from dataclasses import dataclass, field
from importlib import metadata

from flirpy.camera.boson import Boson

from rig.capture.boson_protocol import (
    REPLY_SIZE,
    SPECIAL,
    ExtSyncMode,
    FfcMode,
    FfcState,
    FrameReader,
    Function,
    ReturnCode,
    encode,
    function_name,
)
from rig.capture.camera import CameraError

log = logging.getLogger(__name__)

FFC_MODES = {"manual": FfcMode.MANUAL, "auto": FfcMode.AUTO, "external": FfcMode.EXTERNAL, "shutter-test": FfcMode.SHUTTER_TEST}
CORRUPT_GRACE_S = 0.03  # after a corrupt packet, how long to wait for a good one before resending
SYNC_MODES = {"disabled": ExtSyncMode.DISABLED, "master": ExtSyncMode.MASTER, "slave": ExtSyncMode.SLAVE}

FLIRPY_TESTED = "0.6.2"
# flirpy methods _CheckedBoson overrides or calls, with the signatures it was written against.
FLIRPY_SIGNATURES = {
    "_send_packet": "(self, function_id, data=None, receive_size=0)",  # overridden, and called via super()
    "receive": "(self, timeout=1)",  # overridden (flirpy's _send_packet calls self.receive())
    "_decode_packet": "(self, data, receive_size=0)",  # called by the getters on our reply bytes
    "send": "(self, packet)",
    "connect": "(self, port, baudrate)",
    "close": "(self)",
    "get_part_number": "(self)", "get_camera_serial": "(self)", "get_sensor_serial": "(self)",
    "get_firmware_revision": "(self)", "get_fpa_temperature": "(self)", "get_frame_count": "(self)",
    "get_ffc_state": "(self)", "get_last_ffc_frame_count": "(self)", "get_ffc_mode": "(self)",
    "set_ffc_manual": "(self)", "set_ffc_auto": "(self)", "do_ffc": "(self)",
    "get_external_sync_mode": "(self)", "set_external_sync_mode": "(self, sync_mode)",
}
FLIRPY_INIT_ATTRIBUTES = frozenset({"command_count", "cap", "conn", "logger"})  # set by Boson.__init__, which we skip
FLIRPY_SEND_PACKET_USES = ("command_count", "send", "receive")


def flirpy_problems(boson_cls: type = Boson) -> list[str]:
    """What of flirpy's private surface that :class:`BosonControl` relies on differs from the tested flirpy.

    Empty when compatible; else one sentence per difference, naming the installed
    flirpy version and the method or attribute.
    """
    try:
        version = metadata.version("flirpy")
    except metadata.PackageNotFoundError:
        version = "unknown"
    where = f"flirpy {version} (tested: {FLIRPY_TESTED})"
    problems = []
    for name, want in FLIRPY_SIGNATURES.items():
        fn = getattr(boson_cls, name, None)
        if fn is None:
            problems.append(f"{where}: Boson.{name} is missing (BosonControl needs {name}{want})")
            continue
        got = str(inspect.signature(fn))
        if got != want:
            problems.append(f"{where}: Boson.{name}{got} changed; BosonControl was written for {name}{want}")
    init = getattr(boson_cls, "__init__", None)
    if init is not None and hasattr(init, "__code__"):
        sets = {i.argval for i in dis.get_instructions(init) if i.opname == "STORE_ATTR"}
        if sets != FLIRPY_INIT_ATTRIBUTES:
            problems.append(f"{where}: Boson.__init__ sets {sorted(sets)}, _CheckedBoson.__init__ (which skips it) "
                            f"sets {sorted(FLIRPY_INIT_ATTRIBUTES)}")
    send_packet = getattr(boson_cls, "_send_packet", None)
    if send_packet is not None and hasattr(send_packet, "__code__"):
        missing = [n for n in FLIRPY_SEND_PACKET_USES if n not in send_packet.__code__.co_names]
        if missing:
            problems.append(f"{where}: Boson._send_packet no longer uses {', '.join(missing)}; _CheckedBoson sets the "
                            "sequence number in command_count and expects _send_packet to call send() and receive()")
    return problems


@dataclass
class ControlStats:
    """What the validation caught (for logs and tests)."""

    commands: int = 0
    retries: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


def _next_sequence(seq: int) -> int:
    """The next sequence number whose four bytes need no escaping."""
    while True:
        seq = (seq + 1) & 0xFFFFFFFF
        if not SPECIAL.intersection(seq.to_bytes(4, "big")):
            return seq


class UnknownStateError(CameraError):
    """A valid reply carrying a state value this driver does not know (the channel itself works)."""


class _CheckedBoson(Boson):
    """flirpy's Boson with a validating transaction. Internal to :class:`BosonControl`."""

    def __init__(self, port: str, baudrate: int, reply_timeout_s: float, attempts: int):
        # Not Boson.__init__: it calls logging.basicConfig() and may scan for ports.
        self.command_count = 0
        self.cap = None
        self.conn = None
        self.logger = logging.getLogger("flirpy.camera.boson")
        self.reply_timeout_s = reply_timeout_s
        self.attempts = attempts
        self.stats = ControlStats()
        self._expect: tuple[int, int] = (0, 0)  # (sequence, function) of the command in flight
        self._last_problem = ""
        self.connect(port, baudrate)  # flirpy Core: serial.Serial(port, baudrate, timeout=2)

    def _send_packet(self, function_id, data=None, receive_size=0):
        self.stats.commands += 1
        for attempt in range(self.attempts):
            if attempt:
                self.stats.retries += 1
                log.debug("boson: retrying %s (%s)", function_name(function_id), self._last_problem)
            self.command_count = _next_sequence(self.command_count)
            self._expect = (self.command_count, function_id)
            frame = super()._send_packet(function_id, data, receive_size)  # flirpy encodes, sends, self.receive()
            if frame:
                return frame
        raise CameraError(
            f"Boson on {self.conn.port} gave no valid reply to {function_name(function_id)} "
            f"after {self.attempts} attempts (last problem: {self._last_problem or 'no reply'})"
        )

    def receive(self, timeout=None):
        """One validated reply packet to the command in flight, or ``b""`` if none came in time."""
        seq, fn = self._expect
        reader = FrameReader(strict=True)
        deadline = time.monotonic() + self.reply_timeout_s
        self._last_problem = "no reply"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if reader.pending:
                    self._note("incomplete packet")
                elif reader.dropped_bytes and not reader.bad_frames:
                    self._note("garbage")
                return b""
            self.conn.timeout = remaining
            chunk = self.conn.read(1)
            if chunk:
                chunk += self.conn.read(self.conn.in_waiting)
            bad_before = reader.bad_frames
            for pkt in reader.feed(chunk):
                if pkt.sequence != seq or pkt.function != fn:
                    self._note(f"stale reply (sequence {pkt.sequence}, {function_name(pkt.function)})")
                    continue
                if pkt.channel != 0:
                    self._note(f"reply on channel {pkt.channel}")
                    continue
                if pkt.status != ReturnCode.OK:
                    try:
                        why = ReturnCode(pkt.status).name.lower().replace("_", " ")
                    except ValueError:
                        why = f"0x{pkt.status:04X}"
                    raise CameraError(f"Boson on {self.conn.port} refused {function_name(fn)}: {why}")
                want = REPLY_SIZE.get(fn)
                if want is not None and len(pkt.payload) != want:
                    self._note(f"payload of {len(pkt.payload)} bytes, expected {want}")
                    continue
                return bytearray(encode(pkt))  # canonical bytes for flirpy's _decode_packet
            if reader.bad_frames > bad_before:
                # A corrupt packet (bad CRC or escapes): the camera sends no second copy,
                # so wait only briefly for a good packet behind it, then resend.
                self._note("corrupt packet (bad CRC or framing)")
                deadline = min(deadline, time.monotonic() + CORRUPT_GRACE_S)

    def _note(self, problem: str) -> None:
        self._last_problem = problem
        self.stats.reject(problem.split(" (")[0])

    def __del__(self):  # flirpy's Core.__del__ closes; don't fail on half-built objects
        try:
            super().__del__()
        except Exception:
            pass


class BosonControl:
    """The Boson commands the rig uses, each validated (see module docstring).

    Constructing does no I/O; :meth:`open` connects. All methods raise
    :class:`~rig.capture.camera.CameraError` on failure.
    """

    def __init__(self, port: str, baudrate: int = 921600, *, reply_timeout_s: float = 0.25, attempts: int = 4):
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        self.port = port
        self.baudrate = baudrate
        self.reply_timeout_s = reply_timeout_s
        self.attempts = attempts
        self._boson: _CheckedBoson | None = None

    # -- lifecycle ----------------------------------------------------------
    def open(self) -> None:
        if self._boson is not None:
            return
        try:
            self._boson = _CheckedBoson(self.port, self.baudrate, self.reply_timeout_s, self.attempts)
        except (OSError, ValueError) as exc:  # serial.SerialException is an OSError
            raise CameraError(f"cannot open Boson serial port {self.port}: {exc}") from None

    def close(self) -> None:
        if self._boson is not None:
            self._boson.close()
            self._boson = None

    def __enter__(self) -> "BosonControl":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def stats(self) -> ControlStats:
        return self._cam.stats

    @property
    def _cam(self) -> _CheckedBoson:
        if self._boson is None:
            raise CameraError(f"Boson control on {self.port} used before open()")
        return self._boson

    # -- identity -----------------------------------------------------------
    def part_number(self) -> str:
        return self._cam.get_part_number().rstrip("\0 ").strip()

    def camera_serial(self) -> int:
        return self._cam.get_camera_serial()

    def sensor_serial(self) -> int:
        return self._cam.get_sensor_serial()

    def firmware(self) -> tuple[int, int, int]:
        return tuple(self._cam.get_firmware_revision())

    # -- status ---------------------------------------------------------------
    def fpa_temperature_c(self) -> float:
        return self._cam.get_fpa_temperature()

    def frame_count(self) -> int:
        return self._cam.get_frame_count()

    def ffc_state(self) -> FfcState:
        value = self._cam.get_ffc_state()
        try:
            return FfcState(value)
        except ValueError:  # a valid reply with a state this driver does not know: not a transport fault
            known = ", ".join(f"{s.value} {s.name.lower()}" for s in FfcState)
            raise UnknownStateError(f"Boson on {self.port} reported unknown FFC state {value} (known: {known})") from None

    def last_ffc_frame_count(self) -> int:
        return self._cam.get_last_ffc_frame_count()

    # -- settings -------------------------------------------------------------
    def ffc_mode(self) -> str:
        value = self._cam.get_ffc_mode()
        return next((k for k, v in FFC_MODES.items() if v == value), f"unknown({value})")

    def set_ffc_mode(self, mode: str) -> None:
        """Set ``manual`` or ``auto`` (or ``external``) and read it back."""
        if mode not in FFC_MODES:
            raise CameraError(f"unknown FFC mode '{mode}' (use {', '.join(FFC_MODES)})")
        if mode == "manual":
            self._cam.set_ffc_manual()
        elif mode == "auto":
            self._cam.set_ffc_auto()
        else:  # flirpy has no setter for the other modes: same command, its framing
            res = self._cam._send_packet(Function.SET_FFC_MODE, data=FFC_MODES[mode].to_bytes(4, "big"))
            self._cam._decode_packet(res)
        if (got := self.ffc_mode()) != mode:
            raise CameraError(f"Boson on {self.port} kept FFC mode '{got}' after setting '{mode}'")

    def run_ffc(self) -> None:
        """Start a flat-field correction (the shutter closes for a fraction of a second)."""
        self._cam.do_ffc()

    def external_sync_mode(self) -> str:
        value = self._cam.get_external_sync_mode()
        return next((k for k, v in SYNC_MODES.items() if v == value), f"unknown({value})")

    def set_external_sync_mode(self, mode: str) -> None:
        """Set ``disabled``, ``master`` or ``slave`` and read it back."""
        if mode not in SYNC_MODES:
            raise CameraError(f"unknown external sync mode '{mode}' (use {', '.join(SYNC_MODES)})")
        self._cam.set_external_sync_mode(int(SYNC_MODES[mode]))
        if (got := self.external_sync_mode()) != mode:
            raise CameraError(f"Boson on {self.port} kept external sync '{got}' after setting '{mode}'")
