"""The FLIR Boson binary serial protocol (FSLP framing), as flirpy speaks it.

One packet on the wire::

    0x8E | channel | sequence:u32 | function:u32 | status:u32 | payload... | crc:u16 | 0xAE
    start                      (all integers big-endian)                              end

* ``status`` is ``0xFFFFFFFF`` in a command and the return code (0 = OK) in a reply.
* ``crc`` is CRC16-CCITT (polynomial 0x1021, initial value 0x1D0F) over
  ``channel .. payload`` before escaping (``binascii.crc_hqx(data, 0x1D0F)``).
* Between the start and end bytes, 0x8E, 0x9E and 0xAE are escaped as
  ``0x9E, byte - 0x0D`` (0x9E 0x81 / 0x9E 0x91 / 0x9E 0xA1). The camera escapes the
  whole packet; flirpy escapes only the payload of its commands (its header and
  CRC go out raw), so :class:`FrameReader` accepts both.
* A reply carries the command's sequence number and function id: that is how a
  host tells a reply from a stale one.

This module is pure (no I/O); the emulator and the driver share it.
"""

from __future__ import annotations

import binascii
import enum
import struct
from dataclasses import dataclass

START = 0x8E
END = 0xAE
ESCAPE = 0x9E
SPECIAL = frozenset((START, END, ESCAPE))
CRC_INIT = 0x1D0F
COMMAND_STATUS = 0xFFFFFFFF
HEADER = struct.Struct(">BIII")  # channel, sequence, function, status
MIN_FRAME = 1 + HEADER.size + 2 + 1  # start + header + crc + end = 17 bytes


class Function(enum.IntEnum):
    """Function ids used by flirpy (``flirpy/camera/boson.py``) and by the rig."""

    CAMERA_SERIAL = 0x00050002
    PART_NUMBER = 0x00050004
    SENSOR_SERIAL = 0x00050006
    RUN_FFC = 0x00050007
    FFC_STATE = 0x0005000C
    REBOOT = 0x00050010
    SET_FFC_MODE = 0x00050012
    GET_FFC_MODE = 0x00050013
    FIRMWARE = 0x00050022
    FPA_TEMPERATURE = 0x00050030
    LAST_FFC_FRAME_COUNT = 0x0005005D
    LAST_FFC_TEMPERATURE = 0x0005005E
    SET_EXT_SYNC = 0x00050098
    GET_EXT_SYNC = 0x00050099
    FRAME_COUNT = 0x00020002


#: Payload size of each reply (bytes), as flirpy decodes it.
REPLY_SIZE: dict[int, int] = {
    Function.CAMERA_SERIAL: 4,
    Function.PART_NUMBER: 20,
    Function.SENSOR_SERIAL: 4,
    Function.RUN_FFC: 0,
    Function.FFC_STATE: 2,
    Function.REBOOT: 0,
    Function.SET_FFC_MODE: 0,
    Function.GET_FFC_MODE: 4,
    Function.FIRMWARE: 12,
    Function.FPA_TEMPERATURE: 2,
    Function.LAST_FFC_FRAME_COUNT: 4,
    Function.LAST_FFC_TEMPERATURE: 2,
    Function.SET_EXT_SYNC: 0,
    Function.GET_EXT_SYNC: 4,
    Function.FRAME_COUNT: 4,
}

#: Payload size of each command that carries one.
COMMAND_SIZE: dict[int, int] = {Function.SET_FFC_MODE: 4, Function.SET_EXT_SYNC: 4}


class ReturnCode(enum.IntEnum):
    """Reply status codes (the ones flirpy names)."""

    OK = 0x0000
    BAD_COMMAND_ID = 0x0161
    BAD_PAYLOAD = 0x0162
    UNSPECIFIED = 0x0170
    INSUFFICIENT_BYTES = 0x017D
    EXCESS_BYTES = 0x017E
    BUFFER_OVERFLOW = 0x017F
    RANGE_ERROR = 0x0203


class FfcMode(enum.IntEnum):
    MANUAL = 0
    AUTO = 1
    EXTERNAL = 2
    SHUTTER_TEST = 3


class FfcState(enum.IntEnum):
    NO_FFC_PERFORMED = 0
    IMMINENT = 1
    IN_PROGRESS = 2
    COMPLETE = 3


class ExtSyncMode(enum.IntEnum):
    DISABLED = 0
    MASTER = 1
    SLAVE = 2


class ProtocolError(ValueError):
    """Bytes that are not one valid packet."""


@dataclass(frozen=True)
class Packet:
    """One decoded packet (command or reply)."""

    sequence: int
    function: int
    status: int
    payload: bytes = b""
    channel: int = 0

    @property
    def function_name(self) -> str:
        return function_name(self.function)


def function_name(function: int) -> str:
    try:
        return Function(function).name.lower()
    except ValueError:
        return f"0x{function:08X}"


def crc16(body: bytes) -> int:
    """CRC16-CCITT (init 0x1D0F) of ``channel .. payload``."""
    return binascii.crc_hqx(bytes(body), CRC_INIT)


def stuff(data: bytes) -> bytes:
    """Escape 0x8E / 0x9E / 0xAE."""
    out = bytearray()
    for b in data:
        if b in SPECIAL:
            out += bytes((ESCAPE, b - 0x0D))
        else:
            out.append(b)
    return bytes(out)


def unstuff(data: bytes) -> bytes:
    """Undo :func:`stuff`; raises :class:`ProtocolError` on a raw special byte or a bad escape."""
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == ESCAPE:
            nxt = next(it, None)
            if nxt is None or nxt + 0x0D not in SPECIAL:
                raise ProtocolError("bad escape sequence")
            out.append(nxt + 0x0D)
        elif b in (START, END):
            raise ProtocolError(f"raw 0x{b:02X} inside a packet")
        else:
            out.append(b)
    return bytes(out)


def encode(packet: Packet) -> bytes:
    """A packet as the camera sends it (everything between start and end escaped)."""
    body = HEADER.pack(packet.channel, packet.sequence, packet.function, packet.status) + bytes(packet.payload)
    return bytes((START,)) + stuff(body + struct.pack(">H", crc16(body))) + bytes((END,))


def _check(body: bytes, crc: int) -> Packet:
    if len(body) < HEADER.size:
        raise ProtocolError(f"packet too short ({len(body)} bytes)")
    if crc16(body) != crc:
        raise ProtocolError(f"bad CRC (got 0x{crc:04X}, computed 0x{crc16(body):04X})")
    channel, seq, fn, status = HEADER.unpack_from(body)
    return Packet(seq, fn, status, bytes(body[HEADER.size :]), channel)


def decode(frame: bytes) -> Packet:
    """Decode one fully escaped packet ``0x8E .. 0xAE`` (strict: CRC, markers, escapes)."""
    if len(frame) < MIN_FRAME:
        raise ProtocolError(f"packet too short ({len(frame)} bytes)")
    if frame[0] != START or frame[-1] != END:
        raise ProtocolError("missing start/end marker")
    inner = unstuff(frame[1:-1])
    if len(inner) < HEADER.size + 2:
        raise ProtocolError(f"packet too short ({len(inner)} bytes)")
    return _check(inner[:-2], struct.unpack(">H", inner[-2:])[0])


def decode_lenient(frame: bytes) -> Packet:
    """Decode a packet escaped either fully (camera) or payload-only (flirpy's commands)."""
    try:
        return decode(frame)
    except ProtocolError as first:
        if len(frame) < MIN_FRAME or frame[0] != START or frame[-1] != END:
            raise
        header = frame[1 : 1 + HEADER.size]
        try:
            payload = unstuff(frame[1 + HEADER.size : -3])
        except ProtocolError:
            raise first from None
        return _check(header + payload, struct.unpack(">H", frame[-3:-1])[0])


class FrameReader:
    """Splits a byte stream into packets, skipping garbage and corrupt packets.

    ``feed()`` returns the packets completed by the new bytes; bytes that cannot be
    part of a valid packet are dropped and counted in ``dropped_bytes`` /
    ``bad_frames``.

    ``strict=True`` (for replies: the camera escapes whole packets) decides at the
    first 0xAE after a start byte. The lenient mode (for flirpy's commands, whose
    CRC goes out unescaped and may contain 0xAE) extends a candidate that fails
    the CRC to the next 0xAE before giving it up (after ``max_len`` bytes, or by
    :meth:`flush` when the line goes idle).
    """

    def __init__(self, *, strict: bool = False, max_len: int = 1600):
        self._buf = bytearray()
        self.strict = strict
        self.max_len = max_len
        self.dropped_bytes = 0
        self.bad_frames = 0

    @property
    def pending(self) -> int:
        """Bytes held waiting for the rest of a packet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Packet]:
        self._buf += data
        out: list[Packet] = []
        while True:
            start = self._buf.find(START)
            if start < 0:
                self.dropped_bytes += len(self._buf)
                self._buf.clear()
                return out
            if start:
                self.dropped_bytes += start
                del self._buf[:start]
            if self.strict:
                if not self._take_strict(out):
                    return out
                continue
            found = self._first_valid()
            if found is not None:
                pkt, begin, end = found
                if begin:  # a start byte of garbage or of a corrupt packet came first
                    self.bad_frames += 1
                    self.dropped_bytes += begin
                out.append(pkt)
                del self._buf[:end]
                continue
            if len(self._buf) > self.max_len:
                self._drop_start()
                continue
            return out

    def flush(self) -> None:
        """Give up on a pending partial packet (call when the line has gone idle)."""
        if self._buf:
            self._drop_start()
            self.feed(b"")

    def _drop_start(self) -> None:
        self.bad_frames += 1
        self.dropped_bytes += 1
        del self._buf[:1]

    def _take_strict(self, out: list[Packet]) -> bool:
        """Consume one candidate ``0x8E .. 0xAE``; False when it is not complete yet."""
        end = self._buf.find(END, 1)
        if end < 0:
            if len(self._buf) > self.max_len:
                self._drop_start()
                return True
            return False
        begin = self._buf.rfind(START, 0, end)  # a raw start byte never sits inside a packet
        if begin:
            self.bad_frames += 1
            self.dropped_bytes += begin
        try:
            out.append(decode(bytes(self._buf[begin : end + 1])))
        except ProtocolError:
            self.bad_frames += 1
            self.dropped_bytes += end + 1 - begin
        del self._buf[: end + 1]
        return True

    def _first_valid(self) -> tuple[Packet, int, int] | None:
        """The first valid packet in the buffer: (packet, its start, one past its end)."""
        begin = 0
        while begin >= 0:
            end = begin + MIN_FRAME - 2
            while (end := self._buf.find(END, end + 1)) >= 0:
                try:
                    return decode_lenient(bytes(self._buf[begin : end + 1])), begin, end + 1
                except ProtocolError:
                    continue
            begin = self._buf.find(START, begin + 1)
        return None
