"""A FLIR Boson emulator on a pseudo-terminal, for tests and dry runs without a camera.

It answers the binary serial protocol (:mod:`rig.capture.boson_protocol`) on the
slave side of an ``os.openpty()`` pair, so flirpy (or anything that opens a serial
port) talks to it exactly as it would to a camera on ``/dev/ttyACM0``::

    with BosonEmulator() as emu:
        boson = flirpy.camera.boson.Boson(port=emu.port)
        boson.get_camera_serial()        # -> emu.camera_serial

State: FFC mode (manual/auto) and state (a manual or automatic FFC is in progress
for ``ffc_duration_s``), a frame counter advancing at ``fps``, an FPA temperature
drifting with time, part/serial numbers, firmware version and external sync mode.

Faults (:class:`Fault`) are injected on demand, either one-shot
(:meth:`BosonEmulator.inject`) or at random rates (``FaultPlan``); ``stall_during_ffc``
holds every reply back until a running FFC has finished.

Video is not emulated here: :class:`rig.capture.boson_video.EmulatedY16Video` makes
the 16-bit frames of a dry run.
"""

from __future__ import annotations

import enum
import math
import os
import random
import select
import struct
import threading
import time
import tty
from dataclasses import dataclass, field
from typing import Callable

from rig.capture.boson_protocol import (
    COMMAND_SIZE,
    END,
    HEADER,
    START,
    ExtSyncMode,
    FfcMode,
    FfcState,
    FrameReader,
    Function,
    Packet,
    ReturnCode,
    crc16,
    encode,
    stuff,
)


class Fault(str, enum.Enum):
    """Ways a reply can go wrong (names are the CLI's ``--faults`` keys)."""

    GARBAGE = "garbage"  # random bytes (with stray start/end markers) before the reply
    DROP = "drop"  # no reply at all
    BAD_CRC = "bad-crc"  # a payload bit flipped (or the CRC, if no payload), CRC left stale
    STALE = "stale"  # the previous reply is sent instead; this one arrives late, before the next


@dataclass
class FaultPlan:
    """Random fault rates (probability per reply) and a queue of one-shot faults."""

    rates: dict[Fault, float] = field(default_factory=dict)
    queued: list[Fault] = field(default_factory=list)
    stall_during_ffc: bool = False  # "ffc-stall" in the text form

    @classmethod
    def parse(cls, text: str) -> "FaultPlan":
        """``"garbage=0.1,drop=0.05,ffc-stall"`` (a bare fault name means rate 0.1)."""
        rates: dict[Fault, float] = {}
        stall = False
        for item in filter(None, (s.strip() for s in text.split(","))):
            name, _, value = item.partition("=")
            if name.strip() == "ffc-stall":
                stall = True
                continue
            try:
                fault = Fault(name.strip())
            except ValueError:
                names = ", ".join(f.value for f in Fault)
                raise ValueError(f"unknown fault '{name}' (known: {names}, ffc-stall)") from None
            rate = float(value) if value else 0.1
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault rate for '{name}' must be within 0..1, got {rate}")
            rates[fault] = rate
        return cls(rates, stall_during_ffc=stall)

    def draw(self, rng: random.Random) -> set[Fault]:
        chosen = {self.queued.pop(0)} if self.queued else set()
        chosen |= {f for f, p in self.rates.items() if rng.random() < p}
        return chosen


@dataclass
class EmulatorStats:
    requests: int = 0
    replies: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    bad_frames: int = 0  # corrupt commands received


class BosonEmulator:
    """A Boson 640 on a pty. Start it (or use it as a context manager), then open :attr:`port`.

    ``clock`` (monotonic seconds) is injectable so tests can move time.
    """

    def __init__(
        self,
        *,
        fps: float = 60.0,
        part_number: str = "20640A050-6PAAX",
        camera_serial: int = 151515,
        sensor_serial: int = 262626,
        firmware: tuple[int, int, int] = (3, 3, 26),
        fpa_start_c: float = 31.5,
        fpa_drift_c_per_min: float = 0.6,
        ffc_duration_s: float = 0.4,
        auto_ffc_period_s: float = 180.0,
        ffc_mode: FfcMode = FfcMode.AUTO,
        stall_during_ffc: bool = False,
        faults: FaultPlan | None = None,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.fps = fps
        self.part_number = part_number
        self.camera_serial = camera_serial
        self.sensor_serial = sensor_serial
        self.firmware = firmware
        self.fpa_start_c = fpa_start_c
        self.fpa_drift_c_per_min = fpa_drift_c_per_min
        self.ffc_duration_s = ffc_duration_s
        self.auto_ffc_period_s = auto_ffc_period_s
        self.faults = faults or FaultPlan()
        self.stall_during_ffc = stall_during_ffc or self.faults.stall_during_ffc
        self.stats = EmulatorStats()
        self._clock = clock
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._ffc_mode = FfcMode(ffc_mode)
        self._ext_sync = ExtSyncMode.DISABLED
        self._boot = 0.0
        self._ffc_start: float | None = None  # start of the latest FFC
        self.ffc_history: list[tuple[float, float]] = []  # (start, end) of every FFC, on ``clock`` (tests)
        self._last_ffc_frame = 0
        self._last_ffc_temp_dk = 0
        self._last_reply: bytes | None = None
        self._late: bytes | None = None  # a reply held back by a STALE fault
        self._master = self._slave = -1
        self._port = ""
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- lifecycle ----------------------------------------------------------
    @property
    def port(self) -> str:
        """Path of the pty slave (what a rig file's ``serial_port`` points at)."""
        if not self._port:
            raise RuntimeError("emulator not started")
        return self._port

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "BosonEmulator":
        if self._thread is not None:
            return self
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line editing: a byte pipe like USB-CDC
        self._port = os.ttyname(self._slave)
        self._boot = self._clock()
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="boson-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._thread = None
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass
        self._master = self._slave = -1

    def __enter__(self) -> "BosonEmulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def inject(self, fault: Fault | str, count: int = 1) -> None:
        """Apply ``fault`` to the next ``count`` replies."""
        with self._lock:
            self.faults.queued.extend([Fault(fault)] * count)

    # -- state (thread-safe views) -------------------------------------------
    def _t(self) -> float:
        return self._clock() - self._boot

    def frame_count(self) -> int:
        return int(self._t() * self.fps)

    def fpa_temperature_c(self) -> float:
        t = self._t()
        return self.fpa_start_c + self.fpa_drift_c_per_min * t / 60.0 + 0.05 * math.sin(t / 7.0)

    @property
    def ffc_mode(self) -> FfcMode:
        return self._ffc_mode

    @property
    def external_sync(self) -> ExtSyncMode:
        return self._ext_sync

    def ffc_state(self) -> FfcState:
        with self._lock:
            return self._ffc_state_locked()

    def run_ffc(self) -> None:
        """Start an FFC now (as the camera does on the RUN_FFC command)."""
        with self._lock:
            self._start_ffc_locked()

    def _start_ffc_locked(self) -> None:
        self._ffc_start = self._t()
        self.ffc_history.append((self._boot + self._ffc_start, self._boot + self._ffc_start + self.ffc_duration_s))
        self._last_ffc_frame = self.frame_count()
        self._last_ffc_temp_dk = round((self.fpa_temperature_c() + 273.15) * 10)

    def _ffc_state_locked(self) -> FfcState:
        t = self._t()
        if self._ffc_mode == FfcMode.AUTO:
            # every auto_ffc_period_s after the end of the last FFC (or after boot)
            last_end = 0.0 if self._ffc_start is None else self._ffc_start + self.ffc_duration_s
            if t - last_end >= self.auto_ffc_period_s:
                self._start_ffc_locked()
        if self._ffc_start is None:
            return FfcState.NO_FFC_PERFORMED
        if t < self._ffc_start + self.ffc_duration_s:
            return FfcState.IN_PROGRESS
        return FfcState.COMPLETE

    # -- protocol ------------------------------------------------------------
    def handle(self, cmd: Packet) -> Packet:
        """The reply to one command (no faults). Public so it can be tested without a pty."""
        with self._lock:
            status, payload = self._dispatch(cmd)
        return Packet(cmd.sequence, cmd.function, int(status), payload, cmd.channel)

    def _dispatch(self, cmd: Packet) -> tuple[ReturnCode, bytes]:
        fn = cmd.function
        want = COMMAND_SIZE.get(fn, 0)
        if fn not in Function._value2member_map_:
            return ReturnCode.BAD_COMMAND_ID, b""
        if len(cmd.payload) < want:
            return ReturnCode.INSUFFICIENT_BYTES, b""
        if len(cmd.payload) > want:
            return ReturnCode.EXCESS_BYTES, b""
        state = self._ffc_state_locked()  # also runs a due automatic FFC
        if fn == Function.CAMERA_SERIAL:
            return ReturnCode.OK, struct.pack(">I", self.camera_serial)
        if fn == Function.SENSOR_SERIAL:
            return ReturnCode.OK, struct.pack(">I", self.sensor_serial)
        if fn == Function.PART_NUMBER:
            return ReturnCode.OK, self.part_number.encode("ascii")[:20].ljust(20, b"\0")
        if fn == Function.FIRMWARE:
            return ReturnCode.OK, struct.pack(">iii", *self.firmware)
        if fn == Function.FPA_TEMPERATURE:
            return ReturnCode.OK, struct.pack(">H", round(self.fpa_temperature_c() * 10))
        if fn == Function.FRAME_COUNT:
            return ReturnCode.OK, struct.pack(">I", self.frame_count() & 0xFFFFFFFF)
        if fn == Function.FFC_STATE:
            return ReturnCode.OK, struct.pack(">H", state)
        if fn == Function.GET_FFC_MODE:
            return ReturnCode.OK, struct.pack(">I", self._ffc_mode)
        if fn == Function.SET_FFC_MODE:
            (mode,) = struct.unpack(">I", cmd.payload)
            if mode not in FfcMode._value2member_map_:
                return ReturnCode.RANGE_ERROR, b""
            self._ffc_mode = FfcMode(mode)
            return ReturnCode.OK, b""
        if fn == Function.RUN_FFC:
            self._start_ffc_locked()
            return ReturnCode.OK, b""
        if fn == Function.LAST_FFC_FRAME_COUNT:
            return ReturnCode.OK, struct.pack(">I", self._last_ffc_frame)
        if fn == Function.LAST_FFC_TEMPERATURE:
            return ReturnCode.OK, struct.pack(">H", self._last_ffc_temp_dk)
        if fn == Function.GET_EXT_SYNC:
            return ReturnCode.OK, struct.pack(">I", self._ext_sync)
        if fn == Function.SET_EXT_SYNC:
            (mode,) = struct.unpack(">I", cmd.payload)
            if mode not in ExtSyncMode._value2member_map_:
                return ReturnCode.RANGE_ERROR, b""
            self._ext_sync = ExtSyncMode(mode)
            return ReturnCode.OK, b""
        if fn == Function.REBOOT:
            self._boot = self._clock()
            self._ffc_start = None
            return ReturnCode.OK, b""
        return ReturnCode.BAD_COMMAND_ID, b""

    # -- service thread ------------------------------------------------------
    def _serve(self) -> None:
        reader = FrameReader()
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master], [], [], 0.05)
            except (OSError, ValueError):
                return
            if not ready:
                reader.flush()
                self.stats.bad_frames = reader.bad_frames
                continue
            try:
                data = os.read(self._master, 4096)
            except OSError:  # slave side closed everywhere
                time.sleep(0.01)
                continue
            for cmd in reader.feed(data):
                self.stats.requests += 1
                self._reply(cmd)
            self.stats.bad_frames = reader.bad_frames

    def _reply(self, cmd: Packet) -> None:
        if self.stall_during_ffc:  # a command arriving during an FFC waits for its end
            while self.ffc_state() == FfcState.IN_PROGRESS and not self._stop.is_set():
                time.sleep(0.01)
        reply = self.handle(cmd)
        wire = encode(reply)
        with self._lock:
            faults = self.faults.draw(self._rng)
        for f in faults:
            self.stats.faults[f.value] = self.stats.faults.get(f.value, 0) + 1
        out = bytearray()
        if self._late is not None:  # a reply held back by STALE arrives now, late
            out += self._late
            self._late = None
        if Fault.DROP in faults:
            self._last_reply = wire
            self._write(bytes(out))
            return
        if Fault.BAD_CRC in faults:
            wire = self._corrupt(reply)
        if Fault.STALE in faults and self._last_reply is not None:
            self._late, wire = wire, self._last_reply
        else:
            self._last_reply = wire
        if Fault.GARBAGE in faults:
            junk = bytearray(self._rng.randbytes(self._rng.randint(3, 40)))
            junk[self._rng.randrange(len(junk))] = START
            junk[self._rng.randrange(len(junk))] = END
            out += junk
        out += wire
        self.stats.replies += 1
        self._write(bytes(out))

    def _corrupt(self, reply: Packet) -> bytes:
        """``reply`` with one payload bit flipped under the original CRC (or, without payload, a wrong CRC)."""
        body = HEADER.pack(reply.channel, reply.sequence, reply.function, reply.status) + reply.payload
        crc = crc16(body)
        if reply.payload:
            bad = bytearray(body)
            bad[HEADER.size + self._rng.randrange(len(reply.payload))] ^= 1 << self._rng.randrange(8)
            body = bytes(bad)
        else:
            crc ^= 0x0001
        return bytes((START,)) + stuff(body + struct.pack(">H", crc)) + bytes((END,))

    def _write(self, data: bytes) -> None:
        if not data:
            return
        try:
            os.write(self._master, data)
        except OSError:
            pass
