"""V4L2 video capture through the kernel interface (ioctl + mmap), with each buffer's sequence and timestamp.

OpenCV's V4L2 backend hides the buffer metadata; this module does not. Every
dequeued buffer carries the driver's ``sequence`` (it counts frames the driver
saw, so a jump is a frame lost in the driver or on the bus) and its capture
``timestamp`` (``CLOCK_MONOTONIC`` when the buffer says so: the clock of
``time.monotonic_ns()``, so it is directly a host timestamp)::

    with V4L2Capture("/dev/video0", 640, 512, Y16, fps=60) as cap:
        cap.start()
        buf = cap.read(timeout_s=1.0)   # V4L2Frame(image bytes copy, sequence, monotonic_ns, ...)

The structs are the 64-bit Linux UAPI layouts (``linux/videodev2.h``);
:func:`parse_buffer` decodes a ``struct v4l2_buffer`` and is tested on synthetic
bytes. ``ioctl``, ``mmap`` and ``wait`` are injectable so the capture loop can be
tested without a device. Construction does no I/O.
"""

from __future__ import annotations

import errno
import fcntl
import mmap as _mmap
import os
import select
import struct
from dataclasses import dataclass
from typing import Callable

from rig.capture.camera import CameraError


def fourcc(code: str) -> int:
    a, b, c, d = code.encode("ascii")
    return a | (b << 8) | (c << 16) | (d << 24)


Y16 = fourcc("Y16 ")

# --- ioctl numbers (asm-generic/ioctl.h) -----------------------------------------
_IOC_WRITE, _IOC_READ = 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("V") << 8) | nr


BUFFER = struct.Struct("=IIIII4xqq16sII8sIIi4x")  # struct v4l2_buffer, 88 bytes on 64-bit Linux
REQBUFS = struct.Struct("=IIIIB3x")  # struct v4l2_requestbuffers, 20 bytes
FORMAT_SIZE = 208  # struct v4l2_format: u32 type, 4 bytes pad, 200-byte union
PIX_FORMAT = struct.Struct("=IIIIIIII")  # width height pixelformat field bytesperline sizeimage colorspace priv
STREAMPARM_SIZE = 204  # struct v4l2_streamparm: u32 type, 200-byte union
CAPTUREPARM = struct.Struct("=IIII")  # capability capturemode timeperframe.numerator timeperframe.denominator

VIDIOC_S_FMT = _ioc(_IOC_READ | _IOC_WRITE, 5, FORMAT_SIZE)
VIDIOC_REQBUFS = _ioc(_IOC_READ | _IOC_WRITE, 8, REQBUFS.size)
VIDIOC_QUERYBUF = _ioc(_IOC_READ | _IOC_WRITE, 9, BUFFER.size)
VIDIOC_QBUF = _ioc(_IOC_READ | _IOC_WRITE, 15, BUFFER.size)
VIDIOC_DQBUF = _ioc(_IOC_READ | _IOC_WRITE, 17, BUFFER.size)
VIDIOC_STREAMON = _ioc(_IOC_WRITE, 18, 4)
VIDIOC_STREAMOFF = _ioc(_IOC_WRITE, 19, 4)
VIDIOC_S_PARM = _ioc(_IOC_READ | _IOC_WRITE, 22, STREAMPARM_SIZE)

BUF_TYPE_VIDEO_CAPTURE = 1
MEMORY_MMAP = 1
FIELD_NONE = 1
BUF_FLAG_ERROR = 0x0040
BUF_FLAG_TIMESTAMP_MASK = 0xE000
BUF_FLAG_TIMESTAMP_MONOTONIC = 0x2000


@dataclass(frozen=True)
class V4L2Buffer:
    """The fields of a dequeued ``struct v4l2_buffer`` that capture needs."""

    index: int
    type: int
    bytesused: int
    flags: int
    sequence: int
    memory: int
    offset: int  # m.offset (MMAP)
    length: int
    timestamp_ns: int  # tv_sec * 1e9 + tv_usec * 1e3

    @property
    def monotonic(self) -> bool:
        return self.flags & BUF_FLAG_TIMESTAMP_MASK == BUF_FLAG_TIMESTAMP_MONOTONIC

    @property
    def error(self) -> bool:
        return bool(self.flags & BUF_FLAG_ERROR)


def pack_buffer(index: int = 0, type_: int = BUF_TYPE_VIDEO_CAPTURE, bytesused: int = 0, flags: int = 0,
                field: int = FIELD_NONE, timestamp_ns: int = 0, sequence: int = 0, memory: int = MEMORY_MMAP,
                offset: int = 0, length: int = 0) -> bytes:
    """A ``struct v4l2_buffer`` as the kernel lays it out (for requests, and for tests)."""
    sec, rem = divmod(timestamp_ns, 1_000_000_000)
    return BUFFER.pack(index, type_, bytesused, flags, field, sec, rem // 1000, b"\0" * 16, sequence, memory,
                       struct.pack("=Q", offset), length, 0, 0)


def parse_buffer(data: bytes) -> V4L2Buffer:
    """Decode a ``struct v4l2_buffer`` (88 bytes, 64-bit Linux layout)."""
    if len(data) < BUFFER.size:
        raise CameraError(f"v4l2_buffer of {len(data)} bytes, expected {BUFFER.size}")
    index, type_, used, flags, _field, sec, usec, _tc, seq, memory, m, length, _r2, _rq = BUFFER.unpack_from(data)
    (offset,) = struct.unpack("=I4x", m)
    return V4L2Buffer(index, type_, used, flags, seq, memory, offset, length, sec * 1_000_000_000 + usec * 1000)


@dataclass(frozen=True)
class V4L2Frame:
    """One captured buffer: an owned copy of its bytes, the driver's sequence and its capture time."""

    data: bytes
    sequence: int  # unwrapped driver sequence (a jump: frames lost before this one)
    monotonic_ns: int | None  # capture time on CLOCK_MONOTONIC; None if the driver stamps another clock
    timestamp_ns: int  # the raw buffer timestamp


def _wait_readable(fd: int, timeout_s: float) -> bool:
    r, _, _ = select.select([fd], [], [], max(timeout_s, 0.0))
    return bool(r)


class V4L2Capture:
    """Streaming capture from a V4L2 device with mmap buffers (see module docstring)."""

    def __init__(self, device: str, width: int, height: int, pixelformat: int = Y16, fps: float | None = None,
                 buffers: int = 4, *, ioctl: Callable = fcntl.ioctl, mmap: Callable = _mmap.mmap,
                 wait: Callable[[int, float], bool] = _wait_readable, open_fd: Callable[[str], int] | None = None):
        self.device = device
        self.width, self.height, self.pixelformat, self.fps = width, height, pixelformat, fps
        self.nbuffers = buffers
        self._ioctl, self._mmap, self._wait = ioctl, mmap, wait
        self._open_fd = open_fd or (lambda path: os.open(path, os.O_RDWR | os.O_NONBLOCK))
        self._fd: int | None = None
        self._maps: list = []
        self._streaming = False
        self._last_raw: int | None = None
        self._wraps = 0

    # -- lifecycle ----------------------------------------------------------
    def open(self) -> None:
        if self._fd is not None:
            return
        path = f"/dev/video{self.device}" if self.device.isdigit() else self.device
        try:
            self._fd = self._open_fd(path)
        except OSError as exc:
            raise CameraError(f"cannot open video device {self.device} (V4L2): {exc.strerror or exc}") from None
        try:
            self._set_format()
            self._map_buffers()
        except BaseException:
            self.close()
            raise

    def start(self) -> None:
        self._require()
        if self._streaming:
            return
        for i in range(len(self._maps)):
            self._call(VIDIOC_QBUF, bytearray(pack_buffer(index=i)), "queue a buffer")
        self._call(VIDIOC_STREAMON, bytearray(struct.pack("=i", BUF_TYPE_VIDEO_CAPTURE)), "start streaming")
        self._streaming = True
        self._last_raw, self._wraps = None, 0

    def stop(self) -> None:
        if self._streaming and self._fd is not None:
            self._streaming = False
            try:
                self._call(VIDIOC_STREAMOFF, bytearray(struct.pack("=i", BUF_TYPE_VIDEO_CAPTURE)), "stop streaming")
            except CameraError:
                pass

    def close(self) -> None:
        self.stop()
        for m in self._maps:
            try:
                m.close()
            except Exception:  # noqa: BLE001
                pass
        self._maps = []
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def __enter__(self) -> "V4L2Capture":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- frames ---------------------------------------------------------------
    def read(self, timeout_s: float) -> V4L2Frame | None:
        """The next filled buffer (copied, then requeued), or None if none within ``timeout_s``."""
        self._require()
        if not self._wait(self._fd, timeout_s):
            return None
        req = bytearray(pack_buffer())
        try:
            self._ioctl(self._fd, VIDIOC_DQBUF, req, True)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return None
            raise CameraError(f"video device {self.device}: dequeue failed: {exc.strerror or exc}") from None
        buf = parse_buffer(bytes(req))
        try:
            data = bytes(self._maps[buf.index][: buf.bytesused])
        finally:
            self._call(VIDIOC_QBUF, bytearray(pack_buffer(index=buf.index)), "requeue a buffer")
        if buf.error:
            return None  # the driver marked the buffer corrupt: its sequence jump shows the loss
        if self._last_raw is not None and buf.sequence < self._last_raw and self._last_raw - buf.sequence > 1 << 31:
            self._wraps += 1
        self._last_raw = buf.sequence
        seq = buf.sequence + (self._wraps << 32)
        return V4L2Frame(data, seq, buf.timestamp_ns if buf.monotonic else None, buf.timestamp_ns)

    # -- setup ----------------------------------------------------------------
    def _set_format(self) -> None:
        fmt = bytearray(FORMAT_SIZE)
        struct.pack_into("=I", fmt, 0, BUF_TYPE_VIDEO_CAPTURE)
        PIX_FORMAT.pack_into(fmt, 8, self.width, self.height, self.pixelformat, FIELD_NONE, 0, 0, 0, 0)
        self._call(VIDIOC_S_FMT, fmt, "set the format")
        w, h, pf = PIX_FORMAT.unpack_from(fmt, 8)[:3]
        if pf != self.pixelformat:
            name = pf.to_bytes(4, "little").decode("ascii", "replace")
            raise CameraError(f"video device {self.device} does not offer Y16 (16-bit) video (it chose '{name}')")
        if (w, h) != (self.width, self.height):
            raise CameraError(f"video device {self.device} gives {w}x{h}, not {self.width}x{self.height}")
        if self.fps:
            parm = bytearray(STREAMPARM_SIZE)
            struct.pack_into("=I", parm, 0, BUF_TYPE_VIDEO_CAPTURE)
            CAPTUREPARM.pack_into(parm, 4, 0, 0, 1000, int(round(self.fps * 1000)))
            try:
                self._call(VIDIOC_S_PARM, parm, "set the frame rate")
            except CameraError:
                pass  # some UVC devices have a fixed rate

    def _map_buffers(self) -> None:
        req = bytearray(REQBUFS.pack(self.nbuffers, BUF_TYPE_VIDEO_CAPTURE, MEMORY_MMAP, 0, 0))
        self._call(VIDIOC_REQBUFS, req, "request buffers")
        count = REQBUFS.unpack_from(req)[0]
        if count < 2:
            raise CameraError(f"video device {self.device} gave {count} buffer(s); need at least 2")
        for i in range(count):
            q = bytearray(pack_buffer(index=i))
            self._call(VIDIOC_QUERYBUF, q, "query a buffer")
            b = parse_buffer(bytes(q))
            self._maps.append(self._mmap(self._fd, b.length, _mmap.MAP_SHARED, _mmap.PROT_READ | _mmap.PROT_WRITE,
                                         offset=b.offset))

    def _call(self, request: int, arg: bytearray, what: str) -> None:
        try:
            self._ioctl(self._fd, request, arg, True)
        except OSError as exc:
            raise CameraError(f"video device {self.device}: cannot {what}: {exc.strerror or exc}") from None

    def _require(self) -> None:
        if self._fd is None:
            raise CameraError(f"video device {self.device} not open")
